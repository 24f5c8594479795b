"""Funding a task: the user's EIP-3009 ``TransferWithAuthorization`` to the agent wallet,
checked by the fund route and submitted by the relayer key through the core's sending
service (and the agent wallet's refunds, submitted the same way).

Guarantees of :func:`check_funding` (each refusal a :class:`FundingRefused` with a reason
code; nothing is recorded or sent for it):

- the body has the seed's shape: addresses, ``value`` a decimal string (or integer),
  ``validAfter``/``validBefore`` unix seconds (numbers or decimal strings), ``nonce`` 0x and
  64 hex digits, ``signature`` 65 bytes with v of 27/28 or 0/1;
- the EIP-712 signer, under the token's domain as read from the contract, is ``from``
  (``funding_wrong_signer``); ``to`` is the task's agent wallet (``funding_wrong_to``);
  ``value`` ≥ the total cost (``funding_value_too_low``); the window is open now
  (``funding_expired`` / ``funding_not_yet_valid``) and ``validBefore`` is no later than the
  payment deadline (``funding_valid_before_past_deadline``); the nonce is unused on chain
  (``funding_nonce_used``); ``from`` holds ``value`` (``funding_insufficient_balance``).

Guarantees of the relayer's :class:`TransferSource` and :class:`TransferPurpose`:

- A transfer row is recorded (by the route) before anything is sent; the relayer's
  transaction is recorded in the core ledger, with its bind moving the row to
  ``submitted`` in the same transaction, before it is broadcast.
- Before each submission the authorization's state is read on chain: used (by us earlier or
  by anyone else: the ``AuthorizationUsed`` + ``Transfer`` of another's submission count as
  paid) → ``confirmed``; past ``validBefore`` unused → ``failed``. So nothing is sent twice.
- A transaction is acted on only when FINAL: mined with status 1 → ``confirmed`` (a
  funding's hash becomes the task's ``funding_tx_hash``); reverted → back to ``recorded``,
  where the state read above decides; a row whose transactions can no longer mine (dropped,
  replaced) is given back by the orphan sweep.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import structlog
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils.address import is_hex_address, to_checksum_address

from shared.chain.rpc import RpcClient
from shared.db import AsyncDatabase, atomic
from shared.errors import HodlaiError, TransitionConflict
from shared.tx.authorizations import DomainAllowlist, Kind
from shared.tx.authorizations.eip3009 import (
    TRANSFER_WITH_AUTHORIZATION_SELECTOR,
    encode_call,
    typed_data,
)
from shared.tx.ledger import Purpose, TxRecord
from shared.tx.manager import Recorded, Submission
from shared.tx.receipts import Receipt
from shared.tx.settlement import Settlement, UnconditionalSubject
from shared.tx.signer import Call, SignedTx
from workers.mint import chain, store
from workers.mint.machine import TransferStatus
from workers.mint.store import Task, Transfer

log = structlog.get_logger(__name__)

TRANSFER_PURPOSE: Final = "mint-transfer"
# Gas of one transferWithAuthorization (FiatTokenV2 uses ~80k; headroom for a cold slot).
TRANSFER_GAS: Final = 150_000
# Reverted submissions of one transfer before it is failed (each revert is re-judged from the
# chain first: a used authorization is confirmed, an expired one failed).
MAX_REVERTS: Final = 3
_NONCE = re.compile(r"^0x[0-9a-fA-F]{64}$")
_SIGNATURE = re.compile(r"^0x[0-9a-fA-F]{130}$")
_DECIMAL = re.compile(r"^[0-9]{1,78}$")
X = TransferStatus


class FundingRefused(HodlaiError):
    """A funding the route refuses (400); ``reason`` is the JSON error code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class FundingAuthorization:
    from_address: str
    to_address: str
    value: int
    valid_after: int
    valid_before: int
    nonce: str  # 0x + 64 hex, lower case
    signature: str  # 0x + 130 hex, v as 27/28

    @property
    def vrs(self) -> tuple[int, bytes, bytes]:
        raw = bytes.fromhex(self.signature[2:])
        return raw[64], raw[:32], raw[32:64]


