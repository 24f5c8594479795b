"""The dispatcher's part of ``hodlai status`` (shared/status.py): its process, its agents'
health, the jobs in flight and the outcomes the queue has not accepted yet.

Problems: live jobs while no active agent has passed a health check (they can only expire),
and outcomes whose delivery to the queue keeps failing."""

from __future__ import annotations

from typing import Final

from shared.status import ExecutorReport, StatusContext, StatusProvider

EXECUTOR = "dispatch"
# Delivery attempts of one outcome after which its failing delivery is a problem: the sweep
# retries with back-off, so a few failures are a queue's hiccup, this many are not.
DELIVERY_ATTEMPTS_PROBLEM: Final = 10


def report(ctx: StatusContext) -> ExecutorReport:
    conn = ctx.conn
    active, healthy, failing = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(health = 'ok'), 0), COALESCE(SUM(health = 'failing'), 0) "
        "FROM agents WHERE status = 'ACTIVE'"
    ).fetchone()
    live, oldest = conn.execute(
        "SELECT COUNT(*), MIN(created_at) FROM jobs "
        "WHERE status IN ('OPEN', 'DISTRIBUTED', 'IN_PROGRESS')"
    ).fetchone()
    undelivered, stuck = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(delivery_attempts >= ?), 0) FROM jobs "
        "WHERE delivery_key IS NOT NULL AND delivered_at IS NULL",
        (DELIVERY_ATTEMPTS_PROBLEM,),
    ).fetchone()
    oldest_age = None if oldest is None else round(ctx.now - oldest, 1)
    fields = {
        "agents_active": active, "agents_healthy": healthy, "agents_failing": failing,
        "jobs_live": live, "oldest_live_job_age_s": oldest_age,
        "outcomes_undelivered": undelivered,
    }  # fmt: skip
    problems = []
    if live and not healthy:
        problems.append(
            f"{live} live job(s) and no active agent has passed a health check: hodlai agents list"
        )
    if stuck:
        problems.append(
            f"{stuck} outcome(s) failed delivery to the queue {DELIVERY_ATTEMPTS_PROBLEM}+ "
            "times: check HODLAI_DISPATCH_QUEUE_URL and the queue"
        )
    lines = [
        f"agents        {active} active: {healthy} healthy, {failing} failing "
        "(the rest not checked yet)",
        f"jobs live     {live}  oldest {'-' if oldest_age is None else f'{oldest_age} s'}",
        f"undelivered   {undelivered} outcome(s) waiting for the queue to accept them",
    ]
    return ExecutorReport(fields=fields, lines=lines, problems=problems)


STATUS = StatusProvider(executor=EXECUTOR, report=report, roles=("dispatcher",))
