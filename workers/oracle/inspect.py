"""What the oracle's inspection commands and its API routes show: one place that reads it."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from shared.db import stored_identity
from shared.halt import halted
from workers.oracle import request_id as rid
from workers.oracle import store


def row_dict(row: sqlite3.Row) -> dict[str, Any]:
    return {key: row[key] for key in row.keys()}  # noqa: SIM118 -- sqlite3.Row is not a Mapping


def collect_status(conn: sqlite3.Connection, head: int | None, now: float) -> dict[str, Any]:
    """Everything ``hodlai status`` shows, as a plain dict (also used by metrics)."""
    cursor_row = conn.execute("SELECT block_number FROM cursors WHERE name = 'indexer'").fetchone()
    cursor = int(cursor_row[0]) if cursor_row else None
    # The first PENDING row in chain order, through the status index: O(log n).
    oldest_row = conn.execute(
        "SELECT created_at FROM requests WHERE status = 'PENDING' "
        "ORDER BY block_number, log_index LIMIT 1"
    ).fetchone()
    oldest = oldest_row[0] if oldest_row else None
    deep = conn.execute(
        "SELECT COUNT(*), MAX(detected_at) FROM reorgs WHERE poller = 'indexer' "
        "AND deeper_than_confirmations = 1"
    ).fetchone()
    reorgs = conn.execute("SELECT COUNT(*) FROM reorgs WHERE poller = 'indexer'").fetchone()[0]
    identity = stored_identity(conn)
    return {
        "indexer_halted": halted(conn, "indexer"),
        "counts": store.status_counts(conn),
        "chain_id": identity[0] if identity else None,
        "provider": identity[1] if identity else None,
        "indexer_cursor": cursor,
        "chain_head": head,
        "lag_blocks": (head - cursor) if head is not None and cursor is not None else None,
        "oldest_pending_age_s": round(now - oldest, 1) if oldest is not None else None,
        "reorgs": reorgs,
        "deep_reorgs": deep[0],
        "last_deep_reorg_at": deep[1],
    }


def request_detail(conn: sqlite3.Connection, request_id: int) -> dict[str, Any] | None:
    """One request with its history and its fulfilment transactions (``hodlai show``)."""
    row = store.get_request(conn, request_id)
    if row is None:
        return None
    detail = row_dict(row)
    detail["action_set"] = json.loads(detail["action_set"])
    trace = detail.pop("reasoning")
    detail["reasoning"] = json.loads(trace) if trace else None
    detail["history"] = [row_dict(t) for t in store.history(conn, request_id)]
    detail["txs"] = [
        row_dict(t)
        for t in conn.execute(
            "SELECT id, nonce, tx_hash, status, error, created_at, broadcast_at, mined_block "
            "FROM txs WHERE purpose = 'fulfil' AND subject = ? ORDER BY id",
            (rid.encode(request_id),),
        )
    ]
    return detail
