"""What one dispatcher process shares between its loop and its jobs' tasks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from shared.db import AsyncDatabase
from workers.dispatch.book import AgentBook
from workers.dispatch.queue_client import QueueClient
from workers.dispatch.settings import DispatchSettings
from workers.dispatch.writer import Writer


@dataclass
class Context:
    settings: DispatchSettings
    db: AsyncDatabase
    writer: Writer
    queue: QueueClient
    http: aiohttp.ClientSession
    book: AgentBook
    owner: str
    actor: str = "dispatcher"
    clock: Callable[[], float] = time.time
    background: set[asyncio.Task[None]] = field(default_factory=set)

    def spawn(self, coro: object, name: str) -> asyncio.Task[None]:
        """A task the dispatcher keeps a reference to (and cancels at shutdown)."""
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)  # type: ignore[arg-type]
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task
