"""What a fulfilment transaction is for, and what its fate means for its request.

The transaction manager (shared/tx) asks this handler two things:

- :meth:`FulfilmentPurpose.invalid`: does an unmined fulfilment still answer the request as it
  now stands? Not if the request was removed by a reorg, if its content was replaced (another
  generation or content hash), or if the row is no longer PROCESSED (fulfilled by another
  transaction, failed by an operator). Such a transaction is cancelled on its nonce.
- :meth:`FulfilmentPurpose.anchors`: a fulfilment answers the request's content as emitted in
  one log, in one block. The block (number and hash, as the indexer stored them) anchors that
  version: a transaction a reorg took out is sent again only while the chain still holds
  that block at least HODLAI_CONFIRMATIONS deep (the manager checks), else it is cancelled.
- :meth:`FulfilmentPurpose.settled`: a reverted transaction sends its row back to ANSWERED
  for one re-simulation (which usually fails it with the decoded reason); a second revert of
  the same generation makes it FAILED. A transaction a node refused as signed makes it
  FAILED once the cancel that replaced it mined (SUPERSEDED): never on the refusal alone.
  A mined one changes nothing here: the indexer marks FULFILLED from the chain's event.
  The oracle acts on MINED / REVERTED at once, not on FINAL: its indexer confirms the
  fulfilled event at HODLAI_CONFIRMATIONS, and a fulfilment a reorg took out is held and
  sent again by the manager while its request is anchored. So FINAL and
  :meth:`FulfilmentPurpose.reorged` change nothing here either, and :meth:`invalid` reads
  only the database (it never touches the chain view: no RPC per poll).

:func:`return_orphans` closes the remaining gap: a PROCESSED row none of whose transactions
can still mine (all cancelled, dropped or replaced by a cancel) goes back to ANSWERED, so no
request is ever stranded in PROCESSED.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Final

import structlog

from shared.db import atomic
from shared.errors import TransitionConflict
from shared.tx.chainview import ChainView
from shared.tx.ledger import TxRecord, TxStatus
from shared.tx.receipts import Receipt
from shared.tx.replacements import REJECTED_REASON
from shared.tx.settlement import Settlement, SubjectAnchor
from workers.oracle import store
from workers.oracle.store import Status

log = structlog.get_logger(__name__)

FULFIL_PURPOSE: Final = "fulfil"
ACTOR: Final = "fulfiller"
# Reverted fulfilments of one generation before the request is FAILED: the first revert
# earns one re-simulation (state may have changed under a pipelined transaction).
MAX_REVERTS: Final = 2


class FulfilmentPurpose:
    """The 'fulfil' purpose handler (see the module docstring)."""

    def invalid(
        self,
        conn: sqlite3.Connection,
        txs: Sequence[TxRecord],
        *,
        now: float | None = None,
        chain: ChainView | None = None,
    ) -> dict[int, str]:
        out: dict[int, str] = {}
        for tx in txs:
            if tx.purpose.subject is None:
                out[tx.id] = "fulfilment without a request id"
                continue
            row = conn.execute(
                "SELECT status, generation, content_hash, fulfilled_tx_hash FROM requests"
                " WHERE request_id = ?",
                (tx.purpose.subject,),
            ).fetchone()
            if row is None:
                out[tx.id] = "the request was taken back by a reorg"
            elif (
                row["generation"] != tx.purpose.version
                or row["content_hash"] != tx.purpose.fingerprint
            ):
                out[tx.id] = (
                    f"the request's content was replaced by a reorg (generation "
                    f"{tx.purpose.version} -> {row['generation']})"
                )
            elif row["status"] != Status.PROCESSED and not _fulfilled_by_nonce(conn, tx, row):
                out[tx.id] = f"the request is {row['status']} now"
        return out

    def anchors(
        self, conn: sqlite3.Connection, txs: Sequence[TxRecord]
    ) -> dict[int, SubjectAnchor | None]:
        out: dict[int, SubjectAnchor | None] = {}
        for tx in txs:
            row = conn.execute(
                "SELECT block_number, block_hash FROM requests WHERE request_id = ?",
                (tx.purpose.subject,),
            ).fetchone()
            if row is not None:  # a removed row makes invalid() cancel it first
                out[tx.id] = SubjectAnchor(int(row["block_number"]), str(row["block_hash"]))
        return out

    def settled(
        self,
        conn: sqlite3.Connection,
        tx: TxRecord,
        outcome: Settlement,
        *,
        detail: str,
        now: float,
        receipt: Receipt | None = None,
    ) -> None:
        request_id = tx.purpose.subject
        if request_id is None:
            return
        if outcome is Settlement.REVERTED:
            reverts = conn.execute(
                "SELECT COUNT(*) FROM txs WHERE subject = ? AND version = ? "
                "AND purpose = ? AND status = 'REVERTED'",
                (request_id, tx.purpose.version, FULFIL_PURPOSE),
            ).fetchone()[0]
            if reverts < MAX_REVERTS:
                self._move(
                    conn, tx, Status.ANSWERED, now=now,
                    note=f"reverted on chain ({detail}); re-simulating once",
                )  # fmt: skip
            else:
                self._move(
                    conn, tx, Status.FAILED, now=now, note="reverted on chain again",
                    fail_reason=f"fulfilment reverted on chain {reverts} times (last: {detail})",
                )  # fmt: skip
        elif outcome is Settlement.SUPERSEDED and _cancelled_as_rejected(tx):
            # Settled: the cancel that replaced a refused fulfilment mined, so it never will.
            self._move(
                conn, tx, Status.FAILED, now=now, note="node rejected the transaction",
                fail_reason=f"no node accepts the fulfilment transaction: {tx.error or detail}",
            )  # fmt: skip

    def reorged(
        self,
        conn: sqlite3.Connection,
        tx: TxRecord,
        *,
        undone: Settlement,
        detail: str,
        now: float,
    ) -> None:
        """Nothing to do: the request stays PROCESSED while the manager holds the fulfilment
        (and sends it again or cancels it); the indexer undoes a fulfilled event it took."""

    def _move(
        self,
        conn: sqlite3.Connection,
        tx: TxRecord,
        to: Status,
        *,
        now: float,
        note: str,
        fail_reason: str | None = None,
    ) -> None:
        columns: dict[str, object] = {"lease_owner": None, "lease_until": None}
        if fail_reason is not None:
            columns["fail_reason"] = fail_reason
        try:
            with atomic(conn):
                store.transition(
                    conn, tx.purpose.subject or "", Status.PROCESSED, to, actor=ACTOR,
                    note=note, generation=tx.purpose.version, set_columns=columns, now=now,
                )  # fmt: skip
        except TransitionConflict as exc:
            # The row moved on (reorg, fulfilled by the event): its new state wins.
            log.info("fulfilment_settle_skipped", request_id=tx.purpose.subject, why=str(exc))
            return
        log.info(
            "fulfilment_returned" if to is Status.ANSWERED else "fulfilment_failed",
            request_id=tx.purpose.subject,
            tx_hash=tx.tx_hash,
            note=note,
            fail_reason=fail_reason,
        )


def _cancelled_as_rejected(tx: TxRecord) -> bool:
    """``tx`` was cancelled on its nonce because a node refused it as signed."""
    return tx.status is TxStatus.CANCELLED and (tx.error or "").startswith(REJECTED_REASON)


def _fulfilled_by_nonce(conn: sqlite3.Connection, tx: TxRecord, row: sqlite3.Row) -> bool:
    """The row is FULFILLED by one of our transactions at ``tx``'s nonce: it mined before our
    poll saw it (an indexer with 0 confirmations can be that quick); nothing to cancel."""
    fulfilled_by = row["fulfilled_tx_hash"]
    if row["status"] != Status.FULFILLED or not fulfilled_by:
        return False
    return (
        conn.execute(
            "SELECT 1 FROM txs WHERE tx_hash = ? AND sender = ? AND nonce = ?",
            (str(fulfilled_by).lower(), tx.sender, tx.nonce),
        ).fetchone()
        is not None
    )


def return_orphans(conn: sqlite3.Connection, *, now: float) -> int:
    """PROCESSED rows of which no transaction can still mine go back to ANSWERED."""
    rows = conn.execute(
        "SELECT r.request_id, r.generation FROM requests r WHERE r.status = 'PROCESSED' "
        "AND NOT EXISTS (SELECT 1 FROM txs t WHERE t.subject = r.request_id "
        "AND t.version = r.generation AND t.purpose = ? "
        "AND t.status IN ('SIGNED', 'BROADCAST', 'MINED'))",
        (FULFIL_PURPOSE,),
    ).fetchall()
    moved = 0
    for row in rows:
        try:
            store.transition(
                conn, row["request_id"], Status.PROCESSED, Status.ANSWERED, actor=ACTOR,
                generation=row["generation"], now=now,
                note="no transaction of this answer can mine any more; re-simulating",
            )  # fmt: skip
        except TransitionConflict:
            continue
        moved += 1
        log.info("fulfilment_orphan_returned", request_id=row["request_id"])
    return moved
