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
- An LLM outage pauses the worker. A transport error parks the row
  untouched (its budget intact; see :mod:`workers.oracle.inference.parking`) and pauses claiming
  for an exponential back-off that honours Retry-After up to ``RETRY_AFTER_CAP_S``; after a
  pause one probe request goes first, and full concurrency returns with the first success.
  The probe is a row not tried yet (the failed one is parked behind the others; with
  ``max_parked`` rows parked, the parked row due first), so probes rotate and one failing
  request cannot hold its shard. Failures that arrive during a pause
  (calls that were already in flight) do not escalate it.
- A request the endpoint keeps failing (a poison request) is FAILED with the reason after
  ``poison_strikes`` strikes once the endpoint has answered others since its first failure,
  or after ``poison_alone_after_s`` of failing when nothing else was asked meanwhile; a
  failure after the endpoint answered others does not pause the others. An outage over
  several rows never fails requests (its failures are not strikes); rate limits
  (LlmBusyError) never count against a row, nor does a refused key unless the endpoint
  answers others meanwhile (then the refusal is about the request's model).
- While the endpoint refuses the node (LlmAccessError: key, plan, model id), the health is
  503 with the reason and ``llm_access_denied`` is logged at error level: an operator must
  act. The worker backs off meanwhile and recovers by itself on the first success.
- Requests are validated against the contract's current string limits (and, for one above
  them, against the limits at its own block; :mod:`workers.oracle.inference.limits`), never
  stricter than the contract was when it accepted the request.
- Invalid requests and spent budgets end FAILED with a reason (and, for bad answers, the
  trace of every attempt in ``reasoning``), with no LLM call for an invalid one.
- On stop, in-flight calls get a grace period to finish; the rest are cancelled and their
  rows released at once for the next worker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import structlog

from shared.db import AsyncDatabase
from shared.errors import (
    AttemptsExhaustedError,
    HodlaiError,
    InvalidRequestError,
    LlmAccessError,
    LlmBusyError,
    LlmTransportError,
    TransitionConflict,
)
from shared.llm import InferenceRequest, InferenceResult, LlmBackend, execute_holdai_inference
from shared.llm.ipfs import pin_trace
from shared.llm.types import Attempt
from shared.llm.validate import DEFAULT_LIMITS, StringLimits
from shared.metrics import ERRORS
from workers.oracle import store
from workers.oracle.inference.health import InferenceHealth
from workers.oracle.inference.limits import ContractStringLimits
from workers.oracle.inference.parking import FailureKind, StrikeBook, Strikes
from workers.oracle.metrics import ANSWERS
from workers.oracle.store import Claimed, Status

log = structlog.get_logger(__name__)

