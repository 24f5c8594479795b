"""The seed's 性能统计: exact statistics per agent and per category, from the call rows.

For each group: ``calls`` (calls sent that ended for the job: not orphaned by a restart,
not planned-and-unused), ``successes`` (a valid result, on time or late), ``errors``
(an error, garbage, a result outside the schema), ``timeouts``, their rates over the calls
that reached one of those verdicts, ``wins`` (jobs won), ``late_results`` (answers after
the call was cancelled) and the p50 / p95 latency of the valid results (nearest rank).
The same rules as book.verdict_of, in SQL; every completion is counted the moment its row
is written, so a scripted run's figures can be checked exactly.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Final

from shared import state
from workers.dispatch.book import quantile
from workers.dispatch.machine import JOBS

_CASES: Final = """
  SUM(outcome IN ('won','error','invalid','timeout','cancelled')) AS calls,
  SUM(outcome = 'won' OR (outcome = 'cancelled' AND late_outcome = 'valid')) AS successes,
  SUM(outcome IN ('error','invalid')
      OR (outcome = 'cancelled' AND late_outcome IN ('invalid','error'))) AS errors,
  SUM(outcome = 'timeout' OR (outcome = 'cancelled' AND late_outcome = 'timeout')) AS timeouts,
  SUM(won) AS wins,
  SUM(outcome = 'cancelled' AND late_outcome IN ('valid','invalid')) AS late_results
"""
_LATENCY: Final = (
    "CASE WHEN outcome = 'won' THEN latency_ms"
    " WHEN outcome = 'cancelled' AND late_outcome = 'valid' THEN late_latency_ms END"
)


def _figures(row: sqlite3.Row, latencies: list[float]) -> dict[str, Any]:
    out: dict[str, Any] = {k: int(row[k] or 0) for k in
           ("calls", "successes", "errors", "timeouts", "wins", "late_results")}  # fmt: skip
    decided = out["successes"] + out["errors"] + out["timeouts"]
    for name in ("success", "error", "timeout"):
        count = out["successes" if name == "success" else f"{name}s"]
        out[f"{name}_rate"] = round(count / decided, 6) if decided else None
    out["latency_p50_ms"] = quantile(latencies, 0.5)
    out["latency_p95_ms"] = quantile(latencies, 0.95)
    return out


def _grouped(conn: sqlite3.Connection, columns: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        f"SELECT {columns}, {_CASES} FROM job_distribution_agents GROUP BY {columns}"
        f" ORDER BY {columns}"
    ).fetchall()
    samples: dict[tuple[Any, ...], list[float]] = {}
    for r in conn.execute(
        f"SELECT {columns}, {_LATENCY} AS ms FROM job_distribution_agents"
        f" WHERE {_LATENCY} IS NOT NULL"
    ):
        samples.setdefault(tuple(r)[:-1], []).append(float(r["ms"]))
    names = [c.strip() for c in columns.split(",")]
    return [
        {**{n: r[n] for n in names}, **_figures(r, samples.get(tuple(r[n] for n in names), []))}
        for r in rows
    ]


def collect(conn: sqlite3.Connection) -> dict[str, Any]:
    agents = {r["agent_id"]: r for r in conn.execute(
        "SELECT agent_id, name, status, health, breaker FROM agents")}  # fmt: skip
    per_agent = _grouped(conn, "agent_id")
    for entry in per_agent:
        info = agents.get(entry["agent_id"])
        entry.update({"name": info["name"], "status": info["status"], "health": info["health"],
                      "breaker": info["breaker"]} if info else {})  # fmt: skip
    delivered = conn.execute(
        "SELECT SUM(delivery_key IS NOT NULL AND delivered_at IS NOT NULL),"
        " SUM(delivery_key IS NOT NULL AND delivered_at IS NULL) FROM jobs"
    ).fetchone()
    return {
        "jobs": state.counts(conn, JOBS),
        "deliveries": {"delivered": int(delivered[0] or 0), "pending": int(delivered[1] or 0)},
        "agents": per_agent,
        "categories": _grouped(conn, "category"),
        "agent_categories": _grouped(conn, "agent_id, category"),
    }


def render_table(figures: dict[str, Any]) -> str:
    """The agent statistics as a plain-text table (``hodlai dispatch stats``, the demo)."""
    head = (f"{'agent':<22} {'calls':>6} {'ok':>5} {'err':>5} {'t/o':>5} {'won':>5} "
            f"{'late':>5} {'succ%':>6} {'p50ms':>8} {'p95ms':>8}")  # fmt: skip
    lines = [head, "-" * len(head)]

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    for a in figures["agents"]:
        label = str(a.get("name") or a["agent_id"])[:22]
        lines.append(
            f"{label:<22} {a['calls']:>6} {a['successes']:>5} {a['errors']:>5} "
            f"{a['timeouts']:>5} {a['wins']:>5} {a['late_results']:>5} "
            f"{pct(a['success_rate']):>6} {ms(a['latency_p50_ms']):>8} {ms(a['latency_p95_ms']):>8}"
        )
    return "\n".join(lines)
