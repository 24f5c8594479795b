"""Signing transactions: the :class:`Signer` protocol that :mod:`shared.tx` signs through, and
:class:`LocalSigner`, whose private key stays in this process and never leaves the object.

A signer is the one thing :class:`~shared.tx.manager.TxManager` needs from a key: its address,
its chain and ``sign``. The vault's wallets (:meth:`shared.keys.vault.Vault.signer`) and the
oracle's key file both give a :class:`LocalSigner`; a remote signer (a KMS or an HSM) is
another class with the same three members, handed to the manager without touching
``shared/tx``. What any implementation must guarantee is written on :class:`Signer`.

Guarantees of :class:`LocalSigner`:

- Transactions are built here, field by field, and signed with eth-account (coincurve-backed:
  ~3,000 signatures/s against ~300 in pure Python, FACTS.md). No RPC call happens while
  signing; web3's ``build_transaction`` would make three per transaction.
- EIP-1559 (type 2) when the fees are dynamic, EIP-155 legacy otherwise; always bound to the
  chain id given at construction, so a signed transaction cannot be replayed on another chain.
- The key is not reachable through a public attribute, ``repr`` or ``str``; they show the
  address only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address

from shared.errors import KeyFileError
from shared.tx.fees import Fees


@dataclass(frozen=True)
class Call:
    """What a transaction does, independent of its nonce and fees."""

    to: ChecksumAddress
    data: bytes
    value: int
    gas_limit: int


@dataclass(frozen=True)
class SignedTx:
    """A signed transaction, ready to record and broadcast."""

    call: Call
    nonce: int
    fees: Fees
    tx_hash: str  # 0x-prefixed lowercase hex
    raw: str  # 0x-prefixed hex of the RLP/typed envelope, what eth_sendRawTransaction takes


@runtime_checkable
class Signer(Protocol):
    """Signs transactions for one account on one chain: what the transaction manager signs
    through. A remote signer (KMS, HSM, a signing service) implements it as well.

    The manager calls ``sign`` only for a transaction it is about to record: it writes the
    returned :class:`SignedTx` (hash and raw bytes) to the ledger, in the same database
    transaction as the purpose's ``bind``, before any node sees it. An implementation must
    therefore guarantee:

    - **Nothing leaves without the caller.** It signs only when ``sign`` is called, returns
      the signature to the caller and to no one else, and never broadcasts, queues or retries
      on its own: a transaction the ledger does not hold could pay twice after a restart.
    - **Exactly the call asked for.** The signed transaction has the given ``call`` (to, data,
      value, gas limit), ``nonce`` and ``fees`` and this ``chain_id`` (EIP-155 / type-2 chain
      binding), nothing changed or added; ``SignedTx.tx_hash`` is the keccak of ``raw``.
    - **Deterministic.** The same (call, nonce, fees) gives the same ``raw`` and ``tx_hash``
      (RFC 6979 nonces, as eth-account uses), so a re-sign after a crash reproduces the
      recorded hash instead of making a second transaction of the same nonce. A signer that
      cannot promise this (some HSMs draw a random k) must say so; the manager then relies on
      its nonce rules alone.
    - **Fails loudly.** A refusal or an unreachable backend raises an error of
      :mod:`shared.errors` (retryable if trying again may succeed, permanent otherwise);
      it never returns a partial or unsigned result. It may block; the manager calls it
      from its own loop and records nothing for a call that raised.
    - **No key material exposed.** ``address`` is the account signed for (checksummed) and
      ``repr``/``str`` show only that; a private key is never an attribute, a log field or
      part of an error message.

    Off-chain signatures (EIP-712 typed data such as an EIP-3009 authorization) are not part
    of this protocol: an authorization is money, so it is signed only through the
    authorizations ledger, which records it in the transaction that produces it.
    """

    @property
    def address(self) -> ChecksumAddress:
        """The account this signer signs for."""
        ...

    @property
    def chain_id(self) -> int:
        """The chain every signature is bound to."""
        ...

    def sign(self, call: Call, *, nonce: int, fees: Fees) -> SignedTx:
        """The signed transaction of ``call`` at ``nonce`` with ``fees`` on ``chain_id``."""
        ...


class LocalSigner:
    """Signs for one account on one chain with a key held in this process (a :class:`Signer`)."""

    def __init__(self, private_key: bytes, *, chain_id: int) -> None:
        try:
            self._account: LocalAccount = Account.from_key(private_key)
        except ValueError:
            raise KeyFileError("the private key is not a valid secp256k1 key") from None
        self.chain_id = chain_id
        self.address: ChecksumAddress = to_checksum_address(self._account.address)

    def __repr__(self) -> str:
        return f"LocalSigner(address={self.address}, chain_id={self.chain_id})"

    __str__ = __repr__

    def sign(self, call: Call, *, nonce: int, fees: Fees) -> SignedTx:
        tx: dict[str, Any] = {
            "chainId": self.chain_id,
            "nonce": nonce,
            "to": call.to,
            "value": call.value,
            "data": call.data,
            "gas": call.gas_limit,
        }
        if fees.is_dynamic:
            tx["type"] = 2
            tx["maxFeePerGas"] = fees.max_fee_per_gas
            tx["maxPriorityFeePerGas"] = fees.max_priority_fee_per_gas
        else:
            tx["gasPrice"] = fees.gas_price
        signed = self._account.sign_transaction(tx)
        return SignedTx(
            call=call,
            nonce=nonce,
            fees=fees,
            tx_hash="0x" + bytes(signed.hash).hex(),
            raw="0x" + bytes(signed.raw_transaction).hex(),
        )
