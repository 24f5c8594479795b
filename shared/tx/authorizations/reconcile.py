"""The reconciler: moves each SIGNED authorization to what the chain says became of it.

An executor's loop calls :func:`reconcile` (e.g. once per poll, and at start, before it signs
anything for a unit whose earlier authorization is SIGNED).

Guarantees:

- The chain is read at one *confirmed* block, ``head - confirmations``, pinned by its hash
  (EIP-1898) for every ``authorizationState(signer, nonce)`` call of the pass, in one batch.
- A row moves only on evidence at or below that block:
  - USED (with the block and transaction) when its nonce is used and the token's
    ``AuthorizationUsed`` log is found (for a payment, the matching ``Transfer`` is checked
    in that transaction's receipt; a mismatch is logged as an error and noted);
  - CANCELLED when the token's ``AuthorizationCanceled`` log is found (the cancel row
    itself becomes USED);
  - EXPIRED when the nonce is unused at a block whose timestamp is at or past validBefore:
    every later block is later still, so the token can never accept it. A cancel becomes
    EXPIRED when its payment used the nonce, or expired unused (it has nothing to stop).
  A used nonce whose log is not found yet stays SIGNED (logged), and is looked at again.
- Status changes go through :func:`shared.state.transition` (audit rows); a row another
  reconciler moved first is skipped.
- Logs are searched from the first block whose timestamp could hold the use (validAfter, or
  the signing time minus :data:`CLOCK_SKEW_S`), found by bisection over block headers, in
  chunks of :data:`LOG_CHUNK_BLOCKS`.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import structlog

from shared import state
from shared.chain.rpc import RpcCall, RpcClient, hex_int
from shared.db import AsyncDatabase
from shared.errors import TransitionConflict
from shared.tx.authorizations.eip3009 import (
    AUTHORIZATION_CANCELED_TOPIC,
    AUTHORIZATION_STATE_SELECTOR,
    AUTHORIZATION_USED_TOPIC,
    TRANSFER_TOPIC,
    Kind,
    address_topic,
    encode_call,
)
from shared.tx.authorizations.ledger import (
    AUTHORIZATION_MACHINE,
    Authorization,
    AuthorizationStatus,
    get,
    signed,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: the actor of the reconciler's audit rows
RECONCILER: Final = "authorizations-reconciler"
# Blocks per eth_getLogs: providers commonly cap a range at 2,000-10,000 blocks; the topics
# (authorizer and nonce) make each answer at most one log, so the range is the only cost.
LOG_CHUNK_BLOCKS: Final = 2_000
# authorizationState calls per JSON-RPC batch: public providers cap a batch at 100-1,000
# calls; 100 fits all of them and still reads a hundred open authorizations per POST.
STATE_CALLS_PER_BATCH: Final = 100
# Seconds a block's timestamp may run behind this machine's clock at signing time: the log
# search starts at the first block not older than the signature minus this.
CLOCK_SKEW_S: Final = 900

Database = sqlite3.Connection | AsyncDatabase
_Key = tuple[str, str, str]  # (token, signer, nonce)


@dataclass(frozen=True)
class ReconcileReport:
    """What one pass did."""

    at_block: int | None  # the confirmed block read; None when there was nothing to check
    checked: int
    used: int = 0
    expired: int = 0
    cancelled: int = 0


@dataclass(frozen=True)
class _Outcome:
    cancelled: bool  # AuthorizationCanceled (else AuthorizationUsed)
    block: int
    tx_hash: str
    note: str


async def reconcile(
    db: Database,
    rpc: RpcClient,
    *,
    confirmations: int,
    now: float | None = None,
    actor: str = RECONCILER,
) -> ReconcileReport:
    """One pass over the SIGNED authorizations of the chain ``rpc`` serves."""
    if confirmations < 0:
        raise ValueError("confirmations must be >= 0")
    at = time.time() if now is None else now
    reported, head_hex = await rpc.batch(
        [RpcCall("eth_chainId", []), RpcCall("eth_blockNumber", [])]
    )
    chain_id, head = hex_int(reported), hex_int(head_hex)
    rows = await _run(db, lambda conn: signed(conn, chain_id=chain_id))
    confirmed = head - confirmations
    if not rows or confirmed < 0:
        return ReconcileReport(at_block=None, checked=0)
    header = await rpc.call("eth_getBlockByNumber", [hex(confirmed), False])
    block_hash, timestamp = str(header["hash"]), hex_int(header["timestamp"])

    keys = sorted({(r.token, r.signer, r.nonce) for r in rows})
    calls = [
        RpcCall(
            "eth_call",
            [
                {
                    "to": token,
                    "data": encode_call(
                        AUTHORIZATION_STATE_SELECTOR,
                        ["address", "bytes32"],
                        [signer, bytes.fromhex(nonce[2:])],
                    ),
                },
                {"blockHash": block_hash},
            ],
        )
        for token, signer, nonce in keys
    ]
    states: list[Any] = []
    for first in range(0, len(calls), STATE_CALLS_PER_BATCH):
        states += await rpc.batch(calls[first : first + STATE_CALLS_PER_BATCH])
    outcomes: dict[_Key, _Outcome | None] = {}
    times: dict[int, int] = {confirmed: timestamp}
    unknown: set[_Key] = set()
    for key, answer in zip(keys, states, strict=True):
        if answer in ("0x", None):
            # No code at that block (it predates the token): no evidence either way yet.
            unknown.add(key)
        elif hex_int(answer) != 0:
            related = [r for r in rows if (r.token, r.signer, r.nonce) == key]
            outcomes[key] = await _find_outcome(rpc, key, related, confirmed, times)

    cancelled_ids = {r.cancels_id for r in rows if r.cancels_id is not None}
    deadlines = await _run(db, lambda conn: {i: get(conn, i).valid_before for i in cancelled_ids})
    moves = _decide(rows, outcomes, unknown, deadlines, at_block=confirmed, timestamp=timestamp)
    done = await _run(db, lambda conn: _apply(conn, moves, actor=actor, now=at))
    report = ReconcileReport(
        at_block=confirmed,
        checked=len(rows),
        used=done.count(AuthorizationStatus.USED),
        expired=done.count(AuthorizationStatus.EXPIRED),
        cancelled=done.count(AuthorizationStatus.CANCELLED),
    )
    if done:
        log.info(
            "authorizations_reconciled",
            at_block=confirmed,
            checked=report.checked,
            used=report.used,
            expired=report.expired,
            cancelled=report.cancelled,
        )
    return report


_Move = tuple[Authorization, AuthorizationStatus, _Outcome | None, str]


def _decide(
    rows: Sequence[Authorization],
    outcomes: dict[_Key, _Outcome | None],
    unknown: set[_Key],
    deadlines: dict[int, int | None],
    *,
    at_block: int,
    timestamp: int,
) -> list[_Move]:
    """Each row's move, from what the chain said at ``at_block`` (time ``timestamp``)."""
    moves: list[_Move] = []
    for row in rows:
        key = (row.token, row.signer, row.nonce)
        if key in unknown:
            continue
        if key in outcomes:
            outcome = outcomes[key]
            if outcome is None:
                log.warning(
                    "authorization_state_without_log",
                    id=row.id,
                    token=row.token,
                    signer=row.signer,
                    nonce=row.nonce,
                    at_block=at_block,
                )
                continue
            moves.append((row, _status_for(row, outcome), outcome, outcome.note))
        else:
            # A payment expires at its validBefore; its cancel then has nothing left to stop.
            deadline = row.valid_before if row.cancels_id is None else deadlines[row.cancels_id]
            if deadline is not None and timestamp >= deadline:
                what = "" if row.cancels_id is None else f"its payment {row.cancels_id} "
                note = (
                    f"{what}unused at block {at_block} (timestamp {timestamp} >= validBefore "
                    f"{deadline})"
                )
                moves.append((row, AuthorizationStatus.EXPIRED, None, note))
    return moves


