"""Where the indexer's time goes: the stages of a backfill, measured one by one.

Same chain as scripts/bench_indexer.py (N request events from the example vault's
``askBatch``, 100 per block, on anvil). Each repetition reads the whole backfill serially,
in the indexer's own polls (ranges of ``indexer_target_logs`` logs, the production batch:
head, eth_getLogs, the range's last header, the anchor's, the bloom window's), stage by
stage, with the production functions, on one thread, and times each stage, in wall-clock
time (``_wall``) and in this thread's CPU time (``_cpu``, which the load of other processes
on a shared box disturbs far less):

- ``http``: the POST, the body read and building the answer (its wall time includes anvil's
  work; its CPU time is receiving ~19.5 MB per poll);
- ``json``: parsing the body (the RPC client's own parse, depth check included);
- ``judge``: scan.judge;
- ``decode``: filters.decode_routed (routing, the oracle's decoder, keccak of the content);
- ``rows``: building the requests' row tuples (store.request_rows);
- ``insert``: the sink's write without the rows (lookups, the multi-row INSERTs, the count
  trigger, the audit rows), inside the range's transaction;
- ``history``: the block hashes and the cursor;
- ``commit``: COMMIT (synchronous=NORMAL, WAL, as the indexer runs).

Then ``--profile`` prints cProfile's top functions of the same serial pass. ``--readers``
measures only the CPU milliseconds to receive one poll's answer (~5,000 logs, ~19.5 MB)
with httpx's async stream and with aiohttp, and to parse it with json, msgspec, orjson and
pysimdjson (the last two if installed) and the client's depth check. ``--inserts`` measures
only the CPU per request of the requests insert (store.insert_requests) for one poll's
requests, on scratch databases with one of its costs taken away at a time: the count
trigger, the three secondary indexes of ``requests``, the index of ``transitions``, the
audit rows.
Then it runs the real indexer (pipelined) and reports the CPU time each of its threads
spent: the event loop (fetch, parse, judge), the decode thread, the database thread.

    .venv/bin/python -m scripts.bench_indexer_split [--events 20000] [--reps 3] [--profile]
    .venv/bin/python -m scripts.bench_indexer_split --readers
    .venv/bin/python -m scripts.bench_indexer_split --inserts

Last line: {"per_event_us": {stage: microseconds per event, median over repetitions}, ...}
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import msgspec
import structlog

from scripts.bench_indexer import GAS_PER_REQUEST, TARGET_LOGS, _chain, indexer_run
from shared.chain import history
from shared.chain import rpc as rpc_module
from shared.chain.filters import Registration, decode_routed
from shared.chain.rpc import RpcClient
from shared.chain.scan import BlockHeader, LogRange, PollAnswer, Verdict, judge
from shared.db import AsyncDatabase
from shared.logs import configure_logging
from shared.state import store as state_store
from workers.devnet.anvil import Anvil
from workers.devnet.deploy import Deployment
from workers.oracle import store
from workers.oracle.indexer.main import Indexer, open_database
from workers.oracle.indexer.settings import IndexerSettings
from workers.oracle.indexer.sink import ORACLE_TOPICS

Mark = tuple[float, float]


def _mark() -> Mark:
    return time.perf_counter(), time.thread_time()


class _Clock:
    """Wall seconds and this thread's CPU seconds per stage (the CPU time is what a loaded box
    disturbs least: other processes take wall time, not this thread's CPU time)."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)

    def lap(self, stage: str, started: Mark) -> Mark:
        now = _mark()
        self.spent[stage] += now[0] - started[0]
        self.cpu[stage] += now[1] - started[1]
        return now


def _indexer(url: str, deployment: Deployment, db_path: Path) -> tuple[Indexer, RpcClient]:
    settings = IndexerSettings(
        _env_file=None,  # type: ignore[call-arg]
        db_path=db_path, rpc_urls=[url], provider_address=deployment.provider_address,
        start_block=deployment.deploy_block, confirmations=0,
    )  # fmt: skip
    rpc = RpcClient([url], timeout=120)
    return Indexer(settings, rpc=rpc, db=AsyncDatabase(open_database(db_path).conn)), rpc


