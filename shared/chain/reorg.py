"""Where the stored chain and the node's chain part: the common ancestor.

Guarantees:
- The common ancestor is the newest *stored* block (a range end, a bloom-window header or a
  block an accepted log came from) whose hash the chain still has. Because a block hash
  commits to every block below it, everything at or below the ancestor is unchanged, and
  everything the poller stored above it is suspect: all of it is undone (every sink's
  rollback and the poller's own rows, in one transaction: shared/chain/history.py) and the
  range is read again.
- The search tells apart a node that lacks blocks (behind: ``unknown``) from one that has
  them with other hashes (``mismatched``), so a lagging backend never causes a rollback
  (:func:`plan_rollback` raises StaleNodeError for it instead).
- A rollback never goes below the poller's start block - 1, and :class:`RollbackPlan` names
  the lowest stored block certainly undone, for the guard's depth rule (guard.py).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from shared.chain.scan import HEADER_BATCH, BlockHeader, ChainScanner
from shared.errors import StaleNodeError

log = structlog.get_logger(__name__)


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


def stored_blocks(conn: sqlite3.Connection, name: str, up_to: int) -> list[BlockHeader]:
    """Poller ``name``'s stored block hashes at or below ``up_to``, newest first."""
    return [
        BlockHeader(number=row[0], hash=row[1], parent_hash=row[2])
        for row in conn.execute(
            "SELECT number, hash, parent_hash FROM blocks WHERE poller = ? AND number <= ? "
            "ORDER BY number DESC",
            (name, up_to),
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


@dataclass(frozen=True, slots=True)
class RollbackPlan:
    """Where a rollback would go, for the guard (guard.py) to allow or refuse."""

    ancestor: int
    #: the lowest stored block the chain no longer has as stored
    orphaned: int
    #: no stored block hash is on the chain: the ancestor is below the stored history
    beyond_history: bool
    #: stored blocks the chain has with another hash
    mismatched: int


async def plan_rollback(
    scanner: ChainScanner, candidates: Sequence[BlockHeader], *, cursor: int, start_block: int
) -> RollbackPlan:
    """The stored chain (``candidates``, newest first, up to ``cursor``) and the node
    disagree: find out how. Raises StaleNodeError when nothing needs undoing (the cursor's
    block is unchanged, or the node only lacks blocks: it is behind)."""
    search = await find_common_ancestor(scanner, candidates)
    if search.ancestor is not None and search.ancestor.number == cursor:
        # The suspicious answer came from another view than this one: a stale answer.
        log.info("reorg_suspicion_cleared", cursor=cursor)
        raise StaleNodeError(f"block {cursor} is unchanged; the earlier answer was stale")
    if search.mismatched == 0:
        raise StaleNodeError(
            f"node lacks {search.unknown} accepted block(s) up to {cursor}: behind"
        )
    if search.ancestor is not None:
        ancestor = search.ancestor.number
        beyond_history = False
    else:
        lowest = search.lowest_checked if search.lowest_checked is not None else cursor
        ancestor = lowest - 1
        beyond_history = True
        log.error("reorg_deeper_than_history", lowest_stored=lowest, cursor=cursor)
    return RollbackPlan(
        ancestor=max(ancestor, start_block - 1),
        orphaned=search.lowest_replaced if search.lowest_replaced is not None else cursor,
        beyond_history=beyond_history,
        mismatched=search.mismatched,
    )