def _status_for(row: Authorization, outcome: _Outcome) -> AuthorizationStatus:
    if row.kind is Kind.CANCEL:
        return AuthorizationStatus.USED if outcome.cancelled else AuthorizationStatus.EXPIRED
    return AuthorizationStatus.CANCELLED if outcome.cancelled else AuthorizationStatus.USED


def _apply(
    conn: sqlite3.Connection,
    moves: Sequence[_Move],
    *,
    actor: str,
    now: float,
) -> list[AuthorizationStatus]:
    done: list[AuthorizationStatus] = []
    for row, to, outcome, note in moves:
        columns: dict[str, object] = {}
        if outcome is not None:
            columns = {"used_block": outcome.block, "used_tx_hash": outcome.tx_hash}
        try:
            state.transition(
                conn,
                AUTHORIZATION_MACHINE,
                str(row.id),
                AuthorizationStatus.SIGNED.value,
                to.value,
                actor=actor,
                note=note,
                set_columns={**columns, "note": note},
                now=now,
            )
        except TransitionConflict:
            log.debug("authorization_moved_elsewhere", id=row.id)
            continue
        log.info(
            "authorization_settled",
            id=row.id,
            kind=row.kind.value,
            status=to.value,
            block=outcome.block if outcome else None,
            tx_hash=outcome.tx_hash if outcome else None,
        )
        done.append(to)
    return done


