"""What the Solana payer needs of a cluster, and two clusters that give it.

:class:`Cluster` is the small surface the payer and the network adapter use: a recent
blockhash with its last valid block height, the block height, signature statuses, sending
raw bytes, simulating, and reading accounts. Two implementations:

- :class:`SvmCluster`, over ``solders.litesvm.LiteSVM`` in this process (tests, and
  ``local`` for a demo). LiteSVM has no blocks: it accepts only its *latest* blockhash and
  executes a transaction at once. This class keeps the model honest about time: the block
  height is the SVM clock's slot, a blockhash is valid for :data:`MAX_PROCESSING_AGE`
  blocks after it was handed out, and :meth:`SvmCluster.advance` moves the height and
  expires the blockhash once it passed that height, exactly as a cluster stops accepting
  it. Everything executed is at once finalized.
- :class:`RpcCluster`, over ``solana`` 0.41's ``AsyncClient`` for a real cluster URL
  (devnet, mainnet-beta, a local validator). Statuses are read with
  ``searchTransactionHistory``; "finalized" is the only status that counts as landed, and
  the block height that decides expiry is the *finalized* one, so a transaction judged
  expired can no longer land on any fork that may still become final.

Errors of the library below are translated here: a transport failure is a
:class:`~shared.errors.RpcTransportError` (retryable), a JSON-RPC error object an
:class:`~shared.errors.RpcResponseError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import httpx
import structlog
from solana.exceptions import SolanaRpcException
from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Confirmed, Finalized
from solana.rpc.core import RPCException, RPCNoResultException
from solana.rpc.models import TxOpts
from solders.account import Account
from solders.hash import Hash
from solders.litesvm import LiteSVM
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import VersionedTransaction
from solders.transaction_metadata import FailedTransactionMetadata
from solders.transaction_status import TransactionConfirmationStatus, TransactionErrorType

from shared.errors import RpcResponseError, RpcTransportError

log = structlog.get_logger(__name__)

#: Blocks a blockhash stays usable after the block that produced it (the cluster's
#: MAX_PROCESSING_AGE, 150): a transaction with it can land up to that many blocks later.
MAX_PROCESSING_AGE: Final = 150


@dataclass(frozen=True)
class RecentBlockhash:
    blockhash: Hash
    #: the last block height at which a transaction with this blockhash can still land
    last_valid_block_height: int
    #: the slot the blockhash was read at: a transaction using it lands at this slot or later
    slot: int


@dataclass(frozen=True)
class SignatureState:
    """A signature the cluster knows: executed (``error`` None) or failed, and whether
    that is finalized. A signature the cluster does not know is ``None`` instead."""

    slot: int
    finalized: bool
    error: TransactionErrorType | None
    logs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Simulation:
    error: TransactionErrorType | None
    logs: tuple[str, ...]


@dataclass(frozen=True)
class AccountState:
    owner: Pubkey
    lamports: int
    data: bytes


class Cluster(Protocol):
    """One Solana cluster, seen at the commitments that money needs."""

    #: a name for logs and errors: "devnet", "mainnet-beta", "local", a redacted URL
    name: str

    async def recent_blockhash(self) -> RecentBlockhash: ...

    async def block_height(self) -> int:
        """The finalized block height: a blockhash whose last valid height is below it can
        no longer land anywhere."""
        ...

    async def minimum_ledger_slot(self) -> int:
        """The lowest slot whose transactions the node can still look up: a signature sent
        before it that the node does not find may still have landed."""
        ...

    async def signature_states(
        self, signatures: Sequence[Signature]
    ) -> list[SignatureState | None]: ...

    async def send(self, transaction: VersionedTransaction) -> None:
        """Hand the signed bytes to the cluster, without preflight. Sending the same bytes
        again is harmless: a signature lands at most once."""
        ...

    async def simulate(self, transaction: VersionedTransaction) -> Simulation: ...

    async def account(self, address: Pubkey) -> AccountState | None:
        """The account at a finalized slot, or None if it does not exist."""
        ...

    async def accounts(self, addresses: Sequence[Pubkey]) -> list[AccountState | None]:
        """Several accounts at one finalized slot, in order."""
        ...

    async def aclose(self) -> None: ...


# --- in process -----------------------------------------------------------------------------


class SvmCluster:
    """A cluster in this process (``solders.litesvm``). One object is one chain: several
    payers may share it (a "restarted" payer is a new payer on the same SvmCluster)."""

    name = "local"

    def __init__(self, svm: LiteSVM | None = None) -> None:
        self.svm = svm if svm is not None else LiteSVM()
        # blockhash -> the last height it is valid at, from when it was first handed out
        self._issued: dict[str, int] = {}

    @property
    def height(self) -> int:
        return int(self.svm.get_clock().slot)

    def advance(self, blocks: int) -> None:
        """Let ``blocks`` blocks pass; a blockhash whose last valid height is now behind is
        expired (LiteSVM then refuses it with BlockhashNotFound, as a cluster does)."""
        self.svm.warp_to_slot(self.height + blocks)
        last_valid = self._issued.get(str(self.svm.latest_blockhash()))
        if last_valid is not None and self.height > last_valid:
            self.svm.expire_blockhash()

    async def recent_blockhash(self) -> RecentBlockhash:
        blockhash = self.svm.latest_blockhash()
        key = str(blockhash)
        if key not in self._issued:
            self._issued[key] = self.height + MAX_PROCESSING_AGE
        return RecentBlockhash(blockhash, self._issued[key], self.height)

    async def block_height(self) -> int:
        return self.height

    async def minimum_ledger_slot(self) -> int:
        return 0  # LiteSVM keeps its whole transaction history

    async def signature_states(
        self, signatures: Sequence[Signature]
    ) -> list[SignatureState | None]:
        out: list[SignatureState | None] = []
        for signature in signatures:
            found = self.svm.get_transaction(signature)
            if found is None:
                out.append(None)
            elif isinstance(found, FailedTransactionMetadata):
                meta = found.meta()
                out.append(SignatureState(self.height, True, found.err(), tuple(meta.logs())))
            else:
                out.append(SignatureState(self.height, True, None, tuple(found.logs())))
        return out

    async def send(self, transaction: VersionedTransaction) -> None:
        result = self.svm.send_transaction(transaction)
        if isinstance(result, FailedTransactionMetadata):
            # A cluster accepts the bytes and reports the outcome by signature; LiteSVM
            # answers at once. Whether it was recorded is read back by signature.
            log.debug("svm_send_refused", error=str(result.err()))

    async def simulate(self, transaction: VersionedTransaction) -> Simulation:
        result = self.svm.simulate_transaction(transaction)
        if isinstance(result, FailedTransactionMetadata):
            return Simulation(result.err(), tuple(result.meta().logs()))
        return Simulation(None, tuple(result.meta().logs()))

    async def account(self, address: Pubkey) -> AccountState | None:
        found = self.svm.get_account(address)
        if found is None:
            return None
        return AccountState(found.owner, found.lamports, bytes(found.data))

    async def accounts(self, addresses: Sequence[Pubkey]) -> list[AccountState | None]:
        return [await self.account(address) for address in addresses]

    def set_account(self, address: Pubkey, account: Account) -> None:
        self.svm.set_account(address, account)

    async def aclose(self) -> None:
        return None


# --- a real cluster -------------------------------------------------------------------------

#: seconds one RPC call may take before it counts as a transport failure
RPC_TIMEOUT_S: Final = 20.0


class RpcCluster:
    """A cluster behind a JSON-RPC URL, through ``solana.rpc.async_api.AsyncClient``."""

    def __init__(self, url: str, *, name: str, timeout_s: float = RPC_TIMEOUT_S) -> None:
        self.name = name
        self._client = AsyncClient(url, commitment=Finalized, timeout=timeout_s)

    async def recent_blockhash(self) -> RecentBlockhash:
        # Confirmed, not finalized: a finalized blockhash is ~32 slots old already, which
        # takes that much from its validity window for no gain (its last valid height
        # bounds the transaction whichever fork the blockhash came from).
        answer = await self._call(self._client.get_latest_blockhash(Confirmed))
        value = answer.value
        return RecentBlockhash(
            value.blockhash, int(value.last_valid_block_height), int(answer.context.slot)
        )

    async def block_height(self) -> int:
        answer = await self._call(self._client.get_block_height(Finalized))
        return int(answer.value)

    async def minimum_ledger_slot(self) -> int:
        answer = await self._call(self._client.get_minimum_ledger_slot())
        return int(answer.value)

    async def signature_states(
        self, signatures: Sequence[Signature]
    ) -> list[SignatureState | None]:
        out: list[SignatureState | None] = []
        # getSignatureStatuses takes at most 256 signatures per call.
        for start in range(0, len(signatures), 256):
            chunk = list(signatures[start : start + 256])
            answer = await self._call(
                self._client.get_signature_statuses(chunk, search_transaction_history=True)
            )
            for status in answer.value:
                if status is None:
                    out.append(None)
                    continue
                finalized = status.confirmation_status == TransactionConfirmationStatus.Finalized
                out.append(SignatureState(int(status.slot), finalized, status.err))
        return out

    async def send(self, transaction: VersionedTransaction) -> None:
        # No preflight: the outcome is read back by signature, and a preflight refusal
        # would only hide the same error under another name. max_retries=0: we re-send
        # ourselves until the blockhash expires, so the RPC node does not need to.
        opts = TxOpts(skip_preflight=True, skip_confirmation=True, max_retries=0)
        await self._call(self._client.send_raw_transaction(bytes(transaction), opts))

    async def simulate(self, transaction: VersionedTransaction) -> Simulation:
        answer = await self._call(
            self._client.simulate_transaction(transaction, sig_verify=False, commitment=Confirmed)
        )
        value = answer.value
        return Simulation(value.err, tuple(value.logs or ()))

    async def account(self, address: Pubkey) -> AccountState | None:
        answer = await self._call(self._client.get_account_info(address, Finalized))
        value = answer.value
        if value is None:
            return None
        return AccountState(value.owner, int(value.lamports), bytes(value.data))

    async def accounts(self, addresses: Sequence[Pubkey]) -> list[AccountState | None]:
        out: list[AccountState | None] = []
        # getMultipleAccounts takes at most 100 accounts per call.
        for start in range(0, len(addresses), 100):
            chunk = list(addresses[start : start + 100])
            answer = await self._call(self._client.get_multiple_accounts(chunk, Finalized))
            for value in answer.value:
                out.append(
                    None if value is None
                    else AccountState(value.owner, int(value.lamports), bytes(value.data))
                )  # fmt: skip
        return out

    async def aclose(self) -> None:
        await self._client.close()

    async def _call(self, pending: Any) -> Any:
        try:
            return await pending
        except SolanaRpcException as exc:
            raise RpcTransportError(f"solana {self.name}: {type(exc.__cause__).__name__}") from exc
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            raise RpcTransportError(f"solana {self.name}: {type(exc).__name__}") from exc
        except (RPCException, RPCNoResultException) as exc:
            raise RpcResponseError(f"solana {self.name}: {exc}") from exc
