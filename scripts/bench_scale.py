"""Scale check: a state store with 1,000,000 requests in mixed states.

Builds the database with bulk inserts (one transaction per 50k rows, as the indexer
would write them), then times what must stay fast at that size, each several times:

- ``hodlai status`` (the real CLI, as a subprocess, including interpreter start-up) and the
  status query alone (``collect_status``);
- a claim of PENDING rows by one inference shard of 4, and of ANSWERED rows by the fulfiller;
- the ``v_status_counts`` and ``v_stuck`` views an operator uses in ``sqlite3``.

    .venv/bin/python scripts/bench_scale.py [--rows 1000000] [--db /tmp/hodlai-1m.db]

Target: status and claim queries under 200 ms. Last line: a JSON object with the timings (ms).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from subprocess import DEVNULL

from shared.db import atomic, connect
from workers.oracle import request_id as rid
from workers.oracle import store
from workers.oracle.inspect import collect_status

# Mixed states roughly as a busy node looks: most work done, a backlog, some failures.
MIX = (("FULFILLED", 0.80), ("PENDING", 0.10), ("ANSWERED", 0.04), ("PROCESSED", 0.04),
       ("FAILED", 0.02))  # fmt: skip
CHUNK = 50_000
REPS = 5


def build(db: Path, rows: int) -> None:
    conn = connect(db)
    rng = random.Random(7)
    now = time.time()
    statuses = [s for s, share in MIX for _ in range(int(share * 1000))]
    sql = (
        "INSERT INTO requests (request_id, shard_key, status, requester, model, system_prompt,"
        " state_string, action_set, content_hash, block_number, block_hash, tx_hash, log_index,"
        " answer_action, fail_reason, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, 'hodlai-local', 'prompt', ?, '[\"BUY\",\"SELL\",\"HOLD\"]', ?, ?,"
        " ?, ?, ?, ?, ?, ?, ?)"
    )
    audit = (
        "INSERT INTO transitions (machine, entity_id, from_status, to_status, actor, at, note) "
        "VALUES ('oracle.request', ?, NULL, 'PENDING', 'bench', ?, NULL)"
    )
    for start in range(0, rows, CHUNK):
        batch = []
        for i in range(start, min(rows, start + CHUNK)):
            status = statuses[rng.randrange(len(statuses))]
            request_id = i + 1
            batch.append((
                rid.encode(request_id), rid.shard_key(request_id), status, "0x" + "ab" * 20,
                f"state {i}", f"0x{i:064x}", i // 20, f"0x{i // 20:064x}", f"0x{i:064x}", i % 20,
                None if status == "PENDING" else "BUY",
                "bench failure" if status == "FAILED" else None,
                now - (rows - i) * 0.01, now - (rows - i) * 0.01,
            ))  # fmt: skip
        with atomic(conn):
            conn.executemany(sql, batch)
            conn.executemany(audit, [(b[0], b[-1]) for b in batch])
    conn.execute("ANALYZE")
    conn.close()


def timed(fn: object, reps: int = REPS) -> float:
    assert callable(fn)
    samples = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(samples), 2)


def claim_and_release(conn: sqlite3.Connection, status: store.Status, worker_count: int) -> None:
    """One claim as a worker makes it (16 rows of one shard, or 64 for the fulfiller)."""
    limit = 16 if status is store.Status.PENDING else 64
    claimed = store.claim(conn, owner="bench", shard=worker_count - 1, worker_count=worker_count,
                          limit=limit, status=status)  # fmt: skip
    store.release(conn, [c.request_id for c in claimed], owner="bench")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--db", type=Path, default=Path("/tmp/hodlai-scale.db"))
    parser.add_argument("--reuse", action="store_true", help="keep an existing database")
    args = parser.parse_args()

    if not (args.reuse and args.db.exists()):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{args.db}{suffix}").unlink(missing_ok=True)
        started = time.perf_counter()
        build(args.db, args.rows)
        print(f"built {args.rows} rows in {time.perf_counter() - started:.1f} s")
    conn = connect(args.db)
    results: dict[str, float] = {}
    results["status_query_ms"] = timed(lambda: collect_status(conn, None, time.time()))
    results["claim_pending_ms"] = timed(lambda: claim_and_release(conn, store.Status.PENDING, 4))
    results["claim_answered_ms"] = timed(lambda: claim_and_release(conn, store.Status.ANSWERED, 1))
    results["view_status_counts_ms"] = timed(
        lambda: conn.execute("SELECT * FROM v_status_counts").fetchall()
    )
    results["view_stuck_first_page_ms"] = timed(
        lambda: conn.execute("SELECT * FROM v_stuck LIMIT 50").fetchall()
    )
    env = {**os.environ, "HODLAI_DB_PATH": str(args.db), "HODLAI_RPC_URLS": ""}
    hodlai = str(Path(sys.executable).with_name("hodlai"))
    results["hodlai_status_cli_ms"] = timed(
        lambda: subprocess.run([hodlai, "status", "--json"], env=env, check=True, stdout=DEVNULL),
        reps=3,
    )
    results["rows"] = args.rows
    for key, value in results.items():
        print(f"{key:<28} {value}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
