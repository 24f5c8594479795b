"""The metrics a log poller sets, handed to it by its composition root.

The poller owns no metric names: Prometheus allows each name once per process, and the
indexer's (``hodlai_indexer_cursor_block``, ``hodlai_indexer_halted``, …) are what its
operators alert on, so the indexer passes its own (workers/oracle/indexer/metrics.py) and another
executor's poller would pass gauges named for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter, Gauge


@dataclass(frozen=True, slots=True)
class PollerMetrics:
    #: last block accepted (committed)
    cursor: Gauge
    #: chain head minus the cursor
    lag: Gauge
    #: 1 while halted for an operator
    halted: Gauge
    #: polls in a row that neither accepted a range nor confirmed the head
    no_progress_polls: Gauge
    #: answers refused because their logs differed under an unchanged block hash
    log_conflicts: Counter
    #: logs a batch left out that the blocks' logsBloom revealed
    hidden_logs: Counter
    #: the ``process`` label of shared.metrics.ERRORS for the poller's errors
    process: str
