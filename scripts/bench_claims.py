"""Benchmark: claims per second from the SQLite state store, 1 process vs 4 processes.

Each run fills a fresh WAL database with N PENDING rows (ids include values beyond 2**63),
then OS processes running scripts/claim_load.py claim them in batches until none is left.
Four processes run sharded (worker_count=4, one shard each, as inference workers do) and
competing (worker_count=1, all fighting over the same rows) to count double claims where
they could happen. Several repetitions; the median is reported.

    .venv/bin/python scripts/bench_claims.py [--rows 20000] [--reps 3] [--limit 50]

Last line: {"claims_per_s_1": ..., "claims_per_s_4": ..., "double_claims": 0, ...}
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from shared.db import atomic, connect
from workers.oracle import store

ROOT = Path(__file__).resolve().parent.parent


def fill(db: Path, rows: int) -> None:
    conn = connect(db)
    with atomic(conn):
        for i in range(rows):
            request_id = i + 1 if i % 2 else 2**64 + i  # half the ids beyond SQLite's INTEGER
            store.insert_request(conn, _request(request_id, i), actor="bench")
    conn.close()


def _request(request_id: int, i: int) -> store.NewRequest:
    return store.NewRequest(
        request_id=request_id, requester="0x" + "11" * 20, model="hodlai-local",
        system_prompt="p", state_string=f"s{i}", action_set=("BUY", "SELL", "HOLD"),
        content_hash=f"0x{i:064x}", block_number=i // 10, block_hash=f"0x{i // 10:064x}",
        tx_hash=f"0x{i:064x}", log_index=i % 10,
    )  # fmt: skip


def run(db: Path, processes: int, *, sharded: bool, limit: int) -> tuple[float, int, int]:
    """Returns (claims/s, double claims, busy errors)."""
    outs = [db.with_suffix(f".{p}.ids") for p in range(processes)]
    start_at = time.time() + 1.0  # let every interpreter start before the clock matters
    procs = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "claim_load.py"), str(db),
             "--owner", f"bench-{p}", "--shard", str(p if sharded else 0),
             "--worker-count", str(processes if sharded else 1), "--limit", str(limit),
             "--out", str(outs[p]), "--start-at", str(start_at)],
            stdout=subprocess.PIPE, text=True,
        )
        for p in range(processes)
    ]  # fmt: skip
    summaries = [json.loads(proc.communicate()[0].strip().splitlines()[-1]) for proc in procs]
    wall = max(s["elapsed_s"] for s in summaries)
    ids = Counter(line for out in outs for line in out.read_text().split())
    total = sum(ids.values())
    doubles = sum(count - 1 for count in ids.values() if count > 1)
    return total / wall, doubles, sum(s["busy_errors"] for s in summaries)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--limit", type=int, default=50)
    args = parser.parse_args()

    results: dict[str, list[float]] = {"one": [], "four": [], "four_competing": []}
    doubles = busy = 0
    for rep in range(args.reps):
        for name, procs, sharded in (("one", 1, True), ("four", 4, True),
                                     ("four_competing", 4, False)):  # fmt: skip
            with tempfile.TemporaryDirectory() as tmp:
                db = Path(tmp) / "bench.db"
                fill(db, args.rows)
                rate, d, b = run(db, procs, sharded=sharded, limit=args.limit)
                results[name].append(rate)
                doubles += d
                busy += b
                print(f"rep {rep + 1}: {name:<15} {rate:>10.0f} claims/s  doubles={d} busy={b}")
    summary = {
        "claims_per_s_1": round(statistics.median(results["one"])),
        "claims_per_s_4": round(statistics.median(results["four"])),
        "claims_per_s_4_competing": round(statistics.median(results["four_competing"])),
        "double_claims": doubles,
        "busy_errors": busy,
        "rows": args.rows,
        "batch": args.limit,
        "reps": args.reps,
    }
    print(json.dumps(summary))
    return 0 if doubles == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
