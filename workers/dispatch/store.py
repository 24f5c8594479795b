"""The dispatcher's writes and reads of its tables. Every status change goes through
shared.state (audited); each function is one unit of work the writer (writer.py) runs
inside a batched transaction, so a function either happens whole or not at all.

Invariants kept here:

- A job's outcome (COMPLETED with its result, or FAILED / EXPIRED / CANCELLED with the
  reasons) and its ``delivery_key`` are written in the same transaction: the queue is only
  ever told an outcome that is recorded, always under the same key.
- The winner is decided by ``IN_PROGRESS → COMPLETED`` on the job row, fenced by the
  dispatcher's lease: two results can never both win, whatever the timing.
- An agent's counters in ``agents`` change in the same transaction as the call row whose
  verdict they count (book.verdict_of decides what counts).
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from shared import state
from shared.db import atomic
from workers.dispatch.book import Verdict
from workers.dispatch.jobs import Job
from workers.dispatch.machine import (
    DISTRIBUTION_AGENTS,
    JOBS,
    JobStatus,
    WorkStatus,
)

J, W = JobStatus, WorkStatus
# Characters of an invalid job's raw body kept for the operator.
RAW_CHARS: Final = 4096
# Characters of a late or failed answer's text kept.
RESULT_CHARS: Final = 64 * 1024


@dataclass(frozen=True)
class Planned:
    """One agent row to create."""

    agent_id: str
    rank: int
    score: float
    role: str
    status: str  # ASSIGNED (called now) or IDLE (a hedged job's backup)


def new_key() -> str:
    return uuid.uuid4().hex


def known_jobs(conn: sqlite3.Connection, job_ids: Sequence[str]) -> set[str]:
    if not job_ids:
        return set()
    marks = ",".join("?" * len(job_ids))
    return {r[0] for r in conn.execute(f"SELECT job_id FROM jobs WHERE job_id IN ({marks})",
                                       list(job_ids))}  # fmt: skip


def record_fetched(
    conn: sqlite3.Connection, valid: Sequence[Job], invalid: Sequence[tuple[str, Any, str, str]],
    *, owner: str, lease_s: float, actor: str, now: float,
) -> tuple[list[str], list[str]]:  # fmt: skip
    """Record fetched jobs: valid ones OPEN and leased to ``owner`` (its dispatcher starts
    them at once), invalid ones (id, raw body, code, reason) FAILED with their delivery key.
    Jobs already recorded are skipped. Returns the new valid and invalid job ids."""
    with atomic(conn):
        known = known_jobs(conn, [j.job_id for j in valid] + [i[0] for i in invalid])
        fresh = [j for j in valid if j.job_id not in known]
        rows = [{**j.row(fetched_at=now), "lease_owner": owner, "lease_until": now + lease_s}
                for j in fresh]  # fmt: skip
        state.insert_many(conn, JOBS, rows, status=J.OPEN, actor=actor, now=now)
        bad = [i for i in invalid if i[0] not in known]
        for job_id, raw, code, reason in bad:
            deadline = raw.get("deadline") if isinstance(raw, dict) else None
            state.insert(conn, JOBS, {
                "job_id": job_id, "fetched_at": now, "raw": json.dumps(raw)[:RAW_CHARS],
                "deadline": float(deadline) if isinstance(deadline, int | float)
                and not isinstance(deadline, bool) else None,
            }, status=J.OPEN, actor=actor, now=now)  # fmt: skip
            state.transition(conn, JOBS, job_id, J.OPEN, J.FAILED, actor=actor, note=reason,
                             set_columns={"fail_code": code, "fail_reason": reason,
                                          "finished_at": now, "delivery_key": new_key()},
                             now=now)  # fmt: skip
    return [j.job_id for j in fresh], [i[0] for i in bad]


def mark_acked(conn: sqlite3.Connection, job_ids: Sequence[str], *, now: float) -> None:
    with atomic(conn):
        conn.executemany("UPDATE jobs SET acked_at = ? WHERE job_id = ? AND acked_at IS NULL",
                         [(now, j) for j in job_ids])  # fmt: skip


def get_job(conn: sqlite3.Connection, job_id: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM jobs WHERE job_id = ?", (job_id,)
    ).fetchone()
    return row


def work_rows(conn: sqlite3.Connection, job_id: str) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT * FROM job_distribution_agents WHERE job_id = ? ORDER BY round, rank",
        (job_id,),
    ).fetchall()


def distribution(conn: sqlite3.Connection, job_id: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM job_distributions WHERE job_id = ?", (job_id,)
    ).fetchone()
    return row


def _work_row(
    work_id: str, distribution_id: str, job_id: str, category: str, round_no: int,
    p: Planned, owner: str, lease_until: float,
) -> dict[str, Any]:  # fmt: skip
    return {"work_id": work_id, "distribution_id": distribution_id, "job_id": job_id,
            "agent_id": p.agent_id, "category": category, "round": round_no, "rank": p.rank,
            "score": p.score, "role": p.role, "lease_owner": owner,
            "lease_until": lease_until}  # fmt: skip


def _insert_work(
    conn: sqlite3.Connection, rows: list[tuple[dict[str, Any], str]], *, actor: str, now: float
) -> None:
    for status in (W.ASSIGNED, W.IDLE):
        chosen = [r for r, s in rows if s == status]
        state.insert_many(conn, DISTRIBUTION_AGENTS, chosen, status=status, actor=actor, now=now)


def begin_round(
    conn: sqlite3.Connection, job: sqlite3.Row | dict[str, Any], *, frm: str, round_no: int,
    retries: int, planned: Sequence[Planned], explain: dict[str, Any], mode: str,
    max_agents: int, hedge_delay_ms: float | None, owner: str, lease_until: float,
    actor: str, now: float,
) -> list[str]:  # fmt: skip
    """Create round ``round_no``'s agent rows (and, for the first, the JobDistributionRecord)
    and move the job on (OPEN → DISTRIBUTED, or X → X for a later round). Returns the new
    work ids, in ``planned`` order."""
    job_id = job["job_id"]
    with atomic(conn):
        record = distribution(conn, job_id)
        if record is None:
            distribution_id = new_key()
            conn.execute(
                "INSERT INTO job_distributions (distribution_id, job_id, mode, max_agents,"
                " hedge_delay_ms, explain, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?)",
                (distribution_id, job_id, mode, max_agents, hedge_delay_ms,
                 json.dumps({"rounds": [explain]}), now, now),
            )  # fmt: skip
        else:
            distribution_id = record["distribution_id"]
            log = json.loads(record["explain"])
            log["rounds"].append(explain)
            conn.execute(
                "UPDATE job_distributions SET explain = ?, updated_at = ?"
                " WHERE distribution_id = ?",
                (json.dumps(log), now, distribution_id),
            )
        ids = [new_key() for _ in planned]
        rows = [
            (
                _work_row(
                    w, distribution_id, job_id, job["category"], round_no, p, owner, lease_until
                ),
                p.status,
            )
            for w, p in zip(ids, planned, strict=True)
        ]
        _insert_work(conn, rows, actor=actor, now=now)
        to = J.DISTRIBUTED if frm == J.OPEN else frm
        note = f"round {round_no}: " + ", ".join(p.agent_id for p in planned)
        state.transition(conn, JOBS, job_id, frm, to, actor=actor, note=note, lease_owner=owner,
                         set_columns={"rounds": round_no + 1, "retries": retries,
                                      "lease_owner": owner, "lease_until": lease_until},
                         now=now)  # fmt: skip
    return ids


def start_calls(
    conn: sqlite3.Connection, job_id: str, work: Sequence[tuple[str, str]], *, job_from: str | None,
    owner: str, lease_until: float, actor: str, now: float,
) -> None:  # fmt: skip
    """The calls are being sent: each (work_id, from) → WORKING (IDLE rows via ASSIGNED), and
    the job DISTRIBUTED → IN_PROGRESS when ``job_from`` says so."""
    keep = {"lease_owner": owner, "lease_until": lease_until}
    with atomic(conn):
        if job_from == J.DISTRIBUTED:
            state.transition(conn, JOBS, job_id, J.DISTRIBUTED, J.IN_PROGRESS, actor=actor,
                             lease_owner=owner, set_columns=keep, now=now)  # fmt: skip
        for work_id, frm in work:
            if frm == W.IDLE:
                state.transition(
                    conn,
                    DISTRIBUTION_AGENTS,
                    work_id,
                    W.IDLE,
                    W.ASSIGNED,
                    actor=actor,
                    lease_owner=owner,
                    set_columns=keep,
                    now=now,
                )
            state.transition(conn, DISTRIBUTION_AGENTS, work_id, W.ASSIGNED, W.WORKING,
                             actor=actor, lease_owner=owner,
                             set_columns={**keep, "started_at": now}, now=now)  # fmt: skip


@dataclass(frozen=True)
class AgentFigures:
    """What one finished call adds to its agent's row in ``agents``."""

    agent_id: str
    verdict: Verdict | None
    late: bool = False  # a result (valid or not) after the call was cancelled
    crossed: bool = False  # ... that was under way before the agent had the cancel
    won: bool = False
    called: bool = True
    breaker: str = "closed"
    consecutive_failures: int = 0
    breaker_open_until: float | None = None
    p50: float | None = None
    p95: float | None = None


