"""What a log poller itself stores, and the three write transactions its sinks write inside.

Tables (the core's, shared/migrations/core): ``cursors`` (one row per poller, by name: the
last block whose logs are all stored), ``blocks`` (hashes of accepted blocks: range ends,
bloom-window headers, blocks logs came from; pruned below the history window) and
``reorgs`` (one row per rollback). ``blocks`` and ``reorgs`` are keyed by the poller's name
too (core migration 15), like its cursor.

Guarantees:
- Every read and write here names its poller: pollers on different chains, or with different
  confirmations or history windows, never read, prune or roll back each other's block
  hashes, however their block numbers overlap.
- :func:`commit_range` stores a range's sink writes, the hashes of its blocks and the new
  cursor together, or nothing: a process killed at any instant resumes from a cursor whose
  logs are all stored. It refuses (TransitionConflict) when the stored cursor is not where
  the poller believes it is, so two pollers of one name on one database cannot interleave.
- :func:`commit_rescan` stores what a re-scan of accepted blocks found, and only while the
  cursor is still where the re-scan read it (a rollback in between makes its answer void).
- :func:`roll_back` undoes every sink's writes above the ancestor, deletes the stored hashes
  above it, moves the cursor back and records the reorg, in one transaction.
- The caller's writes (``apply`` / ``undo``) run first inside the transaction, so anything
  they raise leaves nothing of it.

:func:`write_range`, :func:`write_rescan` and :func:`write_rollback` are those transactions
with every registered sink inside (shared/chain/filters.py): the poller runs them on its
database thread. Each routes the logs to the sinks, lets each sink decode its share before
the transaction opens, and calls the sinks in registration order inside it.
:func:`write_decoded` is :func:`write_range` for logs routed and decoded beforehand
(filters.decode_routed): the poller decodes on another thread while the previous range
commits.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from shared.chain.filters import Decoded, Log, Registration, SinkStats, decode_routed, route
from shared.chain.scan import BlockHeader, LogRange
from shared.db import atomic
from shared.errors import TransitionConflict

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Anchor:
    """The last accepted block as stored: the cursor and its hash (None if not stored)."""

    number: int
    header: BlockHeader | None


def read_anchor(conn: sqlite3.Connection, name: str, start_block: int) -> Anchor:
    """Where poller ``name`` resumes. Before its first acceptance: ``start_block - 1``."""
    stored = stored_cursor(conn, name)
    number = stored if stored is not None else start_block - 1
    block = conn.execute(
        "SELECT number, hash, parent_hash FROM blocks WHERE poller = ? AND number = ?",
        (name, number),
    ).fetchone()
    header = BlockHeader(block[0], block[1], block[2]) if block is not None else None
    return Anchor(number=number, header=header)


def stored_cursor(conn: sqlite3.Connection, name: str) -> int | None:
    row = conn.execute("SELECT block_number FROM cursors WHERE name = ?", (name,)).fetchone()
    return int(row[0]) if row is not None else None


def stored_hashes(conn: sqlite3.Connection, name: str, first: int, last: int) -> dict[int, str]:
    """Poller ``name``'s stored block hashes of blocks ``first`` to ``last``."""
    return {
        int(row[0]): str(row[1])
        for row in conn.execute(
            "SELECT number, hash FROM blocks WHERE poller = ? AND number BETWEEN ? AND ?",
            (name, first, last),
        )
    }


def move_cursor_forward(conn: sqlite3.Connection, name: str, to_block: int, *, now: float) -> None:
    """Set the cursor to ``to_block`` (a start block raised above the stored cursor)."""
    with atomic(conn):
        _write_cursor(conn, name, to_block, now)


def commit_range(
    conn: sqlite3.Connection,
    *,
    name: str,
    expected_cursor: int,
    new_cursor: int,
    range_end: BlockHeader,
    headers: Sequence[BlockHeader],
    log_blocks: Mapping[int, str],
    history_blocks: int,
    now: float,
    apply: Callable[[], T],
) -> T:
    """One accepted range: ``apply()`` (the sinks' writes), the block hashes (the range's
    last header, ``headers`` of the bloom window, every log's block) and the new cursor,
    atomically; returns what ``apply`` returned."""
    with atomic(conn):
        stored = stored_cursor(conn, name)
        if stored is not None and stored != expected_cursor:
            raise TransitionConflict(
                f"{name} cursor is at {stored}, expected {expected_cursor}: is another "
                f"{name} writing to this database?"
            )
        result = apply()
        _store_blocks(conn, name, log_blocks, [*headers, range_end], now)
        _write_cursor(conn, name, new_cursor, now)
        oldest_kept = new_cursor - history_blocks
        conn.execute("DELETE FROM blocks WHERE poller = ? AND number < ?", (name, oldest_kept))
    return result


def commit_rescan(
    conn: sqlite3.Connection,
    *,
    name: str,
    cursor: int,
    log_blocks: Mapping[int, str],
    now: float,
    apply: Callable[[], T],
) -> T:
    """What a backup re-scan of accepted blocks found; the cursor does not move (and must
    still be ``cursor``)."""
    with atomic(conn):
        stored = stored_cursor(conn, name)
        if stored != cursor:
            raise TransitionConflict(f"{name} cursor moved to {stored} during a re-scan")
        result = apply()
        _store_blocks(conn, name, log_blocks, [], now)
    return result


