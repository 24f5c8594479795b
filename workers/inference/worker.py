"""The inference worker loop: PENDING rows of one shard -> ANSWERED (or FAILED), concurrently.

Guarantees:
- Only rows with ``request_id % worker_count == shard`` are taken, through ``store.claim``
  under a lease, in small batches, at most ``max_concurrency`` at once.
- A row is answered at most once: completion is ``store.transition(PENDING -> ANSWERED,
  lease_owner=us, generation=the one we read)``, so a worker that lost its lease (it was
  slow, or its row was retaken after a pause) or whose row was replaced by a reorg cannot
  write. Leases of rows in flight are renewed every third of the lease, so a long LLM call
  does not lose its row; a killed worker's rows are retaken once the lease runs out.
- The bad-answer budget survives crashes: each spent attempt is written (fenced) before the
  next one is made.
- An LLM outage pauses the worker; it never fails requests. A transport error releases the
  row untouched (its budget intact) and pauses claiming for an exponential back-off that
  honours Retry-After; after a pause one probe request goes first, and full concurrency
  returns with the first success. Failures that arrive during a pause (calls that were
  already in flight) do not escalate it.
- A request the endpoint keeps failing while it answers others (a poison request) is FAILED
  after ``poison_strikes`` transport failures instead of stalling its shard for ever.
- Invalid requests and spent budgets end FAILED with a reason (and, for bad answers, the
  trace of every attempt in ``reasoning``), with no LLM call for an invalid one.
- On stop, in-flight calls get a grace period to finish; the rest are cancelled and their
  rows released at once for the next worker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import structlog

from shared import store
from shared.db import AsyncDatabase
from shared.errors import (
    AttemptsExhaustedError,
    HodlaiError,
    InvalidRequestError,
    LlmAccessError,
    LlmTransportError,
    TransitionConflict,
)
from shared.llm import InferenceRequest, InferenceResult, LlmBackend, execute_holdai_inference
from shared.llm.ipfs import pin_trace
from shared.llm.types import Attempt
from shared.metrics import ANSWERS, ERRORS, Health
from shared.store import Claimed, Status

log = structlog.get_logger(__name__)

PROCESS = "inference"
# Seconds of the first pause after a transport error, doubled per failed probe up to the cap.
OUTAGE_BACKOFF_START_S = 0.5
# A dead endpoint is probed at least this often, so recovery is noticed within it.
OUTAGE_BACKOFF_CAP_S = 30.0
# Longest Retry-After honoured; a server asking for more is probed again after this anyway.
RETRY_AFTER_CAP_S = 300.0
# Transport failures of one request, while the endpoint answered others since its first,
# before that request is failed as poison (in-memory: a restart gives it a fresh count).
POISON_STRIKES = 8


@dataclass(frozen=True)
class WorkerConfig:
    owner: str
    shard: int
    worker_count: int
    chain_id: int
    provider: str
    max_concurrency: int = 16
    attempts: int = 3
    lease_s: float = 30.0
    claim_batch: int = 8
    poll_s: float = 0.1
    ipfs_api_url: str | None = None
    poison_strikes: int = POISON_STRIKES


class InferenceWorker:
    """One shard's worker; drive it with ``run_loop(PROCESS, worker.step, stop=...)`` and
    call ``drain()`` after the loop ends."""

    def __init__(
        self,
        config: WorkerConfig,
        *,
        adb: AsyncDatabase,
        backend: LlmBackend,
        stop: asyncio.Event,
        health: Health | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._adb = adb
        self._backend = backend
        self._stop = stop
        self._health = health
        self._clock = clock
        self._tasks: dict[asyncio.Task[None], Claimed] = {}
        self._pins: set[asyncio.Task[bool]] = set()
        self._pin_client = httpx.AsyncClient() if config.ipfs_api_url else None
        self._stop_waiter: asyncio.Task[bool] | None = None
        self._paused_until = 0.0
        self._outage_failures = 0
        self._last_success_at = 0.0
        self._strikes: dict[int, tuple[int, float]] = {}
        self._renewed_at = clock()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    @property
    def paused(self) -> bool:
        return self._clock() < self._paused_until

    async def step(self) -> float:
        """Reap finished work, keep leases, claim what fits, wait for progress. Returns 0:
        the waiting happens here, where a finished call or a stop can cut it short."""
        self._reap()
        now = self._clock()
        if now - self._renewed_at >= self.config.lease_s / 3:
            await self._renew_leases(now)
        if now < self._paused_until:
            self._beat(
                f"paused after LLM transport errors; retry in {self._paused_until - now:.1f} s"
            )
            await self._wait(min(self._paused_until - now, self.config.poll_s))
            return 0.0
        # After an outage one probe goes first; full concurrency returns on its success.
        limit = 1 if self._outage_failures else self.config.max_concurrency
        room = min(self.config.claim_batch, limit - len(self._tasks))
        claimed: list[Claimed] = []
        if room > 0:
            claimed = await self._adb.run(
                store.claim, owner=self.config.owner, shard=self.config.shard,
                worker_count=self.config.worker_count, limit=room,
                lease_seconds=self.config.lease_s, now=now,
            )  # fmt: skip
            for row in claimed:
                task = asyncio.create_task(self._work(row), name=f"request-{row.request_id}")
                self._tasks[task] = row
        self._beat("ok")
        if claimed and len(claimed) == room and len(self._tasks) < limit:
            return 0.0  # a full batch: more may be waiting, claim again at once
        await self._wait(self.config.poll_s)
        return 0.0

    async def drain(self, grace_s: float) -> None:
        """Let in-flight calls finish for up to ``grace_s``; cancel and release the rest."""
        if self._tasks:
            log.info("inference_draining", in_flight=len(self._tasks), grace_s=grace_s)
            await self._renew_leases(self._clock())
            await asyncio.wait(list(self._tasks), timeout=grace_s if grace_s > 0 else None)
        left = {task: row for task, row in self._tasks.items() if not task.done()}
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)
        if left:
            ids = [row.request_id for row in left.values()]
            released = await self._adb.run(store.release, ids, owner=self.config.owner)
            log.info("inference_released", rows=released, request_ids=[str(i) for i in ids])
        for task in list(self._tasks):
            if task not in left:
                self._reap_one(task, reraise=False)
        self._tasks.clear()
        if self._pins:
            await asyncio.wait(self._pins, timeout=2.0)  # best effort, like the pins themselves
        for pin in self._pins:
            pin.cancel()
        if self._pin_client is not None:
            await self._pin_client.aclose()
        if self._stop_waiter is not None:
            self._stop_waiter.cancel()

    # --- one request ----------------------------------------------------------------------

    async def _work(self, row: Claimed) -> None:
        request = InferenceRequest(
            request_id=row.request_id, model=row.model, system_prompt=row.system_prompt,
            state_string=row.state_string, action_set=row.action_set,
            chain_id=self.config.chain_id, provider=self.config.provider,
            requester=row.requester, content_hash=row.content_hash, generation=row.generation,
        )  # fmt: skip

        async def spent(attempt: Attempt) -> None:
            if attempt.outcome != "answered":  # an answer's count is written with the answer
                await self._adb.run(
                    store.record_attempts, row.request_id, owner=self.config.owner,
                    attempts=attempt.number,
                )  # fmt: skip

        try:
            try:
                result = await execute_holdai_inference(
                    request, backend=self._backend,
                    max_attempts=max(0, self.config.attempts - row.attempts),
                    prior_attempts=row.attempts, on_attempt=spent, clock=self._clock,
                )  # fmt: skip
            except InvalidRequestError as exc:
                await self._fail(row, f"invalid request: {exc}", "invalid", attempts=row.attempts)
            except AttemptsExhaustedError as exc:
                used = max(row.attempts, self.config.attempts)
                await self._fail(row, str(exc), "failed", attempts=used, trace=exc.trace_json)
            except LlmTransportError as exc:
                await self._on_transport_error(row, exc)
            else:
                await self._complete(row, result)
        except TransitionConflict as exc:  # includes LeaseLostError: fenced off, as designed
            ANSWERS.labels(outcome="lease_lost").inc()
            log.warning("inference_result_dropped", request_id=str(row.request_id), reason=str(exc))
        except HodlaiError as exc:  # e.g. StoreBusyError: the lease runs out, the row is retaken
            ERRORS.labels(process=PROCESS, kind=type(exc).__name__).inc()
            log.warning(
                "inference_request_interrupted", request_id=str(row.request_id),
                kind=type(exc).__name__, error=str(exc),
            )  # fmt: skip

    async def _complete(self, row: Claimed, result: InferenceResult) -> None:
        now = self._clock()
        used = result.attempts[-1].number
        await self._adb.run(
            store.transition, row.request_id, Status.PENDING, Status.ANSWERED,
            actor=self.config.owner, lease_owner=self.config.owner, generation=row.generation,
            note=f"{result.action} (attempt {used}, {result.cid})",
            set_columns={
                "answer_action": result.action, "answer_cid": result.cid,
                "reasoning": result.trace_json, "answered_at": now, "attempts": used,
            },
            now=now,
        )  # fmt: skip
        self._last_success_at = now
        self._outage_failures = 0
        self._strikes.pop(row.request_id, None)
        ANSWERS.labels(outcome="answered").inc()
        log.info(
            "request_answered", request_id=str(row.request_id), action=result.action,
            cid=result.cid, attempts=used,
        )  # fmt: skip
        if self._pin_client is not None and self.config.ipfs_api_url:
            pin = asyncio.create_task(
                pin_trace(
                    self._pin_client, self.config.ipfs_api_url, result.trace_json.encode("utf-8"),
                    cid=result.cid, request_id=row.request_id,
                )
            )  # fmt: skip
            self._pins.add(pin)
            pin.add_done_callback(self._pins.discard)

    async def _fail(
        self, row: Claimed, reason: str, outcome: str, *, attempts: int, trace: str | None = None
    ) -> None:
        now = self._clock()
        await self._adb.run(
            store.transition, row.request_id, Status.PENDING, Status.FAILED,
            actor=self.config.owner, lease_owner=self.config.owner, generation=row.generation,
            note=reason[:200],
            set_columns={"fail_reason": reason, "attempts": attempts, "reasoning": trace},
            now=now,
        )  # fmt: skip
        self._strikes.pop(row.request_id, None)
        ANSWERS.labels(outcome=outcome).inc()
        log.warning("request_failed", request_id=str(row.request_id), reason=reason)

    async def _on_transport_error(self, row: Claimed, exc: LlmTransportError) -> None:
        now = self._clock()
        kind = type(exc).__name__
        ERRORS.labels(process=PROCESS, kind=kind).inc()
        if now >= self._paused_until:  # a new failure, not an echo of the current pause
            self._outage_failures += 1
        backoff = min(
            OUTAGE_BACKOFF_CAP_S, OUTAGE_BACKOFF_START_S * 2 ** (self._outage_failures - 1)
        )
        if exc.retry_after is not None:
            backoff = max(backoff, min(exc.retry_after, RETRY_AFTER_CAP_S))
        self._paused_until = max(self._paused_until, now + backoff)
        strikes, first_at = self._strikes.get(row.request_id, (0, now))
        strikes += 1
        self._strikes[row.request_id] = (strikes, first_at)
        event = "llm_access_denied" if isinstance(exc, LlmAccessError) else "llm_unavailable"
        (log.error if isinstance(exc, LlmAccessError) else log.warning)(
            event, request_id=str(row.request_id), kind=kind, error=str(exc),
            retry_after=exc.retry_after, pause_s=round(self._paused_until - now, 2),
            outage_failures=self._outage_failures, request_strikes=strikes,
        )  # fmt: skip
        if strikes >= self.config.poison_strikes and self._last_success_at > first_at:
            await self._fail(
                row,
                f"the LLM endpoint failed this request {strikes} times while answering others;"
                f" last: {exc}",
                "poison",
                attempts=row.attempts,
            )
            return
        await self._adb.run(store.release, [row.request_id], owner=self.config.owner)

    # --- bookkeeping ----------------------------------------------------------------------

    async def _renew_leases(self, now: float) -> None:
        self._renewed_at = now
        live = {row.request_id: task for task, row in self._tasks.items() if not task.done()}
        if not live:
            return
        lost = await self._adb.run(
            store.extend_lease, list(live), owner=self.config.owner,
            lease_seconds=self.config.lease_s, now=now,
        )  # fmt: skip
        for request_id in lost:
            task = live[request_id]
            if not task.done():
                # Someone else holds the row now (we were too slow); our answer would be
                # fenced off anyway, so stop paying for the call.
                log.warning("lease_lost", request_id=str(request_id), owner=self.config.owner)
                task.cancel()

    def _reap(self) -> None:
        for task in [t for t in self._tasks if t.done()]:
            self._reap_one(task, reraise=True)

    def _reap_one(self, task: asyncio.Task[None], *, reraise: bool) -> None:
        row = self._tasks.pop(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            return
        # A bug, not an outcome (those are handled inside _work): the row keeps its lease
        # and is retaken when it runs out; the loop boundary logs and backs off.
        log.error("inference_task_crashed", request_id=str(row.request_id), exc_info=error)
        if reraise:
            raise error

    async def _wait(self, seconds: float) -> None:
        """Until a request finishes, ``stop`` is set, or ``seconds`` pass."""
        if self._stop.is_set():
            return
        if self._stop_waiter is None or self._stop_waiter.done():
            self._stop_waiter = asyncio.create_task(self._stop.wait())
        await asyncio.wait(
            [*self._tasks, self._stop_waiter], timeout=seconds, return_when=asyncio.FIRST_COMPLETED
        )

    def _beat(self, detail: str) -> None:
        if self._health is not None:
            self._health.beat(detail)
