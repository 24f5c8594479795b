"""Settling nonces: which of our transactions a consumed nonce ended up with, and telling the
purposes what happened to theirs.

Guarantees:

- A nonce is settled in one database transaction together with what its purposes' handlers
  do about it, and only on evidence: either a receipt shows the transaction of ours that
  mined there, which becomes MINED / REVERTED and every other open one REPLACED; or the chain
  shows *another* transaction hash at that nonce (``users``, found by
  shared.tx.evidence.find_nonce_user), and every open one becomes DROPPED.
- A nonce with neither is left for a later poll: a missing receipt is never taken for
  "not mined", nor a consumed nonce without a receipt for "someone else used it".
- Each purpose on the nonce is told once: the winner's MINED / REVERTED, the others'
  SUPERSEDED (e.g. a fulfilment whose cancel mined), or DROPPED.
"""

from __future__ import annotations

import sqlite3
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import structlog

from shared.chain.rpc import hex_int
from shared.db import atomic
from shared.tx import ledger
from shared.tx.evidence import NonceUser
from shared.tx.ledger import OPEN_STATUSES, TxRecord, TxStatus

log = structlog.get_logger(__name__)


class Settlement(StrEnum):
    """What finally happened to a purpose's transaction on its nonce."""

    MINED = "mined"  # mined with status 1
    REVERTED = "reverted"  # mined with status 0
    SUPERSEDED = "superseded"  # another of our transactions (e.g. a cancel) mined there
    DROPPED = "dropped"  # a transaction we did not sign used the nonce
    # No REJECTED: a node's refusal is one node's word, never an outcome (shared/tx/manager.py).


@dataclass(frozen=True)
class SubjectAnchor:
    """The block that fixes the version of what a transaction serves (for a fulfilment: the
    block of the request's log). A block hash commits to everything in the block, so while
    the chain holds this block the subject is the version the transaction was made for."""

    block_number: int
    block_hash: str


class PurposeHandler(Protocol):
    """The part of a transaction's life that depends on what it is for."""

    def invalid(self, conn: sqlite3.Connection, txs: Sequence[TxRecord]) -> dict[int, str]:
        """Of these unmined transactions, those whose purpose no longer holds: id -> why."""
        ...

    def anchors(
        self, conn: sqlite3.Connection, txs: Sequence[TxRecord]
    ) -> dict[int, SubjectAnchor | None]:
        """For each of these transactions (still valid by :meth:`invalid`), the block its
        subject's version is anchored in, or None when the subject lives off chain (the
        database check of :meth:`invalid` is then the whole confirmation)."""
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
    users: Mapping[int, NonceUser] | None = None,
) -> Counter[str]:
    """Settle the nonces of ``candidates`` (every row at the nonces concerned) from
    ``receipts`` (hash -> receipt dict, None, or the error of its look-up) and ``users``
    (nonce -> the foreign transaction the chain shows there). Returns counts of what
    happened, for metrics."""
    counts: Counter[str] = Counter()
    by_nonce: dict[int, list[TxRecord]] = defaultdict(list)
    for tx in candidates:
        by_nonce[tx.nonce].append(tx)
    foreign = users or {}
    with atomic(conn):
        for nonce, rows in sorted(by_nonce.items()):
            mined = [tx for tx in rows if isinstance(receipts.get(tx.tx_hash), dict)]
            if mined:
                _mined(conn, mined[0], receipts[mined[0].tx_hash], rows, handlers, now, counts)
            elif nonce in foreign and foreign[nonce].tx_hash not in {tx.tx_hash for tx in rows}:
                _dropped(conn, nonce, rows, foreign[nonce], handlers, now, counts)
    return counts


def _purpose_key(tx: TxRecord) -> tuple[str, str | None, int | None]:
    return (tx.purpose.kind, tx.purpose.subject, tx.purpose.version)


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
    block_hash = receipt.get("blockHash")
    ledger.set_status(
        conn,
        winner.id,
        TxStatus.MINED if ok else TxStatus.REVERTED,
        now=now,
        mined_block=block,
        mined_block_hash=str(block_hash).lower() if isinstance(block_hash, str) else None,
        gas_used=hex_int(receipt.get("gasUsed", "0x0")),
        error=None if ok else f"reverted on chain in block {block}",
    )
    counts["mined" if ok else "reverted"] += 1
    fields = {
        "tx_hash": winner.tx_hash,
        "nonce": winner.nonce,
        "block": block,
        "purpose": winner.purpose.kind,
        "subject": winner.purpose.subject,
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
                conn, tx.id, TxStatus.REPLACED, now=now, error=f"nonce used by {detail}",
                only_from=OPEN_STATUSES,
            )  # fmt: skip
        if _purpose_key(tx) not in told:
            told.add(_purpose_key(tx))
            counts["superseded"] += 1
            tell(conn, handlers, tx, Settlement.SUPERSEDED, detail=detail, now=now)


def _dropped(
    conn: sqlite3.Connection,
    nonce: int,
    rows: Sequence[TxRecord],
    user: NonceUser,
    handlers: Handlers,
    now: float,
    counts: Counter[str],
) -> None:
    detail = (
        f"nonce {nonce} was used by {user.tx_hash} in block {user.block}, a transaction this "
        "node did not sign"
    )
    told: set[tuple[str, str | None, int | None]] = set()
    for tx in sorted(rows, key=lambda r: -r.id):
        if tx.status in (TxStatus.MINED, TxStatus.REVERTED):
            continue  # history of an earlier settlement of this nonce (before a reorg)
        if tx.is_open and ledger.set_status(
            conn, tx.id, TxStatus.DROPPED, now=now, error=detail, only_from=OPEN_STATUSES
        ):
            counts["dropped"] += 1
        if _purpose_key(tx) not in told:
            told.add(_purpose_key(tx))
            tell(conn, handlers, tx, Settlement.DROPPED, detail=detail, now=now)
    log.warning("tx_nonce_used_elsewhere", nonce=nonce, tx_hash=user.tx_hash, block=user.block)
