"""``hodlai dispatcher``'s loop: take jobs from the remote queue, run each in its own task,
deliver every outcome, keep the agents' health and the leases.

Guarantees:

- A fetched job is validated, recorded (OPEN, leased to this dispatcher) and only then
  acknowledged to the queue; an invalid one is recorded FAILED with its reason and failed
  back, never dispatched. A job the queue hands out again is recognised by its id.
- Start-up reconciles what a killed dispatcher left: this process holds the database's
  dispatcher role (shared.instance), so every lease another owner holds is a dead one and
  is taken over at once; calls that were in flight are closed as ``orphaned`` (their
  answers died with the process; no verdict for the agent) and cancelled at the agent;
  their jobs resume with a new round, within their deadline; decided outcomes not yet
  delivered are delivered under their recorded key.
- The loop's step returns how long to sleep (shared.runtime.run_loop); below it errors
  propagate, except at a job task's boundary, which logs and gives the job back.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

import structlog

from shared import state
from shared.db import atomic
from workers.dispatch import agent_client, agents, metrics, store
from workers.dispatch.context import Context
from workers.dispatch.delivery import deliver_row, delivering
from workers.dispatch.errors import InvalidJobError
from workers.dispatch.executor import JobExecutor, JobRun
from workers.dispatch.jobs import parse_envelope, validate
from workers.dispatch.machine import AGENTS, JOB_LIVE, JOBS, AgentStatus, JobStatus
from workers.dispatch.metrics import EXECUTOR

log = structlog.get_logger(__name__)
J = JobStatus

# Seconds between claims of jobs left without an owner (resumed after a restart, given back
# by a job task that failed): such jobs are rare, the claim is three indexed queries.
RECLAIM_EVERY_S: Final = 2.0
# Seconds between health checks while an agent waits for its first passing one (registered,
# re-enabled or moved while we run): it takes no calls until then, so check it soon.
UNCHECKED_EVERY_S: Final = 1.0
# Seconds between refreshes of the per-status job gauge.
GAUGE_EVERY_S: Final = 1.0
# Undelivered outcomes posted at once by the sweep.
SWEEP_BATCH: Final = 200
# Seconds a stopping dispatcher lets its jobs finish before it gives them back.
STOP_GRACE_S: Final = 10.0


class Dispatcher:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.in_flight: dict[str, tuple[asyncio.Task[None], JobRun]] = {}
        self._fetch_pause_until = 0.0
        self._next: dict[str, float] = {}
        self.fetched = 0
        self.health_task: asyncio.Task[None] | None = None

    # ---- start and stop ------------------------------------------------------------------

    async def start(self) -> None:
        ctx = self.ctx
        ctx.writer.start()
        adopted = await ctx.db.run(_adopt, ctx.owner)
        orphans = await ctx.db.run(store.orphaned_work)
        if orphans:
            await ctx.writer.run(store.close_orphans, orphans, actor=ctx.actor, now=ctx.clock())
            for row in orphans:
                if row["status"] == "WORKING" and row["endpoint"]:
                    ctx.spawn(agent_client.cancel(ctx.http, row["endpoint"], row["work_id"],
                                                  row["job_id"]), name="cancel-orphan")  # fmt: skip
        replayed = await ctx.db.run(ctx.book.rebuild)
        await self.refresh_agents()
        # An agent takes calls only after a passing health check: check them all before the
        # first job is taken (bounded by HODLAI_DISPATCH_HEALTH_TIMEOUT_S).
        self._due("health", ctx.settings.dispatch_health_interval_s)
        await self.check_health()
        log.info("dispatcher_started", owner=ctx.owner, leases_adopted=adopted,
                 orphaned_calls=len(orphans), calls_replayed=replayed,
                 agents=len(ctx.book.agents))  # fmt: skip

    async def stop(self) -> None:
        """Finish in-flight jobs for a while, then give the rest back (a restart resumes
        them), deliver what is decided, flush the writer."""
        ctx = self.ctx
        tasks = [t for t, _ in self.in_flight.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_GRACE_S)
        left = list(self.in_flight)
        for task, _ in self.in_flight.values():
            task.cancel()
        await asyncio.gather(*(t for t, _ in self.in_flight.values()), return_exceptions=True)
        for task in list(ctx.background):
            task.cancel()
        await asyncio.gather(*ctx.background, return_exceptions=True)
        if left:
            await ctx.writer.run(_give_back, left, ctx.owner)
        await ctx.writer.close()
        log.info("dispatcher_stopped", jobs_given_back=len(left))

    # ---- the loop's step -------------------------------------------------------------------

    async def step(self) -> float:
        ctx = self.ctx
        await ctx.db.check_file()
        now = ctx.clock()
        if self._due("agents", ctx.settings.dispatch_agents_refresh_s):
            await self.refresh_agents()
        idle = self.health_task is None or self.health_task.done()
        due = self._due("health", ctx.settings.dispatch_health_interval_s)
        if idle and (due or (ctx.book.unchecked() and self._due("unchecked", UNCHECKED_EVERY_S))):
            self.health_task = ctx.spawn(self.check_health(), name="health")
        if self._due("leases", ctx.settings.dispatch_lease_s / 3):
            await self.extend_leases(now)
        if self._due("cancels", 0.5):
            await self.apply_cancels()
        if self._due("reclaim", RECLAIM_EVERY_S):
            await self.reclaim(now)
        if self._due("sweep", ctx.settings.dispatch_delivery_retry_s):
            await self.sweep_deliveries()
        if self._due("gauge", GAUGE_EVERY_S):
            counts = await ctx.db.run(state.counts, JOBS)
            for status, n in counts.items():
                metrics.JOBS.labels(EXECUTOR, status).set(n)
        metrics.IN_FLIGHT.labels(EXECUTOR).set(len(self.in_flight))
        taken = await self.intake(now)
        if taken:
            return 0.0
        return min(ctx.settings.dispatch_poll_idle_s, 0.05 if self.in_flight else 1.0)

    def _due(self, what: str, every_s: float) -> bool:
        mono = time.monotonic()
        if mono < self._next.get(what, 0.0):
            return False
        self._next[what] = mono + every_s
        return True

    # ---- intake ----------------------------------------------------------------------------

    async def intake(self, now: float) -> int:
        ctx, s = self.ctx, self.ctx.settings
        free = s.dispatch_max_in_flight - len(self.in_flight)
        if free <= 0 or time.monotonic() < self._fetch_pause_until:
            return 0
        items = await ctx.queue.fetch(min(s.dispatch_fetch_batch, free), s.dispatch_visibility_s)
        if not items:
            self._fetch_pause_until = time.monotonic() + s.dispatch_poll_idle_s
            return 0
        valid, invalid, receipts = [], [], []
        for item in items:
            try:
                envelope = parse_envelope(item)
            except ValueError as exc:
                metrics.INVALID_JOBS.labels(EXECUTOR, "unusable_envelope").inc()
                log.warning("queue_item_unusable", error=str(exc))
                continue
            receipts.append(envelope.receipt)
            try:
                valid.append(validate(envelope, now=now, max_deadline_s=s.dispatch_max_deadline_s,
                                      max_input_bytes=s.dispatch_max_input_bytes))  # fmt: skip
            except InvalidJobError as exc:
                metrics.INVALID_JOBS.labels(EXECUTOR, exc.code).inc()
                log.info("job_invalid", job_id=envelope.job_id, code=exc.code, reason=str(exc))
                invalid.append((envelope.job_id, envelope.body, exc.code, str(exc)))
        fresh, bad = await ctx.writer.run(
            store.record_fetched, valid, invalid, owner=ctx.owner, lease_s=s.dispatch_lease_s,
            actor=ctx.actor, now=now,
        )  # fmt: skip
        self.fetched += len(fresh) + len(bad)
        ids = [j.job_id for j in valid] + [i[0] for i in invalid]
        ctx.spawn(self._ack(receipts, ids), name="ack")
        fresh_set = set(fresh)
        for job in valid:
            if job.job_id in fresh_set:
                row = {**job.row(fetched_at=now), "status": J.OPEN, "rounds": 0, "retries": 0}
                self._start(JobRun.of(row))
        if bad:
            rows = await ctx.db.run(_rows, bad)
            for row in rows:
                ctx.spawn(deliver_row(ctx, row), name="deliver-invalid")
        return len(items)

    async def _ack(self, receipts: list[str], job_ids: list[str]) -> None:
        ctx = self.ctx
        try:
            stale = await ctx.queue.ack(receipts)
        except Exception as exc:  # noqa: BLE001 -- an ack is re-sent when the queue re-offers the job
            log.warning("queue_ack_failed", jobs=len(receipts), error=str(exc))
            return
        if stale:
            log.warning("queue_ack_stale", receipts=len(stale))
        ctx.writer.submit(store.mark_acked, job_ids, now=ctx.clock())

    def _start(self, job: JobRun) -> None:
        if job.job_id in self.in_flight:
            return
        task = asyncio.create_task(self._job_boundary(job), name=f"job-{job.job_id}")
        self.in_flight[job.job_id] = (task, job)

    async def _job_boundary(self, job: JobRun) -> None:
        try:
            await JobExecutor(self.ctx).run(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("job_task_failed", job_id=job.job_id, kind=type(exc).__name__,
                      error=str(exc), exc_info=True)  # fmt: skip
            await self.ctx.writer.run(_give_back, [job.job_id], self.ctx.owner)
        finally:
            self.in_flight.pop(job.job_id, None)

    async def reclaim(self, now: float) -> None:
        """Jobs without an owner: resumed after a restart, or given back by a failed task."""
        ctx = self.ctx
        free = ctx.settings.dispatch_max_in_flight - len(self.in_flight)
        for status in (J.IN_PROGRESS, J.DISTRIBUTED, J.OPEN):
            if free <= 0:
                return
            rows = await ctx.db.run(state.claim, JOBS, owner=ctx.owner, status=status,
                                    limit=free, lease_seconds=ctx.settings.dispatch_lease_s,
                                    now=now)  # fmt: skip
            for row in rows:
                if row["job_id"] not in self.in_flight:
                    self._start(JobRun.of(row))
                    free -= 1

    async def extend_leases(self, now: float) -> None:
        ctx = self.ctx
        keys = list(self.in_flight)
        if not keys:
            return
        lost = await ctx.writer.run(
            state.extend,
            JOBS,
            keys,
            owner=ctx.owner,
            lease_seconds=ctx.settings.dispatch_lease_s,
            now=now,
        )
        live = [k for k in lost if k in self.in_flight]
        still = await ctx.db.run(_live_of, live) if live else []
        if still:
            log.error("job_leases_lost", jobs=still[:20], count=len(still))

    async def apply_cancels(self) -> None:
        ctx = self.ctx
        for row in await ctx.db.run(store.cancel_requests):
            entry = self.in_flight.get(row["job_id"])
            by = row["cancel_requested_by"] or "an operator"
            if entry is not None:
                entry[1].cancelled_by = by
                entry[1].cancel.set()
            elif row["status"] in JOB_LIVE:
                claimed = await ctx.db.run(_claim_one, row["job_id"], ctx.owner,
                                           ctx.settings.dispatch_lease_s)  # fmt: skip
                if claimed is not None:
                    job = JobRun.of(claimed)
                    job.cancelled_by = by
                    job.cancel.set()
                    self._start(job)

    async def sweep_deliveries(self) -> None:
        ctx = self.ctx
        before = ctx.clock() - ctx.settings.dispatch_delivery_retry_s
        rows = await ctx.db.run(store.undelivered, limit=SWEEP_BATCH, decided_before=before)
        busy = delivering() | set(self.in_flight)  # read after the rows: no race with them
        for row in rows:
            if row["job_id"] not in busy:
                ctx.spawn(deliver_row(ctx, row), name="deliver-sweep")

    # ---- agents ----------------------------------------------------------------------------

    async def refresh_agents(self) -> None:
        rows = await self.ctx.db.run(agents.list_agents, status=AgentStatus.ACTIVE)
        self.ctx.book.load_agents(rows)

    async def check_health(self) -> None:
        """GET {endpoint}/health of every active agent, at once; results on the agents' rows."""
        ctx, s = self.ctx, self.ctx.settings
        rows = await ctx.db.run(
            state.claim,
            AGENTS,
            owner=ctx.owner,
            status=AgentStatus.ACTIVE,
            limit=100_000,
            lease_seconds=s.dispatch_health_timeout_s * 2,
        )
        problems = await asyncio.gather(
            *(agent_client.health(ctx.http, r["endpoint"], s.dispatch_health_timeout_s)
              for r in rows)
        )  # fmt: skip
        results = [(r["agent_id"], p) for r, p in zip(rows, problems, strict=True)]
        await ctx.writer.run(_record_health, results, ctx.owner, ctx.clock())
        for agent_id, problem in results:
            ctx.book.set_health(agent_id, "ok" if problem is None else "failing")
            if problem is not None:
                log.warning("agent_unhealthy", agent_id=agent_id, problem=problem)