def parse_funding(body: Mapping[str, Any]) -> FundingAuthorization:
    """The seed's fund body, checked for shape (FundingRefused ``funding_malformed``)."""
    auth = body.get("authorization")
    signature = body.get("signature")
    if not isinstance(auth, Mapping) or not isinstance(signature, str):
        raise FundingRefused("funding_malformed", "the body is {authorization: {...}, signature}")
    fields: dict[str, Any] = {}
    for name in ("from", "to"):
        value = auth.get(name)
        if not isinstance(value, str) or not is_hex_address(value):
            raise FundingRefused("funding_malformed", f"authorization.{name} is not an address")
        fields[name] = str(to_checksum_address(value))
    for name in ("value", "validAfter", "validBefore"):
        fields[name] = _uint(auth.get(name), name)
    nonce = auth.get("nonce")
    if not isinstance(nonce, str) or not _NONCE.match(nonce):
        raise FundingRefused("funding_malformed", "authorization.nonce is not 0x + 64 hex digits")
    if not _SIGNATURE.match(signature):
        raise FundingRefused("funding_malformed", "signature is not 65 bytes of 0x-hex")
    raw = bytearray(bytes.fromhex(signature[2:]))
    if raw[64] in (0, 1):
        raw[64] += 27
    if raw[64] not in (27, 28):
        raise FundingRefused("funding_malformed", "the signature's v is not 27/28 or 0/1")
    return FundingAuthorization(
        fields["from"],
        fields["to"],
        fields["value"],
        fields["validAfter"],
        fields["validBefore"],
        nonce.lower(),
        "0x" + raw.hex(),
    )


