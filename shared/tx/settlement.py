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
- Each purpose on the nonce is told once per settlement: the winner's MINED / REVERTED
  (with its :class:`~shared.tx.receipts.Receipt`), the others' SUPERSEDED (e.g. a
  fulfilment whose cancel mined), or DROPPED.

Which outcome may be undone, and which is final:

- MINED, REVERTED and SUPERSEDED are told at the first receipt, at 0 confirmations. A reorg
  can undo each of them: the winner's block leaves the chain and the nonce is open again.
  The purposes told are then told :meth:`PurposeHandler.reorged` (in the database
  transaction that reopens the row), and later whatever the nonce settles to next.
- FINAL is told to the winner's purpose once its receipt's block is ``confirmations``
  (HODLAI_CONFIRMATIONS) deep and that block's hash is still the canonical one at its
  height, read from a node at or past the highest head seen (:func:`finalize`). It is told
  exactly once per settlement: ``txs.final_at`` is set in the transaction that tells it, and
  only if nobody set it before. FINAL is undone only by a reorg deeper than
  ``confirmations``: that is the indexer's halt story (an operator's matter); the manager
  logs an error (``tx_final_reorged_out``), counts it (``hodlai_txs_total{outcome=
  "final_reorged"}``) and tells ``reorged`` anyway, since the chain no longer holds it.
- A REVERTED transaction is told FINAL too, with its receipt (``receipt.ok`` is False), not
  as a separate outcome: finality is a property of the block, not of the result; the purpose
  already knows which result it got (it was told REVERTED), and one rule, "FINAL once per
  settlement", is easier to keep and to rely on than two outcomes of which exactly one comes.
- SUPERSEDED gets no FINAL of its own (FINAL is the winner's): a money purpose that must
  know its payment can no longer land before it pays again waits until the winning row of
  that nonce has ``final_at`` set (:func:`shared.tx.ledger.get`), or it is told ``reorged``.
- DROPPED (a transaction we did not sign used the nonce) is told on that evidence and not
  watched afterwards: it is an alarm about the key, not a payment outcome.
- Money purposes act on FINAL only (and on ``reorged`` by waiting: the same signed bytes
  are sent again once the purpose confirms they still serve it). The oracle's fulfilment
  purpose acts on MINED / REVERTED: its indexer confirms the fulfilled event at depth.
"""

from __future__ import annotations

import sqlite3
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import structlog

from shared.db import atomic
from shared.tx import ledger
from shared.tx.chainview import ChainView
from shared.tx.evidence import NonceUser
from shared.tx.ledger import OPEN_STATUSES, TxRecord, TxStatus
from shared.tx.receipts import Receipt, parse_receipt

log = structlog.get_logger(__name__)


class Settlement(StrEnum):
    """What finally happened to a purpose's transaction on its nonce."""

    MINED = "mined"  # mined with status 1 (may be undone by a reorg)
    REVERTED = "reverted"  # mined with status 0 (may be undone by a reorg)
    FINAL = "final"  # the winner's block is ``confirmations`` deep and canonical (with receipt)
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

    def invalid(
        self,
        conn: sqlite3.Connection,
        txs: Sequence[TxRecord],
        *,
        now: float,
        chain: ChainView,
    ) -> dict[int, str]:
        """Of these unmined transactions, those whose purpose no longer holds: id -> why.
        ``now`` is the poll's time; ``chain`` reads the chain at a confirmed block (lazily:
        it costs nothing unless read; see shared/tx/chainview.py). Runs on the database
        thread in the poll's read transaction. An error of a chain read (a node without
        the block: StaleNodeError) propagates out of the poll, which then decides and sends
        nothing; the loop retries it."""
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
        receipt: Receipt | None,
    ) -> None:
        """``tx``'s nonce is settled (or its settlement is FINAL); runs in the database
        transaction that records it. ``receipt``: ``tx``'s own receipt for MINED, REVERTED
        and FINAL; None for the outcomes without one (SUPERSEDED, DROPPED, ...)."""
        ...

    def reorged(
        self,
        conn: sqlite3.Connection,
        tx: TxRecord,
        *,
        undone: Settlement,
        detail: str,
        now: float,
    ) -> None:
        """The outcome ``undone`` this purpose was told about ``tx``'s nonce (MINED, REVERTED,
        SUPERSEDED; FINAL after a reorg deeper than the confirmations) was taken back by a
        reorg: the nonce is open again. Runs in the database transaction that reopens it."""
        ...


Handlers = Mapping[str, PurposeHandler]


class OffChainSubject:
    """:meth:`PurposeHandler.anchors` for a purpose whose subject lives off chain (a row of
    the executor's own, a payment): no block anchors it, so the database check of
    ``invalid`` is the whole confirmation. Inherit it rather than writing the method again."""

    def anchors(
        self, conn: sqlite3.Connection, txs: Sequence[TxRecord]
    ) -> dict[int, SubjectAnchor | None]:
        return {tx.id: None for tx in txs}


class UnconditionalSubject(OffChainSubject):
    """An off-chain subject nothing in the database can withdraw: once recorded, the
    transaction is wanted until the chain settles it (an ``approve``, a user's signed
    funding authorization). ``invalid`` names none."""

    def invalid(
        self,
        conn: sqlite3.Connection,
        txs: Sequence[TxRecord],
        *,
        now: float,
        chain: ChainView,
    ) -> dict[int, str]:
        return {}


