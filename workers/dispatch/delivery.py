"""Delivering a decided outcome to the remote queue, exactly once.

The outcome and its ``Idempotency-Key`` were committed together (store.py); the body sent
is built only from what was committed, so a re-post after a crash or a lost answer is the
very same delivery: the queue answers it as a replay, never as a second outcome. A job is
marked delivered (``X → X`` with ``delivered_at``) only after the queue accepted it, or
refused it for good (409: it holds another outcome; 404: it does not know the job), which
is logged as an error and kept in ``delivery_error``. Anything else is retried by the
dispatcher's delivery sweep.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Final

import structlog

from shared.errors import ConfigError
from workers.dispatch import metrics, store
from workers.dispatch.context import Context
from workers.dispatch.errors import QueueRejectedError, QueueUnavailableError
from workers.dispatch.machine import JobStatus
from workers.dispatch.metrics import EXECUTOR

log = structlog.get_logger(__name__)

#: failure codes after which the job could still succeed elsewhere or later
RETRYABLE_CODES: Final = frozenset({"agents_failed", "expired", "no_agents"})
_delivering: set[str] = set()


def result_body(result: Any, winner_agent_id: str, winner_work_id: str) -> dict[str, Any]:
    return {"result": result, "agent_id": winner_agent_id, "work_id": winner_work_id}


def failure_body(status: str, code: str, reason: str) -> dict[str, Any]:
    return {"status": status, "code": code, "reason": reason,
            "retryable": code in RETRYABLE_CODES}  # fmt: skip


async def deliver(
    ctx: Context, job_id: str, status: str, key: str, *, result: Any = None,
    winner_agent_id: str | None = None, winner_work_id: str | None = None,
    fail_code: str | None = None, fail_reason: str | None = None,
) -> bool:  # fmt: skip
    """Post the outcome; True when the queue has it (now or before)."""
    if job_id in _delivering:
        return False
    _delivering.add(job_id)
    kind = "result" if status == JobStatus.COMPLETED else "failure"
    try:
        try:
            if kind == "result":
                answer = await ctx.queue.post_result(
                    job_id, key, result_body(result, winner_agent_id or "", winner_work_id or "")
                )
            else:
                answer = await ctx.queue.post_failure(
                    job_id, key, failure_body(status, fail_code or "", fail_reason or "")
                )
        except (QueueUnavailableError, ConfigError) as exc:
            metrics.DELIVERIES.labels(EXECUTOR, kind, "failed").inc()
            log.warning("delivery_failed", job_id=job_id, kind=kind, error=str(exc))
            ctx.writer.submit(store.note_delivery_failure, job_id, str(exc))
            return False
        except QueueRejectedError as exc:
            metrics.DELIVERIES.labels(EXECUTOR, kind, "refused").inc()
            log.error("delivery_refused", job_id=job_id, kind=kind, status=exc.status,
                      code=exc.code, error=str(exc))  # fmt: skip
            await ctx.writer.run(store.mark_delivered, job_id, status,
                                 note=f"refused by the queue ({exc.status} {exc.code})",
                                 error=str(exc), actor=ctx.actor, now=ctx.clock())  # fmt: skip
            return False
        metrics.DELIVERIES.labels(EXECUTOR, kind, "replay" if answer.replay else "accepted").inc()
        await ctx.writer.run(store.mark_delivered, job_id, status,
                             note="delivered (a replay of an earlier post)" if answer.replay
                             else "delivered", error=None, actor=ctx.actor,
                             now=ctx.clock())  # fmt: skip
        return True
    finally:
        _delivering.discard(job_id)


async def deliver_row(ctx: Context, row: sqlite3.Row) -> bool:
    """Deliver an undelivered outcome from its committed row (the sweep, after a restart)."""
    return await deliver(
        ctx, row["job_id"], row["status"], row["delivery_key"],
        result=json.loads(row["result"]) if row["result"] is not None else None,
        winner_agent_id=row["winner_agent_id"], winner_work_id=row["winner_work_id"],
        fail_code=row["fail_code"], fail_reason=row["fail_reason"],
    )  # fmt: skip


def delivering() -> frozenset[str]:
    return frozenset(_delivering)
