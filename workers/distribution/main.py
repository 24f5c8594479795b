"""The composition root of ``hodlai distributor``: settings → the networks → the scheduler and
one payer per network → the shared run loop (shared.runtime.run_worker) → clean shutdown.

Guarantees:

- Many distributors may run on one database (no role lock): the scheduler records each slot
  once (workers/distribution/scheduler.py) and each payer works on a run only under its lease
  (workers/distribution/payers.py).
- A payer is built per configured network through its rail's factory
  (``workers.distribution.evm.payer.build(settings, name, db=db)``,
  ``workers.distribution.solana.build_payer(settings, db=db)``, ``db`` the process's
  AsyncDatabase); a rail that is not installed is
  logged (``distribution_payer_missing``) and its runs wait, recorded, until a distributor
  that has it runs.
- ``HODLAI_DIST_PAY=false`` makes a scheduler-only distributor: it records runs and builds
  no payer (a host without the key; the payers run elsewhere on the same database).
- ``HODLAI_DIST_KEY_FILE`` and ``HODLAI_DIST_SOURCE_ADDRESS`` must name the same address when
  both are set (the API records the latter on the runs it creates): a mismatch is a
  ConfigError at start, naming both settings, never the key.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import structlog

from shared import keys
from shared.db import AsyncDatabase, connect
from shared.errors import ConfigError, RetryableError
from shared.metrics import Health
from shared.runtime import WorkerSpec, run_worker
from workers.distribution.networks import Network, build_networks
from workers.distribution.payers import Payer
from workers.distribution.scheduler import Scheduler
from workers.distribution.settings import DistSettings

log = structlog.get_logger(__name__)

EXECUTOR: Final = "dist"
PROCESS: Final = "distributor"
# Health turns 503 when no pass succeeded for this long (at least): rides out an RPC back-off.
HEALTH_MIN_S: Final = 120.0


def check_source(settings: DistSettings) -> str | None:
    """The EVM source's address from the key file (None without one); ConfigError when
    HODLAI_DIST_SOURCE_ADDRESS names another."""
    if settings.dist_key_file is None:
        return None
    passphrase = keys.read_passphrase(
        passphrase=(
            settings.dist_key_passphrase.get_secret_value()
            if settings.dist_key_passphrase
            else None
        ),
        passphrase_file=settings.dist_key_passphrase_file,
    )
    address = keys.key_file_address(settings.dist_key_file, passphrase)
    named = settings.dist_source_address
    if named and named.lower() != address.lower():
        raise ConfigError(
            f"HODLAI_DIST_SOURCE_ADDRESS ({named}) is not the address of HODLAI_DIST_KEY_FILE"
            f" ({address})"
        )
    return address


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def build_payers(
    settings: DistSettings, networks: dict[str, Network], db: AsyncDatabase
) -> list[Payer]:
    """One payer per network, through its rail's factory (``build(settings, name, db=db)``,
    ``build_payer(settings, db=db)``), each on the process's database thread."""
    payers: list[Payer] = []
    evm = [n for n in networks.values() if n.kind == "evm"]
    if evm:
        try:
            module = importlib.import_module("workers.distribution.evm.payer")
        except ModuleNotFoundError as exc:
            if exc.name != "workers.distribution.evm.payer":
                raise
            log.warning("distribution_payer_missing", rail="evm",
                        networks=[n.name for n in evm])  # fmt: skip
        else:
            for network in evm:
                payers.append(await _maybe_await(module.build(settings, network.name, db=db)))
    if any(n.kind == "solana" for n in networks.values()):
        solana = importlib.import_module("workers.distribution.solana")
        payer = await _maybe_await(solana.build_payer(settings, db=db))
        if payer is not None:
            payers.append(payer)
    return payers


class Distributor:
    """The scheduler pass and every payer's tick, one step of the run loop."""

    def __init__(self, settings: DistSettings, owner: str, db: AsyncDatabase) -> None:
        self.settings = settings
        self.owner = owner
        self.db = db
        self.networks: dict[str, Network] = {}
        self.payers: list[Payer] = []
        self.scheduler: Scheduler | None = None

    async def start(self, stop: asyncio.Event) -> bool:
        self.networks = build_networks(self.settings)
        if self.settings.dist_pay:
            self.payers = await build_payers(self.settings, self.networks, self.db)
        # The scheduler's statements are short (a slot's run is one transaction); it keeps its
        # own connection on the loop's thread, beside the payers' own.
        conn = connect(self.settings.db_path, durable=True)
        self.scheduler = Scheduler(conn, self.settings, self.networks, owner=self.owner)
        log.info(
            "distributor_started", owner=self.owner, networks=sorted(self.networks),
            payers=[sorted(p.networks) for p in self.payers],
            missed_slots=self.settings.dist_missed_slots,
        )  # fmt: skip
        return not stop.is_set()

    async def step(self) -> float:
        """The scheduler's pass, then each payer's tick. A retryable failure of one (its
        network's RPC is down) does not keep the others from their turn; the first such
        failure is raised after all had it, so the run loop backs off and /healthz sees it."""
        assert self.scheduler is not None
        did = False
        failed: list[RetryableError] = []
        parts: list[tuple[str, Callable[[], Awaitable[bool]]]] = [
            ("scheduler", self.scheduler.tick),
            *((",".join(sorted(p.networks)), p.tick) for p in self.payers),
        ]
        for name, tick in parts:
            try:
                did = await tick() or did
            except RetryableError as exc:
                log.warning("distribution_part_failed", part=name, error=str(exc))
                failed.append(exc)
        if failed:
            raise failed[0]
        return 0.0 if did else self.settings.dist_tick_s

    async def stop(self) -> None:
        for payer in self.payers:
            await payer.aclose()
        for network in self.networks.values():
            await network.aclose()
        if self.scheduler is not None:
            self.scheduler.db.close()


def run(settings: DistSettings) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code."""
    if settings.dist_pay:
        check_source(settings)
    for name in settings.dist_networks:
        settings.evm_chain(name)  # ConfigError naming the setting before anything starts
    owner = f"{PROCESS}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    spec = WorkerSpec(
        process=PROCESS,
        executor=EXECUTOR,
        db_path=settings.db_path,
        health=Health(stale_after_s=max(HEALTH_MIN_S, 30 * settings.dist_tick_s)),
        metrics_port=settings.metrics_port,
        role=None,  # many distributors may share one database
        durable=True,  # runs and transfers are money records
    )

    @asynccontextmanager
    async def build(db: AsyncDatabase, _stop: asyncio.Event) -> AsyncIterator[Distributor]:
        yield Distributor(settings, owner, db)

    return run_worker(spec, build, log_level=settings.log_level)
