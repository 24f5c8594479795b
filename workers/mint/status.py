"""The mint executor's part of ``hodlai status`` (shared/status.py): tasks per status, the
payments whose outcome is still open, fundings and refunds waiting for the relayer.

Problems: failed tasks (an operator or the user retries or refunds them), a payment open for
longer than :data:`OPEN_PAYMENT_PROBLEM_S` (the mint server does not answer and its
authorization has not expired yet), a funding recorded but not submitted for as long (the
relayer is paused: gas)."""

from __future__ import annotations

from typing import Final

from shared.status import ExecutorReport, StatusContext, StatusProvider

EXECUTOR = "mint"
OPEN_PAYMENT_PROBLEM_S: Final = 900.0


def report(ctx: StatusContext) -> ExecutorReport:
    conn = ctx.conn
    counts = dict(
        conn.execute("SELECT status, n FROM state_counts WHERE machine = 'mint.task'").fetchall()
    )
    open_payments, oldest_payment = conn.execute(
        "SELECT COUNT(*), MIN(created_at) FROM mint_payments WHERE status IN ('prepared', 'signed')"
    ).fetchone()
    waiting, oldest_transfer = conn.execute(
        "SELECT COUNT(*), MIN(created_at) FROM mint_transfers WHERE status = 'recorded'"
    ).fetchone()
    fields = {
        **{f"tasks_{s}": int(counts.get(s, 0)) for s in (
            "pending_payment", "funded", "processing", "completed", "failed", "cancelled")},
        "payments_open": open_payments, "transfers_waiting": waiting,
    }  # fmt: skip
    problems = []
    if counts.get("failed", 0):
        problems.append(
            f"{counts['failed']} failed task(s): sqlite3 the database 'SELECT * FROM "
            "v_mint_failed_tasks'; retry or refund them (POST /api/ai-agent/task/ID/retry)"
        )
    if oldest_payment is not None and ctx.now - oldest_payment > OPEN_PAYMENT_PROBLEM_S:
        problems.append(
            f"a mint payment has been open for {ctx.now - oldest_payment:.0f} s: is the mint "
            "server up?"
        )
    if oldest_transfer is not None and ctx.now - oldest_transfer > OPEN_PAYMENT_PROBLEM_S:
        problems.append(
            f"a funding or refund has waited {ctx.now - oldest_transfer:.0f} s for the relayer:"
            " is hodlai mint-executor running, with gas?"
        )
    lines = [
        "tasks         " + "  ".join(f"{s} {fields[f'tasks_{s}']}" for s in (
            "pending_payment", "funded", "processing", "completed", "failed", "cancelled")),
        f"payments open {open_payments} (prepared or signed, resolving)",
        f"transfers     {waiting} waiting for the relayer",
    ]  # fmt: skip
    return ExecutorReport(fields=fields, lines=lines, problems=problems)


STATUS = StatusProvider(executor=EXECUTOR, report=report, roles=("mint-executor",))