def _uint(value: object, name: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**256:
        return value
    if isinstance(value, str) and _DECIMAL.match(value) and int(value) < 2**256:
        return int(value)
    raise FundingRefused(
        "funding_malformed", f"authorization.{name} is not a decimal number (string or integer)"
    )


async def check_funding(
    rpc: RpcClient,
    allowlist: DomainAllowlist,
    task: Task,
    auth: FundingAuthorization,
    *,
    now: float,
) -> None:
    """Every check of the module docstring, before anything is recorded or sent."""
    domain = await allowlist.resolve(rpc, task.usdc_address, task.chain_id, now=now)
    message = {
        "from": auth.from_address,
        "to": auth.to_address,
        "value": auth.value,
        "validAfter": auth.valid_after,
        "validBefore": auth.valid_before,
        "nonce": bytes.fromhex(auth.nonce[2:]),
    }
    typed = typed_data(Kind.TRANSFER, domain.eip712(), message)
    try:
        signer = Account.recover_message(
            encode_typed_data(full_message=typed), signature=bytes.fromhex(auth.signature[2:])
        )
    except Exception:  # noqa: BLE001 - any malformed signature is "not from"
        signer = None
    if signer is None or str(signer).lower() != auth.from_address.lower():
        raise FundingRefused(
            "funding_wrong_signer",
            "the authorization is not signed by its from address under the token's EIP-712 domain",
        )
    if auth.to_address.lower() != task.agent_address.lower():
        raise FundingRefused(
            "funding_wrong_to",
            f"authorization.to must be the task's agent wallet {task.agent_address}",
        )
    if auth.value < task.total_cost:
        raise FundingRefused(
            "funding_value_too_low",
            f"authorization.value {auth.value} is below the total cost {task.total_cost}",
        )
    if auth.valid_before <= now:
        raise FundingRefused("funding_expired", "the authorization's validBefore has passed")
    if auth.valid_after >= now:
        raise FundingRefused("funding_not_yet_valid", "the authorization's validAfter is ahead")
    if auth.valid_before > task.payment_deadline:
        raise FundingRefused(
            "funding_valid_before_past_deadline",
            f"validBefore {auth.valid_before} is after the payment deadline "
            f"{task.payment_deadline}",
        )
    used, balance = await asyncio.gather(
        chain.authorization_used(rpc, task.usdc_address, auth.from_address, auth.nonce),
        chain.balance_of(rpc, task.usdc_address, auth.from_address, block="latest"),
    )
    if used:
        raise FundingRefused("funding_nonce_used", "the authorization's nonce is used on chain")
    if balance < auth.value:
        raise FundingRefused(
            "funding_insufficient_balance",
            f"{auth.from_address} holds {balance}, less than the authorization's value",
        )


def funding_row(task: Task, auth: FundingAuthorization, answer: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": store.transfer_key(task.usdc_address, auth.from_address, auth.nonce),
        "kind": "funding",
        "task_id": task.id,
        "token": task.usdc_address,
        "chain_id": task.chain_id,
        "from_address": auth.from_address,
        "to_address": auth.to_address,
        "value": auth.value,
        "valid_after": auth.valid_after,
        "valid_before": auth.valid_before,
        "nonce": auth.nonce,
        "signature": auth.signature,
        "answer": answer,
    }


def transfer_call(transfer: Transfer) -> Call:
    v, r, s = FundingAuthorization(
        transfer.from_address,
        transfer.to_address,
        transfer.value,
        transfer.valid_after,
        transfer.valid_before,
        transfer.nonce,
        transfer.signature,
    ).vrs
    data = encode_call(
        TRANSFER_WITH_AUTHORIZATION_SELECTOR,
        [
            "address",
            "address",
            "uint256",
            "uint256",
            "uint256",
            "bytes32",
            "uint8",
            "bytes32",
            "bytes32",
        ],
        [
            transfer.from_address,
            transfer.to_address,
            transfer.value,
            transfer.valid_after,
            transfer.valid_before,
            bytes.fromhex(transfer.nonce[2:]),
            v,
            r,
            s,
        ],
    )
    return Call(
        to=to_checksum_address(transfer.token),
        data=bytes.fromhex(data[2:]),
        value=0,
        gas_limit=TRANSFER_GAS,
    )


# --- the relayer ----------------------------------------------------------------------------


class TransferSource:
    """The relayer's units: recorded transfers (the executor is the only process: one per
    database, so an in-memory set is the claim)."""

    sweep_every_s: float = 10.0

    def __init__(self, db: AsyncDatabase, rpc: RpcClient, *, clock: Any = time.time) -> None:
        self._db = db
        self._rpc = rpc
        self._claimed: set[str] = set()
        self._clock = clock

    async def start(self) -> None:
        return None

    async def claim(self, limit: int, *, now: float) -> Sequence[Transfer]:
        rows = await self._db.run(lambda c: store.transfers(c, statuses=(X.RECORDED,)))
        out = [t for t in rows if t.id not in self._claimed][:limit]
        self._claimed.update(t.id for t in out)
        return out

    async def release(self, units: Sequence[Transfer]) -> None:
        self._claimed.difference_update(t.id for t in units)

    async def submissions(
        self, units: Sequence[Transfer], *, best_head: int | None
    ) -> list[tuple[Transfer, Submission]]:
        out: list[tuple[Transfer, Submission]] = []
        now = self._clock()
        for transfer in units:
            verdict = await judge(self._rpc, transfer, now=now)
            if verdict is not None:
                await self._db.run(_settle, transfer, verdict, now=now)
                self._claimed.discard(transfer.id)
                continue
            n = await self._db.run(_submissions_of, transfer.id)
            out.append(
                (
                    transfer,
                    Submission(
                        call=transfer_call(transfer),
                        purpose=Purpose(TRANSFER_PURPOSE, subject=transfer.id),
                        bind=_bind(transfer),
                        key=f"{TRANSFER_PURPOSE}:{transfer.id}:{n}",
                    ),
                )
            )
        return out

    async def recorded(self, results: Sequence[tuple[Transfer, Recorded]]) -> None:
        for transfer, _ in results:
            self._claimed.discard(transfer.id)

    async def sweep_orphans(self, *, now: float) -> int:
        return await self._db.run(lambda c: return_orphans(c, now=now))

    async def stop(self) -> None:
        self._claimed.clear()


async def judge(rpc: RpcClient, transfer: Transfer, *, now: float) -> tuple[X, str] | None:
    """What the chain already decided for a recorded transfer: (status, note), or None to
    send it."""
    if await chain.authorization_used(rpc, transfer.token, transfer.from_address, transfer.nonce):
        return X.CONFIRMED, "the authorization is used on chain (by this relayer or another)"
    if transfer.valid_before <= now:
        return X.FAILED, "validBefore passed before it could be submitted"
    return None


def _submissions_of(conn: sqlite3.Connection, transfer_id: str) -> int:
    row = conn.execute(
        "SELECT COUNT(*) FROM txs WHERE purpose = ? AND subject = ?",
        (TRANSFER_PURPOSE, transfer_id),
    ).fetchone()
    return int(row[0])


def _settle(
    conn: sqlite3.Connection, transfer: Transfer, verdict: tuple[X, str], *, now: float
) -> None:
    status, note = verdict
    try:
        with atomic(conn):
            store.move_transfer(
                conn,
                transfer,
                status,
                note=note,
                now=now,
                **({"error": note} if status is X.FAILED else {}),
            )
    except TransitionConflict:
        return
    log.info(
        "mint_transfer_settled", id=transfer.id, kind=transfer.kind, status=status.value, note=note
    )


def _bind(transfer: Transfer) -> Any:
    def bind(conn: sqlite3.Connection, signed: SignedTx) -> None:
        store.move_transfer(
            conn,
            transfer,
            X.SUBMITTED,
            note="submitted by the relayer",
            now=time.time(),
            tx_hash=signed.tx_hash,
        )

    return bind


def return_orphans(conn: sqlite3.Connection, *, now: float) -> int:
    """Submitted transfers none of whose transactions can still mine go back to recorded."""
    rows = conn.execute(
        "SELECT id FROM mint_transfers m WHERE status = 'submitted' AND NOT EXISTS (SELECT 1"
        " FROM txs t WHERE t.purpose = ? AND t.subject = m.id AND t.status IN ('SIGNED',"
        " 'BROADCAST', 'MINED'))",
        (TRANSFER_PURPOSE,),
    ).fetchall()
    moved = 0
    for (transfer_id,) in rows:
        transfer = store.find_transfer(conn, transfer_id)
        if transfer is None:
            continue
        try:
            with atomic(conn):
                store.move_transfer(
                    conn,
                    transfer,
                    X.RECORDED,
                    now=now,
                    note="no transaction of it can mine any more",
                )
        except TransitionConflict:
            continue
        moved += 1
    return moved


class TransferPurpose(UnconditionalSubject):
    """The ``mint-transfer`` purpose: acts on FINAL only (money)."""

    def settled(
        self,
        conn: sqlite3.Connection,
        tx: TxRecord,
        outcome: Settlement,
        *,
        detail: str,
        now: float,
        receipt: Receipt | None,
    ) -> None:
        if outcome is not Settlement.FINAL or receipt is None or tx.purpose.subject is None:
            return
        transfer = store.find_transfer(conn, tx.purpose.subject)
        if transfer is None or transfer.status is not X.SUBMITTED:
            return
        if receipt.status == 1:
            store.move_transfer(
                conn,
                transfer,
                X.CONFIRMED,
                now=now,
                tx_hash=tx.tx_hash,
                note=f"mined in block {receipt.block_number}",
            )
            if transfer.kind == "funding":
                conn.execute(
                    "UPDATE ai_agent_tasks SET funding_tx_hash = COALESCE(funding_tx_hash, ?)"
                    " WHERE id = ?",
                    (tx.tx_hash, transfer.task_id),
                )
            log.info(
                "mint_transfer_confirmed", id=transfer.id, kind=transfer.kind, tx_hash=tx.tx_hash
            )
            return
        reverts = conn.execute(
            "SELECT COUNT(*) FROM txs WHERE purpose = ? AND subject = ? AND status = 'REVERTED'",
            (TRANSFER_PURPOSE, transfer.id),
        ).fetchone()[0]
        to = X.FAILED if reverts >= MAX_REVERTS else X.RECORDED
        store.move_transfer(
            conn,
            transfer,
            to,
            now=now,
            error=f"reverted ({detail})",
            note="reverted on chain; the authorization's state decides next",
        )
        log.warning("mint_transfer_reverted", id=transfer.id, tx_hash=tx.tx_hash, reverts=reverts)

    def reorged(
        self,
        conn: sqlite3.Connection,
        tx: TxRecord,
        *,
        undone: Settlement,
        detail: str,
        now: float,
    ) -> None:
        """Nothing: the manager sends the same bytes again, and a confirmed row stays
        confirmed only if the authorization stays used (checked before any new submission)."""
