"""Benchmark: what ``synchronous=FULL`` costs against NORMAL, in one run.

FULL fsyncs the WAL on every commit, so its cost is per commit, not per row. Measured:

- claims per second: the oracle's claim (scripts/bench_claims.py's rows and store.claim) in
  batches of ``--limit`` (one commit per batch, as the inference workers claim) and one row at
  a time (one commit per claim: the worst case);
- transactions recorded per second: pre-signed transactions inserted with their audit row,
  a spend-policy check and its spend row, ``--batch`` per commit as the fulfiller records
  them, and one per commit (a money executor recording each payment on its own). Signing is
  done beforehand: it costs the same either way (~3,000/s with coincurve, FACTS.md).

Each figure is the median of ``--reps`` repetitions, FULL and NORMAL alternating on fresh
database files in ``--dir`` (default: a temporary directory; fsync costs what that file
system and disk make it cost, so run it where the node's database lives).

    .venv/bin/python -m scripts.bench_durability [--reps 3] [--rows 5000] [--txs 2000]

Last line: {"claims_per_s_full": ..., "claims_per_s_normal": ..., "claims_ratio": ..., ...}
(ratios are FULL / NORMAL: 1.0 means free).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from eth_abi.abi import encode as abi_encode
from eth_utils.address import to_checksum_address

from scripts.bench_claims import fill
from shared.db import atomic, connect
from shared.tx import ledger
from shared.tx.fees import GWEI, Fees
from shared.tx.ledger import Purpose
from shared.tx.policy import Limit, SpendPolicy, record_spends, selector_of, selectors
from shared.tx.signer import Call, LocalSigner, SignedTx
from workers.oracle import store

# Anvil's first development key: public knowledge, a benchmark signs nothing that is sent.
KEY = bytes.fromhex("ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcab7cbed5f02ff80a")
TOKEN = to_checksum_address("0x" + "12" * 20)
RECIPIENT = to_checksum_address("0x" + "78" * 20)
POLICY = SpendPolicy(
    contracts={TOKEN: selectors("transfer(address,uint256)")},
    limits={TOKEN: Limit(per_tx=10**30, per_day=10**40)},
)
FEES = Fees(max_fee_per_gas=3 * GWEI, max_priority_fee_per_gas=GWEI)


def claims_per_s(db: Path, rows: int, *, durable: bool, limit: int) -> float:
    fill(db, rows)
    conn = connect(db, durable=durable)
    claimed = 0
    started = time.perf_counter()
    while batch := store.claim(conn, owner="bench", limit=limit, lease_seconds=3600.0):
        claimed += len(batch)
    elapsed = time.perf_counter() - started
    conn.close()
    assert claimed == rows
    return claimed / elapsed


def sign_all(n: int) -> list[SignedTx]:
    signer = LocalSigner(KEY, chain_id=31337)
    data = selector_of("transfer(address,uint256)")
    return [
        signer.sign(
            Call(to=TOKEN, data=data + abi_encode(["address", "uint256"], [RECIPIENT, i + 1]),
                 value=0, gas_limit=60_000),
            nonce=i, fees=FEES,
        )
        for i in range(n)
    ]  # fmt: skip


def records_per_s(db: Path, txs: list[SignedTx], *, durable: bool, batch: int) -> float:
    """What TxManager._record_sync does per submission, minus the signing: the policy check,
    the txs row with its audit row, the spend row; ``batch`` per commit."""
    conn = connect(db, durable=durable)
    sender = to_checksum_address(LocalSigner(KEY, chain_id=31337).address)
    started = time.perf_counter()
    for start in range(0, len(txs), batch):
        with atomic(conn):
            for signed in txs[start : start + batch]:
                now = time.time()
                moved = POLICY.check(conn, signed.call, sender=sender, now=now)
                with atomic(conn):
                    tx_id = ledger.insert(
                        conn, signed, Purpose("pay", subject=str(signed.nonce)), sender=sender,
                        chain_id=31337, now=now, idempotency_key=f"pay:{signed.nonce}",
                    )  # fmt: skip
                    record_spends(conn, tx_id, sender=sender, moved=moved, now=now)
    elapsed = time.perf_counter() - started
    conn.close()
    return len(txs) / elapsed


def measure(
    reps: int, directory: Path | None, run: Callable[[Path, bool], float], what: str
) -> tuple[float, float]:
    """Median (FULL, NORMAL) of ``run(db, durable)`` over ``reps``, alternating the order."""
    full: list[float] = []
    normal: list[float] = []
    for rep in range(reps):
        order = (True, False) if rep % 2 == 0 else (False, True)
        for durable in order:
            with tempfile.TemporaryDirectory(dir=directory) as tmp:
                rate = run(Path(tmp) / "bench.db", durable)
            (full if durable else normal).append(rate)
            name = "FULL" if durable else "NORMAL"
            print(f"rep {rep + 1}: {what:<24} {name:<6} {rate:>10.0f}/s", flush=True)
    return statistics.median(full), statistics.median(normal)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=5_000, help="rows claimed per run")
    parser.add_argument("--limit", type=int, default=50, help="claim batch")
    parser.add_argument("--txs", type=int, default=2_000, help="transactions recorded per run")
    parser.add_argument("--batch", type=int, default=32, help="transactions per commit")
    parser.add_argument("--dir", type=Path, default=None, help="where the database files go")
    args = parser.parse_args()

    single_rows = max(1, args.rows // 5)  # one commit per row: fewer rows, same precision
    single_txs = max(1, args.txs // 5)
    signed = sign_all(args.txs)
    figures = {
        "claims_batch": measure(
            args.reps, args.dir,
            lambda db, d: claims_per_s(db, args.rows, durable=d, limit=args.limit),
            f"claims, {args.limit} per commit",
        ),
        "claims_single": measure(
            args.reps, args.dir, lambda db, d: claims_per_s(db, single_rows, durable=d, limit=1),
            "claims, 1 per commit",
        ),
        "records_batch": measure(
            args.reps, args.dir, lambda db, d: records_per_s(db, signed, durable=d,
                                                             batch=args.batch),
            f"txs recorded, {args.batch}/commit",
        ),
        "records_single": measure(
            args.reps, args.dir,
            lambda db, d: records_per_s(db, signed[:single_txs], durable=d, batch=1),
            "txs recorded, 1/commit",
        ),
    }  # fmt: skip
    summary: dict[str, object] = {}
    for name, (full, normal) in figures.items():
        summary[f"{name}_per_s_full"] = round(full)
        summary[f"{name}_per_s_normal"] = round(normal)
        summary[f"{name}_ratio"] = round(full / normal, 3)
    summary.update(reps=args.reps, rows=args.rows, claim_batch=args.limit, txs=args.txs,
                   record_batch=args.batch)  # fmt: skip
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
