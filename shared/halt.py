"""The halt: a worker that stopped itself until an operator looks, recorded in the database.

A halt belongs to one worker, by name: a log poller's name (the oracle's indexer is the
poller ``indexer``; every poller halts under its own name, so a poller on one chain that
halts never stops a poller on another), or a sending key's ``sender:<address>``. Every
function here takes the worker's name; none assumes one.

The indexer halts instead of acting when what the chain shows cannot be an ordinary reorg: an
RPC of another chain, a rollback deeper than the stored history or than
``HODLAI_MAX_REORG_DEPTH``. Rolling back then would remove good requests and undo real
fulfilments on the word of a wrong endpoint (issue 10: 535 requests removed, 480 fulfilments
undone by a failover URL of another chain).

Guarantees:
- A halt is a row in ``halts`` (migration 0003), so it outlives the process: a restarted
  indexer is still halted, and other processes see it (:func:`halted`).
- While the indexer is halted, nothing may be signed on the strength of its data: a signer
  (the fulfiller) calls :func:`halted` before claiming or signing and waits while it is not
  None. It is one indexed read, cheap enough for every round.
- Only an operator clears it (:func:`resume`: ``hodlai poller-resume NAME``, the oracle's
  ``hodlai indexer-resume``, ``hodlai sender-resume``); the row stays as the record with who
  resumed and how.
"""

from __future__ import annotations

import enum
import sqlite3
import time
from dataclasses import dataclass

from shared.db import atomic

#: The name of the oracle's indexer poller (workers/oracle/indexer/reorg.py CURSOR_NAME), which its
#: fulfiller waits on; kept here for the oracle's callers until they move (issue 19 item 1).
INDEXER = "indexer"


class Resolution(enum.Enum):
    #: carry on as before: the cause was fixed (e.g. the RPC URL)
    RESUME = "resume"
    #: the deep reorg is real: the indexer may roll back once, however deep
    ALLOW_ROLLBACK = "allow_rollback"


@dataclass(frozen=True, slots=True)
class Halt:
    id: int
    worker: str
    reason: str
    at_block: int | None
    halted_at: float


def halted(conn: sqlite3.Connection, worker: str) -> str | None:
    """The reason ``worker`` is halted, or None when it is not."""
    row = conn.execute(
        "SELECT reason FROM halts WHERE worker = ? AND resumed_at IS NULL", (worker,)
    ).fetchone()
    return None if row is None else str(row[0])


def active(conn: sqlite3.Connection, worker: str) -> Halt | None:
    """The active halt of ``worker`` with its details, or None."""
    row = conn.execute(
        "SELECT id, worker, reason, at_block, halted_at FROM halts "
        "WHERE worker = ? AND resumed_at IS NULL",
        (worker,),
    ).fetchone()
    if row is None:
        return None
    return Halt(row[0], row[1], row[2], row[3], row[4])


def halt(
    conn: sqlite3.Connection,
    reason: str,
    *,
    worker: str,
    at_block: int | None = None,
    now: float | None = None,
) -> bool:
    """Record that ``worker`` halted. False (and nothing written) when it already is: the
    first reason is the one the operator needs."""
    at = time.time() if now is None else now
    with atomic(conn):
        if halted(conn, worker) is not None:
            return False
        conn.execute(
            "INSERT INTO halts (worker, reason, at_block, halted_at) VALUES (?, ?, ?, ?)",
            (worker, reason, at_block, at),
        )
    return True


def resume(
    conn: sqlite3.Connection,
    *,
    resolution: Resolution = Resolution.RESUME,
    by: str = "operator",
    worker: str,
    now: float | None = None,
) -> Halt | None:
    """Clear the active halt of ``worker``; returns it (None when it was not halted)."""
    at = time.time() if now is None else now
    with atomic(conn):
        current = active(conn, worker)
        if current is None:
            return None
        conn.execute(
            "UPDATE halts SET resumed_at = ?, resumed_by = ?, resolution = ? WHERE id = ?",
            (at, by, resolution.value, current.id),
        )
    return current


def last_resolution(conn: sqlite3.Connection, worker: str) -> tuple[int, Resolution]:
    """(id, resolution) of the newest resumed halt of ``worker``; (0, RESUME) when none."""
    row = conn.execute(
        "SELECT id, resolution FROM halts WHERE worker = ? AND resumed_at IS NOT NULL "
        "ORDER BY id DESC LIMIT 1",
        (worker,),
    ).fetchone()
    if row is None or row[1] is None:
        return 0, Resolution.RESUME
    return int(row[0]), Resolution(row[1])
