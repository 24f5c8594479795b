"""The oracle's filter and sink on the log poller: the provider's ``HoldAI_ReasoningRequested``
and ``HoldAI_ReasoningFulfilled`` logs become request rows and fulfilments.

The sink decodes with logs_decode.py (on the database thread, before the write lock),
writes with ingest.py inside the poller's range transaction and undoes with reorg.py inside
its rollback transaction; what those guarantee is written there. Once a transaction with its
writes committed, it counts them (:attr:`OracleSink.totals`) and raises the wrong-answer
alarm counter (``hodlai_wrong_answers_total``) for rows fulfilled outside their action set.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from shared.chain.filters import Log, LogFilter
from workers.oracle.contracts import REASONING_FULFILLED_TOPIC0, REASONING_REQUESTED_TOPIC0
from workers.oracle.indexer import ingest, reorg
from workers.oracle.indexer.ingest import IngestStats
from workers.oracle.indexer.logs_decode import DecodedLogs, decode_logs
from workers.oracle.indexer.metrics import WRONG_ANSWERS

#: the oracle filter's name
ORACLE_FILTER = "oracle"
#: its first topics: the two events of the provider
ORACLE_TOPICS = (REASONING_REQUESTED_TOPIC0, REASONING_FULFILLED_TOPIC0)


def oracle_filter(provider_address: str, start_block: int) -> LogFilter:
    """The provider's request and fulfilment events from ``start_block`` on."""
    return LogFilter(
        name=ORACLE_FILTER,
        addresses=(provider_address,),
        topics=(ORACLE_TOPICS,),
        start_block=start_block,
    )


class OracleSink:
    """The oracle's LogSink (shared/chain/filters.py)."""

    def __init__(self) -> None:
        #: everything committed by this process so far
        self.totals = IngestStats()

    def decode(self, logs: Sequence[Log]) -> DecodedLogs:
        return decode_logs(logs)

    def apply(self, conn: sqlite3.Connection, batch: DecodedLogs, *, now: float) -> IngestStats:
        return ingest.apply_logs(conn, batch, now=now)

    def rollback(self, conn: sqlite3.Connection, ancestor: int, *, now: float) -> reorg.UndoStats:
        return reorg.undo_above(conn, ancestor, now=now)

    def committed(self, stats: IngestStats) -> None:
        self.totals.add(stats)
        if stats.wrong_answers:
            WRONG_ANSWERS.inc(stats.wrong_answers)
