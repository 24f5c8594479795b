"""The run loop every long-running process shares (the huey pattern).

- Signal handlers only set a flag (an asyncio.Event); the loop notices it between steps,
  finishes or releases its work, and returns. Nothing else ends the loop.
- ``run_loop`` is the one place that catches broadly: it logs the error with its kind,
  counts it, backs off (exponentially, or as long as the other side's Retry-After asked)
  and goes on. Below it, errors propagate.
- One kind of error ends the loop instead: DatabaseMismatchError (the database is not, or
  is no longer, the one this process must write: another chain's, a newer schema, a file
  deleted or replaced under it). Retrying cannot fix it and going on would write where no
  other process looks, so it propagates to the composition root, which exits with code 2.
  SenderTakenOverError ends it the same way (one error line, ``sender_taken_over_fatal``):
  another process holds this process's sending key, so nothing here may sign again, and
  retrying would only fight over the key; the CLI exits with code 1. So does
  UnregisteredPurposeError (``loop_stopped_fatal``; exit code 2): open transactions no
  handler of this process can judge, which no retry registers.
- Every failure is reported to the health check, so ``/healthz`` turns 503 when steps keep
  failing permanently, not only when they stop.
- :func:`run_worker` is the one composition of every long-running process: settings (loaded
  by the caller) → logging → the role lock and the database → the loop with its stop
  handlers → health and metrics → the executor's service → clean shutdown on SIGTERM, even
  one that arrives while the process is still starting.
- An executor switched off (``HODLAI_<EXECUTOR>_ENABLED=false``, :func:`executor_enabled`)
  runs none of its processes: the CLI asks before it loads the process's own settings
  (shared/cli.py), so a node that does not run the dispatcher needs no queue URL, and
  :func:`stand_down` writes one line (``executor_disabled``) and ends with exit code 0 at
  once, or, under a supervisor that stops every process when one exits (honcho), waits for
  SIGTERM first. One Procfile and one set of systemd units serve every operator.
"""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, cast

import structlog
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.config import ENV_PREFIX, LogLevel, load_settings
from shared.db import AsyncDatabase, connect
from shared.errors import (
    DatabaseMismatchError,
    PermanentError,
    RetryableError,
    SenderTakenOverError,
    UnregisteredPurposeError,
)
from shared.instance import hold_role
from shared.metrics import ERRORS, Health, label_executor, serve

log = structlog.get_logger(__name__)

# Seconds of the first back-off after a failed step, doubled per failure up to the cap.
BACKOFF_START_S = 0.5
# A dead dependency is re-tried at least this often, so recovery is noticed within it.
BACKOFF_CAP_S = 30.0
# Characters of a failed step's error shown by /healthz: enough to name it, one line.
HEALTH_DETAIL_CHARS = 300
# What an executor's name may be: it becomes part of a setting's name (HODLAI_<NAME>_ENABLED).
_EXECUTOR_NAME: Final = re.compile(r"^[a-z][a-z0-9_]*$")


def install_stop_handlers(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set ``stop``; a second signal is not needed and changes nothing."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, stop, sig)


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    if not stop.is_set():
        log.info("stop_requested", signal=sig.name)
    stop.set()


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; True when woken because ``stop`` was set."""
    if seconds <= 0:
        return stop.is_set()
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True


async def run_loop(
    process: str,
    step: Callable[[], Awaitable[float]],
    *,
    stop: asyncio.Event,
    health: Health | None = None,
) -> None:
    """Call ``step`` until ``stop`` is set. ``step`` returns how long to sleep before the
    next call (0 when there is more work at once)."""
    failures = 0
    while not stop.is_set():
        try:
            delay = await step()
        except (asyncio.CancelledError, DatabaseMismatchError):
            raise
        except SenderTakenOverError as exc:
            ERRORS.labels(process=process, kind=type(exc).__name__).inc()
            log.error("sender_taken_over_fatal", process=process, error=str(exc))
            raise
        except UnregisteredPurposeError as exc:
            ERRORS.labels(process=process, kind=type(exc).__name__).inc()
            log.error("loop_stopped_fatal", process=process, error=str(exc))
            raise
        except Exception as exc:  # noqa: BLE001 -- the loop boundary: log, back off, go on
            failures += 1
            kind = type(exc).__name__
            ERRORS.labels(process=process, kind=kind).inc()
            backoff = min(BACKOFF_CAP_S, BACKOFF_START_S * 2 ** (failures - 1))
            retry_after = exc.retry_after if isinstance(exc, RetryableError) else None
            if retry_after is not None:
                backoff = max(backoff, min(retry_after, BACKOFF_CAP_S * 4))
            level = "warning" if isinstance(exc, RetryableError) else "error"
            getattr(log, level)(
                "loop_step_failed",
                process=process,
                kind=kind,
                error=str(exc),
                permanent=isinstance(exc, PermanentError),
                failures=failures,
                backoff_s=round(backoff, 2),
                exc_info=not isinstance(exc, RetryableError),
            )
            if health is not None:
                detail = f"{kind}: {exc}"[:HEALTH_DETAIL_CHARS]
                health.step_failed(detail, permanent=not isinstance(exc, RetryableError))
            if await sleep_or_stop(stop, backoff):
                break
            continue
        failures = 0
        if health is not None:
            health.beat()
        if await sleep_or_stop(stop, delay):
            break
    log.info("loop_stopped", process=process)


# --- one way to run a long-lived process ---------------------------------------------------


class Service(Protocol):
    """What an executor's long-running process does, built by its ``build`` function."""

    async def start(self, stop: asyncio.Event) -> bool:
        """Get ready (reach the chain, check identities, reconcile); False when ``stop`` was
        set before it could. Permanent problems raise and end the process."""
        ...

    async def step(self) -> float:
        """One round of work; returns the seconds to sleep before the next."""
        ...

    async def stop(self) -> None:
        """Shut down cleanly (give back leases, drain work in flight, close clients)."""
        ...


@dataclass(frozen=True)
class WorkerSpec:
    """How a process runs: its names, its database and its health."""

    process: str  # in logs and hodlai_errors_total{process}: 'indexer', 'inference-0/2', ...
    executor: str  # the executor label of its metrics: 'oracle', 'mint', ...
    db_path: Path
    health: Health
    metrics_port: int = 0  # 0: no metrics server
    role: str | None = None  # one process of this role per database file (shared.instance)
    # synchronous=FULL, the safe default for a new executor (anything that signs or creates
    # wallets must, and its money components refuse less: shared.db.require_durable). Only a
    # process whose lost last commits cost a re-scan or a re-answer opts out (the oracle's
    # indexer and inference shards).
    durable: bool = True


Build = Callable[[AsyncDatabase, asyncio.Event], AbstractAsyncContextManager[Service]]


class _EarlyStop:
    """SIGTERM / SIGINT before the event loop runs (while the lock is taken, the database
    opened): remembered, so the process still stops cleanly, with exit code 0, once the loop
    is up instead of dying half-started."""

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> _EarlyStop:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._record)
        return self

    def _record(self, signum: int, _frame: object) -> None:
        self.signal = signal.Signals(signum)

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def run_worker(spec: WorkerSpec, build: Build, *, log_level: str) -> int:
    """Run a long-lived process: logging → (role lock) → database → event loop with stop
    handlers → health and metrics server → ``build`` the service → start → the loop (each
    step first checks the database file is still the one opened) → clean shutdown. Returns
    the exit code; errors a start-up cannot get past propagate (the CLI turns a ConfigError
    or DatabaseMismatchError into one line and exit code 2)."""
    from shared.logs import configure_logging

    configure_logging(log_level)
    label_executor(spec.executor)
    with _EarlyStop() as early:
        lock = hold_role(spec.db_path, spec.role) if spec.role else None
        try:
            conn = connect(spec.db_path, durable=spec.durable)
            try:
                if lock is not None:
                    lock.verify(conn)
                db = AsyncDatabase(conn)
            except BaseException:
                conn.close()
                raise
            return asyncio.run(_serve(spec, db, build, early))
        finally:
            if lock is not None:
                lock.release()


