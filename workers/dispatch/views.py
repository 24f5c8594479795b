"""Read models of the dispatcher's tables for the API and the CLI: a job with every agent's
status and timings, its explainable dispatch log and its audit trail."""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Final

from shared import state
from shared.db import read_transaction
from shared.errors import NotFoundError
from workers.dispatch import store
from workers.dispatch.machine import DISTRIBUTION_AGENTS, JOBS

_JSON: Final = ("tags", "input", "result_schema", "result")
_SUMMARY: Final = ("job_id", "status", "category", "deadline", "fetched_at", "rounds",
                   "retries", "winner_agent_id", "fail_code", "fail_reason", "finished_at",
                   "delivery_key", "delivered_at", "delivery_error", "created_at",
                   "updated_at")  # fmt: skip


def _decode(row: sqlite3.Row, names: tuple[str, ...] | None = None) -> dict[str, Any]:
    out = {k: row[k] for k in (names or tuple(row.keys()))}
    for k in _JSON:
        if k in out and isinstance(out[k], str):
            out[k] = json.loads(out[k])
    return out


def list_jobs(
    conn: sqlite3.Connection, *, status: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    if status:
        rows = conn.execute(
            "SELECT * FROM jobs WHERE status = ? ORDER BY created_at DESC, job_id LIMIT ?",
            (status, limit),
        ).fetchall()
    else:
        rows = conn.execute(
            "SELECT * FROM jobs ORDER BY created_at DESC, job_id LIMIT ?", (limit,)
        ).fetchall()
    return [_decode(r, _SUMMARY) for r in rows]


def job_detail(conn: sqlite3.Connection, job_id: str) -> dict[str, Any]:
    with read_transaction(conn):
        row = store.get_job(conn, job_id)
        if row is None:
            raise NotFoundError(f"no job {job_id}")
        record = store.distribution(conn, job_id)
        work = store.work_rows(conn, job_id)
        history = state.history(conn, JOBS, job_id)
        work_history = {w["work_id"]: state.history(conn, DISTRIBUTION_AGENTS, w["work_id"])
                        for w in work}  # fmt: skip
    out = _decode(row)
    out.pop("lease_owner", None)
    out.pop("lease_until", None)
    out["distribution"] = None if record is None else {
        "distribution_id": record["distribution_id"], "mode": record["mode"],
        "max_agents": record["max_agents"], "hedge_delay_ms": record["hedge_delay_ms"],
        "explain": json.loads(record["explain"]), "created_at": record["created_at"],
    }  # fmt: skip
    agents = []
    for w in work:
        entry = {k: w[k] for k in w.keys() if k not in ("lease_owner", "lease_until")}  # noqa: SIM118 -- sqlite3.Row
        for k in ("result", "late_result"):
            if isinstance(entry.get(k), str):
                entry[k] = json.loads(entry[k])
        entry["history"] = [_transition(t) for t in work_history[w["work_id"]]]
        agents.append(entry)
    out["agents"] = agents
    out["history"] = [_transition(t) for t in history]
    return out


def _transition(t: sqlite3.Row) -> dict[str, Any]:
    return {"from_status": t["from_status"], "to_status": t["to_status"], "actor": t["actor"],
            "at": t["at"], "note": t["note"]}  # fmt: skip
