"""Benchmark: answers per second of the inference workers against a 200 ms mock LLM.

Three set-ups, each a real ``hodlai inference`` OS process (or four) on a fresh WAL
database, against ``hodlai mock-llm --latency-ms 200`` running as its own process:

- sequential: one worker with HODLAI_LLM_MAX_CONCURRENCY=1 (one request at a time), the
  baseline measured in the same run;
- one worker: HODLAI_LLM_MAX_CONCURRENCY=--concurrency (default 32);
- four shards: four processes (worker-count 4), each with the same concurrency.

Workers are started on an empty database and given time to come up; then every row is
inserted in one transaction and the clock starts at its commit. The clock stops at the last
``answered_at``. Each set-up is repeated ``--reps`` times; the median is reported.

    .venv/bin/python scripts/bench_inference.py [--latency-ms 200] [--concurrency 32] [--reps 3]

Last line: {"one_worker_aps": ..., "sequential_aps": ..., "four_shards_aps": ...,
"ratio_vs_sequential": ...}
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shared.db import atomic, connect
from workers.oracle import store
from workers.oracle.store import NewRequest

PROVIDER = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
# Seconds allowed for worker processes to import, connect and start polling.
STARTUP_S = 2.0


def start_mock(latency_ms: int) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "mock-llm", "--port", "0",
         "--latency-ms", str(latency_ms)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        raise SystemExit(f"mock-llm did not start: {line!r}")
    return proc, line.split(" on ")[1].strip()


def request(i: int) -> NewRequest:
    request_id = i if i % 2 else 2**200 + i  # half the ids far beyond SQLite's INTEGER
    return NewRequest(
        request_id=request_id, requester="0x" + "11" * 20, model="hodlai-local",
        system_prompt="You manage a vault. Choose the best action.",
        state_string=f"price={1 + i % 97 / 100:.2f}; tick={i}", action_set=("BUY", "SELL", "HOLD"),
        content_hash=f"0x{i:064x}", block_number=i // 10, block_hash=f"0x{i // 10:064x}",
        tx_hash=f"0x{i:064x}", log_index=i % 10,
    )  # fmt: skip


def run(url: str, *, rows: int, processes: int, concurrency: int, workdir: Path) -> float:
    """Answers per second for one set-up."""
    db = workdir / f"bench-{processes}-{concurrency}-{time.monotonic_ns()}.db"
    conn = connect(db)
    env = {
        **os.environ,
        "HODLAI_DB_PATH": str(db), "HODLAI_CHAIN_ID": "31337", "HODLAI_PROVIDER_ADDRESS": PROVIDER,
        "HODLAI_LLM_BACKEND": "openai", "HODLAI_LLM_BASE_URL": url,
        "HODLAI_LLM_MODEL_MAP": json.dumps({"hodlai-local": "mock-1"}),
        "HODLAI_LLM_MAX_CONCURRENCY": str(concurrency), "LOG_LEVEL": "WARNING",
    }  # fmt: skip
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "inference", "--worker-id", str(shard),
             "--worker-count", str(processes)],
            env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for shard in range(processes)
    ]  # fmt: skip
    try:
        time.sleep(STARTUP_S)
        with atomic(conn):
            for i in range(rows):
                store.insert_request(conn, request(i), actor="bench")
        began = time.time()
        while store.status_counts(conn)["ANSWERED"] < rows:
            if any(proc.poll() is not None for proc in procs):
                raise SystemExit("an inference worker exited during the benchmark")
            time.sleep(0.05)
        last = float(conn.execute("SELECT MAX(answered_at) FROM requests").fetchone()[0])
        twice = conn.execute(
            "SELECT COUNT(*) FROM transitions WHERE to_status = 'ANSWERED'"
        ).fetchone()[0]
        if twice != rows:
            raise SystemExit(f"{twice} answers for {rows} rows: something answered twice")
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=30)
        conn.close()
    return rows / (last - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--sequential-rows", type=int, default=40)
    parser.add_argument("--rows", type=int, default=800, help="rows for one worker")
    parser.add_argument("--shard-rows", type=int, default=2400, help="rows for four shards")
    args = parser.parse_args()
    mock, url = start_mock(args.latency_ms)
    results: dict[str, list[float]] = {"sequential": [], "one_worker": [], "four_shards": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            for rep in range(args.reps):
                for name, rows, processes, concurrency in (
                    ("sequential", args.sequential_rows, 1, 1),
                    ("one_worker", args.rows, 1, args.concurrency),
                    ("four_shards", args.shard_rows, 4, args.concurrency),
                ):
                    aps = run(url, rows=rows, processes=processes, concurrency=concurrency,
                              workdir=workdir)  # fmt: skip
                    results[name].append(aps)
                    print(f"rep {rep + 1}: {name:<12} {rows:>5} rows  {aps:8.1f} answers/s",
                          flush=True)  # fmt: skip
    finally:
        mock.send_signal(signal.SIGTERM)
        mock.wait(timeout=10)
    median = {name: statistics.median(values) for name, values in results.items()}
    ideal = 1000 / args.latency_ms
    print(f"latency {args.latency_ms} ms: one-at-a-time ideal is {ideal:.1f} answers/s; "
          f"concurrency {args.concurrency} per worker")  # fmt: skip
    for name, value in median.items():
        print(f"median {name:<12} {value:8.1f} answers/s  ({value / median['sequential']:.1f}x)")
    print(json.dumps({
        "one_worker_aps": round(median["one_worker"], 1),
        "sequential_aps": round(median["sequential"], 1),
        "four_shards_aps": round(median["four_shards"], 1),
        "ratio_vs_sequential": round(median["one_worker"] / median["sequential"], 1),
        "four_shards_ratio_vs_sequential": round(median["four_shards"] / median["sequential"], 1),
        "latency_ms": args.latency_ms, "concurrency": args.concurrency, "reps": args.reps,
        "runs": {name: [round(v, 1) for v in values] for name, values in results.items()},
    }))  # fmt: skip


if __name__ == "__main__":
    main()
