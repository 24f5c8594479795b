"""The indexer process: its poll step (:class:`Indexer`) and its composition root (:func:`run`).

One step reads the next range with one batch, judges the answer (scanner.judge) and hands
the logs to the database thread, which decodes them and commits logs + block hashes + cursor
in one transaction (ingest.apply_range). While that thread works, the event loop already
fetches the next range, so the node and the database overlap. (Decoding on the event loop
instead measured no faster: both are Python under one GIL, and a commit next to a decoder
waits for the GIL after every SQLite step.) A failed commit throws the prefetched answer
away and the in-memory cursor falls back to the committed one, so the pipeline never lets
the cursor run ahead of what is stored.

Failures: a stale or inconsistent answer is asked again at once (and, repeated, fails over
to the next RPC URL); a range the node refuses is halved; an answer whose logs differ from
stored ones under an unchanged block hash is refused whole and its URL distrusted
(ingest.py); a rollback no ordinary reorg explains halts the indexer for an operator
(guard.py); every other error propagates to shared.runtime.run_loop, which backs off
(honouring Retry-After) and calls the step again. Nothing but a signal ends the loop
(``--once`` ends it when caught up).

Progress (for /healthz, health.py): a step progresses when it accepts a range, confirms the
head or handles a reorg; ``HODLAI_INDEXER_UNHEALTHY_AFTER_POLLS`` steps in a row without
progress, or a halt, make :meth:`Indexer.progress_problem` report why.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from shared import store
from shared.config import load_settings
from shared.db import AsyncDatabase, check_identity, connect, stored_identity
from shared.errors import (
    ConfigError,
    DatabaseMismatchError,
    HodlaiError,
    LogDataConflictError,
    RetryableError,
    RpcChainMismatchError,
    RpcRangeTooLargeError,
    StaleNodeError,
)
from shared.metrics import ERRORS, INDEXER_CURSOR, INDEXER_LAG, REQUESTS
from shared.rpc import RpcClient
from shared.runtime import WorkerSpec, run_worker, sleep_or_stop
from workers.indexer import bloom, ingest, reorg
from workers.indexer.guard import Guard
from workers.indexer.health import ProgressHealth
from workers.indexer.ingest import Anchor, IngestStats
from workers.indexer.logs_decode import DecodedLogs, decode_logs
from workers.indexer.metrics import LOG_CONFLICTS, NO_PROGRESS_POLLS, WRONG_ANSWERS
from workers.indexer.progress import BackfillProgress
from workers.indexer.scanner import (
    BlockHeader,
    ChainScanner,
    LogRange,
    PollAnswer,
    RangeSizer,
    Verdict,
    judge,
)
from workers.indexer.settings import IndexerSettings

log = structlog.get_logger(__name__)

PROCESS = "indexer"
EXECUTOR = "oracle"
# Stale answers in a row before moving to the next RPC URL: one stale answer from a load
# balancer is normal; three in a row means this endpoint is behind.
STALE_FAILOVER_AFTER = 3
# Answers in a row reporting a head below the cursor before the stored hashes are compared
# with the chain (to tell a lagging node from a chain that got shorter).
WALK_BACK_AFTER_STALE = 3
# Seconds before asking again after a stale answer, doubled per repetition up to the cap: a
# lagging backend catches up within a block or two.
STALE_RETRY_S = 0.05
STALE_RETRY_CAP_S = 5.0
# Seconds between refreshes of the per-status request gauges (a COUNT over the table).
STATUS_METRICS_EVERY_S = 5.0
# Seconds between "indexer_progress" log lines while backfilling.
PROGRESS_LOG_EVERY_S = 10.0
# Seconds /healthz tolerates without a healthy step: many poll intervals plus a full back-off.
HEALTH_STALE_AFTER_S = 120.0
# SQLite page cache of the indexer's connection (KiB, negative = KiB for the pragma): one
# poll's batch insert (~5,000 rows of ~1.5 KB) stays in memory until its commit.
SQLITE_CACHE_KIB = 65_536
# Seconds before the second attempt to reach the RPC at start-up (the client has already
# failed over to the next URL by then), doubled per attempt up to the cap.
STARTUP_RETRY_S = 0.2
STARTUP_RETRY_CAP_S = 10.0
# Seconds between "start_block_above_head" warnings while waiting for the start block.
START_WAIT_LOG_EVERY_S = 60.0


@dataclass(slots=True)
class _InFlight:
    """A range handed to the database thread and not yet known to be committed."""

    task: asyncio.Future[IngestStats]
    range: LogRange
    header: BlockHeader
    logs: int


@dataclass(slots=True)
class _Prefetch:
    range: LogRange
    anchor: int | None
    bloom_first: int | None
    task: asyncio.Task[PollAnswer]


class Indexer:
    """The indexer's state and its poll step. Build it, ``await start()``, then run
    ``step`` in shared.runtime.run_loop; ``await close()`` at the end."""

    def __init__(
        self,
        settings: IndexerSettings,
        *,
        rpc: RpcClient,
        db: AsyncDatabase,
        progress: BackfillProgress | None = None,
        clock: Callable[[], float] = time.time,
        publish_status_metrics: bool = False,
    ) -> None:
        settings.require("rpc_urls", "provider_address")
        assert settings.provider_address is not None  # checked by require()
        self.settings = settings
        self.rpc = rpc
        self.db = db
        self.scanner = ChainScanner(rpc, settings.provider_address)
        self.events = bloom.EventBloom(settings.provider_address)
        self.sizer = RangeSizer(settings.indexer_max_range, settings.indexer_target_logs)
        self.confirmations = settings.confirmations
        self.progress = progress
        self.clock = clock
        self._publish_status = publish_status_metrics
        #: last committed block and its hash
        self.anchor = Anchor(settings.start_block - 1, None)
        # The pipeline's view: the committed anchor plus the range in flight, if any.
        self._cursor = self.anchor.number
        self._cursor_header: BlockHeader | None = None
        self.head: int | None = None
        self.caught_up = False
        self.totals = IngestStats()
        self._inflight: _InFlight | None = None
        self._prefetch: _Prefetch | None = None
        self._steps_since_rescan = 0
        self._stale_streak = 0
        self._events = 0
        self._last_status_metrics = float("-inf")
        self._last_progress_log = float("-inf")
        #: the halt state, and what a rollback may do (guard.py)
        self.guard = Guard(db, self.scanner, max_reorg_depth=settings.max_reorg_depth, clock=clock)
        #: HODLAI_START_BLOCK while it is above the chain head (waiting for it), else None
        self.waiting_for_start: int | None = None
        self._last_start_log = float("-inf")
        # Progress, for /healthz: a step progresses when it accepts a range, confirms the
        # head, or handles a reorg; anything else (stale, inconsistent, halted) does not.
        self._progressed = False
        self._polls_without_progress = 0
        self._last_problem = ""
        #: answers refused because their logs differed under an unchanged block hash
        self.log_conflicts = 0

    @property
    def stale_streak(self) -> int:
        """Stale or inconsistent answers in a row (0 after a good step)."""
        return self._stale_streak

    @property
    def halt_reason(self) -> str | None:
        """Why the indexer is halted for an operator (shared/halt.py), None while running."""
        return self.guard.reason

    @property
    def polls_without_progress(self) -> int:
        return self._polls_without_progress

    def progress_problem(self) -> str | None:
        """Why the indexer is not making progress, or None (for /healthz; ProgressSource)."""
        if self.guard.reason is not None:
            return f"halted: {self.guard.reason} (hodlai indexer-resume)"
        if self._polls_without_progress >= self.settings.indexer_unhealthy_after_polls:
            return (
                f"no progress for {self._polls_without_progress} polls at cursor "
                f"{self.anchor.number}: {self._last_problem or 'no range accepted'}"
            )
        return None

    # --- start and stop -------------------------------------------------------------------

    async def start(self) -> None:
        """Check the chain and the database belong together; load the cursor. Every RPC URL
        is checked to serve the database's chain before any of its answers is used: a URL of
        another chain is quarantined (shared/rpc.py), never read into this database."""
        stored = await self.db.run(stored_identity)
        if stored is not None:
            try:
                await self.rpc.expect_chain(stored[0])
            except RpcChainMismatchError as exc:
                raise DatabaseMismatchError(
                    f"this database was created for chain {stored[0]}, but {exc}; fix "
                    "HODLAI_RPC_URLS or use another HODLAI_DB_PATH"
                ) from None
        chain_id = await self.scanner.chain_id()
        configured = self.settings.chain_id
        if configured is not None and configured != chain_id:
            raise ConfigError(
                f"HODLAI_CHAIN_ID is {configured} but the RPC reports chain {chain_id}"
            )
        provider = self.scanner.provider_address
        await self.db.run(check_identity, chain_id=chain_id, provider_address=provider)
        if stored is None:
            await self.rpc.expect_chain(chain_id)
        self._set_anchor(await self.db.run(ingest.read_anchor, self.settings.start_block))
        await self.guard.load(chain_id, self.anchor.number)
        head = (await self.scanner.probe(None)).head
        if self.settings.start_block - 1 > head:
            self.waiting_for_start = self.settings.start_block
            self._warn_start_above_head(head)
        else:
            await self._skip_to_start_block()
        anchor = self.anchor
        log.info(
            "indexer_started",
            chain_id=chain_id,
            provider=provider,
            cursor=anchor.number,
            confirmations=self.confirmations,
            max_range=self.sizer.max_range,
            rpc_urls=len(self.rpc.urls),
        )

    async def _skip_to_start_block(self) -> None:
        """HODLAI_START_BLOCK above the stored cursor (and not above the head): skip ahead."""
        if self.anchor.number >= self.settings.start_block - 1:
            return
        log.warning(
            "start_block_above_cursor",
            cursor=self.anchor.number,
            start_block=self.settings.start_block,
        )
        await self.db.run(
            ingest.move_cursor_forward, self.settings.start_block - 1, now=self.clock()
        )
        self._set_anchor(await self.db.run(ingest.read_anchor, self.settings.start_block))

    def _warn_start_above_head(self, head: int) -> None:
        self._last_problem = (
            f"HODLAI_START_BLOCK {self.settings.start_block} is above the chain head {head}"
        )
        now = self.clock()
        if now - self._last_start_log >= START_WAIT_LOG_EVERY_S:
            self._last_start_log = now
            # Not moved for good: a typo, or an RPC of a shorter chain, must not make the
            # indexer skip the blocks it has yet to read once the setting is corrected.
            log.warning(
                "start_block_above_head",
                start_block=self.settings.start_block,
                head=head,
                cursor=self.anchor.number,
                action="waiting; check HODLAI_START_BLOCK and HODLAI_RPC_URLS",
            )

    async def close(self) -> None:
        """Let a commit in flight finish (it is never abandoned half-way) and drop the rest."""
        self._drop_prefetch()
        try:
            await self._settle()
        except (HodlaiError, sqlite3.Error) as exc:
            log.warning("final_commit_failed", error=str(exc), kind=type(exc).__name__)
        if self.progress is not None:
            self.progress.close()

    # --- the step -------------------------------------------------------------------------

    async def step(self) -> float:
        """One poll. Returns the seconds to wait before the next one (0 while behind)."""
        self._progressed = False
        try:
            return await self._step()
        finally:
            self._polls_without_progress = (
                0 if self._progressed else self._polls_without_progress + 1
            )
            NO_PROGRESS_POLLS.set(self._polls_without_progress)

    async def _step(self) -> float:
        if self.guard.reason is not None:
            return await self._while_halted()
        try:
            return await self._ingest_step()
        except RpcChainMismatchError as exc:
            # Every URL now serves another chain (the client quarantined them): nothing of
            # theirs is read; wait for an operator, as for any other chain the node cannot
            # trust (and the fulfiller signs nothing new meanwhile).
            return await self._halt(f"{exc}; nothing was rolled back")

    async def _ingest_step(self) -> float:
        if self.waiting_for_start is not None:
            head = (await self.scanner.probe(None)).head
            if self.waiting_for_start - 1 > head:
                self._warn_start_above_head(head)
                return self.settings.indexer_poll_interval_s
            log.info("start_block_reached", start_block=self.waiting_for_start, head=head)
            self.waiting_for_start = None
            await self._skip_to_start_block()
        try:
            delay = await self._advance()
        except StaleNodeError as exc:
            self._last_problem = f"stale or inconsistent answers ({exc})"
            return self._on_stale(exc)
        except LogDataConflictError as exc:
            return self._on_log_conflict(exc)
        except BaseException:
            self._drop_prefetch()
            raise
        self._stale_streak = 0
        await self._publish_metrics()
        return delay

    async def _advance(self) -> float:
        # The backup re-scan guards the head, where backends disagree; while backfilling far
        # below it every backend has the blocks, and re-reading would only slow it down.
        if self.caught_up:
            self._steps_since_rescan += 1
            if self._steps_since_rescan >= self.settings.indexer_rescan_every:
                self._steps_since_rescan = 0
                await self._settle()
                await self._backup_rescan()
        rng = self._next_range()
        if rng is None:
            await self._settle()
            delay = await self._probe()
            if delay is not None:
                return delay
            rng = self._next_range()
            if rng is None:
                self._mark_caught_up()
                return self.settings.indexer_poll_interval_s
        return await self._read_range(rng)

    async def _read_range(self, rng: LogRange) -> float:
        """Fetch, judge and decode one range, and start committing it."""
        anchor = self._cursor_header
        try:
            answer = await self._fetch(rng, anchor.number if anchor else None)
        except RpcRangeTooLargeError:
            if not self.sizer.too_large(rng.size):
                raise  # a single block is too large for this node: back off, try again
            log.info("range_too_large", refused_blocks=rng.size, next_blocks=self.sizer.size)
            return 0.0
        judgement = judge(
            answer,
            anchor=anchor,
            confirmations=self.confirmations,
            provider_address=self.scanner.provider_address,
        )
        if judgement.verdict is Verdict.HEAD_BELOW_CURSOR:
            await self._settle()
            return await self._head_below_cursor(judgement.reason)
        if judgement.verdict is Verdict.REORG_SUSPECTED:
            log.warning("reorg_suspected", reason=judgement.reason, cursor=self._cursor)
            await self._settle()
            return await self._walk_back(judgement.reason)
        if judgement.verdict is Verdict.INCONSISTENT:
            raise StaleNodeError(f"inconsistent batch: {judgement.reason}")
        if judgement.verdict is Verdict.SHRINK:
            # The range was planned from a head an earlier answer reported, so this answer
            # comes from a view behind that one (another backend of a load balancer). Ask
            # again rather than shrink to its head: re-planning from a lagging head would
            # let a probe and a poll alternate between two backends forever. Stale answers
            # in a row make the indexer forget the higher head (_on_stale), so a chain that
            # really got shorter is followed.
            raise StaleNodeError(f"head {answer.head} below the {self.head} seen before")
        self.head = max(self.head or 0, answer.head)
        assert answer.range_end is not None  # judge() accepted it
        self.sizer.succeeded(rng.size, len(answer.logs))
        logs = await self._with_hidden_logs(answer)
        await self._settle()
        self._begin_commit(rng, answer.range_end, logs, answer.checked_headers())
        next_rng = self._next_range()
        if next_rng is not None:
            self.caught_up = False
            self._start_prefetch(next_rng, rng.last)
            return 0.0
        await self._settle()
        self._mark_caught_up()
        return self.settings.indexer_poll_interval_s

    async def _probe(self) -> float | None:
        """Ask for the head (and the anchor's header) when no range is known to be ready.
        Returns a delay when the step is over, None when a range can now be read."""
        anchor = self._cursor_header
        probe = await self.scanner.probe(anchor.number if anchor else None)
        if anchor is not None:
            if probe.head < anchor.number:
                return await self._head_below_cursor(f"head {probe.head} < {anchor.number}")
            if probe.anchor is not None and probe.anchor.hash != anchor.hash:
                reason = f"block {anchor.number} is now {probe.anchor.hash}, was {anchor.hash}"
                log.warning("reorg_suspected", reason=reason, head=probe.head)
                return await self._walk_back(reason)
            if probe.anchor is None:
                raise StaleNodeError(f"node reports head {probe.head} but lacks {anchor.number}")
        self.head = probe.head
        return None

    def _next_range(self) -> LogRange | None:
        if self.head is None:
            return None
        first = self._cursor + 1
        last = min(self.head - self.confirmations, first + self.sizer.size - 1)
        return LogRange(first, last) if last >= first else None

    # --- the pipeline ---------------------------------------------------------------------

    def _bloom_first(self, rng: LogRange) -> int | None:
        """The first block of ``rng`` whose header the batch carries for the bloom check:
        those within HODLAI_INDEXER_BLOOM_WINDOW of the head (bloom.py says why), and the
        range's last in any case. None when the check is off."""
        window = self.settings.indexer_bloom_window
        if window == 0:
            return None
        head = self.head if self.head is not None else rng.last
        return min(rng.last, max(rng.first, head - window + 1))

    async def _with_hidden_logs(self, answer: PollAnswer) -> list[dict[str, Any]]:
        """The answer's logs, plus any its blocks' blooms show it left out (bloom.py)."""
        if self.settings.indexer_bloom_window == 0:
            return answer.logs
        return await bloom.with_hidden_logs(self.scanner, self.events, answer)

    async def _fetch(self, rng: LogRange, anchor: int | None) -> PollAnswer:
        prefetch, self._prefetch = self._prefetch, None
        bloom_first = self._bloom_first(rng)
        if prefetch is not None:
            # A prefetch planned with an older (lower) head checked at least these blocks.
            covers = bloom_first is None or (
                prefetch.bloom_first is not None and prefetch.bloom_first <= bloom_first
            )
            if prefetch.range == rng and prefetch.anchor == anchor and covers:
                return await prefetch.task
            prefetch.task.cancel()
        return await self.scanner.poll(rng, anchor, bloom_first)

    def _start_prefetch(self, rng: LogRange, anchor: int) -> None:
        self._drop_prefetch()
        bloom_first = self._bloom_first(rng)
        task = asyncio.ensure_future(self.scanner.poll(rng, anchor, bloom_first))
        # An error is picked up when the result is awaited; do not warn about it otherwise.
        task.add_done_callback(_consume_exception)
        self._prefetch = _Prefetch(range=rng, anchor=anchor, bloom_first=bloom_first, task=task)

    def _drop_prefetch(self) -> None:
        prefetch, self._prefetch = self._prefetch, None
        if prefetch is not None:
            prefetch.task.cancel()

    def _begin_commit(
        self,
        rng: LogRange,
        header: BlockHeader,
        logs: list[dict[str, Any]],
        headers: list[BlockHeader],
    ) -> None:
        task = asyncio.ensure_future(
            self.db.run(
                _decode_and_apply,
                logs,
                expected_cursor=self._cursor,
                new_cursor=rng.last,
                range_end=header,
                history_blocks=self.settings.indexer_block_history,
                headers=headers,
                now=self.clock(),
            )
        )
        task.add_done_callback(_consume_exception)
        self._progressed = True
        self._inflight = _InFlight(task=task, range=rng, header=header, logs=len(logs))
        self._cursor = rng.last
        self._cursor_header = header

    async def _settle(self) -> None:
        """Wait for the commit in flight; on failure fall back to the committed cursor."""
        inflight, self._inflight = self._inflight, None
        if inflight is None:
            return
        try:
            stats = await inflight.task
        except BaseException:
            self._drop_prefetch()
            self._set_anchor(await self.db.run(ingest.read_anchor, self.settings.start_block))
            raise
        self.anchor = Anchor(inflight.range.last, inflight.header)
        self._count(stats)
        self._events += inflight.logs
        self._after_commit(inflight.range, stats, inflight.logs)

    def _set_anchor(self, anchor: Anchor) -> None:
        self.anchor = anchor
        self._cursor = anchor.number
        self._cursor_header = anchor.header
        INDEXER_CURSOR.set(anchor.number)

    def _after_commit(self, rng: LogRange, stats: IngestStats, logs: int) -> None:
        INDEXER_CURSOR.set(rng.last)
        if self.head is not None:
            INDEXER_LAG.set(max(0, self.head - rng.last))
        if stats.changed:
            log.info("range_ingested", first_block=rng.first, last_block=rng.last, **stats.fields())
        else:
            log.debug("range_ingested", first_block=rng.first, last_block=rng.last, logs=logs)
        now = self.clock()
        if self.progress is not None:
            self.progress.update(rng.last, self.head, self._events)
        if self.head is not None and now - self._last_progress_log >= PROGRESS_LOG_EVERY_S:
            self._last_progress_log = now
            if self.head - rng.last > self.sizer.size:
                log.info(
                    "indexer_progress",
                    cursor=rng.last,
                    head=self.head,
                    events=self._events,
                    range_blocks=self.sizer.size,
                )

    def _count(self, stats: IngestStats) -> None:
        self.totals.add(stats)
        if stats.wrong_answers:
            WRONG_ANSWERS.inc(stats.wrong_answers)

    def _mark_caught_up(self) -> None:
        self._progressed = True
        if not self.caught_up:
            log.info("indexer_caught_up", cursor=self._cursor, head=self.head)
        self.caught_up = True
        if self.head is not None:
            INDEXER_LAG.set(max(0, self.head - self._cursor))

    # --- stale answers, reorgs, re-scans ----------------------------------------------------

    def _on_stale(self, exc: StaleNodeError) -> float:
        self._drop_prefetch()
        self._stale_streak += 1
        ERRORS.labels(process=PROCESS, kind="StaleNodeError").inc()
        failover = self._stale_streak % STALE_FAILOVER_AFTER == 0
        delay = min(STALE_RETRY_CAP_S, STALE_RETRY_S * 2.0 ** min(self._stale_streak - 1, 10))
        # One stale answer behind a load balancer is routine (debug); a streak is news.
        (log.warning if failover else log.debug)(
            "rpc_answer_stale", reason=str(exc), streak=self._stale_streak, retry_in_s=delay
        )
        if failover:
            self.rpc.failover("stale")
            self.head = None  # trust the next probe's head, even if lower
        return delay

    async def _head_below_cursor(self, reason: str) -> float:
        """The node says its head is below the last accepted block: usually a lagging
        backend, so it counts as a stale answer and is asked again with a single request.
        Only when that repeats is it looked into (a chain that really got shorter). Walking
        back at once would cost a second request per step, and a round-robin load balancer
        over a fresh and a lagging backend then hands every poll to the lagging one."""
        if self._stale_streak + 1 < WALK_BACK_AFTER_STALE:
            raise StaleNodeError(reason)
        log.warning("reorg_suspected", reason=reason, cursor=self.anchor.number)
        return await self._walk_back(reason)

    async def _walk_back(self, suspicion: str) -> float:
        """The stored chain and the node disagree: find out how, and roll back if needed.
        A rollback that cannot be an ordinary reorg halts instead (:meth:`_refusal`)."""
        self._drop_prefetch()
        cursor = self.anchor.number
        candidates = await self.db.run(reorg.stored_blocks, cursor)
        search = await reorg.find_common_ancestor(self.scanner, candidates)
        if search.ancestor is not None and search.ancestor.number == cursor:
            # The suspicious answer came from another view than this one: a stale answer.
            log.info("reorg_suspicion_cleared", cursor=cursor)
            raise StaleNodeError(f"block {cursor} is unchanged; the earlier answer was stale")
        if search.mismatched == 0:
            raise StaleNodeError(
                f"node lacks {search.unknown} accepted block(s) up to {cursor}: behind"
            )
        if search.ancestor is not None:
            ancestor = search.ancestor.number
            beyond_history = False
        else:
            lowest = search.lowest_checked if search.lowest_checked is not None else cursor
            ancestor = lowest - 1
            beyond_history = True
            log.error("reorg_deeper_than_history", lowest_stored=lowest, cursor=cursor)
        ancestor = max(ancestor, self.settings.start_block - 1)
        orphaned = search.lowest_replaced if search.lowest_replaced is not None else cursor
        refusal = await self._refusal(ancestor, orphaned, beyond_history=beyond_history)
        if refusal is not None:
            return await self._halt(
                f"{refusal} ({suspicion}; {search.mismatched} stored block hash(es) differ)"
            )
        known_head = max(self.head or cursor, cursor)
        depth = known_head - ancestor
        deeper = depth > self.confirmations
        stats = await self.db.run(
            reorg.rollback_to,
            ancestor,
            old_cursor=cursor,
            depth=depth,
            deeper_than_confirmations=deeper,
            note=f"{search.mismatched} stored block(s) replaced; cursor {cursor} -> {ancestor}",
            now=self.clock(),
        )
        (log.error if deeper else log.warning)(
            "reorg_rolled_back",
            ancestor=ancestor,
            old_cursor=cursor,
            depth=depth,
            confirmations=self.confirmations,
            deeper_than_confirmations=deeper,
            requests_removed=stats.requests_removed,
            fulfilments_undone=stats.fulfillments_undone,
        )
        self._set_anchor(await self.db.run(ingest.read_anchor, self.settings.start_block))
        self.head = None
        self.caught_up = False
        self._progressed = True
        return 0.0

    async def _refusal(
        self, ancestor: int, orphaned: int, *, beyond_history: bool = False
    ) -> str | None:
        return await self.guard.refusal(
            cursor=self.anchor.number,
            ancestor=ancestor,
            orphaned=orphaned,
            beyond_history=beyond_history,
        )

    async def _halt(self, reason: str) -> float:
        """Stop ingesting until an operator resumes (guard.py); nothing is removed."""
        self._drop_prefetch()
        ERRORS.labels(process=PROCESS, kind="IndexerHalted").inc()
        await self.guard.halt(reason, self.anchor.number)
        self.head = None
        self.caught_up = False
        return self.settings.indexer_poll_interval_s

    async def _while_halted(self) -> float:
        """A halted step: only look whether an operator resumed."""
        if not await self.guard.resumed(self.anchor.number):
            return self.settings.indexer_poll_interval_s
        self._last_problem = ""
        self._stale_streak = 0
        self.head = None
        self.caught_up = False
        self._set_anchor(await self.db.run(ingest.read_anchor, self.settings.start_block))
        return 0.0

    def _on_log_conflict(self, exc: LogDataConflictError) -> float:
        """The answer's logs differ from stored ones under the same block hash: nothing of
        it was stored (ingest raised inside the transaction); distrust this URL."""
        self._drop_prefetch()
        self.log_conflicts += 1
        LOG_CONFLICTS.inc()
        ERRORS.labels(process=PROCESS, kind="LogDataConflictError").inc()
        self._last_problem = str(exc)
        log.error("log_data_conflict", error=str(exc), cursor=self.anchor.number)
        self.rpc.failover("log data differs under an unchanged hash")
        self.head = None
        return STALE_RETRY_S

    async def _backup_rescan(self) -> None:
        """Read recent accepted blocks again; ingest whatever a lagging backend hid."""
        anchor = self.anchor
        if anchor.header is None or anchor.number < self.settings.start_block:
            return
        first = max(
            self.settings.start_block, anchor.number - self.settings.indexer_rescan_blocks + 1
        )
        rng = LogRange(first, anchor.number)
        # No bloom window here: every accepted block's bloom was checked when it was
        # accepted, and a re-scan only ever adds what it finds.
        answer = await self.scanner.poll(rng, None)
        judgement = judge(
            answer, anchor=None, confirmations=0, provider_address=self.scanner.provider_address
        )
        if judgement.verdict is not Verdict.ACCEPT or answer.range_end is None:
            log.info("backup_rescan_skipped", reason=judgement.reason or judgement.verdict.value)
            return
        if answer.range_end.hash != anchor.header.hash:
            reason = "re-scan sees another hash for the cursor"
            log.warning("reorg_suspected", reason=reason)
            await self._walk_back(reason)
            return
        decoded = decode_logs(answer.logs)
        verified = await self._verify_log_blocks(rng, decoded)
        if not verified:
            return
        stats = await self.db.run(
            ingest.apply_rescan, cursor=anchor.number, decoded=decoded, now=self.clock()
        )
        self._count(stats)
        if stats.changed:
            log.warning(
                "backup_rescan_found", first_block=rng.first, last_block=rng.last, **stats.fields()
            )
        else:
            log.debug("backup_rescan_clean", first_block=rng.first, last_block=rng.last)

    async def _verify_log_blocks(self, rng: LogRange, decoded: DecodedLogs) -> bool:
        """Logs of a re-scan must come from the chain the cursor is on: any log block whose
        hash is not the stored one is checked against the node's header for that block."""
        stored = await self.db.run(ingest.stored_hashes, rng.first, rng.last)
        doubtful = sorted(n for n, h in decoded.log_blocks.items() if stored.get(n) != h)
        if not doubtful:
            return True
        chain = await self.scanner.headers(doubtful)
        confirmed = {
            n for n, header in chain.items() if header and header.hash == decoded.log_blocks[n]
        }
        if len(confirmed) != len(doubtful):
            log.info("backup_rescan_skipped", reason="logs from another view of the chain")
            return False
        replaced = [n for n in doubtful if n in stored]
        if replaced:
            # We stored logs of these blocks from another fork (a batch split across
            # backends): undo from the first of them and read the range again.
            log.warning("stored_log_blocks_not_on_chain", blocks=replaced[:10])
            await self._rollback_for_rescan(min(replaced) - 1, len(replaced))
            return False
        return True

    async def _rollback_for_rescan(self, ancestor: int, blocks: int) -> None:
        cursor = self.anchor.number
        refusal = await self._refusal(max(ancestor, self.settings.start_block - 1), ancestor + 1)
        if refusal is not None:
            await self._halt(f"{refusal} ({blocks} stored log block(s) not on the chain)")
            return
        stats = await self.db.run(
            reorg.rollback_to,
            max(ancestor, self.settings.start_block - 1),
            old_cursor=cursor,
            depth=cursor - ancestor,
            deeper_than_confirmations=False,
            note=f"{blocks} stored log block(s) not on the chain the cursor is on",
            now=self.clock(),
        )
        log.warning(
            "rescan_rolled_back",
            ancestor=stats.ancestor,
            old_cursor=cursor,
            requests_removed=stats.requests_removed,
            fulfilments_undone=stats.fulfillments_undone,
        )
        self._set_anchor(await self.db.run(ingest.read_anchor, self.settings.start_block))
        self.caught_up = False
        self._progressed = True

    async def _publish_metrics(self) -> None:
        now = self.clock()
        if not self._publish_status or now - self._last_status_metrics < STATUS_METRICS_EVERY_S:
            return
        self._last_status_metrics = now
        for status, count in (await self.db.run(store.status_counts)).items():
            REQUESTS.labels(status=status).set(count)


def _decode_and_apply(
    conn: sqlite3.Connection, /, logs: list[dict[str, Any]], **kwargs: Any
) -> IngestStats:
    """Runs on the database thread: decode one range's logs, then commit them."""
    return ingest.apply_range(conn, decoded=decode_logs(logs), **kwargs)


def _consume_exception(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


# --- composition root ---------------------------------------------------------------------


class IndexerService:
    """The indexer as shared.runtime.run_worker runs it."""

    def __init__(self, indexer: Indexer, rpc: RpcClient, *, once: bool) -> None:
        self.indexer = indexer
        self._rpc = rpc
        self._once = once
        self._stop: asyncio.Event | None = None

    async def start(self, stop: asyncio.Event) -> bool:
        self._stop = stop
        return await start_when_reachable(self.indexer, stop)

    async def step(self) -> float:
        delay = await self.indexer.step()
        if self._once and self.indexer.caught_up and self._stop is not None:
            self._stop.set()
        return delay

    async def stop(self) -> None:
        await self.indexer.close()
        await self._rpc.aclose()
        log.info(
            "indexer_stopped", cursor=self.indexer.anchor.number, **self.indexer.totals.fields()
        )


@asynccontextmanager
async def indexer_service(
    settings: IndexerSettings, db: AsyncDatabase, health: ProgressHealth, *, once: bool
) -> AsyncIterator[IndexerService]:
    await db.run(lambda conn: conn.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}"))
    # Pinned to the database's chain in Indexer.start (expect_chain), before any answer is used.
    rpc = RpcClient(settings.rpc_urls, timeout=settings.indexer_rpc_timeout_s)
    indexer = Indexer(
        settings,
        rpc=rpc,
        db=db,
        progress=BackfillProgress(),
        publish_status_metrics=bool(settings.metrics_port),
    )
    health.watch(indexer)
    yield IndexerService(indexer, rpc, once=once)


def open_database(path: Path) -> AsyncDatabase:
    """The indexer's connection: migrated, with a page cache that holds one poll's writes."""
    conn = connect(path)
    conn.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")
    return AsyncDatabase(conn)


async def start_when_reachable(indexer: Indexer, stop: asyncio.Event) -> bool:
    """Start, retrying while the RPC is unreachable; False if stopped before it worked.
    Permanent problems (wrong chain, wrong database) raise and end the process."""
    delay = STARTUP_RETRY_S
    while not stop.is_set():
        try:
            await indexer.start()
        except RetryableError as exc:
            log.warning("indexer_start_failed", error=str(exc), retry_in_s=delay)
            if await sleep_or_stop(stop, delay):
                return False
            delay = min(STARTUP_RETRY_CAP_S, delay * 2)
            continue
        return True
    return False


def main(*, once: bool = False) -> int:
    """Entry point of ``hodlai indexer`` (or, with ``once``, until caught up). The indexer
    lock on the database file comes first (shared.instance), so that a second indexer is
    refused naming the first before it touches anything, the metrics port included."""
    settings = load_settings(IndexerSettings)
    settings.require("rpc_urls", "provider_address")
    health = ProgressHealth(stale_after_s=HEALTH_STALE_AFTER_S)
    spec = WorkerSpec(
        process=PROCESS,
        executor=EXECUTOR,
        db_path=settings.db_path,
        health=health,
        metrics_port=settings.metrics_port,
        role=PROCESS,
    )
    return run_worker(
        spec,
        lambda db, _stop: indexer_service(settings, db, health, once=once),
        log_level=settings.log_level,
    )