def _adopt(conn: Any, owner: str) -> int:
    with atomic(conn):
        return store.adopt_leases(conn, owner)


def _rows(conn: Any, job_ids: list[str]) -> list[Any]:
    marks = ",".join("?" * len(job_ids))
    return conn.execute(f"SELECT * FROM jobs WHERE job_id IN ({marks})", job_ids).fetchall()  # type: ignore[no-any-return]


def _live_of(conn: Any, job_ids: list[str]) -> list[str]:
    return [r["job_id"] for r in _rows(conn, job_ids) if r["status"] in JOB_LIVE]


def _give_back(conn: Any, job_ids: list[str], owner: str) -> None:
    state.release(conn, JOBS, job_ids, owner=owner)


def _claim_one(conn: Any, job_id: str, owner: str, lease_s: float) -> Any:
    with atomic(conn):
        row = conn.execute(
            "UPDATE jobs SET lease_owner = ?, lease_until = ? WHERE job_id = ?"
            " AND (lease_owner IS NULL OR lease_until < ?) RETURNING *",
            (owner, time.time() + lease_s, job_id, time.time()),
        ).fetchone()
    return row


def _record_health(conn: Any, results: list[tuple[str, str | None]], owner: str, now: float
                   ) -> None:  # fmt: skip
    with atomic(conn):
        conn.executemany(
            "UPDATE agents SET health = ?, last_health_at = ?, last_health_error = ?"
            " WHERE agent_id = ?",
            [("ok" if p is None else "failing", now, p, a) for a, p in results],
        )
        state.release(conn, AGENTS, [a for a, _ in results], owner=owner)
