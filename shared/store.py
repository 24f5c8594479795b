"""The request state machine (DESIGN.md section 3), on top of shared/db.py.

Guarantees:
- Every status change is :func:`transition`: one ``UPDATE ... WHERE request_id=? AND
  status=?`` inside ``BEGIN IMMEDIATE``, a checked row count, and an audit row in
  ``transitions`` in the same transaction. Nothing else in the code base writes ``status``.
- Work in flight is held by a lease. :func:`claim` hands out rows atomically (no row is
  ever held by two owners); completing work passes ``lease_owner=`` and is fenced: it only
  applies if the caller still holds the lease (and the row is still the generation it
  worked on), so a worker that lost its lease cannot overwrite a newer result.
- Allowed moves are listed in ``ALLOWED``; any other is a programming error.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import structlog

from shared import request_id as rid
from shared.db import atomic
from shared.errors import LeaseLostError, TransitionConflict

log = structlog.get_logger(__name__)


class Status(StrEnum):
    PENDING = "PENDING"
    ANSWERED = "ANSWERED"
    PROCESSED = "PROCESSED"
    FULFILLED = "FULFILLED"
    FAILED = "FAILED"


TERMINAL = frozenset({Status.FULFILLED, Status.FAILED})
NON_TERMINAL = frozenset(Status) - TERMINAL

S = Status
ALLOWED: frozenset[tuple[Status, Status]] = frozenset(
    {
        (S.PENDING, S.ANSWERED),  # inference chose an action
        (S.PENDING, S.FAILED),  # invalid request / attempt budget spent
        (S.ANSWERED, S.PROCESSED),  # fulfiller recorded a signed tx
        (S.ANSWERED, S.FAILED),  # simulation reverted
        (S.PROCESSED, S.ANSWERED),  # tx reverted: one re-simulation
        (S.PROCESSED, S.FAILED),  # tx reverted again / unrecoverable
        # the fulfilled event moves any non-terminal row (and a FAILED one: the chain wins)
        (S.PENDING, S.FULFILLED),
        (S.ANSWERED, S.FULFILLED),
        (S.PROCESSED, S.FULFILLED),
        (S.FAILED, S.FULFILLED),
        # reorgs: replaced content starts again; an orphaned fulfilment returns the row
        (S.ANSWERED, S.PENDING),
        (S.PROCESSED, S.PENDING),
        (S.FULFILLED, S.PENDING),
        (S.FULFILLED, S.ANSWERED),
        (S.FULFILLED, S.PROCESSED),
        (S.FULFILLED, S.FAILED),
        (S.FAILED, S.PENDING),  # operator retry, or replaced content
        (S.PENDING, S.PENDING),  # replaced content while pending: audit the new generation
    }
)

# Columns a transition may set besides status. Anything else is refused (no SQL built from
# caller-chosen names).
SETTABLE = frozenset(
    {
        "generation", "requester", "model", "system_prompt", "state_string", "action_set",
        "content_hash", "block_number", "block_hash", "tx_hash", "log_index",
        "attempts", "answer_action", "answer_cid", "reasoning", "answered_at",
        "fulfilled_block", "fulfilled_tx_hash", "fulfilled_action", "fulfilled_cid",
        "fail_reason", "lease_owner", "lease_until",
    }
)  # fmt: skip


@dataclass(frozen=True)
class NewRequest:
    """A HoldAI_ReasoningRequested event, decoded."""

    request_id: int
    requester: str
    model: str
    system_prompt: str
    state_string: str
    action_set: tuple[str, ...]
    content_hash: str
    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int


def transition(
    conn: sqlite3.Connection,
    request_id: int | str,
    from_status: Status,
    to_status: Status,
    *,
    actor: str,
    note: str | None = None,
    lease_owner: str | None = None,
    generation: int | None = None,
    set_columns: Mapping[str, object] | None = None,
    now: float | None = None,
) -> None:
    """Move one request from ``from_status`` to ``to_status`` and audit it.

    ``lease_owner`` fences: the move applies only while that owner holds the row's lease,
    and the lease is released by the move. ``generation`` fences against content replaced by
    a reorg. Raises LeaseLostError / TransitionConflict when the row is not as expected.
    """
    if (from_status, to_status) not in ALLOWED:
        raise ValueError(f"transition {from_status} -> {to_status} is not in the state machine")
    extra = dict(set_columns or {})
    unknown = set(extra) - SETTABLE
    if unknown:
        raise ValueError(f"transition may not set column(s) {sorted(unknown)}")
    at = time.time() if now is None else now
    key = _key(request_id)
    if lease_owner is not None:
        extra.setdefault("lease_owner", None)
        extra.setdefault("lease_until", None)
    assignments = ", ".join(f"{column} = ?" for column in extra)
    sql = f"UPDATE requests SET status = ?, updated_at = ?{', ' if extra else ''}{assignments} "
    sql += "WHERE request_id = ? AND status = ?"
    params: list[object] = [to_status.value, at, *extra.values(), key, from_status.value]
    if lease_owner is not None:
        sql += " AND lease_owner = ?"
        params.append(lease_owner)
    if generation is not None:
        sql += " AND generation = ?"
        params.append(generation)
    with atomic(conn):
        if conn.execute(sql, params).rowcount != 1:
            raise _conflict(conn, key, from_status, lease_owner, generation)
        _audit(conn, key, from_status.value, to_status.value, actor, note, at)
    log.debug("request_transitioned", request_id=key, frm=from_status, to=to_status, actor=actor)


def _conflict(
    conn: sqlite3.Connection,
    key: str,
    expected: Status,
    lease_owner: str | None,
    generation: int | None,
) -> TransitionConflict:
    row = conn.execute(
        "SELECT status, lease_owner, generation FROM requests WHERE request_id = ?", (key,)
    ).fetchone()
    if row is None:
        return TransitionConflict(f"request {key} does not exist")
    if row["status"] != expected:
        return TransitionConflict(f"request {key} is {row['status']}, not {expected}")
    if generation is not None and row["generation"] != generation:
        return LeaseLostError(
            f"request {key} content changed (generation {row['generation']}, not {generation})"
        )
    return LeaseLostError(
        f"request {key} lease is held by {row['lease_owner']!r}, not {lease_owner!r}"
    )


def _audit(
    conn: sqlite3.Connection,
    key: str,
    from_status: str | None,
    to_status: str,
    actor: str,
    note: str | None,
    at: float,
) -> None:
    conn.execute(
        "INSERT INTO transitions (request_id, from_status, to_status, actor, at, note) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (key, from_status, to_status, actor, at, note),
    )


def _key(request_id: int | str) -> str:
    value = request_id if isinstance(request_id, int) else rid.decode(request_id)
    return rid.encode(value)


_INSERT_REQUEST = (
    "INSERT INTO requests (request_id, shard_key, status, generation, requester, model, "
    "system_prompt, state_string, action_set, content_hash, block_number, block_hash, "
    "tx_hash, log_index, created_at, updated_at) "
    "VALUES (?, ?, 'PENDING', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_CREATION_AUDIT = (
    "INSERT INTO transitions (request_id, from_status, to_status, actor, at, note) "
    "VALUES (?, NULL, 'PENDING', ?, ?, ?)"
)

# One encoder for every action set: json.dumps with a non-default option builds a new
# encoder per call, a measurable share of a bulk insert.
encode_action_set = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode


def insert_requests(
    conn: sqlite3.Connection,
    requests: Sequence[tuple[NewRequest, int]],
    *,
    actor: str,
    now: float | None = None,
) -> None:
    """Create PENDING rows (request, generation) that do not exist yet, with their audit
    rows, in one statement each (the indexer's bulk path). An existing id is an
    IntegrityError: callers look up existing rows first."""
    at = time.time() if now is None else now
    with atomic(conn):
        conn.executemany(
            _INSERT_REQUEST,
            [
                (
                    rid.encode(r.request_id), rid.shard_key(r.request_id), generation,
                    r.requester, r.model, r.system_prompt, r.state_string,
                    encode_action_set(list(r.action_set)), r.content_hash,
                    r.block_number, r.block_hash, r.tx_hash, r.log_index, at, at,
                )
                for r, generation in requests
            ],
        )  # fmt: skip
        conn.executemany(
            _INSERT_CREATION_AUDIT,
            [
                (rid.encode(r.request_id), actor, at, _creation_note(r.block_number, generation))
                for r, generation in requests
            ],
        )


def _creation_note(block_number: int, generation: int) -> str:
    note = f"block {block_number}"
    return note if generation == 1 else f"{note}; generation {generation} after a reorg"


def insert_request(
    conn: sqlite3.Connection, request: NewRequest, *, actor: str, now: float | None = None
) -> bool:
    """Create a PENDING row with its audit row. Returns False (and changes nothing) when the
    id already exists: callers decide about existing rows (see the indexer's ingest)."""
    with atomic(conn):
        if get_request(conn, request.request_id) is not None:
            return False
        insert_requests(conn, [(request, 1)], actor=actor, now=now)
    return True


def remove_request(
    conn: sqlite3.Connection,
    request_id: int | str,
    *,
    actor: str,
    note: str,
    now: float | None = None,
) -> str | None:
    """Delete a request a reorg took back; the audit row (to 'REMOVED') stays. Returns the
    status it had, or None if there was no such row."""  # fmt: skip
    at = time.time() if now is None else now
    key = _key(request_id)
    with atomic(conn):
        row = conn.execute("SELECT status FROM requests WHERE request_id = ?", (key,)).fetchone()
        if row is None:
            return None
        conn.execute("DELETE FROM requests WHERE request_id = ?", (key,))
        _audit(conn, key, row["status"], "REMOVED", actor, note, at)
    return str(row["status"])


@dataclass(frozen=True)
class Claimed:
    """A row handed to a worker under a lease."""

    request_id: int
    generation: int
    requester: str
    model: str
    system_prompt: str
    state_string: str
    action_set: tuple[str, ...]
    content_hash: str
    attempts: int
    answer_action: str | None
    answer_cid: str | None
    lease_owner: str
    lease_until: float
    block_number: int = 0


def claim(
    conn: sqlite3.Connection,
    *,
    owner: str,
    shard: int = 0,
    worker_count: int = 1,
    limit: int = 10,
    lease_seconds: float = 60.0,
    status: Status = Status.PENDING,
    now: float | None = None,
) -> list[Claimed]:
    """Lease up to ``limit`` rows of ``status`` in this shard, oldest on chain first.

    Rows whose lease has expired count as free: that is how a crashed worker's work is taken
    again. One statement inside BEGIN IMMEDIATE, so two claimers never get the same row.
    """
    rid.shard_of(0, worker_count)  # validates worker_count against the shard modulus
    if not 0 <= shard < worker_count:
        raise ValueError(f"shard {shard} is not in 0..{worker_count - 1}")
    at = time.time() if now is None else now
    with atomic(conn):
        # Expired leases first: a crashed worker's rows must not wait behind a backlog.
        ids = [
            row[0]
            for row in conn.execute(
                "SELECT request_id FROM requests WHERE status = ? AND lease_until < ?"
                " AND shard_key % ? = ? ORDER BY lease_until LIMIT ?",
                (status.value, at, worker_count, shard, limit),
            )
        ]
        if len(ids) < limit:
            ids += [
                row[0]
                for row in conn.execute(
                    "SELECT request_id FROM requests WHERE status = ? AND lease_owner IS NULL"
                    " AND shard_key % ? = ? ORDER BY block_number, log_index LIMIT ?",
                    (status.value, worker_count, shard, limit - len(ids)),
                )
            ]
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = conn.execute(
            f"UPDATE requests SET lease_owner = ?, lease_until = ? WHERE request_id IN ({marks}) "
            "RETURNING request_id, generation, requester, model, system_prompt, state_string,"
            " action_set, content_hash, attempts, answer_action, answer_cid, block_number,"
            " log_index",
            (owner, at + lease_seconds, *ids),
        ).fetchall()
    rows.sort(key=lambda r: (r["block_number"], r["log_index"]))
    return [
        Claimed(
            request_id=rid.decode(r["request_id"]), generation=r["generation"],
            requester=r["requester"], model=r["model"], system_prompt=r["system_prompt"],
            state_string=r["state_string"], action_set=tuple(json.loads(r["action_set"])),
            content_hash=r["content_hash"], attempts=r["attempts"],
            answer_action=r["answer_action"], answer_cid=r["answer_cid"],
            lease_owner=owner, lease_until=at + lease_seconds, block_number=r["block_number"],
        )
        for r in rows
    ]  # fmt: skip


def extend_lease(
    conn: sqlite3.Connection,
    request_ids: Sequence[int],
    *,
    owner: str,
    lease_seconds: float,
    now: float | None = None,
) -> list[int]:
    """Push out the leases this owner still holds; returns the ids it no longer holds."""
    at = time.time() if now is None else now
    lost: list[int] = []
    with atomic(conn):
        for request_id in request_ids:
            cursor = conn.execute(
                "UPDATE requests SET lease_until = ? WHERE request_id = ? AND lease_owner = ?",
                (at + lease_seconds, rid.encode(request_id), owner),
            )
            if cursor.rowcount != 1:
                lost.append(request_id)
    return lost


def release(conn: sqlite3.Connection, request_ids: Sequence[int], *, owner: str) -> int:
    """Give back leases (clean shutdown) so another worker can take the rows at once."""
    with atomic(conn):
        return sum(
            conn.execute(
                "UPDATE requests SET lease_owner = NULL, lease_until = NULL "
                "WHERE request_id = ? AND lease_owner = ?",
                (rid.encode(request_id), owner),
            ).rowcount
            for request_id in request_ids
        )


def record_attempts(
    conn: sqlite3.Connection, request_id: int, *, owner: str, attempts: int
) -> None:
    """Persist how many LLM attempts the current generation has used (fenced by the lease)."""
    with atomic(conn):
        cursor = conn.execute(
            "UPDATE requests SET attempts = ? WHERE request_id = ? AND lease_owner = ?",
            (attempts, rid.encode(request_id), owner),
        )
        if cursor.rowcount != 1:
            raise LeaseLostError(f"request {request_id} lease is no longer held by {owner!r}")


def status_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Rows per status, from the trigger-maintained request_counts table (O(1))."""
    counts = {status.value: 0 for status in Status}
    for row in conn.execute("SELECT status, n FROM request_counts"):
        counts[row[0]] = row[1]
    return counts


def get_request(conn: sqlite3.Connection, request_id: int | str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM requests WHERE request_id = ?", (_key(request_id),)
    ).fetchone()
    return row


def history(conn: sqlite3.Connection, request_id: int | str) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT * FROM transitions WHERE request_id = ? ORDER BY id", (_key(request_id),)
    ).fetchall()


def list_requests(
    conn: sqlite3.Connection, *, status: Status | None = None, limit: int = 50
) -> list[sqlite3.Row]:
    """Up to ``limit`` requests (of ``status``, or any), newest on chain first: the summary
    columns an operator scans (``hodlai requests``, ``GET /api/oracle/requests``). One status
    is read through idx_requests_status_order, so a page costs O(limit) at any table size."""
    sql = (
        "SELECT request_id, status, model, answer_action, attempts, block_number, "
        "fail_reason, updated_at FROM requests"
    )
    params: list[object] = []
    if status is not None:
        sql += " WHERE status = ?"
        params.append(status.value)
    sql += " ORDER BY block_number DESC, log_index DESC LIMIT ?"
    params.append(limit)
    return conn.execute(sql, params).fetchall()


def retry(conn: sqlite3.Connection, request_id: int | str, *, actor: str = "operator") -> None:
    """Re-open a FAILED request: back to PENDING with a fresh attempt budget and no answer."""
    transition(
        conn, request_id, Status.FAILED, Status.PENDING, actor=actor, note="operator retry",
        set_columns={
            "attempts": 0, "answer_action": None, "answer_cid": None, "reasoning": None,
            "answered_at": None, "fail_reason": None, "lease_owner": None, "lease_until": None,
        },
    )  # fmt: skip
