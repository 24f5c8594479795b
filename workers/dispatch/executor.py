"""One job from its claim to its outcome: match, distribute, call the agents, keep the
first valid result, retry with the next-ranked agents, or fail, expire or cancel.

Guarantees:

- The job's deadline holds across every round: no call outlives it; when it passes first,
  the job is EXPIRED and its open calls TIMEOUT.
- Concurrent mode calls the round's agents at once; hedged mode (a per-category setting)
  calls the best one and adds the next only after the category's observed p95 latency (or
  at once after a failure), at most ``HODLAI_DISPATCH_HEDGE_MAX_EXTRA`` extra calls a job.
- The first *valid* result (it matches the job's result schema) wins, atomically
  (store.record_win). The other calls are cancelled (``POST {endpoint}/cancel``) and left
  to answer: a late answer is recorded with its timing for the agent, never for the job.
- When every call of a round fails, the next round takes the next-ranked agents, up to
  ``EXECUTION_RETRY_COUNT`` more rounds; then the job is FAILED with every reason.
- Each outcome is committed with its delivery key before the queue is told (delivery.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import structlog

from shared.errors import TransitionConflict
from workers.dispatch import agent_client, matcher, metrics, store
from workers.dispatch.book import Verdict
from workers.dispatch.context import Context
from workers.dispatch.delivery import deliver
from workers.dispatch.jobs import result_problem
from workers.dispatch.machine import JobStatus, WorkStatus
from workers.dispatch.metrics import EXECUTOR

log = structlog.get_logger(__name__)
J, W = JobStatus, WorkStatus

# Milliseconds below which a hedge delay is not taken: a p95 of 0 (instant mock answers)
# would otherwise send every backup at once.
HEDGE_FLOOR_MS: Final = 1.0

RoundEnd = Literal["won", "ended", "failed"]


@dataclass
class JobRun:
    """A job being executed, as its task sees it."""

    job_id: str
    category: str
    tags: tuple[str, ...]
    skill_level: int
    input: Any
    schema_text: str
    deadline: float
    status: str
    rounds: int
    retries: int
    fetched_at: float
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled_by: str = ""
    extra_left: int = 0
    reasons: list[str] = field(default_factory=list)
    unavailable: str = ""  # why the agents that meet its requirements could not take it

    @classmethod
    def of(cls, row: Any) -> JobRun:
        return cls(
            job_id=row["job_id"], category=row["category"], tags=tuple(json.loads(row["tags"])),
            skill_level=int(row["skill_level"]), input=json.loads(row["input"]),
            schema_text=row["result_schema"], deadline=float(row["deadline"]),
            status=row["status"], rounds=int(row["rounds"]), retries=int(row["retries"]),
            fetched_at=float(row["fetched_at"]),
        )  # fmt: skip


@dataclass
class Call:
    work_id: str
    agent_id: str
    endpoint: str
    planned: store.Planned
    status: str  # the row's status as this task last wrote it
    started: float = 0.0


class JobExecutor:
    """Runs one job (one instance per job)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.lease_s = ctx.settings.dispatch_lease_s
        self._called: set[str] = set()  # agents called in the current round

    # ---- the job -----------------------------------------------------------------------

    async def run(self, job: JobRun) -> None:
        ctx = self.ctx
        job.extra_left = ctx.settings.dispatch_hedge_max_extra
        tried: set[str] = set()
        next_round = job.rounds
        if job.status != J.OPEN:  # resumed after a restart: its earlier calls are closed
            tried, next_round = await ctx.db.run(store.tried_agents, job.job_id)
        while True:
            now = ctx.clock()
            if job.cancel.is_set():
                await self._end(job, J.CANCELLED, "cancelled", f"cancelled by {job.cancelled_by}")
                return
            if now >= job.deadline:
                what = "the deadline passed"
                if job.unavailable and not job.reasons:
                    what += f" before any agent could take the job ({job.unavailable})"
                await self._end(job, J.EXPIRED, "expired", self._with_reasons(job, what))
                return
            ranking = matcher.rank(
                ctx.book, category=job.category, tags=job.tags, skill_level=job.skill_level,
                now=now, exclude=frozenset(tried),
            )  # fmt: skip
            planned = self._plan(job, ranking, now)
            if not planned:
                if tried:
                    await self._end(
                        job,
                        J.FAILED,
                        "agents_failed",
                        self._with_reasons(job, "no untried agent is left"),
                    )
                    return
                if not ranking.could_take():
                    await self._end(job, J.FAILED, "no_agents", _no_agents(job, ranking))
                    return
                # Agents that meet its requirements exist, but none can take it now (unhealthy,
                # not health-checked yet, breaker open): match again shortly.
                job.unavailable = ranking.summary(matcher.NOT_NOW) or "breaker probes taken"
                await _wait(job.cancel, min(ctx.settings.dispatch_rematch_s, job.deadline - now))
                continue
            result = await self._round(job, ranking, planned, next_round, now)
            if result != "failed":
                return
            tried |= self._called  # agents called; unused backups stay eligible
            next_round += 1
            job.retries += 1
            if ctx.clock() >= job.deadline:
                continue  # the calls timed out with the deadline: EXPIRED, not agents_failed
            if job.retries > ctx.settings.dispatch_execution_retry_count:
                await self._end(job, J.FAILED, "agents_failed",
                                self._with_reasons(job, "every agent failed"))  # fmt: skip
                return

    def _with_reasons(self, job: JobRun, what: str) -> str:
        if not job.reasons:
            return what
        return f"{what}: " + "; ".join(job.reasons[-12:])

    def _plan(self, job: JobRun, ranking: matcher.Ranking, now: float) -> list[store.Planned]:
        book = self.ctx.book
        hedged = self.ctx.settings.hedged(job.category)
        out: list[store.Planned] = []
        for position, scored in enumerate(ranking.eligible):
            if len(out) >= self.ctx.settings.dispatch_max_agents_per_job:
                break
            first = not out
            if (first or not hedged) and not book.breaker(scored.agent.agent_id).reserve(now):
                continue  # its half-open probe is taken by another job
            role = ("primary" if first else "hedge") if hedged else "concurrent"
            status = W.ASSIGNED if first or not hedged else W.IDLE
            out.append(store.Planned(scored.agent.agent_id, position, scored.score, role, status))
        return out

    def _hedge_delay_ms(self, category: str) -> float:
        s = self.ctx.settings
        observed = self.ctx.book.latency_quantile(
            category, s.dispatch_hedge_quantile, s.dispatch_hedge_min_samples
        )
        delay = s.dispatch_hedge_initial_delay_ms if observed is None else observed
        return max(HEDGE_FLOOR_MS, delay)

    # ---- one round ---------------------------------------------------------------------

    async def _round(
        self, job: JobRun, ranking: matcher.Ranking, planned: list[store.Planned],
        round_no: int, now: float,
    ) -> RoundEnd:  # fmt: skip
        ctx, s = self.ctx, self.ctx.settings
        hedged = s.hedged(job.category)
        delay_ms = self._hedge_delay_ms(job.category) if hedged else None
        mode = "hedged" if hedged else "concurrent"
        why = (
            f"best of {len(ranking.eligible)} eligible first; the next after {delay_ms:.0f} ms"
            f" (p{s.dispatch_hedge_quantile * 100:g} of {job.category}) or a failure"
            if hedged else
            f"top {len(planned)} of {len(ranking.eligible)} eligible by score, called at once"
        )  # fmt: skip
        explain = ranking.explain([p.agent_id for p in planned], why)
        explain.update(round=round_no, at=now, mode=mode, hedge_delay_ms=delay_ms,
                       retry=job.retries > 0)  # fmt: skip
        work_ids = await ctx.writer.run(
            store.begin_round, {"job_id": job.job_id, "category": job.category},
            frm=job.status, round_no=round_no, retries=job.retries, planned=planned,
            explain=explain, mode=mode, max_agents=s.dispatch_max_agents_per_job,
            hedge_delay_ms=delay_ms, owner=ctx.owner, lease_until=now + self.lease_s,
            actor=ctx.actor, now=now,
        )  # fmt: skip
        if job.status == J.OPEN:
            job.status = J.DISTRIBUTED
        calls = [
            Call(w, p.agent_id, ctx.book.agents[p.agent_id].endpoint, p, p.status)
            for w, p in zip(work_ids, planned, strict=True)
        ]
        return await self._execute(job, calls, delay_ms)

    async def _execute(  # noqa: PLR0912 -- one wait loop: answers, hedge timer, deadline, cancel
        self, job: JobRun, calls: list[Call], delay_ms: float | None
    ) -> RoundEnd:
        ctx = self.ctx
        self._called = set()
        running: dict[asyncio.Task[agent_client.Answer], Call] = {}
        backups = [c for c in calls if c.status == W.IDLE]
        for call in calls:
            if call.status == W.ASSIGNED:
                self._launch(job, call, running)
        hedge_at = time.monotonic() + (delay_ms or 0) / 1000
        cancel_wait = asyncio.create_task(job.cancel.wait())
        try:
            while running:
                timeout = job.deadline - ctx.clock()
                can_hedge = delay_ms is not None and backups and job.extra_left > 0
                if can_hedge:
                    timeout = min(timeout, hedge_at - time.monotonic())
                done, _ = await asyncio.wait(
                    [*running, cancel_wait], timeout=max(0.0, timeout),
                    return_when=asyncio.FIRST_COMPLETED,
                )  # fmt: skip
                if cancel_wait in done:
                    await self._stop_round(job, calls, running, J.CANCELLED, "cancelled",
                                           f"cancelled by {job.cancelled_by}")  # fmt: skip
                    return "ended"
                if not done:
                    if ctx.clock() >= job.deadline:
                        await self._stop_round(
                            job,
                            calls,
                            running,
                            J.EXPIRED,
                            "expired",
                            self._with_reasons(job, "the deadline passed"),
                        )
                        return "ended"
                    if can_hedge and self._launch_backup(job, backups, running, "hedge"):
                        hedge_at = time.monotonic() + (delay_ms or 0) / 1000
                    continue
                for finished in done:
                    call = running.pop(finished)  # type: ignore[arg-type]
                    answer: agent_client.Answer = finished.result()  # type: ignore[assignment]
                    end = await self._answered(job, call, answer, calls, running)
                    if end is not None:
                        return end
                if not running and backups and job.extra_left > 0 and delay_ms is not None:
                    self._launch_backup(job, backups, running, "failover")
        finally:
            cancel_wait.cancel()
        idle = [(c.work_id, c.status, c.agent_id) for c in backups if c.status == W.IDLE]
        if idle:
            ctx.writer.submit(_close_idle, idle, owner=ctx.owner, actor=ctx.actor,
                              now=ctx.clock())  # fmt: skip
        return "failed"

    def _launch_backup(
        self, job: JobRun, backups: list[Call], running: dict[Any, Call], kind: str
    ) -> bool:
        now = self.ctx.clock()
        while backups:
            call = backups.pop(0)
            if self.ctx.book.breaker(call.agent_id).reserve(now):
                job.extra_left -= 1
                metrics.EXTRA_CALLS.labels(EXECUTOR, job.category, kind).inc()
                self._launch(job, call, running)
                return True
            backups.append(call)  # keep it listed: closed as never called at the end
            break
        return False

    def _launch(self, job: JobRun, call: Call, running: dict[Any, Call]) -> None:
        ctx, s = self.ctx, self.ctx.settings
        now = ctx.clock()
        job_from = J.DISTRIBUTED if job.status == J.DISTRIBUTED else None
        ctx.writer.submit(store.start_calls, job.job_id, [(call.work_id, call.status)],
                          job_from=job_from, owner=ctx.owner, lease_until=now + self.lease_s,
                          actor=ctx.actor, now=now)  # fmt: skip
        job.status, call.status, call.started = J.IN_PROGRESS, W.WORKING, time.monotonic()
        self._called.add(call.agent_id)
        payload = {
            "job_id": job.job_id,
            "work_id": call.work_id,
            "category": job.category,
            "tags": list(job.tags),
            "input": job.input,
            "result_schema": json.loads(job.schema_text),
            "deadline": job.deadline,
        }
        timeout = min(s.dispatch_default_agent_timeout_s, job.deadline - now)
        task = asyncio.create_task(agent_client.execute(
            ctx.http, call.endpoint, payload, timeout_s=timeout,
            max_bytes=s.dispatch_max_result_bytes,
        ))  # fmt: skip
        running[task] = call

    async def _answered(
        self, job: JobRun, call: Call, answer: agent_client.Answer, calls: list[Call],
        running: dict[asyncio.Task[agent_client.Answer], Call],
    ) -> RoundEnd | None:  # fmt: skip
        ctx = self.ctx
        now = ctx.clock()
        problem = None
        if answer.kind == "result":
            problem = result_problem(job.schema_text, answer.result)
            if problem is None and now < job.deadline:
                return await self._win(job, call, answer, calls, running)
        outcome, to, verdict, error = _failure(answer, problem)
        job.reasons.append(f"{call.agent_id}: {error}")
        figures = self._observe(call.agent_id, job.category, verdict, None, now)
        call.status = to
        # A call that hit its timeout may still be running at the agent: tell it to stop.
        timed_out = answer.kind == "timeout"
        if timed_out:
            ctx.spawn(_cancel_quietly(ctx, call, job.job_id), name=f"cancel-{call.work_id}")
        ctx.writer.submit(store.finish_call, call.work_id, to=to, outcome=outcome,
                          latency_ms=answer.latency_ms, error=error,
                          result=answer.result if answer.kind == "result" else None,
                          figures=figures, owner=ctx.owner, actor=ctx.actor, now=now,
                          cancel_sent=timed_out)  # fmt: skip
        return None

    async def _win(
        self, job: JobRun, call: Call, answer: agent_client.Answer, calls: list[Call],
        running: dict[asyncio.Task[agent_client.Answer], Call],
    ) -> RoundEnd:  # fmt: skip
        ctx = self.ctx
        now = ctx.clock()
        others = [(c.work_id, c.status, c.agent_id) for c in calls
                  if c is not call and c.status in (W.WORKING, W.IDLE, W.ASSIGNED)]  # fmt: skip
        figures = [self._observe(call.agent_id, job.category, "success", answer.latency_ms, now,
                                 won=True)]  # fmt: skip
        figures += [self._figures(c.agent_id, None) for c in calls
                    if c is not call and c.status == W.WORKING]  # fmt: skip
        try:
            key = await ctx.writer.run(
                store.record_win, job.job_id, winner=call.work_id, agent_id=call.agent_id,
                latency_ms=answer.latency_ms, result=answer.result, others=others,
                figures=figures, owner=ctx.owner, actor=ctx.actor, now=now,
            )  # fmt: skip
        except TransitionConflict as exc:  # cancelled or taken over under us: nothing to win
            log.warning("job_win_refused", job_id=job.job_id, error=str(exc))
            self._abandon(running)
            return "ended"
        call.status = W.COMPLETED
        metrics.AGENT_WINS.labels(EXECUTOR, call.agent_id, job.category).inc()
        self._finished(job, J.COMPLETED, "won", now)
        for task, other in running.items():
            ctx.spawn(self._late(job, other, task), name=f"late-{other.work_id}")
        running.clear()
        ctx.spawn(deliver(ctx, job.job_id, J.COMPLETED, key, result=answer.result,
                          winner_agent_id=call.agent_id, winner_work_id=call.work_id),
                  name=f"deliver-{job.job_id}")  # fmt: skip
        return "won"

    async def _late(self, job: JobRun, call: Call, task: asyncio.Task[agent_client.Answer]) -> None:
        """A cancelled call: tell the agent, then record whatever it still answers. An answer
        that is in by the time the agent acknowledged the cancel (or our cancel call ended)
        crossed it: it was under way, and is counted apart from the late results."""
        ctx = self.ctx
        await agent_client.cancel(ctx.http, call.endpoint, call.work_id, job.job_id)
        crossed = task.done()
        answer = await task
        now = ctx.clock()
        if answer.kind == "result":
            late = "valid" if result_problem(job.schema_text, answer.result) is None else "invalid"
        else:
            late = answer.kind  # cancelled, error, timeout
        verdict: Verdict | None = {
            "valid": "success",
            "invalid": "error",
            "error": "error",
            "timeout": "timeout",
        }.get(late)  # type: ignore[assignment]
        figures = None
        is_result = late in ("valid", "invalid")
        if verdict is not None:
            latency = answer.latency_ms if verdict == "success" else None
            figures = self._observe(call.agent_id, job.category, verdict, latency, now,
                                    late=is_result, crossed=crossed, count_call=False)  # fmt: skip
            if is_result:
                counter = metrics.CROSSED_CANCEL if crossed else metrics.LATE_RESULTS
                counter.labels(EXECUTOR, call.agent_id, job.category).inc()
        else:
            ctx.book.breaker(call.agent_id).released()
        ctx.writer.submit(store.record_late, call.work_id, late_outcome=late,
                          latency_ms=answer.latency_ms,
                          result=answer.result if answer.kind == "result" else None,
                          figures=figures, actor=ctx.actor, now=now,
                          crossed=crossed and is_result)  # fmt: skip

    # ---- endings -----------------------------------------------------------------------

    async def _stop_round(
        self, job: JobRun, calls: list[Call], running: dict[Any, Call], to: str, code: str,
        reason: str,
    ) -> None:  # fmt: skip
        """Deadline or cancel with calls in flight: close them and end the job."""
        ctx = self.ctx
        now = ctx.clock()
        open_rows = [(c.work_id, c.status, c.agent_id) for c in calls
                     if c.status in (W.WORKING, W.IDLE, W.ASSIGNED)]  # fmt: skip
        figures = []
        for c in calls:
            if c.status == W.WORKING:
                verdict: Verdict | None = "timeout" if to == J.EXPIRED else None
                figures.append(self._observe(c.agent_id, job.category, verdict, None, now)
                               if verdict else self._figures(c.agent_id, None))  # fmt: skip
                ctx.spawn(_cancel_quietly(ctx, c, job.job_id), name=f"cancel-{c.work_id}")
        self._abandon(running)
        await self._end(job, to, code, reason, open_rows=open_rows, figures=figures)

    def _abandon(self, running: dict[Any, Call]) -> None:
        for task in running:
            task.cancel()
        running.clear()

    async def _end(
        self, job: JobRun, to: str, code: str, reason: str,
        open_rows: list[tuple[str, str, str]] | None = None, figures: list[Any] | None = None,
    ) -> None:  # fmt: skip
        ctx = self.ctx
        now = ctx.clock()
        try:
            key = await ctx.writer.run(
                store.end_job, job.job_id, frm=job.status, to=to, code=code, reason=reason,
                open_rows=open_rows or [], owner=ctx.owner, actor=ctx.actor, now=now,
                figures=figures or [],
            )  # fmt: skip
        except TransitionConflict as exc:
            log.warning("job_end_refused", job_id=job.job_id, to=to, error=str(exc))
            return
        self._finished(job, to, code, now)
        log.info("job_ended", job_id=job.job_id, status=to, code=code, reason=reason[:300])
        await deliver(ctx, job.job_id, to, key, fail_code=code, fail_reason=reason[:2000])

    def _finished(self, job: JobRun, status: str, code: str, now: float) -> None:
        mode = "hedged" if self.ctx.settings.hedged(job.category) else "concurrent"
        metrics.JOB_OUTCOMES.labels(EXECUTOR, status, code).inc()
        metrics.JOB_LATENCY.labels(EXECUTOR, mode).observe(max(0.0, now - job.fetched_at))

    # ---- the agents' record ------------------------------------------------------------

    def _observe(
        self, agent_id: str, category: str, verdict: Verdict | None, latency_ms: float | None,
        now: float, *, won: bool = False, late: bool = False, crossed: bool = False,
        count_call: bool = True,
    ) -> store.AgentFigures:  # fmt: skip
        book = self.ctx.book
        breaker = book.breaker(agent_id)
        if verdict == "success":
            breaker.succeeded()
        elif verdict is not None:
            breaker.failed(now)
        if verdict is not None:
            book.observe(agent_id, category, verdict, latency_ms, now)
            metrics.AGENT_CALLS.labels(EXECUTOR, agent_id, category, verdict).inc()
            if verdict == "success" and latency_ms is not None:
                metrics.AGENT_LATENCY.labels(EXECUTOR, agent_id, category).observe(
                    latency_ms / 1000
                )
        metrics.BREAKER_OPEN.labels(EXECUTOR, agent_id).set(1 if breaker.state == "open" else 0)
        return self._figures(agent_id, verdict, won=won, late=late, crossed=crossed,
                             called=count_call)  # fmt: skip

    def _figures(
        self, agent_id: str, verdict: Verdict | None, *, won: bool = False, late: bool = False,
        crossed: bool = False, called: bool = True,
    ) -> store.AgentFigures:  # fmt: skip
        book = self.ctx.book
        breaker = book.breaker(agent_id)
        if verdict is None and called:
            breaker.released()
        p50, p95 = book.agent_latency_figures(agent_id)
        return store.AgentFigures(
            agent_id, verdict, late=late, crossed=crossed, won=won, called=called,
            breaker=breaker.state,
            consecutive_failures=breaker.failures,
            breaker_open_until=breaker.open_until if breaker.state == "open" else None,
            p50=p50, p95=p95,
        )  # fmt: skip


