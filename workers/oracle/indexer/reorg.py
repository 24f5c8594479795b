"""Undoing what a reorg orphaned of the oracle's rows: the oracle sink's rollback.

The poller finds the common ancestor and runs every sink's rollback in the transaction that
also moves the cursor back, deletes the stored hashes above it and records the reorg
(shared/chain/history.py, shared/chain/reorg.py). The oracle's part (:func:`undo_above`):

Guarantees:
- Everything above the ancestor is undone in that one transaction: fulfilments from
  orphaned blocks are deleted and their request rows return to the status they had before
  (``fulfillments.prior_status``, through ``store.transition``); requests from orphaned
  blocks that are not FULFILLED are taken back (``store.remove_request``: the audit row
  'REMOVED' stays). A crash at any point leaves either none or all of it.
- An answer prepared for orphaned content can never be sent for the new content: the row is
  removed (or, if the id comes back with other content, replaced with generation + 1), so the
  fulfiller's generation/content-hash fence no longer matches. A request id that is created
  again after a removal continues the generation count of the removed row.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

import structlog

from shared.chain import history
from shared.db import atomic
from workers.oracle import store
from workers.oracle.store import Status

log = structlog.get_logger(__name__)

ACTOR = "indexer"
CURSOR_NAME = "indexer"

# The removal audit row's note (the removed generation is a column of that row).
_REMOVED_NOTE = "orphaned by a reorg (blocks from {first}); generation={generation}"


@dataclass(frozen=True, slots=True)
class UndoStats:
    """What :func:`undo_above` took back (a SinkStats of shared/chain/filters.py)."""

    requests_removed: int
    fulfillments_undone: int
    #: orphaned requests kept because they are FULFILLED by a fulfilment not orphaned
    kept_fulfilled: int

    @property
    def changed(self) -> int:
        return self.requests_removed + self.fulfillments_undone

    def fields(self) -> dict[str, int]:
        """The counters of the ``reorg_rolled_back`` / ``rescan_rolled_back`` lines."""
        return {
            "requests_removed": self.requests_removed,
            "fulfilments_undone": self.fulfillments_undone,
        }


@dataclass(frozen=True, slots=True)
class RollbackStats:
    """What :func:`rollback_to` did."""

    ancestor: int
    old_cursor: int
    requests_removed: int
    fulfillments_undone: int
    kept_fulfilled: int


def removal_note(first_orphaned: int, generation: int) -> str:
    return _REMOVED_NOTE.format(first=first_orphaned, generation=generation)


def generation_after_removal(conn: sqlite3.Connection, request_id: str) -> int:
    """The generation a re-created request id starts with: one more than the generation its
    last removal took away (1 for an id never removed); the audit row records it."""
    return store.generation_after_removal(conn, request_id)


def rollback_to(
    conn: sqlite3.Connection,
    ancestor: int,
    *,
    old_cursor: int,
    depth: int,
    deeper_than_confirmations: bool,
    note: str,
    now: float | None = None,
) -> RollbackStats:
    """Undo everything the oracle stored above block ``ancestor`` with the indexer's cursor,
    block hashes and reorg record, in one transaction: the oracle alone as the poller rolls
    back (shared.chain.history.roll_back), for tests and tools without a poller."""
    at = time.time() if now is None else now
    undone = history.roll_back(
        conn, name=CURSOR_NAME, ancestor=ancestor, depth=depth,
        deeper_than_confirmations=deeper_than_confirmations, note=note, now=at,
        undo=lambda: undo_above(conn, ancestor, now=at),
    )  # fmt: skip
    return RollbackStats(
        ancestor=ancestor,
        old_cursor=old_cursor,
        requests_removed=undone.requests_removed,
        fulfillments_undone=undone.fulfillments_undone,
        kept_fulfilled=undone.kept_fulfilled,
    )


def undo_above(conn: sqlite3.Connection, ancestor: int, *, now: float) -> UndoStats:
    """Take back the oracle's rows from blocks above ``ancestor`` (see the module
    guarantees), inside the caller's transaction."""
    first = ancestor + 1
    undone = removed = kept = 0
    with atomic(conn):
        for f in conn.execute(
            "SELECT request_id, prior_status, block_number FROM fulfillments "
            "WHERE block_number > ? ORDER BY block_number DESC",
            (ancestor,),
        ).fetchall():
            row = store.get_request(conn, f["request_id"])
            prior = f["prior_status"]
            restore = prior is not None and prior != Status.FULFILLED
            if restore and row is not None and row["status"] == Status.FULFILLED:
                store.transition(
                    conn, f["request_id"], Status.FULFILLED, Status(prior), actor=ACTOR,
                    note=f"fulfilment in orphaned block {f['block_number']} undone by reorg",
                    set_columns={
                        "fulfilled_block": None, "fulfilled_tx_hash": None,
                        "fulfilled_action": None, "fulfilled_cid": None, "answer_outside_set": 0,
                    },
                    now=now,
                )  # fmt: skip
            conn.execute("DELETE FROM fulfillments WHERE request_id = ?", (f["request_id"],))
            undone += 1
        for r in conn.execute(
            "SELECT request_id, status, generation FROM requests WHERE block_number > ?",
            (ancestor,),
        ).fetchall():
            if r["status"] == Status.FULFILLED:
                # Its fulfilment is not orphaned, so the chain still says it was answered;
                # keep it rather than answer it a second time.
                kept += 1
                log.error("orphaned_request_kept_fulfilled", request_id=r["request_id"])
                continue
            store.remove_request(
                conn, r["request_id"], actor=ACTOR, note=removal_note(first, r["generation"]),
                now=now,
            )  # fmt: skip
            removed += 1
    return UndoStats(requests_removed=removed, fulfillments_undone=undone, kept_fulfilled=kept)