def roll_back(
    conn: sqlite3.Connection,
    *,
    name: str,
    ancestor: int,
    depth: int,
    deeper_than_confirmations: bool,
    note: str,
    now: float,
    undo: Callable[[], T],
) -> T:
    """Undo everything stored above block ``ancestor``, in one transaction: ``undo()`` (the
    sinks' rollbacks), the block hashes above it, the cursor, and a row in ``reorgs``."""
    with atomic(conn):
        result = undo()
        conn.execute("DELETE FROM blocks WHERE poller = ? AND number > ?", (name, ancestor))
        _write_cursor(conn, name, ancestor, now)
        conn.execute(
            "INSERT INTO reorgs (poller, detected_at, at_block, depth, deeper_than_confirmations,"
            " note) VALUES (?, ?, ?, ?, ?, ?)",
            (name, now, ancestor + 1, depth, int(deeper_than_confirmations), note),
        )
    return result


def _write_cursor(conn: sqlite3.Connection, name: str, number: int, now: float) -> None:
    conn.execute(
        "INSERT INTO cursors (name, block_number, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET block_number = excluded.block_number, "
        "updated_at = excluded.updated_at",
        (name, number, now),
    )


def _store_blocks(
    conn: sqlite3.Connection,
    name: str,
    log_blocks: Mapping[int, str],
    headers: Sequence[BlockHeader],
    at: float,
) -> None:
    rows: list[tuple[str, int, str, str | None, float]] = [
        (name, number, block_hash, None, at) for number, block_hash in log_blocks.items()
    ]
    rows += [(name, h.number, h.hash, h.parent_hash, at) for h in headers]
    conn.executemany(
        "INSERT INTO blocks (poller, number, hash, parent_hash, seen_at) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (poller, number) DO UPDATE SET hash = excluded.hash, "
        "parent_hash = COALESCE(excluded.parent_hash, "
        "  CASE WHEN blocks.hash = excluded.hash THEN blocks.parent_hash END), "
        "seen_at = excluded.seen_at",
        rows,
    )


# --- the transactions with the sinks inside ---------------------------------------------------


def write_range(
    conn: sqlite3.Connection,
    registrations: Sequence[Registration],
    logs: Sequence[Log],
    *,
    name: str,
    expected_cursor: int,
    rng: LogRange,
    range_end: BlockHeader,
    headers: Sequence[BlockHeader],
    history_blocks: int,
    now: float,
) -> list[Any]:
    """One accepted range through every sink (:func:`commit_range`); each sink's stats."""
    return write_decoded(
        conn, registrations, decode_routed(registrations, logs, rng.first), name=name,
        expected_cursor=expected_cursor, rng=rng, range_end=range_end, headers=headers,
        history_blocks=history_blocks, now=now,
    )  # fmt: skip


def write_decoded(
    conn: sqlite3.Connection,
    registrations: Sequence[Registration],
    decoded: Decoded,
    *,
    name: str,
    expected_cursor: int,
    rng: LogRange,
    range_end: BlockHeader,
    headers: Sequence[BlockHeader],
    history_blocks: int,
    now: float,
) -> list[Any]:
    """:func:`write_range` of logs already routed and decoded (filters.decode_routed)."""
    return commit_range(
        conn,
        name=name,
        expected_cursor=expected_cursor,
        new_cursor=rng.last,
        range_end=range_end,
        headers=headers,
        log_blocks=decoded.blocks,
        history_blocks=history_blocks,
        now=now,
        apply=lambda: [
            r.sink.apply(conn, batch, now=now)
            for r, batch in zip(registrations, decoded.batches, strict=True)
        ],
    )


def write_rescan(
    conn: sqlite3.Connection,
    registrations: Sequence[Registration],
    logs: Sequence[Log],
    *,
    name: str,
    cursor: int,
    rng: LogRange,
    now: float,
) -> list[Any]:
    """A backup re-scan's logs through every sink (:func:`commit_rescan`)."""
    routed = route(registrations, logs, rng.first)
    batches = [r.sink.decode(own) for r, own in zip(registrations, routed.logs, strict=True)]
    return commit_rescan(
        conn,
        name=name,
        cursor=cursor,
        log_blocks=routed.blocks,
        now=now,
        apply=lambda: [
            r.sink.apply(conn, batch, now=now)
            for r, batch in zip(registrations, batches, strict=True)
        ],
    )


def write_rollback(
    conn: sqlite3.Connection,
    registrations: Sequence[Registration],
    *,
    name: str,
    ancestor: int,
    depth: int,
    deeper_than_confirmations: bool,
    note: str,
    now: float,
) -> list[SinkStats]:
    """Every sink rolled back to ``ancestor`` with the poller's rows (:func:`roll_back`)."""
    return roll_back(
        conn,
        name=name,
        ancestor=ancestor,
        depth=depth,
        deeper_than_confirmations=deeper_than_confirmations,
        note=note,
        now=now,
        undo=lambda: [r.sink.rollback(conn, ancestor, now=now) for r in registrations],
    )