PROCESS = "inference"
# Seconds of the first pause after a transport error, doubled per failed probe up to the cap.
OUTAGE_BACKOFF_START_S = 0.5
# A dead endpoint is probed at least this often, so recovery is noticed within it.
OUTAGE_BACKOFF_CAP_S = 30.0
# Longest Retry-After honoured, in seconds. A server asking for more (hours, or a broken
# "99999") is usually naming a quota window; one probe call a minute costs nothing against a
# quota and notices its reset within a minute, where obeying would idle the shard for hours.
RETRY_AFTER_CAP_S = 60.0
# Strikes (transport failures not part of an apparent outage; see parking.py) before a
# request is failed as poison. With the back-off between its tries (0.5 s doubling, capped at
# 30 s) that is about a minute of waiting plus eight LLM calls (each at most the timeout).
POISON_STRIKES = 8
# Seconds a request must have been failing before its strikes fail it when the endpoint has
# answered nothing else since its first failure (it is the only row of its shard left):
# such a row cannot be told from an outage, and an hour is longer than the outages hosted
# APIs usually have, yet bounded, so it ends FAILED with a reason instead of PENDING forever.
POISON_ALONE_AFTER_S = 3600.0
# Rows one worker holds parked at most; past it a failed row is released instead. A few
# hundred is far more than real poison requests and small next to any backlog.
MAX_PARKED = 256


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
    poison_alone_after_s: float = POISON_ALONE_AFTER_S
    max_parked: int = MAX_PARKED


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
        health: InferenceHealth | None = None,
        limits: ContractStringLimits | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._adb = adb
        self._backend = backend
        self._stop = stop
        self._health = health
        self._limits = limits
        self._limits_refresh: asyncio.Task[None] | None = None
        self._clock = clock
        self._tasks: dict[asyncio.Task[None], Claimed] = {}
        self._pins: set[asyncio.Task[bool]] = set()
        self._pin_client = httpx.AsyncClient() if config.ipfs_api_url else None
        self._stop_waiter: asyncio.Task[bool] | None = None
        self._paused_until = 0.0
        self._outage_failures = 0
        self._last_success_at = 0.0
        self._book = StrikeBook(
            backoff_start_s=OUTAGE_BACKOFF_START_S, backoff_cap_s=OUTAGE_BACKOFF_CAP_S,
            max_parked=config.max_parked,
        )  # fmt: skip
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
        self._refresh_limits(now)
        if now < self._paused_until:
            self._beat(
                f"paused after LLM transport errors; retry in {self._paused_until - now:.1f} s"
            )
            await self._wait(min(self._paused_until - now, self.config.poll_s))
            return 0.0
        # After an outage one probe goes first; full concurrency returns on its success.
        probing = self._outage_failures > 0
        limit = 1 if probing else self.config.max_concurrency
        room = min(self.config.claim_batch, limit - len(self._tasks))
        rows: list[Claimed] = []
        if room > 0:
            rows = await self._next_rows(now, room, probing=probing)
            for row in rows:
                task = asyncio.create_task(self._work(row), name=f"request-{row.request_id}")
                self._tasks[task] = row
        self._beat("ok")
        if rows and len(rows) == room and len(self._tasks) < limit:
            return 0.0  # a full batch: more may be waiting, claim again at once
        await self._wait(self.config.poll_s)
        return 0.0

    async def _next_rows(self, now: float, room: int, *, probing: bool) -> list[Claimed]:
        """Parked rows whose back-off has passed, then fresh claims. A probe prefers a fresh
        row: the parked ones are what just failed, and probing them again is how one bad
        request used to hold its whole shard."""
        if probing:
            if not self._book.full:
                rows = await self._claim(now, room)
                if rows:
                    return rows
            return self._book.take_due(now, room)  # a full book: rotate among its rows
        rows = self._book.take_due(now, room)
        if len(rows) < room:
            rows += await self._claim(now, room - len(rows))
        return rows

    async def _claim(self, now: float, limit: int) -> list[Claimed]:
        claimed: list[Claimed] = await self._adb.run(
            store.claim, owner=self.config.owner, shard=self.config.shard,
            worker_count=self.config.worker_count, limit=limit,
            lease_seconds=self.config.lease_s, now=now,
        )  # fmt: skip
        return claimed

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
        # Parked rows too: they wait for a back-off this process will not live to see.
        ids = [row.request_id for row in left.values()] + self._book.unpark_all()
        if ids:
            released = await self._adb.run(store.release, ids, owner=self.config.owner)
            log.info("inference_released", rows=released, request_ids=[str(i) for i in ids])
        for task in list(self._tasks):
            if task not in left:
                self._reap_one(task, reraise=False)
        self._tasks.clear()
        if self._limits_refresh is not None:
            self._limits_refresh.cancel()
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

        used = row.attempts  # attempts spent so far, as written to the row

        async def spent(attempt: Attempt) -> None:
            nonlocal used
            self._endpoint_answered(row.request_id)
            if attempt.outcome != "answered":  # an answer's count is written with the answer
                await self._adb.run(
                    store.record_attempts, row.request_id, owner=self.config.owner,
                    attempts=attempt.number,
                )  # fmt: skip
                used = attempt.number

        try:
            try:
                result = await execute_holdai_inference(
                    request, backend=self._backend,
                    max_attempts=max(0, self.config.attempts - row.attempts),
                    prior_attempts=row.attempts, on_attempt=spent, clock=self._clock,
                    limits=await self._limits_for(request),
                )  # fmt: skip
            except InvalidRequestError as exc:
                await self._fail(row, f"invalid request: {exc}", "invalid", attempts=row.attempts)
            except AttemptsExhaustedError as exc:
                used = max(row.attempts, self.config.attempts)
                await self._fail(row, str(exc), "failed", attempts=used, trace=exc.trace_json)
            except LlmTransportError as exc:
                await self._on_transport_error(dataclasses.replace(row, attempts=used), exc)
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
        self._book.forget(row.request_id)
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
        self._book.forget(row.request_id)
        ANSWERS.labels(outcome=outcome).inc()
        log.warning("request_failed", request_id=str(row.request_id), reason=reason)

    async def _on_transport_error(self, row: Claimed, exc: LlmTransportError) -> None:
        now = self._clock()
        kind = type(exc).__name__
        ERRORS.labels(process=PROCESS, kind=kind).inc()
        busy = isinstance(exc, LlmBusyError)
        failure: FailureKind = (
            "busy" if busy else "refused" if isinstance(exc, LlmAccessError) else "failure"
        )
        strikes, answered_others = self._book.record_failure(
            row.request_id, now=now, last_success_at=self._last_success_at, kind=failure
        )
        retry_after = None if exc.retry_after is None else min(exc.retry_after, RETRY_AFTER_CAP_S)
        # Failing again after the endpoint answered others is about this request: park it and
        # let the others flow. Anything else may be the endpoint or our key: pause them all.
        if busy or not answered_others:
            if now >= self._paused_until:  # a new failure, not an echo of the current pause
                self._outage_failures += 1
            backoff = min(
                OUTAGE_BACKOFF_CAP_S, OUTAGE_BACKOFF_START_S * 2 ** (self._outage_failures - 1)
            )
            if retry_after is not None:
                backoff = max(backoff, retry_after)
            self._paused_until = max(self._paused_until, now + backoff)
        park_s = max(self._book.backoff(strikes), retry_after or 0.0)
        access_denied = isinstance(exc, LlmAccessError)
        (log.error if access_denied else log.warning)(
            "llm_access_denied" if access_denied else "llm_unavailable",
            request_id=str(row.request_id), kind=kind, error=str(exc),
            retry_after=exc.retry_after, pause_s=round(max(0.0, self._paused_until - now), 2),
            outage_failures=self._outage_failures, request_strikes=strikes.counted,
            request_failures=strikes.failures, parked_s=round(park_s, 2),
        )  # fmt: skip
        if isinstance(exc, LlmAccessError):
            self._access_refused(exc)
        reason = self._poison_reason(strikes, now)
        if reason is not None:
            await self._fail(row, f"{reason}; last: {exc}", "poison", attempts=row.attempts)
            return
        if not self._book.park(row, until=now + park_s):
            await self._adb.run(store.release, [row.request_id], owner=self.config.owner)

    def _poison_reason(self, strikes: Strikes, now: float) -> str | None:
        """Why these strikes fail their request, or None while they do not (yet)."""
        if strikes.counted < self.config.poison_strikes:
            return None
        if self._last_success_at > strikes.first_at:
            return (
                f"the LLM endpoint failed this request {strikes.counted} times while answering"
                " others"
            )
        failing_s = now - strikes.first_at
        if failing_s >= self.config.poison_alone_after_s:
            return (
                f"the LLM endpoint failed this request {strikes.failures} times in"
                f" {failing_s:.0f} s and answered nothing else meanwhile"
            )
        return None

    def _endpoint_answered(self, request_id: int) -> None:
        """The endpoint answered a call (any answer, good or bad): it is up and takes our key."""
        self._last_success_at = self._clock()
        self._outage_failures = 0
        self._book.forget(request_id)
        if self._health is not None and self._health.accept():
            log.info("llm_access_restored")

    def _access_refused(self, exc: LlmAccessError) -> None:
        reason = (
            f"the LLM endpoint refuses this node ({exc}); check HODLAI_LLM_API_KEY (401/403)"
            " or HODLAI_LLM_MODEL_MAP (404)"
        )
        if self._health is not None and self._health.refuse(reason):
            log.error("inference_unhealthy", reason=reason)

    # --- limits ---------------------------------------------------------------------------

    async def _limits_for(self, request: InferenceRequest) -> StringLimits:
        """The contract's limits for ``request``: the known ones, or, when it is above them,
        those at its block (it passed them there)."""
        if self._limits is None:
            return DEFAULT_LIMITS
        if self._limits.current.admit(request):
            return self._limits.current
        block = await self._adb.run(_block_of, request.request_id)
        return await self._limits.at_block(block)

    def _refresh_limits(self, now: float) -> None:
        """Start a read of the contract's limits when one is due; it runs beside the loop,
        so a slow RPC never holds claiming up."""
        if self._limits is None or not self._limits.due(now):
            return
        task = self._limits_refresh
        if task is not None:
            if not task.done():
                return
            if not task.cancelled() and task.exception() is not None:
                log.error("string_limits_refresh_crashed", exc_info=task.exception())
        self._limits_refresh = asyncio.create_task(self._limits.refresh(), name="string-limits")

    # --- bookkeeping ----------------------------------------------------------------------

    async def _renew_leases(self, now: float) -> None:
        self._renewed_at = now
        live = {row.request_id: task for task, row in self._tasks.items() if not task.done()}
        parked = self._book.parked_ids()
        if not live and not parked:
            return
        lost = await self._adb.run(
            store.extend_lease, [*live, *parked], owner=self.config.owner,
            lease_seconds=self.config.lease_s, now=now,
        )  # fmt: skip
        for request_id in lost:
            task = live.get(request_id)
            if task is None:  # parked: someone else holds it now (a reorg, a retaken lease)
                self._book.forget(request_id)
                log.warning("lease_lost", request_id=str(request_id), owner=self.config.owner,
                            parked=True)  # fmt: skip
            elif not task.done():
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


def _block_of(conn: sqlite3.Connection, request_id: int) -> int | None:
    """The block a request was emitted in (None when the row is gone)."""
    row = store.get_request(conn, request_id)
    return None if row is None else int(row["block_number"])
