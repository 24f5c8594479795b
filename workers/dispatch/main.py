"""The composition root of ``hodlai dispatcher``: settings → logging → the role lock → the
database, the HTTP client, the queue client → recovery → the loop → clean shutdown."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from typing import Final

import aiohttp
import structlog

from shared.config import load_settings
from shared.db import AsyncDatabase, connect
from shared.instance import hold_role
from shared.logs import configure_logging
from shared.metrics import Health, serve
from shared.runtime import install_stop_handlers, run_loop
from workers.dispatch.book import AgentBook
from workers.dispatch.context import Context
from workers.dispatch.dispatcher import Dispatcher
from workers.dispatch.queue_client import QueueClient
from workers.dispatch.settings import DispatchSettings
from workers.dispatch.writer import Writer

log = structlog.get_logger(__name__)

# Connections kept to agents and the queue: one per call in flight at hundreds of jobs a
# second with three agents each; more would only queue in the agents' accept backlogs.
MAX_CONNECTIONS: Final = 1024
# Seconds without a healthy step before /healthz turns 503.
STALE_AFTER_S: Final = 60.0


def build_http() -> aiohttp.ClientSession:
    """One session (one connection pool) for the agents and the queue; every call bounds
    itself with its own timeout."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS, limit_per_host=0),
        timeout=aiohttp.ClientTimeout(total=None),
        trust_env=False,
    )


async def run(settings: DispatchSettings, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or until ``stop`` is set, when given: tests)."""
    settings.require_queue()
    role = hold_role(settings.db_path, "dispatcher")
    conn = connect(settings.db_path)
    role.verify(conn)
    db = AsyncDatabase(conn)
    http = build_http()
    owner = f"dispatcher:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    ctx = Context(
        settings=settings, db=db, writer=Writer(db),
        queue=QueueClient(settings.queue_url, settings.queue_token, http), http=http,
        book=AgentBook(half_life_s=settings.dispatch_score_half_life_s,
                       breaker_failures=settings.dispatch_breaker_failures,
                       breaker_cooldown_s=settings.dispatch_breaker_cooldown_s),
        owner=owner,
    )  # fmt: skip
    health = Health(STALE_AFTER_S)
    server = serve(settings.metrics_port, health) if settings.metrics_port else None
    if stop is None:
        stop = asyncio.Event()
        install_stop_handlers(stop)
    dispatcher = Dispatcher(ctx)
    try:
        await dispatcher.start()
        await run_loop("dispatcher", dispatcher.step, stop=stop, health=health)
    finally:
        await dispatcher.stop()
        await http.close()
        db.close()
        if server is not None:
            server.shutdown()
        role.release()


def main() -> int:
    settings = load_settings(DispatchSettings)
    configure_logging(settings.log_level)
    asyncio.run(run(settings))
    return 0