def _failure(answer: agent_client.Answer, problem: str | None) -> tuple[str, str, Verdict, str]:
    """(outcome, status, verdict, error) of a call that did not win."""
    if answer.kind == "timeout":
        return "timeout", W.TIMEOUT, "timeout", answer.error or "timeout"
    if answer.kind == "result":
        if problem is None:
            return "error", W.FAILED, "error", "a valid result after the deadline"
        return "invalid", W.FAILED, "error", problem
    if answer.kind == "cancelled":
        return "error", W.FAILED, "error", "the agent answered 'cancelled' unasked"
    return "error", W.FAILED, "error", answer.error or "error"


def _no_agents(job: JobRun, ranking: matcher.Ranking) -> str:
    wanted = f"category {job.category!r}"
    if job.tags:
        wanted += f", tags {list(job.tags)}"
    wanted += f", skill level >= {job.skill_level}"
    others = ranking.summary()
    return f"no active agent offers {wanted}" + (
        f" (agents of that category left out: {others})" if others else ""
    )


def _close_idle(conn: Any, rows: list[tuple[str, str, str]], *, owner: str, actor: str,
                now: float) -> None:  # fmt: skip
    store._close_rows(conn, rows, owner=owner, actor=actor, note="not needed", now=now)


async def _cancel_quietly(ctx: Context, call: Call, job_id: str) -> None:
    await agent_client.cancel(ctx.http, call.endpoint, call.work_id, job_id)


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), max(0.0, seconds))
