"""``hodlai pollers`` and ``hodlai poller-resume NAME``: every log poller of the node, and the
one operator step a halted poller waits for.

A poller halts (shared/chain/guard.py) instead of rolling back when what its chain shows
cannot be an ordinary reorg; its halt is recorded under its own name (``halts.worker``), so a
poller on one chain that halts never stops a poller on another. The oracle's indexer is the
poller ``indexer``: ``hodlai indexer-resume`` is the same step under its old name.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from typing import Any

from shared import halt
from shared.cli import inspection_settings, open_for_reading, open_for_writing


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``pollers`` and ``poller-resume`` to the ``hodlai`` command line."""
    listing = subparsers.add_parser(
        "pollers",
        help="the node's log pollers: cursor, stored history, reorgs, halt",
        description="One row per log poller that has accepted blocks in this database "
        "(table cursors): its cursor, the block hashes it keeps for reorg detection, the "
        "reorgs it rolled back, and whether it is halted for an operator.",
    )
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=_list)

    resume = subparsers.add_parser(
        "poller-resume",
        help="clear a log poller's halt (after fixing why it halted) so that it reads again",
        description="A poller halts instead of rolling back when its RPC serves another "
        "chain or shows a reorg deeper than its stored history or HODLAI_MAX_REORG_DEPTH "
        "(log indexer_halted; `hodlai pollers` shows the reason). Fix the cause (usually the "
        "RPC URL), then resume; the running poller notices within a poll.",
    )
    resume.add_argument("name", help="the poller's name (the oracle's indexer: indexer)")
    resume.add_argument(
        "--allow-rollback",
        action="store_true",
        help="the deep reorg is real (check a block explorer): let the next rollback through",
    )
    resume.add_argument("--json", action="store_true", help="machine-readable output")
    resume.set_defaults(func=_resume)


def pollers(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every poller with a cursor: its history, reorgs and active halt (None when it runs)."""
    rows = conn.execute(
        "SELECT c.name, c.block_number AS cursor, c.updated_at, "
        "(SELECT COUNT(*) FROM blocks b WHERE b.poller = c.name) AS stored_blocks, "
        "(SELECT COUNT(*) FROM reorgs r WHERE r.poller = c.name) AS reorgs, "
        "(SELECT COUNT(*) FROM reorgs r WHERE r.poller = c.name "
        " AND r.deeper_than_confirmations = 1) AS deep_reorgs "
        "FROM cursors c ORDER BY c.name"
    ).fetchall()
    return [{**dict(row), "halted": halt.halted(conn, row["name"])} for row in rows]


def _list(args: argparse.Namespace) -> int:
    conn = open_for_reading(inspection_settings())
    try:
        found = pollers(conn)
    finally:
        conn.close()
    if args.json:
        print(json.dumps(found))
        return 0
    if not found:
        print("no log poller has accepted a block in this database")
    for row in found:
        state = f"HALTED: {row['halted']}" if row["halted"] else "reading"
        print(
            f"{row['name']}  cursor {row['cursor']}  {row['stored_blocks']} stored block(s)  "
            f"{row['reorgs']} reorg(s) ({row['deep_reorgs']} deep)  {state}"
        )
    return 0


def resume_poller(name: str, *, allow_rollback: bool) -> tuple[halt.Halt | None, halt.Resolution]:
    """Clear poller ``name``'s halt in the configured database (an operator's step, named
    ``operator:cli``): the cleared halt (None when it was not halted) and the resolution."""
    resolution = halt.Resolution.ALLOW_ROLLBACK if allow_rollback else halt.Resolution.RESUME
    conn = open_for_writing(inspection_settings())
    try:
        cleared = halt.resume(conn, resolution=resolution, worker=name, by="operator:cli")
    finally:
        conn.close()
    return cleared, resolution


def _resume(args: argparse.Namespace) -> int:
    cleared, resolution = resume_poller(args.name, allow_rollback=args.allow_rollback)
    if args.json:
        print(
            json.dumps(
                {
                    "poller": args.name,
                    "was_halted": cleared is not None,
                    "reason": None if cleared is None else cleared.reason,
                    "resolution": None if cleared is None else resolution.value,
                }
            )
        )
    elif cleared is None:
        print(f"the poller {args.name} is not halted; nothing to do")
    else:
        print(f"{args.name} resumed ({resolution.value}); it had halted: {cleared.reason}")
    return 0
