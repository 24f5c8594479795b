"""The log poller: moves the logs of registered filters from the chain into their sinks,
never missing one, never applying one twice, surviving crashes, stale RPC backends and
reorgs. The oracle's indexer is one (workers/oracle/indexer/main.py); every executor that reads
the chain registers a :class:`~shared.chain.filters.LogFilter` and a
:class:`~shared.chain.filters.LogSink` with one.

Its guarantees (after Chainlink's LogPoller) and where each one is kept:

1. **No log is missed.** Blocks are accepted strictly in order from the filters' first start
   block; the cursor (one per poller, by name, in ``cursors``) names the last block whose
   logs are all stored, and it moves only in the same SQLite transaction as the sinks'
   writes of those logs (history.commit_range). A range is accepted only when the *same*
   batch that returned its logs also reported a head at least ``confirmations`` above the
   range's end and returned the range's last header (scan.judge): a backend behind a load
   balancer that has not seen the range yet cannot make the poller skip it. A separate
   ``eth_blockNumber`` followed by ``eth_getLogs`` (the naive loop) would trust a head one
   backend saw and logs another backend returned, and lose the difference forever.
2. **No log is stored twice, and re-reading changes nothing.** Sinks are idempotent
   (filters.py), so a crash between the commit and anything after it, a re-scan or an
   overlapping range only re-confirms what is there.
3. **Reorgs are undone.** The hashes of accepted blocks are stored; every poll re-fetches the
   header of the last accepted block in the same batch and compares (scan.judge). A mismatch
   walks back to the newest stored block the chain still has (reorg.py) and undoes, in one
   transaction, everything above it in every sink (history.roll_back); the range is then
   read again. A rollback no ordinary reorg explains (another chain id, deeper than
   ``max_reorg_depth`` or than the stored history) halts the poller for an operator
   instead (guard.py).
4. **Every log of an accepted range is from the accepted chain, as far as one batch can
   tell.** Logs must come from a registered address, lie inside the range, agree on one hash
   per block, and the logs of the range's last block must carry that header's hash.
4b. **No log is hidden by a batch split across backends.** The batch also carries the
   headers of the range's blocks within ``bloom_window`` of the head; a block whose
   ``logsBloom`` may hold one of a filter's logs but that returned none is read again by its
   hash (bloom.py). The periodic backup re-scan (rescan.py) stays as a second line.
4c. **A wrong node is not believed.** Logs that differ from stored ones under an unchanged
   block hash (a sink raises LogDataConflictError inside the transaction) store nothing and
   distrust the URL; stale or inconsistent answers are asked again at once, and, repeated,
   fail over to the next RPC URL.
5. **Progress is adaptive.** A range the node refuses as too large is halved (down to one
   block) and grows back after successes; a range that returned many logs also shrinks
   (scan.RangeSizer), so one poll stays a bounded amount of memory and work.
6. **Health says whether it progresses.** A step progresses when it accepts a range,
   confirms the head or handles a reorg; ``unhealthy_after_polls`` steps in a row without
   progress, or a halt, make :meth:`LogPoller.progress_problem` report why (health.py).

One step reads the next range with one batch, judges it, asks for the next range, has the
logs routed to the sinks and decoded on a worker thread, and hands them to the database
thread, which commits them (history.write_decoded); meanwhile the node works on the next
range and the previous range's commit finishes (pipeline.py). Every other error propagates to
shared.runtime.run_loop, which backs off (honouring Retry-After) and calls the step again.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from shared.chain import bloom, history, reorg, rescan
from shared.chain.config import PollerConfig, ProgressReporter
from shared.chain.filters import (
    Decoded,
    Log,
    LogFilter,
    LogSink,
    Registration,
    decode_routed,
    merged_stats,
)
from shared.chain.guard import Guard
from shared.chain.history import Anchor
from shared.chain.metrics import PollerMetrics
from shared.chain.pipeline import Committing, Pipeline
from shared.chain.report import ProgressReport
from shared.chain.rpc import RpcClient
from shared.chain.scan import (
    BlockHeader,
    ChainScanner,
    LogRange,
    PollAnswer,
    RangeSizer,
    Verdict,
    judge,
)
from shared.chain.stale import STALE_RETRY_S, StaleStreak
from shared.db import AsyncDatabase
from shared.errors import (
    HodlaiError,
    LogDataConflictError,
    RpcChainMismatchError,
    RpcRangeTooLargeError,
    StaleNodeError,
)
from shared.metrics import ERRORS

log = structlog.get_logger(__name__)

# Seconds between "start_block_above_head" warnings while waiting for the start block.
START_WAIT_LOG_EVERY_S = 60.0


class LogPoller:
    """A poller's state and its poll step. Build it, :meth:`register` its filters and
    sinks, ``await start()``, then run :meth:`step` in shared.runtime.run_loop;
    ``await close()`` at the end."""

    def __init__(
        self,
        config: PollerConfig,
        *,
        rpc: RpcClient,
        db: AsyncDatabase,
        metrics: PollerMetrics,
        progress: ProgressReporter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.name = config.name
        self.rpc = rpc
        self.db = db
        self.metrics = metrics
        self.clock = clock
        self.scanner = ChainScanner(rpc)
        self.pipeline = Pipeline(self.scanner, db)
        self.sizer = RangeSizer(config.max_range, config.target_logs)
        self.confirmations = config.confirmations
        self._registrations: tuple[Registration, ...] = ()
        self._blooms: tuple[bloom.EventBloom, ...] = ()
        self._started = False
        #: last committed block and its hash
        self.anchor = Anchor(-1, None)
        # The pipeline's view: the committed anchor plus the range in flight, if any.
        self._cursor = self.anchor.number
        self._cursor_header: BlockHeader | None = None
        self.head: int | None = None
        self.caught_up = False
        self._steps_since_rescan = 0
        self._stale = StaleStreak()
        self.report = ProgressReport(metrics, progress, clock)
        #: the halt state, and what a rollback may do (guard.py)
        self.guard = Guard(db, self.scanner, worker=config.name, clock=clock,
                           max_reorg_depth=config.max_reorg_depth,
                           halted_gauge=metrics.halted,
                           resume_command=config.resume_command)  # fmt: skip
        #: the start block while it is above the chain head (waiting for it), else None
        self.waiting_for_start: int | None = None
        self._last_start_log = float("-inf")
        # Progress, for /healthz: a step progresses when it accepts a range, confirms the
        # head, or handles a reorg; anything else (stale, inconsistent, halted) does not.
        self._progressed = False
        self._polls_without_progress = 0
        self._last_problem = ""
        #: answers refused because their logs differed under an unchanged block hash
        self.log_conflicts = 0

    def register(self, log_filter: LogFilter, sink: LogSink[Any, Any]) -> None:
        """Add a filter and its sink (before :meth:`start`). Filters share the poller's
        cursor: one added to a poller whose cursor is past its start block is read from
        the cursor on (to read its history, give it a poller of its own name)."""
        if self._started:
            raise RuntimeError("register filters before the poller starts")
        if any(r.filter.name == log_filter.name for r in self._registrations):
            raise ValueError(f"a filter named {log_filter.name!r} is registered already")
        self._registrations = (*self._registrations, Registration(log_filter, sink))
        self.scanner.filters = tuple(r.filter for r in self._registrations)
        self._blooms = tuple(bloom.EventBloom(r.filter) for r in self._registrations)
        self.anchor = Anchor(self.start_block - 1, None)
        self._cursor = self.anchor.number

    @property
    def start_block(self) -> int:
        """The first block any filter wants."""
        return min((r.filter.start_block for r in self._registrations), default=0)

    @property
    def stale_streak(self) -> int:
        """Stale or inconsistent answers in a row (0 after a good step)."""
        return self._stale.count

    @property
    def halt_reason(self) -> str | None:
        """Why the poller is halted for an operator (shared/halt.py), None while running."""
        return self.guard.reason

    @property
    def polls_without_progress(self) -> int:
        return self._polls_without_progress

    def progress_problem(self) -> str | None:
        """Why the poller is not making progress, or None (for /healthz; ProgressSource)."""
        if self.guard.reason is not None:
            return f"halted: {self.guard.reason} ({self.guard.resume_command})"
        if self._polls_without_progress >= self.config.unhealthy_after_polls:
            return (
                f"no progress for {self._polls_without_progress} polls at cursor "
                f"{self.anchor.number}: {self._last_problem or 'no range accepted'}"
            )
        return None

    # --- start and stop -------------------------------------------------------------------

    async def start(self) -> None:
        """Check the chain (:meth:`verify_chain`), load the cursor and the halt state, and
        find the head."""
        if not self._registrations:
            raise RuntimeError("a poller needs at least one registered filter")
        self._started = True
        chain_id, log_fields = await self.verify_chain()
        self._set_anchor(await self._read_anchor())
        await self.guard.load(chain_id, self.anchor.number)
        head = (await self.scanner.probe(None)).head
        if self.start_block - 1 > head:
            self.waiting_for_start = self.start_block
            self._warn_start_above_head(head)
        else:
            await self._skip_to_start_block()
        log.info(
            "indexer_started",
            chain_id=chain_id,
            **log_fields,
            cursor=self.anchor.number,
            confirmations=self.confirmations,
            max_range=self.sizer.max_range,
            rpc_urls=len(self.rpc.urls),
        )

    async def verify_chain(self) -> tuple[int, dict[str, object]]:
        """The chain id every RPC URL is pinned to (shared/chain/rpc.py quarantines a URL of
        another chain), and fields for the ``indexer_started`` line. Here: the chain of the
        first URL that answers; a subclass checks it against its database (the indexer)."""
        chain_id = await self.scanner.chain_id()
        await self.rpc.expect_chain(chain_id)
        return chain_id, {}

    async def _read_anchor(self) -> Anchor:
        return await self.db.run(history.read_anchor, self.name, self.start_block)

    async def _skip_to_start_block(self) -> None:
        """The start block above the stored cursor (and not above the head): skip ahead."""
        if self.anchor.number >= self.start_block - 1:
            return
        log.warning(
            "start_block_above_cursor", cursor=self.anchor.number, start_block=self.start_block
        )
        await self.db.run(
            history.move_cursor_forward, self.name, self.start_block - 1, now=self.clock()
        )
        self._set_anchor(await self._read_anchor())

    def _warn_start_above_head(self, head: int) -> None:
        setting = self.config.start_setting
        self._last_problem = f"{setting} {self.start_block} is above the chain head {head}"
        now = self.clock()
        if now - self._last_start_log >= START_WAIT_LOG_EVERY_S:
            self._last_start_log = now
            # Not moved for good: a typo, or an RPC of a shorter chain, must not make the
            # poller skip the blocks it has yet to read once the setting is corrected.
            log.warning(
                "start_block_above_head",
                start_block=self.start_block,
                head=head,
                cursor=self.anchor.number,
                action=f"waiting; check {setting} and HODLAI_RPC_URLS",
            )

    async def close(self) -> None:
        """Let a commit in flight finish (it is never abandoned half-way) and drop the rest."""
        self.pipeline.drop_prefetch()
        try:
            await self._settle()
        except (HodlaiError, sqlite3.Error) as exc:
            log.warning("final_commit_failed", error=str(exc), kind=type(exc).__name__)
        self.report.close()

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
            self.metrics.no_progress_polls.set(self._polls_without_progress)

    async def after_advance(self) -> None:
        """Called after each step that read the chain without a stale or refused answer;
        a subclass adds its own periodic work here (the indexer's status gauges)."""

    async def _step(self) -> float:
        if self.guard.reason is not None:
            return await self._while_halted()
        try:
            return await self._ingest_step()
        except RpcChainMismatchError as exc:
            # Every URL now serves another chain (the client quarantined them): nothing of
            # theirs is read; wait for an operator, as for any other chain the poller cannot
            # trust (and a signer that depends on it signs nothing new meanwhile).
            return await self._halt(f"{exc}; nothing was rolled back")

    async def _ingest_step(self) -> float:
        if self.waiting_for_start is not None:
            head = (await self.scanner.probe(None)).head
            if self.waiting_for_start - 1 > head:
                self._warn_start_above_head(head)
                return self.config.poll_interval_s
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
            self.pipeline.drop_prefetch()
            raise
        self._stale.reset()
        await self.after_advance()
        return delay

    async def _advance(self) -> float:
        # The backup re-scan guards the head, where backends disagree; while backfilling far
        # below it every backend has the blocks, and re-reading would only slow it down.
        if self.caught_up:
            self._steps_since_rescan += 1
            if self._steps_since_rescan >= self.config.rescan_every:
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
                return self.config.poll_interval_s
        return await self._read_range(rng)

    async def _read_range(self, rng: LogRange) -> float:
        """Fetch and judge one range, and start committing it."""
        anchor = self._cursor_header
        try:
            answer = await self.pipeline.fetch(
                rng, anchor.number if anchor else None, self._bloom_first(rng)
            )
        except RpcRangeTooLargeError:
            if not self.sizer.too_large(rng.size):
                raise  # a single block is too large for this node: back off, try again
            log.info("range_too_large", refused_blocks=rng.size, next_blocks=self.sizer.size)
            return 0.0
        judgement = judge(
            answer,
            anchor=anchor,
            confirmations=self.confirmations,
            addresses=self.scanner.addresses,
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
            # in a row make the poller forget the higher head (_on_stale), so a chain that
            # really got shorter is followed.
            raise StaleNodeError(f"head {answer.head} below the {self.head} seen before")
        self.head = max(self.head or 0, answer.head)
        assert answer.range_end is not None  # judge() accepted it
        self.sizer.succeeded(rng.size, len(answer.logs))
        logs = await self._with_hidden_logs(answer)
        # The next range is asked for before this one is decoded and the previous one has
        # committed, so that the node works on it meanwhile (pipeline.py).
        next_rng = self._range_from(rng.last + 1)
        if next_rng is not None:
            self.pipeline.prefetch(next_rng, rng.last, self._bloom_first(next_rng))
        decode = functools.partial(decode_routed, self._registrations, logs, rng.first)
        decoded = await self.pipeline.decode(decode) if logs else decode()
        await self._settle()
        self._begin_commit(rng, answer.range_end, decoded, len(logs), answer.checked_headers())
        if next_rng is not None:
            self.caught_up = False
            return 0.0
        await self._settle()
        self._mark_caught_up()
        return self.config.poll_interval_s

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
        return self._range_from(self._cursor + 1)

    def _range_from(self, first: int) -> LogRange | None:
        if self.head is None:
            return None
        last = min(self.head - self.confirmations, first + self.sizer.size - 1)
        return LogRange(first, last) if last >= first else None

    def _bloom_first(self, rng: LogRange) -> int | None:
        """The first block of ``rng`` whose header the batch carries for the bloom check:
        those within the bloom window of the head (bloom.py says why), and the range's last
        in any case. None when the check is off."""
        window = self.config.bloom_window
        if window == 0:
            return None
        head = self.head if self.head is not None else rng.last
        return min(rng.last, max(rng.first, head - window + 1))

    async def _with_hidden_logs(self, answer: PollAnswer) -> list[Log]:
        """The answer's logs, plus any its blocks' blooms show it left out (bloom.py)."""
        if self.config.bloom_window == 0:
            return answer.logs
        logs, hidden = await bloom.with_hidden_logs(self.scanner, self._blooms, answer)
        if hidden:
            self.metrics.hidden_logs.inc(hidden)
        return logs

    # --- the pipeline's commits ---------------------------------------------------------------

    def _begin_commit(
        self,
        rng: LogRange,
        header: BlockHeader,
        decoded: Decoded,
        logs: int,
        headers: list[BlockHeader],
    ) -> None:
        registrations, expected, now = self._registrations, self._cursor, self.clock()
        history_blocks = self.config.block_history
        self.pipeline.begin_commit(
            Committing(range=rng, header=header, logs=logs),
            lambda conn: history.write_decoded(
                conn, registrations, decoded, name=self.name, expected_cursor=expected,
                rng=rng, range_end=header, headers=headers, history_blocks=history_blocks,
                now=now,
            ),
        )  # fmt: skip
        self._progressed = True
        self._cursor = rng.last
        self._cursor_header = header

    async def _settle(self) -> None:
        """Wait for the commit in flight; on failure fall back to the committed cursor."""
        try:
            done = await self.pipeline.settle()
        except BaseException:
            self.pipeline.drop_prefetch()
            self._set_anchor(await self._read_anchor())
            raise
        if done is None:
            return
        committed, stats = done
        self.anchor = Anchor(committed.range.last, committed.header)
        self._count(stats)
        self.report.committed(
            committed.range, stats, committed.logs, head=self.head, range_blocks=self.sizer.size
        )

    def _set_anchor(self, anchor: Anchor) -> None:
        self.anchor = anchor
        self._cursor = anchor.number
        self._cursor_header = anchor.header
        self.metrics.cursor.set(anchor.number)

    def _count(self, stats: Sequence[Any]) -> None:
        """Tell each sink its writes committed."""
        for registration, own in zip(self._registrations, stats, strict=True):
            registration.sink.committed(own)

    def _mark_caught_up(self) -> None:
        self._progressed = True
        self.report.caught_up(self._cursor, self.head, newly=not self.caught_up)
        self.caught_up = True

    # --- stale answers, reorgs, halts, re-scans -------------------------------------------------

    def _error(self, kind: str) -> None:
        ERRORS.labels(process=self.metrics.process, kind=kind).inc()

    def _on_stale(self, exc: StaleNodeError) -> float:
        self.pipeline.drop_prefetch()
        retry = self._stale.record(str(exc))
        self._error("StaleNodeError")
        if retry.failover:
            self.rpc.failover("stale")
            self.head = None  # trust the next probe's head, even if lower
        return retry.delay

    async def _head_below_cursor(self, reason: str) -> float:
        """The node says its head is below the last accepted block: usually a lagging
        backend, so it counts as a stale answer; only a repeat is looked into (stale.py)."""
        if not self._stale.walk_back_due():
            raise StaleNodeError(reason)
        log.warning("reorg_suspected", reason=reason, cursor=self.anchor.number)
        return await self._walk_back(reason)

    async def _walk_back(self, suspicion: str) -> float:
        """The stored chain and the node disagree: find out how, and roll back if needed.
        A rollback that cannot be an ordinary reorg halts instead (guard.py)."""
        self.pipeline.drop_prefetch()
        cursor = self.anchor.number
        candidates = await self.db.run(reorg.stored_blocks, self.name, cursor)
        plan = await reorg.plan_rollback(
            self.scanner, candidates, cursor=cursor, start_block=self.start_block
        )
        ancestor = plan.ancestor
        refusal = await self.guard.refusal(
            cursor=cursor,
            ancestor=ancestor,
            orphaned=plan.orphaned,
            beyond_history=plan.beyond_history,
        )
        if refusal is not None:
            return await self._halt(
                f"{refusal} ({suspicion}; {plan.mismatched} stored block hash(es) differ)"
            )
        known_head = max(self.head or cursor, cursor)
        depth = known_head - ancestor
        deeper = depth > self.confirmations
        fields = await self._roll_back(
            ancestor, depth=depth, deeper=deeper,
            note=f"{plan.mismatched} stored block(s) replaced; cursor {cursor} -> {ancestor}",
        )  # fmt: skip
        (log.error if deeper else log.warning)(
            "reorg_rolled_back",
            ancestor=ancestor,
            old_cursor=cursor,
            depth=depth,
            confirmations=self.confirmations,
            deeper_than_confirmations=deeper,
            **fields,
        )
        self.head = None
        return 0.0

    async def _roll_back(
        self, ancestor: int, *, depth: int, deeper: bool, note: str
    ) -> dict[str, int]:
        """Every sink and the poller's rows back to ``ancestor``, in one transaction; the
        sinks' counters for the log line."""
        stats = await self.db.run(
            history.write_rollback, self._registrations, name=self.name, ancestor=ancestor,
            depth=depth, deeper_than_confirmations=deeper, note=note, now=self.clock(),
        )  # fmt: skip
        self._set_anchor(await self._read_anchor())
        self.caught_up = False
        self._progressed = True
        return merged_stats(stats)[1]

    async def _halt(self, reason: str) -> float:
        """Stop ingesting until an operator resumes (guard.py); nothing is removed."""
        self.pipeline.drop_prefetch()
        self._error("IndexerHalted")
        await self.guard.halt(reason, self.anchor.number)
        self.head = None
        self.caught_up = False
        return self.config.poll_interval_s

    async def _while_halted(self) -> float:
        """A halted step: only look whether an operator resumed."""
        if not await self.guard.resumed(self.anchor.number):
            return self.config.poll_interval_s
        self._last_problem = ""
        self._stale.reset()
        self.head = None
        self.caught_up = False
        self._set_anchor(await self._read_anchor())
        return 0.0

    def _on_log_conflict(self, exc: LogDataConflictError) -> float:
        """The answer's logs differ from stored ones under the same block hash: nothing of
        it was stored (a sink raised inside the transaction); distrust this URL."""
        self.pipeline.drop_prefetch()
        self.log_conflicts += 1
        self.metrics.log_conflicts.inc()
        self._error("LogDataConflictError")
        self._last_problem = str(exc)
        log.error("log_data_conflict", error=str(exc), cursor=self.anchor.number)
        self.rpc.failover("log data differs under an unchanged hash")
        self.head = None
        return STALE_RETRY_S

    async def _backup_rescan(self) -> None:
        """Read recent accepted blocks again; hand the sinks whatever a lagging backend hid."""
        anchor = self.anchor
        found = await rescan.read_again(
            self.scanner, self.db, self._registrations, anchor, name=self.name,
            start_block=self.start_block, blocks=self.config.rescan_blocks,
        )  # fmt: skip
        if found.verdict is rescan.RescanVerdict.REORG_SUSPECTED:
            log.warning("reorg_suspected", reason=found.reason)
            await self._walk_back(found.reason)
            return
        if found.verdict is rescan.RescanVerdict.REPLACED:
            assert found.ancestor is not None
            await self._rollback_for_rescan(found.ancestor, found.replaced)
            return
        if found.verdict is rescan.RescanVerdict.VERIFIED:
            await rescan.store(
                self.db, self._registrations, found, name=self.name, cursor=anchor.number,
                now=self.clock(),
            )  # fmt: skip

    async def _rollback_for_rescan(self, ancestor: int, blocks: int) -> None:
        cursor = self.anchor.number
        target = max(ancestor, self.start_block - 1)
        refusal = await self.guard.refusal(
            cursor=cursor, ancestor=target, orphaned=ancestor + 1, beyond_history=False
        )
        if refusal is not None:
            await self._halt(f"{refusal} ({blocks} stored log block(s) not on the chain)")
            return
        fields = await self._roll_back(
            target, depth=cursor - ancestor, deeper=False,
            note=f"{blocks} stored log block(s) not on the chain the cursor is on",
        )  # fmt: skip
        log.warning("rescan_rolled_back", ancestor=target, old_cursor=cursor, **fields)