async def _serve(spec: WorkerSpec, db: AsyncDatabase, build: Build, early: _EarlyStop) -> int:
    stop = asyncio.Event()
    install_stop_handlers(stop)
    if early.signal is not None:
        _on_signal(stop, early.signal)
    server = None
    try:
        if spec.metrics_port:
            server = serve(spec.metrics_port, spec.health)
        async with build(db, stop) as service:
            try:
                if await service.start(stop):

                    async def step() -> float:
                        await db.check_file()
                        return await service.step()

                    await run_loop(spec.process, step, stop=stop, health=spec.health)
            finally:
                await service.stop()
        log.info("process_stopped", process=spec.process, executor=spec.executor)
        return 0
    finally:
        if server is not None:
            server.shutdown()
        db.close()


# --- executors switched off ---------------------------------------------------------------


def enabled_setting(executor: str) -> str:
    """The setting that switches ``executor`` on or off: ``HODLAI_<EXECUTOR>_ENABLED``."""
    if not _EXECUTOR_NAME.match(executor):
        raise ValueError(f"not an executor name: {executor!r}")
    return f"{ENV_PREFIX}{executor.upper()}_ENABLED"


class _Switch(BaseSettings):
    """``HODLAI_<EXECUTOR>_ENABLED`` and ``LOG_LEVEL``, read like every setting (environment,
    then ``.env``); subclassed per executor for its prefix (:func:`_switch`)."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", validate_default=True
    )

    enabled: bool = True
    log_level: LogLevel = Field(default="INFO", validation_alias="LOG_LEVEL")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


def _switch(executor: str) -> _Switch:
    prefix = enabled_setting(executor).removesuffix("ENABLED")
    # A subclass per executor: pydantic-settings reads a field under the class's env_prefix.
    config = SettingsConfigDict(env_prefix=prefix)
    switch = cast(
        "type[_Switch]", type(f"{executor.title()}Switch", (_Switch,), {"model_config": config})
    )
    return load_settings(switch)


def executor_enabled(executor: str) -> bool:
    """Whether ``HODLAI_<EXECUTOR>_ENABLED`` lets ``executor``'s processes run (default: yes;
    an installed executor runs unless its operator switches it off). A value that is not a
    boolean is a ConfigError naming the setting."""
    return _switch(executor).enabled


def stand_down(executor: str, process: str, *, wait: bool) -> int:
    """What a process of a switched-off executor does instead of running: one log line, then
    exit code 0, at once, or (``wait``) after SIGTERM / SIGINT, for a supervisor that stops
    every process when one exits (honcho). Nothing is opened: no database, no port."""
    from shared.logs import configure_logging

    configure_logging(_switch(executor).log_level)
    if wait:  # blocked before the log line, so a signal sent once it is seen is not lost
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    log.info(
        "executor_disabled",
        executor=executor,
        process=process,
        setting=f"{enabled_setting(executor)}=false",
        waits_for_sigterm=wait,
    )
    if wait:
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
    return 0
