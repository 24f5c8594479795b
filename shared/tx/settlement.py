"""Settling nonces: which of our transactions a consumed nonce ended up with, and telling the
purposes what happened to theirs.

Guarantees:

- A nonce the chain has consumed is settled in one database transaction together with what
  its purposes' handlers do about it: either the transaction of ours that mined there becomes
  MINED / REVERTED (from its receipt) and every other open one REPLACED, or, when none of ours
  mined, every open one becomes DROPPED (a transaction we did not sign used the nonce).
- A nonce whose receipts could not all be read is left for a later poll: a missing answer is
  never taken for "not mined".
- Each purpose on the nonce is told once: the winner's MINED / REVERTED, the others'
  SUPERSEDED (e.g. a fulfilment whose cancel mined), or DROPPED.
"""

from __future__ import annotations

import sqlite3
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any, Protocol

import structlog

from shared.db import atomic
from shared.errors import HodlaiError
from shared.rpc import hex_int
from shared.tx import ledger
from shared.tx.ledger import TxRecord, TxStatus

log = structlog.get_logger(__name__)


class Settlement(StrEnum):
    """What finally happened to a purpose's transaction on its nonce."""

    MINED = "mined"  # mined with status 1
    REVERTED = "reverted"  # mined with status 0
    SUPERSEDED = "superseded"  # another of our transactions (e.g. a cancel) mined there
    DROPPED = "dropped"  # a transaction we did not sign used the nonce
    REJECTED = "rejected"  # no node will ever take it as signed; a cancel fills its nonce


class PurposeHandler(Protocol):
    """The part of a transaction's life that depends on what it is for."""

    def invalid(self, conn: sqlite3.Connection, txs: Sequence[TxRecord]) -> dict[int, str]:
        """Of these unmined transactions, those whose purpose no longer holds: id -> why."""
        ...

    def settled(
        self,
        conn: sqlite3.Connection,
        tx: TxRecord,
        outcome: Settlement,
        *,
        detail: str,
        now: float,
    ) -> None:
        """``tx``'s nonce is settled; runs in the database transaction that records it."""
        ...


Handlers = Mapping[str, PurposeHandler]


def tell(
    conn: sqlite3.Connection,
    handlers: Handlers,
    tx: TxRecord,
    outcome: Settlement,
    *,
    detail: str,
    now: float,
) -> None:
    handler = handlers.get(tx.purpose.kind)
    if handler is not None:
        handler.settled(conn, tx, outcome, detail=detail, now=now)


def settle_nonces(
    conn: sqlite3.Connection,
    candidates: Sequence[TxRecord],
    receipts: Mapping[str, Any],
    handlers: Handlers,
    *,
    now: float,
) -> Counter[str]:
    """Settle the nonces of ``candidates`` (every row at nonces the chain has consumed) from
    ``receipts`` (hash -> receipt dict, None, or the error of its look-up). Returns counts of
    what happened, for metrics."""
    counts: Counter[str] = Counter()
    by_nonce: dict[int, list[TxRecord]] = defaultdict(list)
    for tx in candidates:
        by_nonce[tx.nonce].append(tx)
    with atomic(conn):
        for nonce, rows in sorted(by_nonce.items()):
            if any(isinstance(receipts.get(tx.tx_hash), HodlaiError) for tx in rows):
                continue  # a look-up failed: settle this nonce on a later poll
            mined = [tx for tx in rows if isinstance(receipts.get(tx.tx_hash), dict)]
            if mined:
                _mined(conn, mined[0], receipts[mined[0].tx_hash], rows, handlers, now, counts)
            else:
                _dropped(conn, nonce, rows, handlers, now, counts)
    return counts


def _purpose_key(tx: TxRecord) -> tuple[str, str | None, int | None]:
    return (tx.purpose.kind, tx.purpose.request_id, tx.purpose.generation)


def _mined(
    conn: sqlite3.Connection,
    winner: TxRecord,
    receipt: dict[str, Any],
    rows: Sequence[TxRecord],
    handlers: Handlers,
    now: float,
    counts: Counter[str],
) -> None:
    ok = hex_int(receipt.get("status", "0x0")) == 1
    block = hex_int(receipt["blockNumber"])
    ledger.set_status(
        conn,
        winner.id,
        TxStatus.MINED if ok else TxStatus.REVERTED,
        now=now,
        mined_block=block,
        gas_used=hex_int(receipt.get("gasUsed", "0x0")),
        error=None if ok else f"reverted on chain in block {block}",
    )
    counts["mined" if ok else "reverted"] += 1
    fields = {
        "tx_hash": winner.tx_hash,
        "nonce": winner.nonce,
        "block": block,
        "purpose": winner.purpose.kind,
        "request_id": winner.purpose.request_id,
    }
    if ok:
        log.debug("tx_mined", **fields)
    else:
        log.warning("tx_reverted", **fields)
    detail = f"tx {winner.tx_hash} in block {block}"
    outcome = Settlement.MINED if ok else Settlement.REVERTED
    tell(conn, handlers, winner, outcome, detail=detail, now=now)
    told = {_purpose_key(winner)}
    for tx in sorted(rows, key=lambda r: -r.id):  # newest first: the latest word of a purpose
        if tx.id == winner.id:
            continue
        if tx.is_open:
            ledger.set_status(
                conn, tx.id, TxStatus.REPLACED, now=now, error=f"nonce used by {detail}"
            )
        if _purpose_key(tx) not in told:
            told.add(_purpose_key(tx))
            counts["superseded"] += 1
            tell(conn, handlers, tx, Settlement.SUPERSEDED, detail=detail, now=now)


def _dropped(
    conn: sqlite3.Connection,
    nonce: int,
    rows: Sequence[TxRecord],
    handlers: Handlers,
    now: float,
    counts: Counter[str],
) -> None:
    detail = f"nonce {nonce} was used by a transaction this node did not sign"
    told: set[tuple[str, str | None, int | None]] = set()
    for tx in sorted(rows, key=lambda r: -r.id):
        if tx.status in (TxStatus.MINED, TxStatus.REVERTED):
            continue  # history of an earlier settlement of this nonce (before a reorg)
        if tx.is_open:
            ledger.set_status(conn, tx.id, TxStatus.DROPPED, now=now, error=detail)
            counts["dropped"] += 1
        if _purpose_key(tx) not in told:
            told.add(_purpose_key(tx))
            tell(conn, handlers, tx, Settlement.DROPPED, detail=detail, now=now)
    log.warning("tx_nonce_used_elsewhere", nonce=nonce)
