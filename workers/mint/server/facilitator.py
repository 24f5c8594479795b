"""The mint server's local x402 facilitator: x402's own (``x402FacilitatorSync`` with
``register_exact_evm_facilitator``, its exact EVM scheme), whose signer settles through the
core.

x402's scheme verifies a payment (signature, amounts, validity window, balance, nonce unused
on chain) and then calls its signer's ``write_contract`` for ``transferWithAuthorization``
and ``wait_for_transaction_receipt`` for the outcome. :class:`CoreFacilitatorSigner` is x402's
``FacilitatorWeb3Signer`` for every read (``read_contract``, ``verify_typed_data``,
``get_code``, ``get_balance``: x402's code against the chain) with the two writes replaced:

- ``write_contract`` encodes the call x402 asked for (with x402's own web3 contract encoding)
  and records it on the purchase (RECEIVED -> SETTLE_QUEUED, :func:`store.queue_settle`);
  the core's sending service then signs it from the minter key, records it before broadcast
  and follows it (fee bumps, re-broadcasts, restarts). It returns the recorded hash.
- ``wait_for_transaction_receipt`` waits until the settle's outcome is FINAL for the books
  (the purchase leaves SETTLING) and returns the receipt of the transaction that mined.
- ``send_transaction`` (x402's smart-wallet deployment) is refused: nothing else is sent.

x402's scheme is synchronous and blocks while it waits, so the async facilitator client
x402's resource server talks to (:class:`LocalFacilitatorClient`) runs each verify and settle
in a worker thread; the signer reaches the event loop (database, sending service) through
``asyncio.run_coroutine_threadsafe``. The async ``x402Facilitator`` would run the same
blocking scheme on the event loop itself and stall the server (and the sending service the
settle waits for) for the whole settle.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

import structlog
from web3 import Web3
from x402 import x402FacilitatorSync
from x402.extensions.payment_identifier import extract_payment_identifier
from x402.mechanisms.evm.constants import TX_STATUS_SUCCESS
from x402.mechanisms.evm.data_suffix import append_data_suffix
from x402.mechanisms.evm.exact import register_exact_evm_facilitator
from x402.mechanisms.evm.signers import FacilitatorWeb3Signer
from x402.mechanisms.evm.types import TransactionReceipt
from x402.schemas import (
    PaymentPayload,
    PaymentRequirements,
    SettleResponse,
    SupportedResponse,
    VerifyResponse,
)

from shared.db import AsyncDatabase
from shared.errors import PermanentError, RetryableError
from workers.mint.server import store
from workers.mint.server.machine import PurchaseStatus
from workers.mint.server.purpose import SETTLE_PURPOSE

log = structlog.get_logger(__name__)

P = PurchaseStatus
T = TypeVar("T")
SETTLE_FUNCTION: Final = "transferWithAuthorization"
WAIT_POLL_S: Final = 0.05
#: purchases the facilitator verifies or settles at once (each settle waits in a thread)
FACILITATOR_THREADS: Final = 64
#: the purchase a facilitator call in this thread settles (set per call, never shared)
CURRENT_PAYMENT: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "mint_server_payment", default=None
)


class SettleRefused(PermanentError):
    """The facilitator asked for something the mint server does not send."""


class SettleBridge:
    """What the signer's worker threads ask the event loop for: record a settle, wait for
    its hash, wait for its final outcome."""

    def __init__(
        self,
        *,
        db: AsyncDatabase,
        loop: asyncio.AbstractEventLoop,
        usdc: str,
        timeout_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._loop = loop
        self._usdc = Web3.to_checksum_address(usdc)
        self._timeout_s = timeout_s
        self._clock = clock

    def _run(self, coro: Awaitable[T]) -> T:
        future = asyncio.run_coroutine_threadsafe(_as_coro(coro), self._loop)
        return future.result(timeout=self._timeout_s + 5)

    def settle(self, payment_id: str, token: str, calldata: str) -> str:
        """Record the settle of ``payment_id`` and return its transaction hash once the
        sending service recorded it (signed, before or after broadcast)."""
        if Web3.to_checksum_address(token) != self._usdc:
            raise SettleRefused(f"the facilitator asked to settle on {token}, not the USDC")
        return self._run(self._settle(payment_id, calldata))

    async def _settle(self, payment_id: str, calldata: str) -> str:
        await self._db.run(store.queue_settle, payment_id, calldata, now=self._clock())
        deadline = time.monotonic() + self._timeout_s
        while True:
            found = await self._db.run(store.get, payment_id)
            if found is None:
                raise SettleRefused(f"no purchase {payment_id}")
            if found.status is P.SETTLE_FAILED:
                raise SettleRefused(f"settle of {payment_id} failed: {found.error}")
            if found.status not in (P.RECEIVED, P.SETTLE_QUEUED):
                # Recorded (the bind moved it on): the newest settle row is this attempt's.
                tx_hash = await self._db.run(_settle_tx_hash, payment_id)
                if tx_hash is not None:
                    return tx_hash
            if time.monotonic() > deadline:
                raise RetryableError(f"settle of {payment_id} not recorded in time")
            await asyncio.sleep(WAIT_POLL_S)

    def final_settle(self, tx_hash: str) -> tuple[str, bool]:
        """Wait until the settle recorded as ``tx_hash`` is final for the books: (the hash
        of our transaction that mined, whether it paid)."""
        return self._run(self._final_settle(tx_hash))

    async def _final_settle(self, tx_hash: str) -> tuple[str, bool]:
        payment_id = await self._db.run(_payment_of_tx, tx_hash)
        if payment_id is None:
            raise SettleRefused(f"{tx_hash} is not a settle of the mint server")
        deadline = time.monotonic() + self._timeout_s
        while True:
            found = await self._db.run(store.get, payment_id)
            if found is None:
                raise SettleRefused(f"no purchase {payment_id}")
            if found.status in (P.MINT_QUEUED, P.MINTING, P.MINTED, P.MINT_FAILED):
                return found.settle_tx_hash or tx_hash, True
            if found.status is P.SETTLE_FAILED:
                mined = await self._db.run(_mined_settle, payment_id)
                return mined or tx_hash, False
            # SETTLING, or SETTLE_CHECK (ours failed; did another submission pay?): wait.
            if time.monotonic() > deadline:
                raise RetryableError(f"settle {tx_hash} not final in time")
            await asyncio.sleep(WAIT_POLL_S)


async def _as_coro(awaitable: Awaitable[T]) -> T:
    return await awaitable


def _settle_tx_hash(conn: Any, payment_id: str) -> str | None:
    """The newest recorded settle transaction of the purchase (a fee bump is a newer row on
    the same nonce; the one that mines is reported by the final outcome)."""
    row = conn.execute(
        "SELECT tx_hash FROM txs WHERE purpose = ? AND subject = ? ORDER BY id DESC LIMIT 1",
        (SETTLE_PURPOSE, payment_id),
    ).fetchone()
    return None if row is None else str(row[0])


def _payment_of_tx(conn: Any, tx_hash: str) -> str | None:
    row = conn.execute(
        "SELECT subject FROM txs WHERE purpose = ? AND tx_hash = ?",
        (SETTLE_PURPOSE, tx_hash.lower()),
    ).fetchone()
    return None if row is None else str(row[0])


def _mined_settle(conn: Any, payment_id: str) -> str | None:
    row = conn.execute(
        "SELECT tx_hash FROM txs WHERE purpose = ? AND subject = ? AND status IN "
        "('MINED', 'REVERTED') ORDER BY id DESC LIMIT 1",
        (SETTLE_PURPOSE, payment_id),
    ).fetchone()
    return None if row is None else str(row[0])


class CoreFacilitatorSigner(FacilitatorWeb3Signer):
    """x402's facilitator signer with its writes sent through the core (module docstring).
    The minter key is given to x402's class for its address (the ``from`` of its reads);
    this class never lets it sign."""

    def __init__(self, *, minter_key: bytes, rpc_url: str, bridge: SettleBridge) -> None:
        super().__init__("0x" + minter_key.hex(), rpc_url)
        self._bridge = bridge

    def __repr__(self) -> str:
        return f"CoreFacilitatorSigner(address={self.address})"

    def write_contract(
        self,
        address: str,
        abi: list[dict[str, Any]],
        function_name: str,
        *args: Any,
        data_suffix: str | None = None,
    ) -> str:
        if function_name != SETTLE_FUNCTION:
            raise SettleRefused(f"the mint server sends no {function_name} for x402")
        payment_id = CURRENT_PAYMENT.get()
        if payment_id is None:
            raise SettleRefused("a settle outside a purchase (no payment identifier)")
        contract = self._w3.eth.contract(address=Web3.to_checksum_address(address), abi=abi)
        calldata = str(contract.encode_abi(function_name, args=list(args)))
        if data_suffix:
            calldata = append_data_suffix(calldata, data_suffix)
        tx_hash = self._bridge.settle(payment_id, address, calldata)
        log.info("mint_server_settle_recorded", payment_id=payment_id, tx_hash=tx_hash)
        return tx_hash

    def send_transaction(self, to: str, data: bytes) -> str:
        raise SettleRefused("the mint server deploys no smart wallet for a payer")

    def wait_for_transaction_receipt(self, tx_hash: str) -> TransactionReceipt:
        mined, paid = self._bridge.final_settle(tx_hash)
        receipt = self._w3.eth.get_transaction_receipt(mined)  # type: ignore[arg-type]
        return TransactionReceipt(
            status=TX_STATUS_SUCCESS if paid and receipt["status"] == 1 else 0,
            block_number=receipt["blockNumber"],
            tx_hash=mined,
            logs=list(receipt.get("logs") or []),
        )


class LocalFacilitatorClient:
    """x402's async facilitator-client protocol over the local ``x402FacilitatorSync``:
    each verify and settle runs in a worker thread, with the purchase it is for."""

    def __init__(
        self, signer: CoreFacilitatorSigner, *, network: str, threads: int = FACILITATOR_THREADS
    ) -> None:
        self.facilitator = x402FacilitatorSync()
        register_exact_evm_facilitator(self.facilitator, signer, networks=network)
        # Its own threads: a settle holds one until final, and asyncio's default pool (CPUs
        # + 4) would let a handful of purchases in flight block every other one.
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="x402-facilitator")

    async def verify(
        self, payload: PaymentPayload, requirements: PaymentRequirements
    ) -> VerifyResponse:
        return await self._in_thread(payload, self.facilitator.verify, requirements)

    async def settle(
        self, payload: PaymentPayload, requirements: PaymentRequirements
    ) -> SettleResponse:
        return await self._in_thread(payload, self.facilitator.settle, requirements)

    async def _in_thread(
        self,
        payload: PaymentPayload,
        fn: Callable[[PaymentPayload, PaymentRequirements], T],
        requirements: PaymentRequirements,
    ) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, functools.partial(_with_payment, payload, fn, payload, requirements)
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def get_supported(self) -> SupportedResponse:
        return self.facilitator.get_supported()


def _with_payment(payload: PaymentPayload, fn: Callable[..., T], *args: Any) -> T:
    CURRENT_PAYMENT.set(extract_payment_identifier(payload))
    return fn(*args)
