"""Group commit: store functions submitted by many coroutines run in submission order, as
many as are waiting, inside one write transaction on the database thread.

Each function runs in its own savepoint, so one that is refused (a TransitionConflict, a
lease lost) rolls back alone and its caller gets the error; the others commit. At hundreds
of jobs a second this turns thousands of small transactions into a few dozen a second.
A caller that needs the outcome awaits :meth:`run`; one that only needs the order (the
next write of the same row comes later) uses :meth:`submit` and forgets the future.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Any, Final, TypeVar

import structlog

from shared.db import AsyncDatabase, atomic
from shared.errors import HodlaiError

log = structlog.get_logger(__name__)

T = TypeVar("T")
# Functions per transaction at most: bounds how long one commit holds the write lock.
MAX_BATCH: Final = 2000

_Item = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], "asyncio.Future[Any]"]


class Writer:
    def __init__(self, db: AsyncDatabase) -> None:
        self.db = db
        self._queue: list[_Item] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.items = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="writer")

    async def close(self) -> None:
        """Commit what is queued, then stop."""
        while self._queue:
            await self._flush()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_log_unobserved)
        self._queue.append((fn, args, kwargs, future))
        self._wake.set()
        return future

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        result: T = await self.submit(fn, *args, **kwargs)
        return result

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                await self._flush()

    async def _flush(self) -> None:
        batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        try:
            outcomes = await self.db.run(_apply, batch)
        except Exception as exc:  # noqa: BLE001 -- the whole batch failed (busy, disk): every caller gets it
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        self.batches += 1
        self.items += len(batch)
        for (*_, future), (ok, value) in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)


def _apply(conn: sqlite3.Connection, batch: list[_Item]) -> list[tuple[bool, Any]]:
    out: list[tuple[bool, Any]] = []
    with atomic(conn):
        for fn, args, kwargs, _ in batch:
            try:
                with atomic(conn):  # a savepoint: a refused function rolls back alone
                    out.append((True, fn(conn, *args, **kwargs)))
            except (HodlaiError, sqlite3.IntegrityError) as exc:
                out.append((False, exc))
    return out


def _log_unobserved(future: asyncio.Future[Any]) -> None:
    """A submitted write nobody awaits must not fail silently."""
    if future.cancelled():
        return
    exc = future.exception()
    if exc is not None and not getattr(future, "_observed", False):
        log.debug("write_refused", kind=type(exc).__name__, error=str(exc))
