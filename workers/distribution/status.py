"""The distribution executor's part of ``hodlai status`` (shared/status.py): tasks, runs in
flight (and the oldest), paused runs with their reasons, failed transfers.

Problems: a run paused for longer than ``PAUSED_PROBLEM_S`` (the source stays short of
tokens, gas or allowance: an operator must fund it), and a run pending for longer than
``PENDING_PROBLEM_S`` (no distributor pays its network)."""

from __future__ import annotations

from typing import Final

from shared.status import ExecutorReport, StatusContext, StatusProvider

EXECUTOR = "dist"
#: seconds a run may stay paused before it is a problem: a shortfall an hour old is not a blip
PAUSED_PROBLEM_S: Final = 3600.0
#: seconds a run may stay pending: a running distributor claims it within a pass
PENDING_PROBLEM_S: Final = 300.0


def report(ctx: StatusContext) -> ExecutorReport:
    conn = ctx.conn
    tasks, enabled = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(enabled), 0) FROM distribution_tasks WHERE status = 'active'"
    ).fetchone()
    in_flight, oldest = conn.execute(
        "SELECT COUNT(*), MIN(created_at) FROM distribution_runs"
        " WHERE status IN ('pending', 'running', 'paused')"
    ).fetchone()
    paused = conn.execute(
        "SELECT run_id, task_id, reason, updated_at FROM distribution_runs"
        " WHERE status = 'paused' ORDER BY updated_at"
    ).fetchall()
    stale_pending = conn.execute(
        "SELECT COUNT(*) FROM distribution_runs WHERE status = 'pending' AND created_at < ?",
        (ctx.now - PENDING_PROBLEM_S,),
    ).fetchone()[0]
    failed = conn.execute(
        "SELECT COUNT(*) FROM distribution_transfers WHERE status = 'failed'"
    ).fetchone()[0]
    oldest_age = None if oldest is None else round(ctx.now - oldest, 1)
    fields = {
        "tasks": tasks, "tasks_enabled": enabled, "runs_in_flight": in_flight,
        "oldest_run_in_flight_age_s": oldest_age, "runs_paused": len(paused),
        "transfers_failed": failed,
    }  # fmt: skip
    problems = [
        f"run {r['run_id']} of task {r['task_id']} paused {round(ctx.now - r['updated_at'])} s:"
        f" {r['reason'] or 'no reason recorded'}"
        for r in paused
        if ctx.now - r["updated_at"] > PAUSED_PROBLEM_S
    ]
    if stale_pending:
        problems.append(
            f"{stale_pending} run(s) pending for {int(PENDING_PROBLEM_S)}+ s: is a distributor"
            " running for their network (hodlai distributor, HODLAI_DIST_NETWORKS)?"
        )
    lines = [
        f"tasks         {tasks} ({enabled} enabled)",
        f"runs          {in_flight} in flight, {len(paused)} paused"
        f"  oldest {'-' if oldest_age is None else f'{oldest_age} s'}",
        f"transfers     {failed} failed (sqlite3: SELECT * FROM v_distribution_failed_transfers)",
    ]
    return ExecutorReport(fields=fields, lines=lines, problems=problems)


STATUS = StatusProvider(executor=EXECUTOR, report=report, machine_prefixes=("distribution",))
