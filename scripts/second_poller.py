"""A second log poller, on another chain, in the same database as the indexer it runs beside:
what ``scripts/bench_indexer.py --second-poller`` measures the indexer against (issue 19:
many pollers on many chains in one database; target: within 10 % of the indexer alone).

It is another executor's poller as the core offers one (shared.chain.poller.LogPoller,
named ``bench-second``: its own cursor, block hashes, reorgs and halt), reading the
provider's request events of its chain. Its sink does the indexer's work per log (the
oracle's decoder, content hash included) and stores, idempotently, one row per request in a
table of its own (``bench_second_requests``, created here: a benchmark's table, not a
migration); a rollback deletes the rows above the ancestor. Its tunables are the indexer's
defaults. It runs until SIGTERM.

    .venv/bin/python -m scripts.second_poller --db PATH --rpc URL --provider ADDRESS \
        --start-block N
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog
from prometheus_client import Counter, Gauge

from shared.chain.filters import Log, LogFilter
from shared.chain.metrics import PollerMetrics
from shared.chain.poller import LogPoller
from shared.chain.rpc import RpcClient
from shared.db import AsyncDatabase, connect
from shared.logs import configure_logging
from shared.runtime import run_loop
from workers.oracle.contracts import REASONING_REQUESTED_TOPIC0
from workers.oracle.indexer.logs_decode import DecodedLogs, decode_logs
from workers.oracle.indexer.main import poller_config
from workers.oracle.indexer.settings import IndexerSettings

#: the poller's name (cursor, blocks, reorgs, halt)
NAME = "bench-second"
TABLE = (
    "CREATE TABLE IF NOT EXISTS bench_second_requests (request_id TEXT PRIMARY KEY, "
    "block_number INTEGER NOT NULL, block_hash TEXT NOT NULL, log_index INTEGER NOT NULL, "
    "content_hash TEXT NOT NULL, model TEXT NOT NULL, action_count INTEGER NOT NULL) STRICT"
)
METRICS = PollerMetrics(
    cursor=Gauge("hodlai_bench_second_cursor_block", "second poller cursor"),
    lag=Gauge("hodlai_bench_second_lag_blocks", "second poller lag"),
    halted=Gauge("hodlai_bench_second_halted", "second poller halted"),
    no_progress_polls=Gauge("hodlai_bench_second_polls_without_progress", "second poller"),
    log_conflicts=Counter("hodlai_bench_second_log_conflicts_total", "second poller"),
    hidden_logs=Counter("hodlai_bench_second_hidden_logs_total", "second poller"),
    process=NAME,
)


@dataclasses.dataclass(frozen=True, slots=True)
class Stored:
    """The sink's SinkStats."""

    stored: int = 0
    removed: int = 0

    @property
    def changed(self) -> int:
        return self.stored + self.removed

    def fields(self) -> dict[str, int]:
        return {"second_stored": self.stored, "second_removed": self.removed}


class RequestCopySink:
    """The provider's request events, decoded as the indexer decodes them, one row each."""

    def decode(self, logs: Sequence[Log]) -> DecodedLogs:
        return decode_logs(logs)

    def apply(self, conn: sqlite3.Connection, batch: DecodedLogs, *, now: float) -> Stored:
        before = conn.total_changes
        conn.executemany(
            "INSERT OR IGNORE INTO bench_second_requests VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (str(r.request_id), r.block_number, r.block_hash, r.log_index, r.content_hash,
                 r.model, len(r.action_set))
                for r in batch.requests
            ],
        )  # fmt: skip
        return Stored(stored=conn.total_changes - before)

    def rollback(self, conn: sqlite3.Connection, ancestor: int, *, now: float) -> Stored:
        removed = conn.execute(
            "DELETE FROM bench_second_requests WHERE block_number > ?", (ancestor,)
        ).rowcount
        return Stored(removed=removed)

    def committed(self, stats: Stored) -> None:
        pass


async def run(args: argparse.Namespace) -> None:
    conn = connect(Path(args.db))
    conn.execute(TABLE)
    db = AsyncDatabase(conn)
    settings = IndexerSettings(
        _env_file=None,  # type: ignore[call-arg]
        db_path=Path(args.db), rpc_urls=[args.rpc], provider_address=args.provider,
        start_block=args.start_block, confirmations=0,
    )  # fmt: skip
    config = dataclasses.replace(
        poller_config(settings), name=NAME, resume_command=f"hodlai poller-resume {NAME}"
    )
    rpc = RpcClient([args.rpc], timeout=settings.indexer_rpc_timeout_s)
    poller = LogPoller(config, rpc=rpc, db=db, metrics=METRICS)
    poller.register(
        LogFilter(
            name="requests",
            addresses=(args.provider,),
            topics=((REASONING_REQUESTED_TOPIC0,),),
            start_block=args.start_block,
        ),
        RequestCopySink(),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await poller.start()
    try:
        await run_loop(NAME, poller.step, stop=stop)
    finally:
        await poller.close()
        await rpc.aclose()
        db.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", required=True)
    parser.add_argument("--rpc", required=True)
    parser.add_argument("--provider", required=True)
    parser.add_argument("--start-block", type=int, required=True)
    args = parser.parse_args()
    configure_logging("WARNING")
    structlog.get_logger(__name__)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
