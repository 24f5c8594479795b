"""The Solana distribution demo: `make demo-solana` (python -m scripts.demo_distribution_solana).

Everything in this process, on the in-process SVM (``HODLAI_DIST_SOLANA_NETWORK=local``'s
cluster): a mint of 6 decimals, a funded source, and the seed's manual airdrop to N
recipients (default 200, half of them already holding a token account), created and
executed through the distribution frame (the seed's task body), paid by the Solana payer.
On the way the network loses the first batch's packets until its blockhash expires, so the
run shows the exactly-once rule at work: the lost batch is re-sent only after its last
valid block height passed, and its late packets are refused.

It prints the run's totals, checks every recipient's balance on the SVM against the
manifest, and ends with one JSON line; it fails (exit 1) on any difference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.transaction import VersionedTransaction
from solders.transaction_metadata import FailedTransactionMetadata

from shared.db import AsyncDatabase, connect
from shared.logs import configure_logging
from workers.distribution import service, store
from workers.distribution.networks import Network
from workers.distribution.settings import DistSettings
from workers.distribution.solana.cluster import MAX_PROCESSING_AGE, SvmCluster
from workers.distribution.solana.localchain import (
    LAMPORTS_PER_SOL,
    airdrop,
    balance,
    create_mint,
    mint_to,
)
from workers.distribution.solana.network import SolanaNetwork
from workers.distribution.solana.payer import SolanaPayer

DECIMALS = 6


class LossyCluster(SvmCluster):
    """The SVM behind a network that loses every packet of the first transaction."""

    def __init__(self) -> None:
        super().__init__()
        self.lost: dict[str, VersionedTransaction] = {}

    async def send(self, transaction: VersionedTransaction) -> None:
        signature = str(transaction.signatures[0])
        if not self.lost or signature in self.lost:
            self.lost[signature] = transaction
            return
        await super().send(transaction)


async def demo(recipients: int, db_path: Path) -> dict[str, object]:
    cluster = LossyCluster()
    source, authority = Keypair(), Keypair()
    airdrop(cluster, authority.pubkey(), 10 * LAMPORTS_PER_SOL)
    airdrop(cluster, source.pubkey(), 100 * LAMPORTS_PER_SOL)
    mint = create_mint(cluster, authority, decimals=DECIMALS)
    mint_to(cluster, authority, mint, source.pubkey(), 10**9 * 10**DECIMALS)
    people = [Keypair().pubkey() for _ in range(recipients)]
    for person in people[::2]:
        mint_to(cluster, authority, mint, person, 1)  # holds an account (and 1 base unit)
    before = {str(p): balance(cluster, p, mint) for p in people}

    network = SolanaNetwork("local", cluster, source=str(source.pubkey()))
    networks: dict[str, Network] = {"local": network}
    settings = DistSettings(dist_networks=[])
    body = {
        "network": "local",
        "tokenMint": str(mint.address),
        "task": {
            "id": "airdrop-solana-demo",
            "name": "Airdrop (Solana, in-process SVM)",
            "type": "manual",
            "distribution": {
                "recipients": [
                    {"address": str(p), "amount": f"{1 + i % 5}.25"} for i, p in enumerate(people)
                ],
                "usePercentage": False,
            },
            "enabled": True,
            "runCount": 0,
        },
    }
    conn = connect(db_path, durable=True)
    db = AsyncDatabase(connect(db_path, durable=True))
    started = time.monotonic()
    try:
        await service.create(conn, body, networks, settings, actor="demo")
        run = await service.execute(conn, "airdrop-solana-demo", networks, settings, actor="demo")
        payer = SolanaPayer(db=db, network=network, keypair=source, resend_s=0.0)
        for tick in range(1000):
            await payer.tick()
            if tick == 3:  # the lost batch is still "unknown": let its blockhash expire
                cluster.advance(MAX_PROCESSING_AGE + 1)
            if store.run_answer(conn, run["id"])["status"] in ("completed", "failed"):
                break
        answer = store.run_answer(conn, run["id"])
        sends = conn.execute(
            "SELECT status, COUNT(*) FROM distribution_solana_sends WHERE run_id = ?"
            " GROUP BY status",
            (run["id"],),
        ).fetchall()
    finally:
        conn.close()
        db.close()
    elapsed = time.monotonic() - started
    late_refused = all(
        isinstance(cluster.svm.send_transaction(tx), FailedTransactionMetadata)
        for tx in cluster.lost.values()
    )
    manifest = {t["address"]: int(t["amount"]) for t in answer["transfers"]}
    wrong = [
        a for a, v in manifest.items()
        if balance(cluster, Pubkey.from_string(a), mint) - before[a] != v
    ]  # fmt: skip
    paid = sum(t["status"] == "paid" for t in answer["transfers"])
    total = int(answer["totalAmount"])
    print(f"run {answer['id']}: {answer['status']}, {paid}/{len(manifest)} recipients paid, "
          f"total {total / 10**DECIMALS:,.2f} tokens ({total} base units), "
          f"manifest {answer['manifestHash'][:18]}…")  # fmt: skip
    print("transactions:", ", ".join(f"{n} {status}" for status, n in sends))
    print(f"balances checked on the SVM: {len(manifest) - len(wrong)} equal the manifest, "
          f"{len(wrong)} differ; lost packets refused after expiry: {late_refused}")  # fmt: skip
    return {
        "recipients": len(manifest),
        "paid": paid,
        "wrong_balances": len(wrong),
        "double_payments": sum(
            balance(cluster, Pubkey.from_string(a), mint) - before[a] > v
            for a, v in manifest.items()
        ),
        "transactions": {status: n for status, n in sends},
        "late_packets_refused": late_refused,
        "seconds": round(elapsed, 2),
        "ok": answer["status"] == "completed" and not wrong and paid == len(manifest)
        and late_refused,
    }  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--recipients", type=int, default=200)
    parser.add_argument("--db", type=Path, default=None, help="database file (default: a temp)")
    args = parser.parse_args(argv)
    configure_logging(os.environ.get("LOG_LEVEL", "WARNING"))
    with tempfile.TemporaryDirectory() as tmp:
        db_path = args.db or Path(tmp) / "demo-solana.db"
        result = asyncio.run(demo(args.recipients, db_path))
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
