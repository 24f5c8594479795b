"""Claim every PENDING row of a shard as fast as possible and report which ids were claimed.

Used by the multi-process claim test and by bench_claims.py: each OS process runs
``python scripts/claim_load.py DB --owner O --shard I --worker-count N --limit L --out F``
and writes the ids it claimed (one per line) to F, plus a JSON summary on stdout.
'database is locked' must never escape: StoreBusyError is counted, not hidden.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from shared import store
from shared.db import connect
from shared.errors import StoreBusyError

# Seconds a lease lasts in this load: longer than any run, so nothing is re-claimed on expiry.
LEASE_S = 3600.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("db", type=Path)
    parser.add_argument("--owner", required=True)
    parser.add_argument("--shard", type=int, default=0)
    parser.add_argument("--worker-count", type=int, default=1)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--start-at", type=float, default=0.0, help="unix time to start at")
    args = parser.parse_args(argv)

    conn = connect(args.db)
    while time.time() < args.start_at:  # line the processes up so they really contend
        time.sleep(0.001)
    claimed: list[int] = []
    busy = 0
    started = time.perf_counter()
    while True:
        try:
            batch = store.claim(
                conn, owner=args.owner, shard=args.shard, worker_count=args.worker_count,
                limit=args.limit, lease_seconds=LEASE_S,
            )  # fmt: skip
        except StoreBusyError:
            busy += 1
            continue
        if not batch:
            break
        claimed.extend(row.request_id for row in batch)
    elapsed = time.perf_counter() - started
    args.out.write_text("".join(f"{i}\n" for i in claimed))
    print(json.dumps({"owner": args.owner, "claimed": len(claimed), "busy_errors": busy,
                      "elapsed_s": elapsed}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