def tell(
    conn: sqlite3.Connection,
    handlers: Handlers,
    tx: TxRecord,
    outcome: Settlement,
    *,
    detail: str,
    now: float,
    receipt: Receipt | None = None,
) -> None:
    handler = handlers.get(tx.purpose.kind)
    if handler is not None:
        handler.settled(conn, tx, outcome, detail=detail, now=now, receipt=receipt)


def tell_reorged(
    conn: sqlite3.Connection,
    handlers: Handlers,
    tx: TxRecord,
    *,
    undone: Settlement,
    detail: str,
    now: float,
) -> None:
    handler = handlers.get(tx.purpose.kind)
    if handler is not None:
        handler.reorged(conn, tx, undone=undone, detail=detail, now=now)


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
    told_receipt = parse_receipt(receipt)
    ok = told_receipt.ok
    block = told_receipt.block_number
    ledger.set_status(
        conn,
        winner.id,
        TxStatus.MINED if ok else TxStatus.REVERTED,
        now=now,
        mined_block=block,
        mined_block_hash=told_receipt.block_hash,
        gas_used=told_receipt.gas_used,
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
    tell(conn, handlers, winner, outcome, detail=detail, now=now, receipt=told_receipt)
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


def undo(
    conn: sqlite3.Connection,
    handlers: Handlers,
    winner: TxRecord,
    superseded: Sequence[TxRecord],
    *,
    detail: str,
    now: float,
) -> None:
    """A reorg took back ``winner``'s settlement (call inside the transaction that records
    it): its purpose is told ``reorged`` of what it was told last (FINAL when it was, else
    MINED / REVERTED), and each other purpose of ``superseded`` (rows at the nonce) of its
    SUPERSEDED, once per purpose."""
    last = (
        Settlement.FINAL
        if winner.final_at is not None
        else Settlement.MINED
        if winner.status is TxStatus.MINED
        else Settlement.REVERTED
    )
    tell_reorged(conn, handlers, winner, undone=last, detail=detail, now=now)
    told = {_purpose_key(winner)}
    for tx in sorted(superseded, key=lambda r: -r.id):
        if tx.id == winner.id or tx.status not in (TxStatus.REPLACED, TxStatus.CANCELLED):
            continue
        if _purpose_key(tx) not in told:
            told.add(_purpose_key(tx))
            tell_reorged(conn, handlers, tx, undone=Settlement.SUPERSEDED, detail=detail, now=now)


def final_verdicts(
    candidates: Sequence[TxRecord],
    receipts: Mapping[str, Any],
    headers: Mapping[int, str | None],
    *,
    head: int,
    confirmations: int,
) -> tuple[list[tuple[TxRecord, Receipt]], list[TxRecord]]:
    """Judge settled, not yet final ``candidates`` from one fresh poll at ``head``:
    ``receipts`` (hash -> receipt answer) and ``headers`` (height -> canonical hash, None when
    unknown). Returns those now final (with their receipt) and the *suspects*: those the chain
    shows in another block than recorded (the reorg watch looks at them again). The rest, an
    answer missing or a block not deep enough yet, wait for a later poll."""
    final: list[tuple[TxRecord, Receipt]] = []
    suspects: list[TxRecord] = []
    for tx in candidates:
        answer = receipts.get(tx.tx_hash)
        if tx.mined_block is None:
            continue
        if not isinstance(answer, dict):
            # No verdict from an absence; but a header at its height with another hash makes
            # it a suspect, whose receipt the reorg watch then judges missing twice or not.
            seen = headers.get(tx.mined_block)
            if answer is None and seen is not None and seen != tx.mined_block_hash:
                suspects.append(tx)
            continue
        receipt = parse_receipt(answer)
        canonical = headers.get(receipt.block_number)
        if receipt.block_hash != tx.mined_block_hash or receipt.ok != (tx.status is TxStatus.MINED):
            suspects.append(tx)  # re-included elsewhere, perhaps with the other result
        elif canonical is not None and canonical != receipt.block_hash:
            suspects.append(tx)  # the node's receipt index lags its chain: look again
        elif canonical is not None and head - receipt.block_number >= confirmations:
            final.append((tx, receipt))
    return final, suspects


def finalize(
    conn: sqlite3.Connection,
    final: Sequence[tuple[TxRecord, Receipt]],
    handlers: Handlers,
    *,
    head: int,
    now: float,
) -> int:
    """Tell each of ``final`` (from :func:`final_verdicts`) FINAL with its receipt, in one
    database transaction with ``txs.final_at``. A row told already, or no longer settled in
    the judged block (a reorg seen meanwhile), is skipped: FINAL is told once per settlement.
    Returns how many were told."""
    told = 0
    with atomic(conn):
        for tx, receipt in final:
            depth = head - receipt.block_number
            detail = (
                f"tx {tx.tx_hash} in block {receipt.block_number} ({receipt.block_hash}), "
                f"{depth} deep at head {head}"
            )
            if ledger.mark_final(conn, tx, head=head, now=now, note=f"final: {detail}"):
                tell(conn, handlers, tx, Settlement.FINAL, detail=detail, now=now, receipt=receipt)
                told += 1
                log.debug("tx_final", tx_hash=tx.tx_hash, block=receipt.block_number, head=head)
    return told