async def _find_outcome(
    rpc: RpcClient,
    key: _Key,
    rows: Sequence[Authorization],
    confirmed: int,
    times: dict[int, int],
) -> _Outcome | None:
    """The log that took the nonce ``key`` (at or below ``confirmed``), with its receipt's
    Transfer checked for a payment; None when no log is found."""
    token, signer, nonce = key
    earliest = min(_earliest_use(r) for r in rows)
    start = await _first_block_at(rpc, earliest, confirmed, times)
    topics = [
        [AUTHORIZATION_USED_TOPIC, AUTHORIZATION_CANCELED_TOPIC],
        address_topic(signer),
        nonce,
    ]
    found: dict[str, Any] | None = None
    for low in range(start, confirmed + 1, LOG_CHUNK_BLOCKS):
        high = min(low + LOG_CHUNK_BLOCKS - 1, confirmed)
        logs = await rpc.call(
            "eth_getLogs",
            [{"address": token, "fromBlock": hex(low), "toBlock": hex(high), "topics": topics}],
        )
        if logs:
            found = logs[0]
            break
    if found is None:
        return None
    cancelled = str(found["topics"][0]).lower() == AUTHORIZATION_CANCELED_TOPIC
    block, tx_hash = hex_int(found["blockNumber"]), str(found["transactionHash"])
    if cancelled:
        return _Outcome(True, block, tx_hash, f"AuthorizationCanceled in block {block}")
    payment = next((r for r in rows if r.kind is not Kind.CANCEL), None)
    note = f"AuthorizationUsed in block {block}"
    if payment is not None:
        receipt = await rpc.call("eth_getTransactionReceipt", [tx_hash])
        if not _has_transfer(receipt, payment):
            log.error(
                "authorization_used_without_transfer",
                id=payment.id,
                tx_hash=tx_hash,
                token=token,
            )
            note += "; no matching Transfer log in that transaction"
    return _Outcome(False, block, tx_hash, note)


def _earliest_use(row: Authorization) -> int:
    """The earliest block timestamp at which ``row``'s nonce could have been taken."""
    signed_at = int(row.created_at) - CLOCK_SKEW_S
    if row.kind is Kind.CANCEL or row.valid_after is None:
        return max(0, signed_at)
    return max(0, signed_at, row.valid_after)


async def _first_block_at(rpc: RpcClient, timestamp: int, high: int, times: dict[int, int]) -> int:
    """The first block in 0..high whose timestamp is >= ``timestamp`` (``high`` if none)."""
    low = 0
    while low < high:
        middle = (low + high) // 2
        if middle not in times:
            header = await rpc.call("eth_getBlockByNumber", [hex(middle), False])
            times[middle] = hex_int(header["timestamp"])
        if times[middle] < timestamp:
            low = middle + 1
        else:
            high = middle
    return low


def _has_transfer(receipt: Any, row: Authorization) -> bool:
    if not isinstance(receipt, dict):
        return False
    want = [
        TRANSFER_TOPIC,
        address_topic(row.from_address or ""),
        address_topic(row.to_address or ""),
    ]
    for entry in receipt.get("logs") or []:
        topics = [str(t).lower() for t in entry.get("topics") or []]
        if str(entry.get("address", "")).lower() != row.token.lower() or topics != want:
            continue
        if hex_int(entry.get("data") or "0x0") == row.value:
            return True
    return False


async def _run(db: Database, fn: Callable[[sqlite3.Connection], T]) -> T:
    if isinstance(db, AsyncDatabase):
        return await db.run(fn)
    return fn(db)
