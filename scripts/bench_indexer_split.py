"""Where the indexer's time goes: the stages of a backfill, measured one by one.

Same chain as scripts/bench_indexer.py (N request events from the example vault's
``askBatch``, 100 per block, on anvil). Each repetition reads the whole backfill serially,
in the indexer's own polls (ranges of ``indexer_target_logs`` logs, the production batch:
head, eth_getLogs, the range's last header, the anchor's, the bloom window's), stage by
stage, with the production functions, on one thread, and times each stage:

- ``http``: the POST and the body read (wall clock: includes anvil's work), and the CPU time
  this process spent in it (``http_cpu``: receiving ~19.5 MB per poll);
- ``json``: parsing the body (the RPC client's own parse, depth check included);
- ``judge``: building the answer (headers) and scan.judge;
- ``decode``: filters.decode_routed (routing, the oracle's decoder, keccak of the content);
- ``rows``: building the requests' row tuples (store.request_rows);
- ``insert``: the sink's write without the rows (lookups, the multi-row INSERTs, the count
  trigger, the audit rows), inside the range's transaction;
- ``history``: the block hashes and the cursor;
- ``commit``: COMMIT (synchronous=NORMAL, WAL, as the indexer runs).

Then ``--profile`` prints cProfile's top functions of the same serial pass.
Then it runs the real indexer (pipelined) and reports the CPU time each of its threads
spent: the event loop (fetch, parse, judge), the decode thread, the database thread.

    .venv/bin/python -m scripts.bench_indexer_split [--events 20000] [--reps 3] [--profile]

Last line: {"per_event_us": {stage: microseconds per event, median over repetitions}, ...}
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import structlog

from scripts.bench_indexer import GAS_PER_REQUEST, TARGET_LOGS, _chain, indexer_run
from shared.chain import history
from shared.chain.filters import decode_routed
from shared.chain.rpc import RpcClient
from shared.chain.scan import ChainScanner, LogRange, judge
from shared.db import AsyncDatabase
from shared.logs import configure_logging
from workers.devnet.anvil import Anvil
from workers.devnet.deploy import Deployment
from workers.oracle import store
from workers.oracle.indexer.main import Indexer, open_database
from workers.oracle.indexer.settings import IndexerSettings


class _Clock:
    """Wall seconds per stage."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = defaultdict(float)

    def lap(self, stage: str, started: float) -> float:
        now = time.perf_counter()
        self.spent[stage] += now - started
        return now


def _indexer(url: str, deployment: Deployment, db_path: Path) -> tuple[Indexer, RpcClient]:
    settings = IndexerSettings(
        _env_file=None,  # type: ignore[call-arg]
        db_path=db_path, rpc_urls=[url], provider_address=deployment.provider_address,
        start_block=deployment.deploy_block, confirmations=0,
    )  # fmt: skip
    rpc = RpcClient([url], timeout=120)
    return Indexer(settings, rpc=rpc, db=AsyncDatabase(open_database(db_path).conn)), rpc


async def serial_pass(url: str, deployment: Deployment, head: int, db_path: Path,
                      chunk: int) -> tuple[dict[str, float], int]:  # fmt: skip
    """One backfill, stage after stage on this thread; wall seconds per stage, and events."""
    indexer, rpc = _indexer(url, deployment, db_path)
    await indexer.start()
    scanner: ChainScanner = indexer.scanner
    conn = indexer.db.conn
    clock = _Clock()
    cpu = 0.0
    events = 0
    anchor = indexer.anchor.header
    cursor = indexer.anchor.number
    registrations = indexer._registrations  # noqa: SLF001 -- the bench reads the poller's parts
    original_read = RpcClient._read_answer  # noqa: SLF001

    async def timed_read(self: RpcClient, ep: Any, response: Any) -> Any:
        started, cpu_started = time.perf_counter(), time.process_time()
        body = await self._read_capped(ep, response)  # noqa: SLF001
        nonlocal cpu
        cpu += time.process_time() - cpu_started
        started = clock.lap("http", started)
        parsed = json.loads(body) if not RpcClient_nests(body) else None
        clock.lap("json", started)
        return parsed

    RpcClient._read_answer = timed_read  # type: ignore[method-assign]  # noqa: SLF001
    try:
        while cursor < head:
            rng = LogRange(cursor + 1, min(head, cursor + chunk))
            bloom_first = max(rng.first, head - indexer.config.bloom_window + 1)
            started = time.perf_counter()
            answer = await scanner.poll(rng, anchor.number if anchor else None, bloom_first)
            # poll() = http + json (timed inside) + building the answer: charge the rest to
            # judge, whose input it is.
            inner = clock.spent["http"] + clock.spent["json"]
            started = time.perf_counter()
            verdict = judge(answer, anchor=anchor, confirmations=0, addresses=scanner.addresses)
            assert verdict.verdict.name == "ACCEPT", verdict
            started = clock.lap("judge", started)
            decoded = decode_routed(registrations, answer.logs, rng.first)
            started = clock.lap("decode", started)
            batch = decoded.batches[0]
            rows = store.request_rows([(r, 1) for r in batch.requests])
            started = clock.lap("rows", started)
            del rows
            conn.execute("BEGIN IMMEDIATE")
            stats = registrations[0].sink.apply(conn, batch, now=time.time())
            started = clock.lap("insert", started)
            assert answer.range_end is not None
            history._store_blocks(conn, indexer.name, decoded.blocks,  # noqa: SLF001
                                  [*answer.checked_headers(), answer.range_end], time.time())  # fmt: skip
            history._write_cursor(conn, indexer.name, rng.last, time.time())  # noqa: SLF001
            started = clock.lap("history", started)
            conn.execute("COMMIT")
            clock.lap("commit", started)
            del inner
            events += stats.inserted
            cursor, anchor = rng.last, answer.range_end
    finally:
        RpcClient._read_answer = original_read  # type: ignore[method-assign]  # noqa: SLF001
    # "rows" was measured on its own, and "insert" builds the rows again inside: move it.
    clock.spent["insert"] -= clock.spent["rows"]
    clock.spent["http_cpu"] = cpu
    await rpc.aclose()
    indexer.db.close()
    return dict(clock.spent), events