def count_for_agent(conn: sqlite3.Connection, f: AgentFigures, *, now: float) -> None:
    v = f.verdict
    conn.execute(
        "UPDATE agents SET calls = calls + ?, successes = successes + ?, errors = errors + ?,"
        " timeouts = timeouts + ?, wins = wins + ?, late_results = late_results + ?,"
        " crossed_cancel = crossed_cancel + ?,"
        " breaker = ?, consecutive_failures = ?, breaker_open_until = ?,"
        " latency_p50_ms = COALESCE(?, latency_p50_ms),"
        " latency_p95_ms = COALESCE(?, latency_p95_ms),"
        " updated_at = ? WHERE agent_id = ?",
        (int(f.called), int(v == "success"), int(v == "error"), int(v == "timeout"), int(f.won),
         int(f.late and not f.crossed), int(f.late and f.crossed), f.breaker,
         f.consecutive_failures,
         f.breaker_open_until, f.p50, f.p95, now, f.agent_id),
    )  # fmt: skip
    conn.execute(
        "UPDATE agents SET success_rate = CAST(successes AS REAL) / (successes + errors + timeouts)"
        " WHERE agent_id = ? AND successes + errors + timeouts > 0",
        (f.agent_id,),
    )


def finish_call(
    conn: sqlite3.Connection, work_id: str, *, to: str, outcome: str, latency_ms: float,
    error: str | None, result: Any, figures: AgentFigures, owner: str, actor: str, now: float,
    cancel_sent: bool = False,
) -> None:  # fmt: skip
    """A call that ended without winning: WORKING → FAILED / TIMEOUT (or CANCELLED).
    ``cancel_sent``: the agent is told to stop (a call that hit its timeout may still run)."""
    columns = {"finished_at": now, "latency_ms": latency_ms, "outcome": outcome, "error": error,
               "result": _text(result)}  # fmt: skip
    if cancel_sent:
        columns["cancel_sent_at"] = now
    with atomic(conn):
        state.transition(conn, DISTRIBUTION_AGENTS, work_id, W.WORKING, to, actor=actor,
                         note=error, lease_owner=owner, now=now, set_columns=columns)  # fmt: skip
        count_for_agent(conn, figures, now=now)


