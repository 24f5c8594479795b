"""Real loopback servers for the dispatcher's tests: the strict mock queue and scripted
agents (workers/dispatch/mock), on their own event loop thread; a database with the agents
registered; the dispatcher run in-process until a condition holds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from shared.config import load_settings
from shared.db import connect
from workers.dispatch import agents as registry
from workers.dispatch.main import run
from workers.dispatch.mock.agents import MockAgent, start_agents
from workers.dispatch.mock.http import HttpServer, ServerThread
from workers.dispatch.mock.queue import ANSWER_SCHEMA, MockQueue
from workers.dispatch.settings import DispatchSettings

TOKEN = "test-queue-token"


@dataclass
class World:
    thread: ServerThread
    queue: MockQueue
    queue_url: str
    db: Path
    agents: dict[str, MockAgent] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)
    servers: list[HttpServer] = field(default_factory=list)

    def add_agents(self, specs: list[dict[str, Any]], *, category: str = "summarize",
                   tags: tuple[str, ...] = ("en",), skill: int = 5,
                   reputation: float = 0.5) -> None:  # fmt: skip
        started = self.thread.run(start_agents(specs))
        conn = connect(self.db)
        for agent, server in started:
            self.agents[agent.name], self.urls[agent.name] = agent, server.url
            self.servers.append(server)
            registry.register(conn, registry.AgentSpec(
                agent_id=agent.name, name=agent.name, endpoint=server.url, category=category,
                tags=list(tags), skill_level=skill, reputation=reputation,
            ), actor="test")  # fmt: skip
        conn.close()

    def enqueue(self, jobs: list[dict[str, Any]]) -> None:
        self.thread.loop.call_soon_threadsafe(self.queue.add, jobs)
        time.sleep(0.01)

    def settings(self, **env: Any) -> DispatchSettings:
        base = {"db_path": self.db, "dispatch_queue_url": self.queue_url,
                "dispatch_queue_token": TOKEN, "dispatch_default_agent_timeout_s": 2.0,
                "dispatch_poll_idle_s": 0.05, "dispatch_agents_refresh_s": 0.2,
                "dispatch_health_interval_s": 3600.0}  # fmt: skip
        return load_settings(DispatchSettings, **{**base, **env})

    def run_until(self, done: Callable[[], bool], *, timeout: float = 30.0,
                  **env: Any) -> None:  # fmt: skip
        settings = self.settings(**env)

        async def main() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(run(settings, stop))
            deadline = time.monotonic() + timeout
            while not done() and time.monotonic() < deadline and not task.done():  # noqa: ASYNC110 -- polls another thread's state
                await asyncio.sleep(0.05)
            stop.set()
            await task

        asyncio.run(main())
        assert done(), f"not done within {timeout} s: {self.queue.snapshot()}"


def job(n: int, *, category: str = "summarize", tags: tuple[str, ...] = ("en",),
        deadline_s: float = 30.0, schema: dict[str, Any] | None = None,
        prefix: str = "job") -> dict[str, Any]:  # fmt: skip
    return {"id": f"{prefix}-{n}", "category": category, "tags": list(tags), "skill_level": 1,
            "input": {"text": f"document {n}"}, "result_schema": schema or ANSWER_SCHEMA,
            "deadline": time.time() + deadline_s}  # fmt: skip


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    thread = ServerThread()
    queue = MockQueue(TOKEN)
    server = HttpServer(queue.handle)
    thread.run(server.start())
    w = World(thread, queue, server.url, tmp_path / "dispatch.db", servers=[server])
    connect(w.db).close()
    yield w
    thread.stop(w.servers)


def outcomes(w: World) -> dict[str, Any]:
    return {j.job_id: j.outcome for j in w.queue.jobs.values() if j.outcome}