def RpcClient_nests(body: bytearray) -> bool:  # noqa: N802 -- names the client's check
    from shared.chain.rpc import _nests_too_deep

    return _nests_too_deep(body)


class _ThreadCpu:
    """CPU seconds per thread name, sampled when the run ends (threads still alive) or as
    they exit (thread_time read from inside each thread)."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = defaultdict(float)
        self.lock = threading.Lock()

    def charge(self, name: str, seconds: float) -> None:
        with self.lock:
            self.cpu[name] += seconds


async def pipelined_threads(url: str, deployment: Deployment, head: int,
                            db_path: Path) -> tuple[dict[str, float], float, int]:  # fmt: skip
    """The real indexer, with the CPU time of each kind of work: the decode thread (the
    pipeline's to_thread), the database thread (db.run), the rest (event loop)."""
    from shared.chain import pipeline as pipeline_module

    meter = _ThreadCpu()
    original_decode = pipeline_module.Pipeline.decode
    original_run = AsyncDatabase.run

    async def decode(self: Any, fn: Any) -> Any:
        def measured() -> Any:
            started = time.thread_time()
            try:
                return fn()
            finally:
                meter.charge("decode_thread", time.thread_time() - started)

        return await asyncio.to_thread(measured)

    async def run(self: AsyncDatabase, fn: Any, *args: Any, **kwargs: Any) -> Any:
        def measured(conn: Any) -> Any:
            started = time.thread_time()
            try:
                return fn(conn, *args, **kwargs)
            finally:
                meter.charge("db_thread", time.thread_time() - started)

        return await original_run(self, measured)

    pipeline_module.Pipeline.decode = decode  # type: ignore[method-assign]
    AsyncDatabase.run = run  # type: ignore[method-assign]
    try:
        cpu_started = time.process_time()
        count, seconds, _ = await indexer_run(url, deployment, head, db_path)
        total = time.process_time() - cpu_started
    finally:
        pipeline_module.Pipeline.decode = original_decode  # type: ignore[method-assign]
        AsyncDatabase.run = original_run  # type: ignore[method-assign]
    cpu = dict(meter.cpu)
    cpu["event_loop_and_rest"] = total - sum(cpu.values())
    cpu["process_total"] = total
    return cpu, seconds, count


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--per-block", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile one serial pass")
    args = parser.parse_args()
    args.empty_blocks = 0
    configure_logging("WARNING")
    structlog.get_logger(__name__)
    chunk = max(1, TARGET_LOGS // args.per_block)
    per_event: dict[str, list[float]] = defaultdict(list)
    threads: dict[str, list[float]] = defaultdict(list)
    with Anvil(gas_limit=GAS_PER_REQUEST * args.per_block * 2 + 1_000_000) as anvil, \
            tempfile.TemporaryDirectory(prefix="bench-split-") as tmp:  # fmt: skip
        deployment, head, events = _chain(anvil, args)
        for rep in range(args.reps):
            spent, count = asyncio.run(
                serial_pass(anvil.rpc_url, deployment, head, Path(tmp) / f"s{rep}.db", chunk)
            )
            assert count == events, (count, events)
            for stage, seconds in spent.items():
                per_event[stage].append(seconds / count * 1e6)
            per_event["serial_total"].append(
                sum(v for k, v in spent.items() if k != "http_cpu") / count * 1e6
            )
            cpu, seconds, count = asyncio.run(
                pipelined_threads(anvil.rpc_url, deployment, head, Path(tmp) / f"p{rep}.db")
            )
            assert count == events, (count, events)
            for name, value in cpu.items():
                threads[name].append(value / count * 1e6)
            threads["wall"].append(seconds / count * 1e6)
            print(f"rep {rep + 1}: serial " + "  ".join(
                f"{k}={v / count * 1e6:.1f}" for k, v in spent.items()
            ) + " us/event; pipelined CPU " + "  ".join(
                f"{k}={v / count * 1e6:.1f}" for k, v in cpu.items()
            ) + f" us/event, wall {seconds / count * 1e6:.1f} us/event")  # fmt: skip
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            asyncio.run(
                serial_pass(anvil.rpc_url, deployment, head, Path(tmp) / "profile.db", chunk)
            )
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(30)
            print(out.getvalue())
    summary = {
        "events": events,
        "per_event_us": {k: round(statistics.median(v), 1) for k, v in per_event.items()},
        "pipelined_cpu_us": {k: round(statistics.median(v), 1) for k, v in threads.items()},
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
