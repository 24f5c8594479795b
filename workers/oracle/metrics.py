"""The oracle's Prometheus metrics (served by each process through shared.metrics.serve,
with the ``executor`` label the core adds): its requests per status, the indexer's cursor and
lag, and inference's outcomes. Names are kept from before the oracle had its own package, so
dashboards and alerts keep working."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

REQUESTS = Gauge("hodlai_requests", "Requests in the state store by status", ["status"])
INDEXER_LAG = Gauge("hodlai_indexer_lag_blocks", "Chain head minus the indexer cursor")
INDEXER_CURSOR = Gauge("hodlai_indexer_cursor_block", "Last block the indexer accepted")
ANSWERS = Counter("hodlai_answers_total", "Requests answered or failed by inference", ["outcome"])
