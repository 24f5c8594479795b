"""Benchmark of the EVM distribution payer (issue 21 §Measure): one run of 1,000 recipients on
anvil with 1-second blocks, paid through the multisend by the payer (the sending service, the
pre-flight, batches of 200, FINAL at HODLAI_CONFIRMATIONS = 2), compared in the same chain
with one plain ERC-20 ``transfer`` transaction per recipient (a sample of ``--single``
recipients, each as fresh as the batched ones: gas per transfer does not depend on how many).

Reported:

- ``gas_per_recipient_batched``: the gas of every transaction the source sent for the run
  (the approve and the batches), divided by the recipients;
- ``gas_per_recipient_single``: the mean gas of one ``transfer`` transaction to a fresh
  recipient;
- ``gas_ratio``: batched / single (target ≤ 0.6);
- ``recipients_per_s``: recipients paid (FINAL) per second, from the payer's first tick to the
  run's completion;
- ``double_payments``: recipients whose balance is not their amount or who have more than one
  Transfer log, counted on chain (must be 0).

The last line is that JSON object.

    python -m scripts.bench_distribution [--recipients 1000] [--single 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from shared import state
from shared.db import AsyncDatabase, atomic, connect
from shared.keys import generate_key_file
from shared.logs import configure_logging
from workers.devnet.anvil import Anvil
from workers.distribution.evm.contracts import (
    TRANSFER_TOPIC,
    address_topic,
    decode_uint,
)
from workers.distribution.evm.deploy import Deployer
from workers.distribution.evm.payer import build
from workers.distribution.evm.settings import EvmPaySettings
from workers.distribution.machine import RUNS, TRANSFERS

WHOLE = 10**18
CONFIRMATIONS = 2
TRANSFER_SELECTOR = bytes.fromhex("a9059cbb")


def _rpc(url: str, body: Any) -> Any:
    return httpx.post(url, json=body, timeout=120).json()


def _balances(url: str, token: str, owners: list[str]) -> list[int]:
    body = [
        {"jsonrpc": "2.0", "id": i, "method": "eth_call",
         "params": [{"to": token, "data": "0x70a08231" + "00" * 12 + o[2:].lower()}, "latest"]}
        for i, o in enumerate(owners)
    ]  # fmt: skip
    answers = sorted(_rpc(url, body), key=lambda a: a["id"])
    return [decode_uint(a["result"]) for a in answers]


def _receipts(url: str, hashes: list[str]) -> list[dict[str, Any]]:
    body = [
        {"jsonrpc": "2.0", "id": i, "method": "eth_getTransactionReceipt", "params": [h]}
        for i, h in enumerate(hashes)
    ]
    return [a["result"] for a in sorted(_rpc(url, body), key=lambda a: a["id"])]


def _recipients(n: int, salt: int) -> list[str]:
    """Fresh addresses that look like real ones (20 random-looking bytes: calldata is priced
    per byte, zero bytes cheaper)."""
    return [to_checksum_address(keccak(text=f"bench {salt} {i}")[-20:]) for i in range(1, n + 1)]


def _create_run(db_path: Path, token: str, manifest: list[tuple[str, int]]) -> None:
    conn = connect(db_path, durable=True)
    try:
        with atomic(conn):
            state.insert(
                conn, RUNS,
                {"run_id": "bench", "task_id": "bench", "network": "devnet", "token": token,
                 "slot": "bench", "trigger": "manual",
                 "total_amount": str(sum(a for _, a in manifest)), "decimals": 18,
                 "manifest": json.dumps([{"address": a, "amount": str(v)} for a, v in manifest]),
                 "manifest_hash": "0x" + "00" * 32},
                status="pending", actor="bench",
            )  # fmt: skip
            state.insert_many(
                conn, TRANSFERS,
                [{"transfer_id": f"bench:{i}", "run_id": "bench", "position": i, "address": a,
                  "amount": str(v)} for i, (a, v) in enumerate(manifest)],
                status="pending", actor="bench",
            )  # fmt: skip
    finally:
        conn.close()


async def _pay(settings: EvmPaySettings) -> float:
    """Run the payer until the run is final; seconds taken."""
    db = AsyncDatabase(connect(settings.db_path, durable=True))
    payer = build(settings, "devnet", db=db)
    started = time.monotonic()
    try:
        while True:
            did = await payer.tick()
            row = db.conn.execute(
                "SELECT status FROM distribution_runs WHERE run_id = 'bench'"
            ).fetchone()
            if row[0] in ("completed", "failed"):
                if row[0] != "completed":
                    raise SystemExit(f"the run ended {row[0]}")
                return time.monotonic() - started
            if time.monotonic() - started > 600:
                raise SystemExit("the run did not complete within 600 s")
            if not did:
                await asyncio.sleep(0.05)
    finally:
        await payer.aclose()
        db.conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=1000)
    parser.add_argument("--single", type=int, default=100)
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    with tempfile.TemporaryDirectory() as tmp, Anvil(block_time=1) as anvil:
        work = Path(tmp)
        url = anvil.rpc_url
        admin = Deployer(url, anvil.accounts[0].private_key)
        token = admin.deploy_token()
        multisend = admin.deploy_multisend()
        key_file = work / "source-key.json"
        source = generate_key_file(key_file)
        single = Deployer(url, anvil.accounts[2].private_key)
        admin.fund([(source, 100 * WHOLE)])
        admin.mint(token, [(source, 10**9 * WHOLE), (single.address, 10**9 * WHOLE)])
        manifest = [
            (a, 10**15 * (i % 97 + 1) + i) for i, a in enumerate(_recipients(args.recipients, 11))
        ]
        db_path = work / "bench.db"
        _create_run(db_path, token, manifest)
        settings = EvmPaySettings(
            rpc_urls=[url], confirmations=CONFIRMATIONS, db_path=db_path, dist_key_file=key_file,
            dist_multisend_address=multisend, dist_token_address=token, dist_poll_s=0.2,
        )  # fmt: skip
        seconds = asyncio.run(_pay(settings))

        conn = connect(db_path)
        hashes = [r[0] for r in conn.execute("SELECT tx_hash FROM txs WHERE final_at IS NOT NULL")]
        conn.close()
        batched_gas = sum(int(r["gasUsed"], 16) for r in _receipts(url, hashes))

        # One transfer transaction per recipient, to fresh recipients as well.
        sample = _recipients(args.single, 12)
        sent = [
            single.transact(
                token,
                TRANSFER_SELECTOR + bytes(12) + bytes.fromhex(a[2:]) + (WHOLE).to_bytes(32),
                what="transfer",
            )
            for a in sample
        ]
        single.wait(sent)
        single_gas = [int(r["gasUsed"], 16) for r in _receipts(url, [h.to_0x_hex() for h in sent])]

        # Counted on chain: each recipient's balance and its Transfer logs from the multisend.
        balances = _balances(url, token, [a for a, _ in manifest])
        logs = _rpc(url, {"jsonrpc": "2.0", "id": 1, "method": "eth_getLogs", "params": [
            {"fromBlock": "0x0", "toBlock": "latest", "address": token,
             "topics": [TRANSFER_TOPIC, address_topic(multisend)]}]})["result"]  # fmt: skip
        per = Counter(to_checksum_address("0x" + e["topics"][2][-40:]) for e in logs)
        double = sum(
            1
            for (address, amount), balance in zip(manifest, balances, strict=True)
            if balance != amount or per[address] != 1
        )
    n = len(manifest)
    per_batched = batched_gas / n
    per_single = sum(single_gas) / len(single_gas)
    result = {
        "gas_per_recipient_batched": round(per_batched),
        "gas_per_recipient_single": round(per_single),
        "gas_ratio": round(per_batched / per_single, 3),
        "recipients_per_s": round(n / seconds, 1),
        "double_payments": double,
    }
    print(f"recipients              {n} ({len(hashes)} transactions incl. the approve)")
    print(f"paid in                 {seconds:.1f} s (1-second blocks, FINAL at 2 confirmations)")
    print(f"gas per recipient       batched {per_batched:,.0f}  single {per_single:,.0f}")
    print(json.dumps(result))
    return 0 if double == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
