"""The indexer process: the oracle's log poller (:class:`Indexer`) and its composition root
(:func:`run`).

The indexer is a :class:`shared.chain.poller.LogPoller` named ``indexer`` (its cursor row,
its halt, ``hodlai indexer-resume``) with one filter and sink registered, the oracle's
(workers/oracle/indexer/sink.py: the provider's request and fulfilment events into requests and
fulfilments). Everything about reading the chain (one batch per poll, the pipeline, stale
answers, reorgs, halts, the bloom check, the backup re-scan, progress for /healthz) is the
poller's and is guaranteed there. What the indexer adds:

- at start, the database's identity: every RPC URL is checked to serve the chain the
  database was created for before any answer is used, ``HODLAI_CHAIN_ID`` (if set) must be
  the RPC's chain, and the chain and provider are recorded on first use
  (shared.db.check_identity);
- the per-status request gauges (``hodlai_requests{status}``), refreshed every few seconds.

Nothing but a signal ends the loop (``--once`` ends it when caught up).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import structlog

from shared.chain.config import PollerConfig
from shared.chain.health import ProgressHealth
from shared.chain.poller import LogPoller
from shared.chain.rpc import RpcClient
from shared.config import load_settings
from shared.db import AsyncDatabase, check_identity, connect, stored_identity
from shared.errors import (
    ConfigError,
    DatabaseMismatchError,
    RetryableError,
    RpcChainMismatchError,
)
from shared.runtime import WorkerSpec, run_worker, sleep_or_stop
from workers.oracle import store
from workers.oracle.indexer.ingest import IngestStats
from workers.oracle.indexer.metrics import POLLER_METRICS
from workers.oracle.indexer.progress import BackfillProgress
from workers.oracle.indexer.reorg import CURSOR_NAME
from workers.oracle.indexer.settings import IndexerSettings
from workers.oracle.indexer.sink import OracleSink, oracle_filter
from workers.oracle.metrics import REQUESTS

log = structlog.get_logger(__name__)

PROCESS = "indexer"
EXECUTOR = "oracle"
# Seconds between refreshes of the per-status request gauges (a COUNT over the table).
STATUS_METRICS_EVERY_S = 5.0
# Seconds /healthz tolerates without a healthy step: many poll intervals plus a full back-off.
HEALTH_STALE_AFTER_S = 120.0
# SQLite page cache of the indexer's connection (KiB, negative = KiB for the pragma): one
# poll's batch insert (~5,000 rows of ~1.5 KB) stays in memory until its commit.
SQLITE_CACHE_KIB = 65_536
# Seconds before the second attempt to reach the RPC at start-up (the client has already
# failed over to the next URL by then), doubled per attempt up to the cap.
STARTUP_RETRY_S = 0.2
STARTUP_RETRY_CAP_S = 10.0


def poller_config(settings: IndexerSettings) -> PollerConfig:
    """The indexer's poller tunables, from its settings (settings.py says why each default)."""
    return PollerConfig(
        name=CURSOR_NAME,
        confirmations=settings.confirmations,
        max_range=settings.indexer_max_range,
        target_logs=settings.indexer_target_logs,
        poll_interval_s=settings.indexer_poll_interval_s,
        rescan_every=settings.indexer_rescan_every,
        rescan_blocks=settings.indexer_rescan_blocks,
        block_history=settings.indexer_block_history,
        bloom_window=settings.indexer_bloom_window,
        max_reorg_depth=settings.max_reorg_depth,
        unhealthy_after_polls=settings.indexer_unhealthy_after_polls,
        start_setting="HODLAI_START_BLOCK",
        resume_command="hodlai indexer-resume",
    )


class Indexer(LogPoller):
    """The oracle's log poller. Build it, ``await start()``, then run ``step`` in
    shared.runtime.run_loop; ``await close()`` at the end."""

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
        super().__init__(
            poller_config(settings),
            rpc=rpc,
            db=db,
            metrics=POLLER_METRICS,
            progress=progress,
            clock=clock,
        )
        self.settings = settings
        self.provider_address = settings.provider_address
        self.sink = OracleSink()
        self.register(oracle_filter(settings.provider_address, settings.start_block), self.sink)
        self._publish_status = publish_status_metrics
        self._last_status_metrics = float("-inf")

    @property
    def totals(self) -> IngestStats:
        """What this process has committed so far (requests, fulfilments, alarms)."""
        return self.sink.totals

    async def verify_chain(self) -> tuple[int, dict[str, object]]:
        """Check the chain and the database belong together. Every RPC URL is checked to
        serve the database's chain before any of its answers is used: a URL of another chain
        is quarantined (shared/chain/rpc.py), never read into this database."""
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
        provider = self.provider_address
        await self.db.run(check_identity, chain_id=chain_id, provider_address=provider)
        if stored is None:
            await self.rpc.expect_chain(chain_id)
        return chain_id, {"provider": provider}

    async def after_advance(self) -> None:
        now = self.clock()
        if not self._publish_status or now - self._last_status_metrics < STATUS_METRICS_EVERY_S:
            return
        self._last_status_metrics = now
        for status, count in (await self.db.run(store.status_counts)).items():
            REQUESTS.labels(status=status).set(count)


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
    # Pinned to the database's chain in Indexer.verify_chain (expect_chain), before any answer
    # is used.
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
        # NORMAL: a power cut can roll back its last commits, which costs a re-scan of those
        # blocks (its cursor rolls back with them); it signs nothing.
        durable=False,
    )
    return run_worker(
        spec,
        lambda db, _stop: indexer_service(settings, db, health, once=once),
        log_level=settings.log_level,
    )