async def serial_pass(
    url: str, deployment: Deployment, head: int, db_path: Path, chunk: int
) -> tuple[dict[str, float], int]:
    """One backfill, stage after stage on this thread; wall seconds per stage, and events."""
    indexer, rpc = _indexer(url, deployment, db_path)
    await indexer.start()
    clock = _Clock()
    events = 0
    original = rpc_module._parse_json, rpc_module._nests_too_deep

    def timed(fn: Callable[[bytearray], Any]) -> Callable[[bytearray], Any]:
        def measured(body: bytearray) -> Any:
            started = _mark()
            try:
                return fn(body)
            finally:
                clock.lap("json", started)

        return measured

    rpc_module._parse_json = timed(original[0])  # type: ignore[assignment]
    rpc_module._nests_too_deep = timed(original[1])  # type: ignore[assignment]
    try:
        anchor, cursor = indexer.anchor.header, indexer.anchor.number
        while cursor < head:
            rng = LogRange(cursor + 1, min(head, cursor + chunk))
            answer, stats = await _serial_range(indexer, clock, rng, anchor, head)
            events += stats
            cursor, anchor = rng.last, answer.range_end
    finally:
        rpc_module._parse_json, rpc_module._nests_too_deep = original
    for spent in (clock.spent, clock.cpu):
        # "http" was timed around the whole poll, the parse inside it included: take it out.
        spent["http"] -= spent["json"]
        # "rows" was measured on its own, and "insert" builds the rows again inside.
        spent["insert"] -= spent["rows"]
    await rpc.aclose()
    indexer.db.close()
    return {
        **{f"{stage}_wall": value for stage, value in clock.spent.items()},
        **{f"{stage}_cpu": value for stage, value in clock.cpu.items()},
    }, events


async def _serial_range(
    indexer: Indexer, clock: _Clock, rng: LogRange, anchor: BlockHeader | None, head: int
) -> tuple[PollAnswer, int]:
    """One range, stage by stage; the answer and the requests inserted."""
    scanner, conn = indexer.scanner, indexer.db.conn
    registrations = indexer._registrations
    bloom_first = max(rng.first, head - indexer.config.bloom_window + 1)
    started = _mark()
    answer = await scanner.poll(rng, anchor.number if anchor else None, bloom_first)
    started = clock.lap("http", started)
    verdict = judge(answer, anchor=anchor, confirmations=0, addresses=scanner.addresses)
    assert verdict.verdict is Verdict.ACCEPT, verdict
    started = clock.lap("judge", started)
    decoded = decode_routed(registrations, answer.logs, rng.first)
    started = clock.lap("decode", started)
    batch = decoded.batches[0]
    store.request_rows([(r, 1) for r in batch.requests])
    started = clock.lap("rows", started)
    conn.execute("BEGIN IMMEDIATE")
    stats = registrations[0].sink.apply(conn, batch, now=time.time())
    started = clock.lap("insert", started)
    assert answer.range_end is not None
    ends = [*answer.checked_headers(), answer.range_end]
    history._store_blocks(conn, indexer.name, decoded.blocks, ends, time.time())
    history._write_cursor(conn, indexer.name, rng.last, time.time())
    started = clock.lap("history", started)
    conn.execute("COMMIT")
    clock.lap("commit", started)
    return answer, int(stats.inserted)


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

    pipeline_module.Pipeline.decode = decode  # type: ignore[method-assign,assignment]
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


async def _read_httpx(client: httpx.AsyncClient, url: str, content: str) -> bytes:
    body = bytearray()
    async with client.stream("POST", url, content=content) as response:
        async for chunk in response.aiter_bytes():
            body += chunk
    return bytes(body)


async def _read_aiohttp(session: aiohttp.ClientSession, url: str, content: str) -> bytes:
    async with session.post(url, data=content) as response:
        return await response.read()


async def compare_readers(url: str, content: str, reps: int) -> dict[str, float]:
    """CPU milliseconds to receive one answer: httpx's async stream (the client before) and
    aiohttp's read (the client now), alternating."""
    headers = {"content-type": "application/json"}
    cpu: dict[str, list[float]] = defaultdict(list)
    async with httpx.AsyncClient(headers=headers, timeout=120) as client, \
            aiohttp.ClientSession(headers=headers) as session:  # fmt: skip
        for _ in range(reps):
            started = time.process_time()
            await _read_httpx(client, url, content)
            middle = time.process_time()
            await _read_aiohttp(session, url, content)
            cpu["httpx"].append((middle - started) * 1e3)
            cpu["aiohttp"].append((time.process_time() - middle) * 1e3)
    return {name: round(statistics.median(values), 1) for name, values in cpu.items()}


def compare_parsers(body: bytes, reps: int) -> dict[str, float]:
    """CPU milliseconds to parse one answer with each JSON parser at hand (orjson and
    pysimdjson only if installed: they are not dependencies) and the client's depth check."""
    parsers: dict[str, Callable[[bytes], Any]] = {
        "json": json.loads,
        "msgspec": msgspec.json.Decoder().decode,
    }
    with contextlib.suppress(ImportError):
        import orjson

        parsers["orjson"] = orjson.loads
    with contextlib.suppress(ImportError):
        import simdjson

        parsers["pysimdjson"] = simdjson.loads
    parsers["depth check"] = lambda raw: rpc_module._nests_too_deep(bytearray(raw))
    cpu: dict[str, list[float]] = defaultdict(list)
    for _ in range(reps):
        for name, parse in parsers.items():
            started = time.process_time()
            parse(body)
            cpu[name].append((time.process_time() - started) * 1e3)
    return {name: round(statistics.median(values), 1) for name, values in cpu.items()}