def _text(value: Any) -> str | None:
    """An answer as stored: its JSON, or, past RESULT_CHARS, a JSON note with its start (cut
    JSON text would no longer parse, and every reader of the row would fail on it)."""
    if value is None:
        return None
    text = json.dumps(value)
    if len(text) <= RESULT_CHARS:
        return text
    return json.dumps({"truncated": True, "chars": len(text), "start": text[: RESULT_CHARS // 2]})


def _close_rows(
    conn: sqlite3.Connection, open_rows: Iterable[tuple[str, str, str]], *, owner: str,
    actor: str, note: str, now: float, working_to: str = W.CANCELLED,
    working_outcome: str = "cancelled",
) -> None:  # fmt: skip
    """Close the other rows of a job: (work_id, status, agent_id). WORKING ones are CANCELLED
    (or, at the deadline, TIMEOUT) and are sent a cancel by the caller; IDLE and ASSIGNED
    ones were never called."""
    for work_id, status, _agent in open_rows:
        if status == W.WORKING:
            columns: dict[str, Any] = {"outcome": working_outcome, "finished_at": now,
                                       "cancel_sent_at": now}  # fmt: skip
            state.transition(conn, DISTRIBUTION_AGENTS, work_id, W.WORKING, working_to,
                             actor=actor, note=note, now=now, lease_owner=owner,
                             set_columns=columns)  # fmt: skip
        else:
            state.transition(conn, DISTRIBUTION_AGENTS, work_id, status, W.CANCELLED,
                             actor=actor, note=note, now=now, lease_owner=owner,
                             set_columns={"outcome": "not_called", "finished_at": now})  # fmt: skip


def record_win(
    conn: sqlite3.Connection, job_id: str, *, winner: str, agent_id: str, latency_ms: float,
    result: Any, others: Sequence[tuple[str, str, str]], figures: Sequence[AgentFigures],
    owner: str, actor: str, now: float,
) -> str:  # fmt: skip
    """The first valid result wins: the job COMPLETED with it (fenced by our lease: exactly one
    winner), the winner's row COMPLETED, the others CANCELLED. Returns the delivery key."""
    key = new_key()
    with atomic(conn):
        state.transition(conn, JOBS, job_id, J.IN_PROGRESS, J.COMPLETED, actor=actor,
                         note=f"won by {agent_id}", lease_owner=owner, now=now,
                         set_columns={"result": json.dumps(result), "winner_agent_id": agent_id,
                                      "winner_work_id": winner, "finished_at": now,
                                      "delivery_key": key})  # fmt: skip
        state.transition(conn, DISTRIBUTION_AGENTS, winner, W.WORKING, W.COMPLETED, actor=actor,
                         lease_owner=owner, now=now,
                         set_columns={"finished_at": now, "latency_ms": latency_ms,
                                      "outcome": "won", "won": 1,
                                      "result": json.dumps(result)})  # fmt: skip
        _close_rows(conn, others, owner=owner, actor=actor, note=f"{agent_id} won", now=now)
        for f in figures:
            count_for_agent(conn, f, now=now)
    return key


def record_late(
    conn: sqlite3.Connection, work_id: str, *, late_outcome: str, latency_ms: float,
    result: Any, figures: AgentFigures | None, actor: str, now: float, crossed: bool = False,
) -> None:  # fmt: skip
    """The answer of a call after it was cancelled: kept, with its timing, for the agent's
    statistics; the job's outcome is never touched. ``crossed``: it arrived before the agent
    acknowledged the cancel (it was under way; the agent could not have stopped)."""
    note = f"late answer: {late_outcome}" + (" (crossed the cancel)" if crossed else "")
    with atomic(conn):
        state.transition(conn, DISTRIBUTION_AGENTS, work_id, W.CANCELLED, W.CANCELLED,
                         actor=actor, note=note, now=now,
                         set_columns={"late_at": now, "late_latency_ms": latency_ms,
                                      "late_outcome": late_outcome,
                                      "late_result": _text(result),
                                      "late_crossed": int(crossed)})  # fmt: skip
        if figures is not None:
            count_for_agent(conn, figures, now=now)


def end_job(
    conn: sqlite3.Connection, job_id: str, *, frm: str, to: str, code: str, reason: str,
    open_rows: Sequence[tuple[str, str, str]], owner: str | None, actor: str, now: float,
    figures: Sequence[AgentFigures] = (),
) -> str:  # fmt: skip
    """A job that ends without a winner: FAILED, EXPIRED or CANCELLED, with the reasons;
    its calls still open are closed (TIMEOUT at the deadline, else CANCELLED). Returns the
    delivery key."""
    key = new_key()
    expired = to == J.EXPIRED
    with atomic(conn):
        _close_rows(conn, open_rows, owner=owner or "", actor=actor, note=reason, now=now,
                    working_to=W.TIMEOUT if expired else W.CANCELLED,
                    working_outcome="timeout" if expired else "cancelled")  # fmt: skip
        for f in figures:
            count_for_agent(conn, f, now=now)
        state.transition(conn, JOBS, job_id, frm, to, actor=actor, note=reason,
                         lease_owner=owner, now=now,
                         set_columns={"fail_code": code, "fail_reason": reason[:2000],
                                      "finished_at": now, "delivery_key": key})  # fmt: skip
    return key


def mark_delivered(
    conn: sqlite3.Connection, job_id: str, status: str, *, note: str, error: str | None,
    actor: str, now: float,
) -> None:  # fmt: skip
    """The queue answered the delivery for good (accepted, a replay, or refused: ``error``)."""
    with atomic(conn):
        state.transition(
            conn,
            JOBS,
            job_id,
            status,
            status,
            actor=actor,
            note=note,
            now=now,
            set_columns={"delivered_at": now, "delivery_error": error},
        )
        conn.execute("UPDATE jobs SET delivery_attempts = delivery_attempts + 1 WHERE job_id = ?",
                     (job_id,))  # fmt: skip


def note_delivery_failure(conn: sqlite3.Connection, job_id: str, error: str) -> None:
    with atomic(conn):
        conn.execute(
            "UPDATE jobs SET delivery_attempts = delivery_attempts + 1, delivery_error = ?"
            " WHERE job_id = ?",
            (error[:500], job_id),
        )


def undelivered(
    conn: sqlite3.Connection, *, limit: int, decided_before: float
) -> list[sqlite3.Row]:
    """Outcomes decided before ``decided_before`` and not delivered yet (the newer ones are
    still being posted by the task that decided them)."""
    return conn.execute(
        "SELECT * FROM jobs WHERE delivery_key IS NOT NULL AND delivered_at IS NULL"
        " AND updated_at < ? ORDER BY updated_at LIMIT ?",
        (decided_before, limit),
    ).fetchall()


def cancel_requests(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT job_id, status, cancel_requested_by FROM jobs"
        " WHERE cancel_requested_at IS NOT NULL AND delivery_key IS NULL"
    ).fetchall()


def request_cancel(conn: sqlite3.Connection, job_id: str, *, actor: str, now: float) -> str:
    """Ask the dispatcher to cancel a job (it acts within a step); returns the job's status."""
    with atomic(conn):
        row = get_job(conn, job_id)
        if row is None:
            from shared.errors import NotFoundError

            raise NotFoundError(f"no job {job_id}")
        if row["delivery_key"] is not None:
            from shared.errors import TransitionConflict

            raise TransitionConflict(f"job {job_id} is {row['status']} already")
        conn.execute(
            "UPDATE jobs SET cancel_requested_at = COALESCE(cancel_requested_at, ?),"
            " cancel_requested_by = COALESCE(cancel_requested_by, ?) WHERE job_id = ?",
            (now, actor, job_id),
        )
    return str(row["status"])


def adopt_leases(conn: sqlite3.Connection, owner: str) -> int:
    """Free every lease another owner holds. Only for a dispatcher holding the database's
    dispatcher role: the owners of those leases are dead processes."""
    freed = 0
    for machine in (JOBS, DISTRIBUTION_AGENTS):
        rows = conn.execute(
            f"SELECT {machine.key}, lease_owner FROM {machine.table}"
            " WHERE lease_owner IS NOT NULL AND lease_owner != ?",
            (owner,),
        ).fetchall()
        by_owner: dict[str, list[str]] = {}
        for key, holder in rows:
            by_owner.setdefault(holder, []).append(key)
        for holder, keys in by_owner.items():
            freed += state.release(conn, machine, keys, owner=holder)
    return freed


def orphaned_work(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT w.work_id, w.status, w.agent_id, w.job_id, a.endpoint"
        " FROM job_distribution_agents w LEFT JOIN agents a ON a.agent_id = w.agent_id"
        " WHERE w.status IN ('IDLE', 'ASSIGNED', 'WORKING')"
    ).fetchall()


def close_orphans(conn: sqlite3.Connection, rows: Sequence[sqlite3.Row], *, actor: str,
                  now: float) -> None:  # fmt: skip
    """Calls a dead dispatcher had in flight: their answers went with it. CANCELLED, outcome
    ``orphaned`` (not the agent's doing: no verdict, not in ``calls``; counted in the agent's
    ``cut_off``) or ``not_called``."""
    note = "the dispatcher restarted: the call's answer was lost with it"
    with atomic(conn):
        for row in rows:
            called = row["status"] == W.WORKING
            if called:
                conn.execute("UPDATE agents SET cut_off = cut_off + 1 WHERE agent_id = ?",
                             (row["agent_id"],))  # fmt: skip
            state.transition(conn, DISTRIBUTION_AGENTS, row["work_id"], row["status"],
                             W.CANCELLED, actor=actor, note=note, now=now,
                             set_columns={"outcome": "orphaned" if called else "not_called",
                                          "finished_at": now, "lease_owner": None,
                                          "lease_until": None,
                                          "cancel_sent_at": now if called else None})  # fmt: skip


def tried_agents(conn: sqlite3.Connection, job_id: str) -> tuple[set[str], int]:
    """Agents whose calls for this job reached a verdict (not worth calling again), and the
    next round number."""
    rows = conn.execute(
        "SELECT agent_id, outcome, round FROM job_distribution_agents WHERE job_id = ?", (job_id,)
    ).fetchall()
    tried = {r["agent_id"] for r in rows if r["outcome"] not in (None, "orphaned", "not_called")}
    return tried, max((r["round"] for r in rows), default=-1) + 1
