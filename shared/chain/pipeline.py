"""A log poller's pipeline: the next range is fetched on the event loop while the previous
one commits on the database thread.

Decoding on the event loop instead measured no faster: both are Python under one GIL, and a
commit next to a decoder waits for the GIL after every SQLite step; so the sinks decode on
the database thread, next to their writes.

Guarantees:
- At most one range is in flight to the database and at most one poll is prefetched.
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
from typing import Any

from shared.chain.scan import BlockHeader, ChainScanner, LogRange, PollAnswer
from shared.db import AsyncDatabase


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
