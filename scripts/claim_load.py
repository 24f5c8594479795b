"""Claim every PENDING row of a shard as fast as possible and report which ids were claimed.

Used by the multi-process claim tests (for every declared state machine) and by
bench_claims.py: each OS process runs ``python scripts/claim_load.py DB --owner O --shard I
--worker-count N --limit L --out F [--machine oracle.request] [--status PENDING]`` and writes
the keys it claimed (one per line) to F, plus a JSON summary on stdout.
'database is locked' must never escape: StoreBusyError is counted, not hidden.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from shared import registry, state
from shared.db import connect
from shared.errors import StoreBusyError
from workers.oracle import request_id as rid
from workers.oracle import store

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
    parser.add_argument("--machine", default="oracle.request", help="a declared state machine")
    parser.add_argument("--status", default=None, help="the status to claim (default: first)")
    args = parser.parse_args(argv)
    machine = registry.machines()[args.machine]
    status = args.status or machine.status_values[0]
    shard = (args.shard, args.worker_count) if args.worker_count > 1 else None

    conn = connect(args.db)
    while time.time() < args.start_at:  # line the processes up so they really contend
        time.sleep(0.001)
    claimed: list[str] = []
    busy = 0
    started = time.perf_counter()
    while True:
        try:
            if machine is store.REQUESTS and status == store.Status.PENDING:
                # The oracle's own claim, as its inference workers call it.
                batch = [
                    {machine.key: rid.encode(c.request_id)}
                    for c in store.claim(
                        conn, owner=args.owner, shard=args.shard,
                        worker_count=args.worker_count, limit=args.limit, lease_seconds=LEASE_S,
                    )
                ]  # fmt: skip
            else:
                batch = [
                    dict(row)  # what a generic worker takes from its claim
                    for row in state.claim(
                        conn, machine, owner=args.owner, status=status, limit=args.limit,
                        lease_seconds=LEASE_S, shard=shard,
                    )
                ]  # fmt: skip
        except StoreBusyError:
            busy += 1
            continue
        if not batch:
            break
        claimed.extend(str(row[machine.key]) for row in batch)
    elapsed = time.perf_counter() - started
    args.out.write_text("".join(f"{i}\n" for i in claimed))
    print(json.dumps({"owner": args.owner, "claimed": len(claimed), "busy_errors": busy,
                      "elapsed_s": elapsed}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
