"""What a log poller tells its operators about its progress: the ``range_ingested``,
``indexer_progress`` and ``indexer_caught_up`` lines, its cursor and lag gauges, and the
backfill progress display.

Guarantees:
- Only committed work is reported: :meth:`ProgressReport.committed` is called for a range
  once its transaction committed, never for one in flight.
- ``range_ingested`` is an info line when a sink stored something, a debug line otherwise;
  ``indexer_progress`` comes at most every ``PROGRESS_LOG_EVERY_S`` while more than a
  range behind the head, so a backfill is visible without a line per poll.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import structlog

from shared.chain.config import ProgressReporter
from shared.chain.filters import SinkStats, merged_stats
from shared.chain.metrics import PollerMetrics
from shared.chain.scan import LogRange

log = structlog.get_logger(__name__)

# Seconds between "indexer_progress" log lines while backfilling.
PROGRESS_LOG_EVERY_S = 10.0


class ProgressReport:
    """A poller's progress, as lines, gauges and a display."""

    def __init__(
        self,
        metrics: PollerMetrics,
        display: ProgressReporter | None,
        clock: Callable[[], float],
    ) -> None:
        self.metrics = metrics
        self.display = display
        self.clock = clock
        #: logs in the ranges committed by this process
        self.events = 0
        self._last_log = float("-inf")

    def committed(
        self,
        rng: LogRange,
        stats: Sequence[SinkStats],
        logs: int,
        *,
        head: int | None,
        range_blocks: int,
    ) -> None:
        """A range of ``logs`` logs committed; ``stats`` are its sinks' reports."""
        self.events += logs
        self.metrics.cursor.set(rng.last)
        if head is not None:
            self.metrics.lag.set(max(0, head - rng.last))
        changed, fields = merged_stats(stats)
        if changed:
            log.info("range_ingested", first_block=rng.first, last_block=rng.last, **fields)
        else:
            log.debug("range_ingested", first_block=rng.first, last_block=rng.last, logs=logs)
        now = self.clock()
        if self.display is not None:
            self.display.update(rng.last, head, self.events)
        if head is not None and now - self._last_log >= PROGRESS_LOG_EVERY_S:
            self._last_log = now
            if head - rng.last > range_blocks:
                log.info(
                    "indexer_progress",
                    cursor=rng.last,
                    head=head,
                    events=self.events,
                    range_blocks=range_blocks,
                )

    def caught_up(self, cursor: int, head: int | None, *, newly: bool) -> None:
        """Nothing is left to read up to the head (minus the confirmations)."""
        if newly:
            log.info("indexer_caught_up", cursor=cursor, head=head)
        if head is not None:
            self.metrics.lag.set(max(0, head - cursor))

    def close(self) -> None:
        if self.display is not None:
            self.display.close()