# What the requests insert pays for, each part taken away in turn on a scratch database.
INSERT_VARIANTS: dict[str, list[str] | None] = {
    "as is": [],
    "without the count trigger": ["DROP TRIGGER trg_oracle_request_count_insert"],
    "without the 3 secondary request indexes": [
        "DROP INDEX idx_requests_claim", "DROP INDEX idx_requests_status_order",
        "DROP INDEX idx_requests_block",
    ],
    "without the transitions index": ["DROP INDEX idx_transitions_entity"],
    "request rows only (no audit rows)": None,
}  # fmt: skip


def compare_inserts(
    registrations: Sequence[Registration], logs: list[Any], tmp: Path, reps: int
) -> dict[str, float]:
    """CPU microseconds per request of store.insert_requests for one poll's requests, in a
    fresh database each time, with one of its costs taken away (the variants alternate)."""
    batch = decode_routed(registrations, logs, 0).batches[0]
    requests = [(r, 1) for r in batch.requests]
    cpu: dict[str, list[float]] = defaultdict(list)
    for rep in range(reps):
        for n, (name, statements) in enumerate(INSERT_VARIANTS.items()):
            db = open_database(tmp / f"insert-{rep}-{n}.db")
            conn = db.conn
            for statement in statements or []:
                conn.execute(statement)
            conn.execute("BEGIN IMMEDIATE")
            started = time.thread_time()
            if statements is None:
                rows = store.request_rows(requests)
                names = [*rows[0], "status", "created_at", "updated_at"]
                state_store._insert_rows(
                    conn, f"INSERT INTO requests ({', '.join(names)})", ["?"] * len(names),
                    [(*row.values(), "PENDING", 0.0, 0.0) for row in rows],
                )  # fmt: skip
            else:
                store.insert_requests(conn, requests, actor="indexer", now=time.time())
            cpu[name].append((time.thread_time() - started) / len(requests) * 1e6)
            conn.execute("COMMIT")
            db.close()
    return {name: round(statistics.median(values), 1) for name, values in cpu.items()}


def one_poll(url: str, deployment: Deployment, head: int, chunk: int) -> str:
    """The JSON of an eth_getLogs batch of the first ``chunk`` blocks (~5,000 logs)."""
    last = min(head, deployment.deploy_block + chunk - 1)
    return json.dumps([{"jsonrpc": "2.0", "id": 1, "method": "eth_getLogs", "params": [
        {"address": deployment.provider_address, "fromBlock": hex(deployment.deploy_block),
         "toBlock": hex(last), "topics": [list(ORACLE_TOPICS)]}]}])  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--per-block", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile one serial pass")
    parser.add_argument("--inserts", action="store_true",
                        help="the requests insert's costs, one taken away at a time")  # fmt: skip
    parser.add_argument("--readers", action="store_true",
                        help="HTTP readers and JSON parsers on one answer only")  # fmt: skip
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
        if args.readers:
            content = one_poll(anvil.rpc_url, deployment, head, chunk)
            body = httpx.post(anvil.rpc_url, content=content, timeout=120,
                              headers={"content-type": "application/json"}).content  # fmt: skip
            readers = asyncio.run(compare_readers(anvil.rpc_url, content, max(5, args.reps)))
            parsers = compare_parsers(body, max(5, args.reps))
            print(json.dumps({"answer_bytes": len(body), "logs": chunk * args.per_block,
                              "read_cpu_ms": readers, "parse_cpu_ms": parsers}))  # fmt: skip
            return 0
        if args.inserts:
            content = one_poll(anvil.rpc_url, deployment, head, chunk)
            answer = httpx.post(anvil.rpc_url, content=content, timeout=120,
                                headers={"content-type": "application/json"})  # fmt: skip
            logs = answer.json()[0]["result"]
            indexer, _ = _indexer(anvil.rpc_url, deployment, Path(tmp) / "registrations.db")
            inserts = compare_inserts(indexer._registrations, logs, Path(tmp), max(5, args.reps))
            print(json.dumps({"requests": len(logs), "insert_cpu_us_per_request": inserts}))
            return 0
        for rep in range(args.reps):
            spent, count = asyncio.run(
                serial_pass(anvil.rpc_url, deployment, head, Path(tmp) / f"s{rep}.db", chunk)
            )
            assert count == events, (count, events)
            for stage, seconds in spent.items():
                per_event[stage].append(seconds / count * 1e6)
            for kind in ("wall", "cpu"):
                total = sum(v for k, v in spent.items() if k.endswith(kind))
                per_event[f"serial_total_{kind}"].append(total / count * 1e6)
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
