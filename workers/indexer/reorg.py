"""Undoing what a reorg orphaned.

Guarantees:
- The common ancestor is the newest *stored* block (a range end or a block an accepted log
  came from) whose hash the chain still has. Because a block hash commits to every block
  below it, everything at or below the ancestor is unchanged, and everything the indexer
  stored above it is suspect: all of it is undone, and the range is read again.
- The rollback is one transaction: fulfilments from orphaned blocks are deleted and their
  request rows return to the status they had before (``fulfillments.prior_status``, through
  ``store.transition``); requests from orphaned blocks that are not FULFILLED are taken back
  (``store.remove_request``: the audit row 'REMOVED' stays); the orphaned block hashes go; the
  cursor moves back to the ancestor; and a row in ``reorgs`` records it. A crash at any point
  leaves either none or all of it.
- An answer prepared for orphaned content can never be sent for the new content: the row is
  removed (or, if the id comes back with other content, replaced with generation + 1), so the
  fulfiller's generation/content-hash fence no longer matches. A request id that is created
  again after a removal continues the generation count of the removed row.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from shared import store
from shared.db import atomic
from shared.store import Status
from workers.indexer.scanner import HEADER_BATCH, BlockHeader, ChainScanner

log = structlog.get_logger(__name__)

ACTOR = "indexer"
CURSOR_NAME = "indexer"

# The removal audit row's note (the removed generation is a column of that row).
_REMOVED_NOTE = "orphaned by a reorg (blocks from {first}); generation={generation}"


@dataclass(frozen=True, slots=True)
class AncestorSearch:
    """Where the chain and the stored hashes part."""

    #: newest stored block the chain still has; None when no stored block matched
    ancestor: BlockHeader | None
    #: stored blocks above the ancestor that the chain has with another hash
    mismatched: int
    #: stored blocks above the ancestor that the node does not have (behind, or shorter chain)
    unknown: int
    #: the lowest stored block looked at (for a search that found no ancestor)
    lowest_checked: int | None
    #: the lowest stored block above the ancestor (the chain has it with another hash, or
    #: not at all): certainly not on the chain as stored, so a rollback undoes at least
    #: ``cursor - lowest_replaced + 1`` blocks, whatever the stored hashes below it say
    lowest_replaced: int | None = None


@dataclass(frozen=True, slots=True)
class RollbackStats:
    ancestor: int
    old_cursor: int
    requests_removed: int
    fulfillments_undone: int
    kept_fulfilled: int


def stored_blocks(conn: sqlite3.Connection, up_to: int) -> list[BlockHeader]:
    """Stored block hashes at or below ``up_to``, newest first."""
    return [
        BlockHeader(number=row[0], hash=row[1], parent_hash=row[2])
        for row in conn.execute(
            "SELECT number, hash, parent_hash FROM blocks WHERE number <= ? ORDER BY number DESC",
            (up_to,),
        )
    ]


async def find_common_ancestor(
    scanner: ChainScanner, candidates: Sequence[BlockHeader]
) -> AncestorSearch:
    """Walk ``candidates`` (stored blocks, newest first) until the chain agrees with one."""
    mismatched = unknown = 0
    lowest: int | None = None
    replaced: int | None = None
    for start in range(0, len(candidates), HEADER_BATCH):
        chunk = candidates[start : start + HEADER_BATCH]
        chain = await scanner.headers([c.number for c in chunk])
        for stored in chunk:
            lowest = stored.number
            header = chain[stored.number]
            if header is None:
                unknown += 1
            elif header.hash == stored.hash:
                return AncestorSearch(stored, mismatched, unknown, lowest, replaced)
            else:
                mismatched += 1
            replaced = stored.number
    return AncestorSearch(None, mismatched, unknown, lowest, replaced)


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
    """Undo everything stored above block ``ancestor``, in one transaction."""
    at = time.time() if now is None else now
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
                    now=at,
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
                now=at,
            )  # fmt: skip
            removed += 1
        conn.execute("DELETE FROM blocks WHERE number > ?", (ancestor,))
        conn.execute(
            "INSERT INTO cursors (name, block_number, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET block_number = excluded.block_number, "
            "updated_at = excluded.updated_at",
            (CURSOR_NAME, ancestor, at),
        )
        conn.execute(
            "INSERT INTO reorgs (detected_at, at_block, depth, deeper_than_confirmations, note) "
            "VALUES (?, ?, ?, ?, ?)",
            (at, first, depth, int(deeper_than_confirmations), note),
        )
    return RollbackStats(
        ancestor=ancestor,
        old_cursor=old_cursor,
        requests_removed=removed,
        fulfillments_undone=undone,
        kept_fulfilled=kept,
    )
