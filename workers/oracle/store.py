"""The oracle's requests, on the generic state machine (shared/state) with the
``oracle.request`` declaration (workers/oracle/machine.py).

Guarantees (those of shared.state, for this table):
- Every status change is :func:`transition`: one ``UPDATE ... WHERE request_id=? AND
  status=?`` inside ``BEGIN IMMEDIATE``, a checked row count, and an audit row in
  ``transitions`` in the same transaction. Nothing else in the code base writes ``status``.
- Work in flight is held by a lease. :func:`claim` hands out rows atomically (no row is
  ever held by two owners); completing work passes ``lease_owner=`` and is fenced: it only
  applies if the caller still holds the lease (and the row is still the generation it
  worked on), so a worker that lost its lease cannot overwrite a newer result.
- Allowed moves are the machine's; any other is a programming error.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from shared import state
from shared.db import atomic
from shared.errors import InvalidRequestError, LeaseLostError
from workers.oracle import request_id as rid
from workers.oracle.machine import ALLOWED, NON_TERMINAL, REQUESTS, SETTABLE, TERMINAL, Status

__all__ = ["ALLOWED", "NON_TERMINAL", "REQUESTS", "SETTABLE", "TERMINAL", "Status"]


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
    #: the text fields are not exactly what the event carried (invalid UTF-8 replaced by
    #: U+FFFD, or undecodable data stored empty); such a request is never answered
    content_lossy: bool = False


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
    state.transition(
        conn, REQUESTS, _key(request_id), from_status, to_status, actor=actor, note=note,
        lease_owner=lease_owner, generation=generation, set_columns=set_columns, now=now,
    )  # fmt: skip


def _key(request_id: int | str) -> str:
    value = request_id if isinstance(request_id, int) else rid.decode(request_id)
    return rid.encode(value)


# One encoder for every action set: json.dumps with a non-default option builds a new
# encoder per call, a measurable share of a bulk insert.
encode_action_set = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode


@functools.lru_cache(maxsize=1024)
def _stored_action_set(actions: tuple[str, ...]) -> str:
    """:func:`encode_action_set` of a decoded action set. A backfill's requests share a few
    action sets, and encoding one was about a third of building a row (the ``rows`` stage
    of scripts/bench_indexer_split.py, docs/BENCHMARKS.md)."""
    return encode_action_set(list(actions))


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
    notes = [_creation_note(r.block_number, generation) for r, generation in requests]
    state.insert_many(
        conn, REQUESTS, request_rows(requests), status=Status.PENDING, actor=actor,
        notes=notes, now=now,
    )  # fmt: skip


def request_rows(requests: Sequence[tuple[NewRequest, int]]) -> list[dict[str, object]]:
    """The ``requests`` columns of new rows (request, generation), status and times aside."""
    return [
        {
            "request_id": rid.encode(r.request_id), "shard_key": rid.shard_key(r.request_id),
            "generation": generation, "requester": r.requester, "model": r.model,
            "system_prompt": r.system_prompt, "state_string": r.state_string,
            "action_set": _stored_action_set(r.action_set),
            "content_hash": r.content_hash, "block_number": r.block_number,
            "block_hash": r.block_hash, "tx_hash": r.tx_hash, "log_index": r.log_index,
            "content_lossy": int(r.content_lossy),
        }
        for r, generation in requests
    ]  # fmt: skip


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
    """Delete a request a reorg took back; the audit row (to 'REMOVED', with the removed
    generation) stays. Returns the status it had, or None if there was no such row."""
    return state.remove(conn, REQUESTS, _key(request_id), actor=actor, note=note, now=now)


def generation_after_removal(conn: sqlite3.Connection, request_id: int | str) -> int:
    """The generation a re-created request id starts with: one more than the generation its
    last removal took away (1 for an id never removed)."""
    removed = state.removed_generation(conn, REQUESTS, _key(request_id))
    return 1 if removed is None else removed + 1


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
    rows = state.claim(
        conn, REQUESTS, owner=owner, status=status, limit=limit, lease_seconds=lease_seconds,
        shard=(shard, worker_count) if worker_count > 1 or shard else None, now=now,
    )  # fmt: skip
    return [
        Claimed(
            request_id=rid.decode(r["request_id"]), generation=r["generation"],
            requester=r["requester"], model=r["model"], system_prompt=r["system_prompt"],
            state_string=r["state_string"], action_set=tuple(json.loads(r["action_set"])),
            content_hash=r["content_hash"], attempts=r["attempts"],
            answer_action=r["answer_action"], answer_cid=r["answer_cid"],
            lease_owner=owner, lease_until=r["lease_until"], block_number=r["block_number"],
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
    lost = state.extend(
        conn, REQUESTS, [rid.encode(i) for i in request_ids], owner=owner,
        lease_seconds=lease_seconds, now=now,
    )  # fmt: skip
    return [rid.decode(key) for key in lost]


def release(conn: sqlite3.Connection, request_ids: Sequence[int], *, owner: str) -> int:
    """Give back leases (clean shutdown) so another worker can take the rows at once."""
    return state.release(conn, REQUESTS, [rid.encode(i) for i in request_ids], owner=owner)


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
    """Rows per status, from the trigger-maintained state_counts table (O(1))."""
    return state.counts(conn, REQUESTS)


def get_request(conn: sqlite3.Connection, request_id: int | str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM requests WHERE request_id = ?", (_key(request_id),)
    ).fetchone()
    return row


def history(conn: sqlite3.Connection, request_id: int | str) -> list[sqlite3.Row]:
    return state.history(conn, REQUESTS, _key(request_id))


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
    """Re-open a FAILED request: back to PENDING with a fresh attempt budget and no answer.

    Refused (InvalidRequestError) for a request whose stored text is not what the vault sent
    (``content_lossy``): answering it would answer text the vault never sent."""
    row = conn.execute(
        "SELECT content_lossy, fail_reason FROM requests WHERE request_id = ?",
        (_key(request_id),),
    ).fetchone()
    if row is not None and row["content_lossy"]:
        raise InvalidRequestError(
            f"request {_key(request_id)} cannot be retried: its text is not what the vault "
            f"sent ({row['fail_reason'] or 'not valid UTF-8'}); the node stores it only "
            "lossily, so any answer would be to altered text"
        )
    transition(
        conn, request_id, Status.FAILED, Status.PENDING, actor=actor, note="operator retry",
        set_columns={
            "attempts": 0, "answer_action": None, "answer_cid": None, "reasoning": None,
            "answered_at": None, "fail_reason": None, "lease_owner": None, "lease_until": None,
        },
    )  # fmt: skip
