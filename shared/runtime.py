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
- Every failure is reported to the health check, so ``/healthz`` turns 503 when steps keep
  failing permanently, not only when they stop.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import structlog

from shared.errors import DatabaseMismatchError, PermanentError, RetryableError
from shared.metrics import ERRORS, Health

log = structlog.get_logger(__name__)

# Seconds of the first back-off after a failed step, doubled per failure up to the cap.
BACKOFF_START_S = 0.5
# A dead dependency is re-tried at least this often, so recovery is noticed within it.
BACKOFF_CAP_S = 30.0
# Characters of a failed step's error shown by /healthz: enough to name it, one line.
HEALTH_DETAIL_CHARS = 300


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
