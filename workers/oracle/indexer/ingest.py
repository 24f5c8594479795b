"""Applying the oracle's decoded logs to the state store: requests and fulfilments. This is
the oracle sink's write (workers/oracle/indexer/sink.py); the poller runs it inside the transaction
that also stores the range's block hashes and moves the cursor, ONE transaction per accepted
range (shared/chain/history.py), so a process killed at any instant resumes from a cursor
whose logs are all stored.

Guarantees:
- Applying the same logs again changes nothing (no row, no audit entry): a request id already
  stored with the same content is left alone, or only gets its new block position when a
  reorg re-included it elsewhere.
- A request id that arrives with other content than stored, from *another block hash* than
  the stored row's, is the chain's new truth (a reorg): the row takes the new content,
  generation + 1, and starts again from PENDING with its answer, attempts, lease and failure
  cleared (``store.transition`` with ``set_columns``).
- Logs are never rewritten under an unchanged block hash: a block hash commits to the
  block's logs, so a request or fulfilment that arrives from the *same* block hash as stored
  but with other content or another position is a wrong answer of the node.
  :class:`LogDataConflictError` is raised inside the transaction, so nothing of that answer
  is stored, and the caller distrusts the URL (issue 10: one bad answer during a re-scan set
  57 good rows FAILED and moved FULFILLED rows back to PENDING).
- A fulfilled event moves any PENDING / ANSWERED / PROCESSED / FAILED row to FULFILLED and
  records where the row was in ``fulfillments.prior_status``; one seen before its request is
  kept in ``fulfillments`` and applied when the request arrives. Either order ends in the
  same row.
- A request whose content could not be decoded is stored and moved to FAILED with the reason,
  flagged ``content_lossy`` (its stored text is not what the vault sent; never retried).
- A row that becomes FULFILLED with an action outside its current action set is an alarm:
  an error log ``fulfilled_action_not_in_action_set``, ``IngestStats.wrong_answers`` and
  ``answer_outside_set = 1`` on the row, which ``v_stuck`` lists (through a partial index, so
  the view does not parse every fulfilled row's action set); the row stays FULFILLED, since
  the chain says so.

New requests are inserted in bulk through ``store.insert_requests`` (one ``executemany`` for
the batch, plus its audit rows): per-row ``store.insert_request`` calls measured ~10k rows/s
against ~20k for the bulk path on this machine, and ingestion is the indexer's slowest step.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import structlog

from shared.chain import history
from shared.chain.history import Anchor
from shared.chain.scan import BlockHeader
from shared.db import atomic
from shared.errors import LogDataConflictError
from workers.oracle import request_id as rid
from workers.oracle import store
from workers.oracle.indexer.logs_decode import DecodedLogs, FulfilledLog, MalformedRequest
from workers.oracle.indexer.reorg import ACTOR, CURSOR_NAME, generation_after_removal
from workers.oracle.store import NewRequest, Status

log = structlog.get_logger(__name__)

# Anchor is re-exported: the indexer's readers of the cursor take it from here.
__all__ = ["Anchor", "IngestStats", "apply_logs", "apply_range", "apply_rescan", "read_anchor"]

# Ids per "WHERE request_id IN (...)" lookup: far below SQLite's 32,766 variable limit.
_LOOKUP_CHUNK = 500

# What a replaced request forgets: the answer and everything about working on it.
_RESET_COLUMNS: dict[str, object] = {
    "attempts": 0, "answer_action": None, "answer_cid": None, "reasoning": None,
    "answered_at": None, "fail_reason": None, "lease_owner": None, "lease_until": None,
    "fulfilled_block": None, "fulfilled_tx_hash": None, "fulfilled_action": None,
    "fulfilled_cid": None, "answer_outside_set": 0,
}  # fmt: skip


@dataclass(slots=True)
class IngestStats:
    """What applying one batch of logs changed."""

    inserted: int = 0
    unchanged: int = 0
    moved: int = 0
    replaced: int = 0
    failed: int = 0
    fulfilments_new: int = 0
    fulfilments_applied: int = 0
    fulfilments_waiting: int = 0
    #: rows that became FULFILLED with an action outside their action set (alarm)
    wrong_answers: int = 0

    @property
    def changed(self) -> int:
        """Everything that was not already stored as it is now."""
        return self.inserted + self.moved + self.replaced + self.failed + self.fulfilments_new

    def fields(self) -> dict[str, int]:
        """Every counter by name, for log events."""
        return {name: getattr(self, name) for name in self.__slots__}

    def add(self, other: IngestStats) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


# --- the oracle alone, as the poller commits it (tests and tools without a poller) ---------


def read_anchor(conn: sqlite3.Connection, start_block: int) -> Anchor:
    """Where the indexer resumes. Before the first acceptance: ``start_block - 1``."""
    return history.read_anchor(conn, CURSOR_NAME, start_block)


def apply_range(
    conn: sqlite3.Connection,
    *,
    expected_cursor: int,
    new_cursor: int,
    range_end: BlockHeader,
    decoded: DecodedLogs,
    history_blocks: int,
    headers: Sequence[BlockHeader] = (),
    now: float | None = None,
) -> IngestStats:
    """Store one accepted range's decoded logs, its block hashes (its last header,
    ``headers`` of the bloom window, and every log's block) and the indexer's new cursor,
    atomically: what the poller does with the oracle sink (shared.chain.history)."""
    at = time.time() if now is None else now
    return history.commit_range(
        conn, name=CURSOR_NAME, expected_cursor=expected_cursor, new_cursor=new_cursor,
        range_end=range_end, headers=headers, log_blocks=decoded.log_blocks,
        history_blocks=history_blocks, now=at, apply=lambda: apply_logs(conn, decoded, now=at),
    )  # fmt: skip


def apply_rescan(
    conn: sqlite3.Connection,
    *,
    cursor: int,
    decoded: DecodedLogs,
    now: float | None = None,
) -> IngestStats:
    """Store what a backup re-scan of accepted blocks found; the cursor does not move (and
    must still be ``cursor``: a rollback in between makes the re-scan's answer void)."""
    at = time.time() if now is None else now
    return history.commit_rescan(
        conn, name=CURSOR_NAME, cursor=cursor, log_blocks=decoded.log_blocks, now=at,
        apply=lambda: apply_logs(conn, decoded, now=at),
    )  # fmt: skip


# --- the oracle sink's write --------------------------------------------------------------


def apply_logs(conn: sqlite3.Connection, decoded: DecodedLogs, *, now: float) -> IngestStats:
    """Apply decoded logs inside the caller's transaction (see the module guarantees)."""
    stats = IngestStats()
    with atomic(conn):
        arrivals: list[str] = []
        _apply_requests(conn, decoded.requests, decoded.malformed, stats, arrivals, now)
        waiting = _unapplied_fulfilments(conn, arrivals)
        for key in waiting:
            _apply_fulfilment(conn, key, stats, now)
        for fulfilment in decoded.fulfillments:
            _record_fulfilment(conn, fulfilment, stats, now)
    return stats


# --- requests -------------------------------------------------------------------------------


def _existing(conn: sqlite3.Connection, keys: Sequence[str]) -> dict[str, sqlite3.Row]:
    found: dict[str, sqlite3.Row] = {}
    for start in range(0, len(keys), _LOOKUP_CHUNK):
        chunk = keys[start : start + _LOOKUP_CHUNK]
        marks = ",".join("?" * len(chunk))
        for row in conn.execute(
            "SELECT request_id, status, generation, content_hash, block_number, block_hash, "
            f"tx_hash, log_index FROM requests WHERE request_id IN ({marks})",
            chunk,
        ):
            found[row["request_id"]] = row
    return found


def _apply_requests(
    conn: sqlite3.Connection,
    requests: Sequence[NewRequest],
    malformed: Sequence[MalformedRequest],
    stats: IngestStats,
    arrivals: list[str],
    now: float,
) -> None:
    items: list[tuple[NewRequest, str | None]] = [(r, None) for r in requests]
    items += [(m.request, m.reason) for m in malformed]
    if not items:
        return
    keys = [rid.encode(r.request_id) for r, _ in items]
    existing = _existing(conn, list(dict.fromkeys(keys)))
    reorged = conn.execute("SELECT EXISTS (SELECT 1 FROM reorgs)").fetchone()[0] == 1
    fresh: list[tuple[str, NewRequest, int]] = []
    later: list[tuple[str, NewRequest, str | None]] = []
    claimed: set[str] = set()
    for key, (request, reason) in zip(keys, items, strict=True):
        if key in existing or key in claimed or reason is not None:
            later.append((key, request, reason))
            continue
        claimed.add(key)
        generation = generation_after_removal(conn, key) if reorged else 1
        fresh.append((key, request, generation))
    if fresh:
        _insert_new(conn, fresh, now)
        stats.inserted += len(fresh)
        arrivals.extend(key for key, _, _ in fresh)
    for key, request, reason in later:
        _merge(conn, key, request, reason, stats, arrivals, reorged, now)


def _insert_new(
    conn: sqlite3.Connection, fresh: Sequence[tuple[str, NewRequest, int]], now: float
) -> None:
    """Insert request rows that do not exist yet, with their creation audit rows."""
    store.insert_requests(conn, [(r, generation) for _, r, generation in fresh], actor=ACTOR,
                          now=now)  # fmt: skip


def _content_columns(request: NewRequest) -> dict[str, object]:
    return {
        "requester": request.requester,
        "model": request.model,
        "system_prompt": request.system_prompt,
        "state_string": request.state_string,
        "action_set": store.encode_action_set(list(request.action_set)),
        "content_hash": request.content_hash,
        "block_number": request.block_number,
        "block_hash": request.block_hash,
        "tx_hash": request.tx_hash,
        "log_index": request.log_index,
        "content_lossy": int(request.content_lossy),
    }


def _merge(
    conn: sqlite3.Connection,
    key: str,
    request: NewRequest,
    reason: str | None,
    stats: IngestStats,
    arrivals: list[str],
    reorged: bool,
    now: float,
) -> None:
    """A request log for an id that may already be stored (or is malformed)."""
    row = conn.execute(
        "SELECT status, generation, content_hash, block_number, block_hash, tx_hash, "
        "log_index FROM requests WHERE request_id = ?",
        (key,),
    ).fetchone()
    if row is None:
        generation = generation_after_removal(conn, key) if reorged else 1
        _insert_new(conn, [(key, request, generation)], now)
        stats.inserted += 1
        arrivals.append(key)
        if reason is not None:
            _fail(conn, key, reason, now)
            stats.failed += 1
        return
    same_block = request.block_hash == row["block_hash"]
    if row["content_hash"] == request.content_hash:
        position = (request.block_number, request.block_hash, request.tx_hash, request.log_index)
        stored = (row["block_number"], row["block_hash"], row["tx_hash"], row["log_index"])
        if position == stored:
            stats.unchanged += 1
            return
        if same_block:
            raise _conflict(key, request.block_number, request.block_hash, "another position")
        # Same request re-included elsewhere (a reorg moved its transaction): keep its state.
        conn.execute(
            "UPDATE requests SET block_number = ?, block_hash = ?, tx_hash = ?, log_index = ?, "
            "updated_at = ? WHERE request_id = ?",
            (*position, now, key),
        )
        stats.moved += 1
        log.info("request_moved", request_id=key, block_number=request.block_number)
        return
    if same_block:
        raise _conflict(key, request.block_number, request.block_hash, "other content")
    _replace(conn, key, request, row, now)
    stats.replaced += 1
    arrivals.append(key)
    if reason is not None:
        _fail(conn, key, reason, now)
        stats.failed += 1


def _replace(
    conn: sqlite3.Connection, key: str, request: NewRequest, row: sqlite3.Row, now: float
) -> None:
    """The id now carries other content: new generation, from PENDING, answer dropped."""
    generation = int(row["generation"]) + 1
    old_status = Status(row["status"])
    columns = {**_content_columns(request), **_RESET_COLUMNS, "generation": generation}
    store.transition(
        conn, key, old_status, Status.PENDING, actor=ACTOR, generation=int(row["generation"]),
        note=f"content replaced by a reorg (block {request.block_number}); "
        f"generation {generation}",
        set_columns=columns, now=now,
    )  # fmt: skip
    if old_status == Status.FULFILLED:
        # The fulfilment on chain stands: it is re-applied to the new generation below.
        conn.execute("UPDATE fulfillments SET prior_status = NULL WHERE request_id = ?", (key,))
    log.warning(
        "request_content_replaced",
        request_id=key,
        old_content_hash=row["content_hash"],
        new_content_hash=request.content_hash,
        old_status=old_status.value,
        generation=generation,
        block_number=request.block_number,
    )


def _conflict(key: str, block: int, block_hash: str, what: str) -> LogDataConflictError:
    return LogDataConflictError(
        f"the node's log of request {key} in block {block} ({block_hash}) has {what} than "
        "stored under that same block hash; the stored data is kept"
    )


def _fail(conn: sqlite3.Connection, key: str, reason: str, now: float) -> None:
    store.transition(
        conn, key, Status.PENDING, Status.FAILED, actor=ACTOR, note=reason,
        set_columns={"fail_reason": reason}, now=now,
    )  # fmt: skip


# --- fulfilments ----------------------------------------------------------------------------


def _unapplied_fulfilments(conn: sqlite3.Connection, keys: Iterable[str]) -> list[str]:
    """Of ``keys``, those with a fulfilled event stored but not yet applied to their row."""
    pending = [
        row[0]
        for row in conn.execute("SELECT request_id FROM fulfillments WHERE prior_status IS NULL")
    ]
    if not pending:
        return []
    wanted = set(keys)
    return [key for key in pending if key in wanted]


def _record_fulfilment(
    conn: sqlite3.Connection, event: FulfilledLog, stats: IngestStats, now: float
) -> None:
    key = rid.encode(event.request_id)
    stored = conn.execute(
        "SELECT block_hash, tx_hash, log_index, requester, result_action, reasoning_cid "
        "FROM fulfillments WHERE request_id = ?",
        (key,),
    ).fetchone()
    position = (event.block_number, event.block_hash, event.tx_hash, event.log_index)
    if stored is not None and stored["block_hash"] == event.block_hash:
        seen = (stored["tx_hash"], stored["log_index"], stored["requester"],
                stored["result_action"], stored["reasoning_cid"])  # fmt: skip
        now_seen = (event.tx_hash, event.log_index, event.requester, event.result_action,
                    event.reasoning_cid)  # fmt: skip
        if seen != now_seen:
            raise _conflict(key, event.block_number, event.block_hash, "another fulfilment")
    if stored is None:
        conn.execute(
            "INSERT INTO fulfillments (request_id, requester, result_action, reasoning_cid, "
            "block_number, block_hash, tx_hash, log_index, prior_status, seen_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)",
            (key, event.requester, event.result_action, event.reasoning_cid, *position, now),
        )
        stats.fulfilments_new += 1
    elif (stored["block_hash"], stored["tx_hash"], stored["log_index"]) != position[1:]:
        conn.execute(
            "UPDATE fulfillments SET requester = ?, result_action = ?, reasoning_cid = ?, "
            "block_number = ?, block_hash = ?, tx_hash = ?, log_index = ?, seen_at = ? "
            "WHERE request_id = ?",
            (event.requester, event.result_action, event.reasoning_cid, *position, now, key),
        )
        stats.fulfilments_new += 1
    _apply_fulfilment(conn, key, stats, now)


def _apply_fulfilment(conn: sqlite3.Connection, key: str, stats: IngestStats, now: float) -> None:
    """Move the request row to FULFILLED if it exists and is not yet; remember from where."""
    event = conn.execute(
        "SELECT block_number, tx_hash, result_action, reasoning_cid, prior_status "
        "FROM fulfillments WHERE request_id = ?",
        (key,),
    ).fetchone()
    row = conn.execute(
        "SELECT status, action_set, generation FROM requests WHERE request_id = ?", (key,)
    ).fetchone()
    if row is None:
        stats.fulfilments_waiting += 1
        log.info("fulfilment_before_request", request_id=key, block_number=event[0])
        return
    status = Status(row["status"])
    if status == Status.FULFILLED:
        if event["prior_status"] is None:
            conn.execute(
                "UPDATE fulfillments SET prior_status = 'FULFILLED' WHERE request_id = ?", (key,)
            )
        return
    actions = json.loads(row["action_set"])
    outside = event["result_action"] not in actions
    store.transition(
        conn, key, status, Status.FULFILLED, actor=ACTOR,
        note=f"fulfilled on chain in block {event['block_number']} ({event['tx_hash']})",
        set_columns={
            "fulfilled_block": event["block_number"], "fulfilled_tx_hash": event["tx_hash"],
            "fulfilled_action": event["result_action"], "fulfilled_cid": event["reasoning_cid"],
            "lease_owner": None, "lease_until": None, "answer_outside_set": int(outside),
        },
        now=now,
    )  # fmt: skip
    conn.execute(
        "UPDATE fulfillments SET prior_status = ? WHERE request_id = ?", (status.value, key)
    )
    stats.fulfilments_applied += 1
    if outside:
        stats.wrong_answers += 1
        log.error(
            "fulfilled_action_not_in_action_set",
            request_id=key,
            fulfilled_action=event["result_action"],
            action_set=actions,
            generation=row["generation"],
            tx_hash=event["tx_hash"],
        )
