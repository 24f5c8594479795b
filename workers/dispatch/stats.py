"""The seed's 性能统计: exact statistics per agent and per category, from the call rows.

What each figure means is :data:`MEANINGS` (one place: ``hodlai dispatch stats`` prints it
under its table, docs/API.md repeats it). The same rules as book.verdict_of, in SQL; every
completion is counted the moment its row is written, so a scripted run's figures can be
checked exactly. Calls cut off by a dispatcher restart (``cut_off``) and answers that merely
crossed our cancel (``crossed_cancel``) are counted apart: neither says anything about the
agent, and folding them into ``calls`` or ``late_results`` would mislead.
"""

from __future__ import annotations

import sqlite3
import textwrap
from typing import Any, Final

from shared import state
from workers.dispatch.book import quantile
from workers.dispatch.machine import JOBS

#: Each figure, as an operator reads it.
MEANINGS: Final[dict[str, str]] = {
    "calls": "calls sent that ended for the job (won, failed, timed out, or cancelled because "
    "another agent won or the job ended); not cut_off, not planned backups never sent",
    "successes": "valid results (they match the job's result_schema), on time or late",
    "errors": "error answers: HTTP errors, transport failures, bodies that are not JSON, "
    "results outside the schema; on time or late",
    "timeouts": "calls with no answer within their timeout (or the job's deadline)",
    "success_rate": "successes / (successes + errors + timeouts); cancelled calls that never "
    "answered have no verdict and are left out (error_rate, timeout_rate alike)",
    "wins": "jobs this agent's result completed (its answer came first and was valid)",
    "late_results": "results given after the agent had acknowledged our cancel (or our cancel "
    "call failed): the agent kept working when told to stop",
    "crossed_cancel": "results already under way when we cancelled: they arrived before the "
    "agent acknowledged the cancel, so it could not have stopped; not in late_results",
    "cut_off": "calls cut off by a dispatcher restart: the answer was lost with the process; "
    "no verdict for the agent, not in calls",
    "latency_p50_ms": "median milliseconds from the call to a valid result (nearest rank)",
    "latency_p95_ms": "95th percentile of the same",
}

_CASES: Final = """
  SUM(outcome IN ('won','error','invalid','timeout','cancelled')) AS calls,
  SUM(outcome = 'won' OR (outcome = 'cancelled' AND late_outcome = 'valid')) AS successes,
  SUM(outcome IN ('error','invalid')
      OR (outcome = 'cancelled' AND late_outcome IN ('invalid','error'))) AS errors,
  SUM(outcome = 'timeout' OR (outcome = 'cancelled' AND late_outcome = 'timeout')) AS timeouts,
  SUM(won) AS wins,
  SUM(outcome = 'cancelled' AND late_outcome IN ('valid','invalid') AND late_crossed = 0)
      AS late_results,
  SUM(outcome = 'cancelled' AND late_outcome IN ('valid','invalid') AND late_crossed = 1)
      AS crossed_cancel,
  SUM(outcome = 'orphaned') AS cut_off
"""
_LATENCY: Final = (
    "CASE WHEN outcome = 'won' THEN latency_ms"
    " WHEN outcome = 'cancelled' AND late_outcome = 'valid' THEN late_latency_ms END"
)


def _figures(row: sqlite3.Row, latencies: list[float]) -> dict[str, Any]:
    out: dict[str, Any] = {k: int(row[k] or 0) for k in
           ("calls", "successes", "errors", "timeouts", "wins", "late_results",
            "crossed_cancel", "cut_off")}  # fmt: skip
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
        "meanings": MEANINGS,
    }


# Characters per line of the legend under the table.
LEGEND_WIDTH: Final = 100
# The table's columns: (heading, figure, width).
_COLUMNS: Final = (
    ("calls", "calls", 6), ("ok", "successes", 5), ("err", "errors", 5), ("t/o", "timeouts", 5),
    ("won", "wins", 5), ("late", "late_results", 5), ("cross", "crossed_cancel", 5),
    ("cut", "cut_off", 5), ("succ%", "success_rate", 6), ("p50ms", "latency_p50_ms", 8),
    ("p95ms", "latency_p95_ms", 8),
)  # fmt: skip


def legend(columns: tuple[tuple[str, str, int], ...] = _COLUMNS) -> str:
    """What each column of a table means, one line each."""
    return "\n".join(
        textwrap.fill(f"{name}: {MEANINGS[name]}", LEGEND_WIDTH,
                      initial_indent=f"  {head:<6} ", subsequent_indent=" " * 9)
        for head, name, _ in columns
    )  # fmt: skip


def render_table(figures: dict[str, Any], *, with_legend: bool = True) -> str:
    """The agent statistics as a plain-text table (``hodlai dispatch stats``, the demo), with
    what each column means under it."""
    head = f"{'agent':<22} " + " ".join(f"{h:>{w}}" for h, _, w in _COLUMNS)
    lines = [head, "-" * len(head)]

    def cell(name: str, value: Any, width: int) -> str:
        if value is None:
            return f"{'-':>{width}}"
        if name == "success_rate":
            return f"{100 * value:>{width}.1f}"
        if name.startswith("latency"):
            return f"{value:>{width}.0f}"
        return f"{value:>{width}}"

    for a in figures["agents"]:
        label = str(a.get("name") or a["agent_id"])[:22]
        lines.append(f"{label:<22} " + " ".join(cell(n, a[n], w) for _, n, w in _COLUMNS))
    if with_legend:
        lines += ["", "Each figure counts since the agent was registered:", legend()]
    return "\n".join(lines)
