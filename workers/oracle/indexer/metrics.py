"""The indexer's own metrics (the shared ones, cursor and lag, live in shared/metrics.py).
Alert on any of these moving: each means the indexer saw something it refused to act on.
:data:`POLLER_METRICS` hands them to the indexer's log poller (shared/chain/metrics.py)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from shared.chain.metrics import PollerMetrics
from workers.oracle.metrics import INDEXER_CURSOR, INDEXER_LAG

HALTED = Gauge(
    "hodlai_indexer_halted",
    "1 while the indexer is halted for an operator (hodlai indexer-resume); nothing is signed",
)
LOG_CONFLICTS = Counter(
    "hodlai_indexer_log_conflicts_total",
    "Answers whose logs differed from stored ones under an unchanged block hash (URL distrusted)",
)
HIDDEN_LOGS = Counter(
    "hodlai_indexer_hidden_logs_total",
    "Logs a batch left out that the blocks' logsBloom revealed (read again by block hash)",
)
WRONG_ANSWERS = Counter(
    "hodlai_wrong_answers_total",
    "Requests that became FULFILLED with an action outside their action set",
)
NO_PROGRESS_POLLS = Gauge(
    "hodlai_indexer_polls_without_progress",
    "Polls in a row that neither accepted a range nor confirmed the head",
)

POLLER_METRICS = PollerMetrics(
    cursor=INDEXER_CURSOR,
    lag=INDEXER_LAG,
    halted=HALTED,
    no_progress_polls=NO_PROGRESS_POLLS,
    log_conflicts=LOG_CONFLICTS,
    hidden_logs=HIDDEN_LOGS,
    process="indexer",
)
