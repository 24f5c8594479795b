"""A log poller's pipeline: three things at once during a backfill. The node works on the
next range's batch (prefetched as soon as a range is accepted), a worker thread decodes the
accepted range (the sinks' ``decode``), and the database thread commits the range before it.

Why decoding is not on the database thread: a range's decode and its insert each cost about
as much as the node's answer, so decoding next to the insert, on one thread, made the
database thread the bottleneck (the node and the event loop waited for it ~60 % of a
backfill). Decoding on another thread pays only because a sink's bulk insert runs inside
SQLite without the GIL (shared.state.insert_many: many rows per statement); with one
statement per row, the insert waited for the GIL after every row while the decoder ran, and
a thread gained nothing (measured: scripts/bench_indexer.py, docs/BENCHMARKS.md).

Guarantees:
- At most one range is in flight to the database, one being decoded, and one poll
  prefetched.
- A prefetched answer is used only for exactly the range, anchor and bloom window it was
  asked for (:meth:`Pipeline.fetch`); anything else cancels it.
- :meth:`Pipeline.settle` returns a range only once its transaction committed; a failed
  commit raises there, and the poller then drops the prefetch and falls back to the
  committed cursor (LogPoller._settle), so its cursor never runs ahead of what is stored.
- A commit in flight is never abandoned half-way: the poller settles it before closing.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from shared.chain.scan import BlockHeader, ChainScanner, LogRange, PollAnswer
from shared.db import AsyncDatabase

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Committing:
    """A range handed to the database thread."""

    range: LogRange
    header: BlockHeader
    #: logs in the answer (for progress counts)
    logs: int


@dataclass(slots=True)
class _InFlight:
    what: Committing
    task: asyncio.Future[list[Any]]


@dataclass(slots=True)
class _Prefetch:
    range: LogRange
    anchor: int | None
    bloom_first: int | None
    task: asyncio.Task[PollAnswer]


class Pipeline:
    """One prefetched poll and one commit in flight (see the module docstring)."""

    def __init__(self, scanner: ChainScanner, db: AsyncDatabase) -> None:
        self.scanner = scanner
        self.db = db
        self._inflight: _InFlight | None = None
        self._prefetch: _Prefetch | None = None

    async def fetch(self, rng: LogRange, anchor: int | None, bloom_first: int | None) -> PollAnswer:
        """The poll of ``rng``: the prefetched one if it was asked for this, else a new one."""
        prefetch, self._prefetch = self._prefetch, None
        if prefetch is not None:
            # A prefetch planned with an older (lower) head checked at least these blocks.
            covers = bloom_first is None or (
                prefetch.bloom_first is not None and prefetch.bloom_first <= bloom_first
            )
            if prefetch.range == rng and prefetch.anchor == anchor and covers:
                return await prefetch.task
            prefetch.task.cancel()
        return await self.scanner.poll(rng, anchor, bloom_first)

    def prefetch(self, rng: LogRange, anchor: int, bloom_first: int | None) -> None:
        """Start polling ``rng`` now; :meth:`fetch` picks it up."""
        self.drop_prefetch()
        task = asyncio.ensure_future(self.scanner.poll(rng, anchor, bloom_first))
        # An error is picked up when the result is awaited; do not warn about it otherwise.
        task.add_done_callback(_consume_exception)
        self._prefetch = _Prefetch(range=rng, anchor=anchor, bloom_first=bloom_first, task=task)

    def drop_prefetch(self) -> None:
        prefetch, self._prefetch = self._prefetch, None
        if prefetch is not None:
            prefetch.task.cancel()

    async def decode(self, decode: Callable[[], T]) -> T:
        """Run ``decode`` (the sinks' pure decoding of an accepted range) on a worker thread,
        while the event loop reads the next answer and the database thread commits."""
        return await asyncio.to_thread(decode)

    def begin_commit(
        self, what: Committing, write: Callable[[sqlite3.Connection], list[Any]]
    ) -> None:
        """Run ``write`` (the range's transaction) on the database thread. The caller has
        settled the previous commit."""
        assert self._inflight is None, "settle the commit in flight first"
        task = asyncio.ensure_future(self.db.run(write))
        task.add_done_callback(_consume_exception)
        self._inflight = _InFlight(what=what, task=task)

    async def settle(self) -> tuple[Committing, list[Any]] | None:
        """Wait for the commit in flight: the range and its sinks' stats once committed (None
        when nothing was in flight); its error if it failed."""
        inflight, self._inflight = self._inflight, None
        if inflight is None:
            return None
        return inflight.what, await inflight.task


def _consume_exception(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
