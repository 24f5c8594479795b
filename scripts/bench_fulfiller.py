"""Benchmark: fulfilments per second with one oracle key, pipelined vs sequential.

Anvil mines a block every second (``--block-time 1``, shaped like a real chain; auto-mine is
unreliable under floods, FACTS.md) with BSC's 140M block gas limit. Each repetition asks for
fresh requests through the example vault, stores them as ANSWERED rows in a fresh database,
and runs the real fulfiller (simulate, sign, record durably, broadcast, poll receipts) in
process until every transaction it sent is mined:

- sequential: window 1, i.e. send one fulfilment and wait for its receipt before the next;
- pipelined: the default window of 64 unconfirmed nonces.

Fulfilments/s = requests / (time from the first step until the last receipt is recorded).
The median over the repetitions is reported, and each fulfilled request is checked to have
exactly one fulfilment event on chain.

``--lagging`` runs the pipelined fulfiller once more per repetition through the test suite's
load-balancer-like proxy (tests/rpc_proxy.py): half of the HTTP requests answered from a view
5 blocks behind, and 30 % of the other requests' batch entries too. It counts, from the
ledger and the chain: ``own_dropped`` (our transactions marked DROPPED or REPLACED although
they mined), ``reverted_sends``, ``wrong_answers`` (fulfilment events whose action is not
the stored answer) and ``sends_per_fulfilment`` (signed transactions per fulfilled request;
target <= 1.05).

    .venv/bin/python scripts/bench_fulfiller.py [--requests 640] [--sequential 8] [--reps 3]
        [--lagging]

Last line: {"pipelined_tps": ..., "sequential_tps": ..., "ratio": ..., and with --lagging
"lagging_tps", "own_dropped", "reverted_sends", "wrong_answers", "sends_per_fulfilment"}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_account import Account
from eth_utils.crypto import keccak

from shared.chain.rpc import RpcClient
from shared.db import AsyncDatabase, atomic, connect
from shared.errors import HodlaiError
from shared.keys import generate_key_file, load_private_key
from shared.logs import configure_logging
from shared.tx.fees import FeePolicy
from shared.tx.manager import TxManager, TxPolicy
from shared.tx.senders import claim_sender
from shared.tx.signer import LocalSigner
from shared.tx.simulation import GasRule
from tests.rpc_proxy import RpcProxy
from workers.devnet.anvil import Anvil
from workers.devnet.deploy import Deployment, deploy_stack
from workers.oracle import store
from workers.oracle.contracts import REASONING_FULFILLED_TOPIC0
from workers.oracle.fulfiller.purpose import FULFIL_PURPOSE, FulfilmentPurpose
from workers.oracle.fulfiller.worker import FulfillerConfig, FulfillerWorker
from workers.oracle.store import NewRequest, Status

GWEI = 10**9
BLOCK_TIME_S = 1
# BSC's block gas limit (2025); anvil's default 30M would cap the chain, not the fulfiller.
BLOCK_GAS_LIMIT = 140_000_000
# Requests per askBatch transaction (~160k gas each; 100 fit a block many times over).
ASK_BATCH = 100
ACTIONS = ("BUY", "SELL", "HOLD")
# Seconds one run may take before the benchmark gives up.
RUN_TIMEOUT_S = 600.0
# Blocks the lagging proxy's stale view trails the chain by (--lagging).
LAG_BLOCKS = 5
ASK_BATCH_SELECTOR = keccak(text="askBatch(uint256,string,string,string,string[])")[:4]


@dataclass
class Stack:
    node: Anvil
    deployment: Deployment
    key_file: Path
    admin_key: str


def rpc(url: str, method: str, params: list[Any]) -> Any:
    answer = httpx.post(
        url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}, timeout=60
    ).json()
    if "error" in answer:
        raise RuntimeError(f"{method}: {answer['error']}")
    return answer["result"]


def ask(stack: Stack, count: int) -> list[int]:
    """``count`` new requests from the example vault; their ids (mined before returning)."""
    url = stack.node.rpc_url
    admin = Account.from_key(stack.admin_key)
    fee = stack.deployment.models["hodlai-local"]
    next_id_call = {
        "to": stack.deployment.provider_address,
        "data": "0x" + keccak(text="nextRequestId()")[:4].hex(),
    }
    first = int(rpc(url, "eth_call", [next_id_call, "latest"]), 16)
    nonce = int(rpc(url, "eth_getTransactionCount", [admin.address, "pending"]), 16)
    hashes = []
    for start in range(0, count, ASK_BATCH):
        n = min(ASK_BATCH, count - start)
        data = ASK_BATCH_SELECTOR + abi_encode(
            ["uint256", "string", "string", "string", "string[]"],
            [n, "hodlai-local", "Choose.", f"bench state {start}", list(ACTIONS)],
        )
        signed = admin.sign_transaction(
            {"type": 2, "chainId": stack.deployment.chain_id, "nonce": nonce,
             "to": stack.deployment.vault_address, "value": fee * n, "data": data,
             "gas": 200_000 * n + 100_000,
             "maxFeePerGas": 50 * GWEI, "maxPriorityFeePerGas": 2 * GWEI}
        )  # fmt: skip
        hashes.append(
            rpc(url, "eth_sendRawTransaction", ["0x" + bytes(signed.raw_transaction).hex()])
        )
        nonce += 1
    for tx_hash in hashes:
        while (receipt := rpc(url, "eth_getTransactionReceipt", [tx_hash])) is None:
            time.sleep(0.1)
        assert receipt["status"] == "0x1", receipt
    return list(range(first, first + count))


def store_answered(db: Path, ids: list[int], requester: str) -> None:
    conn = connect(db)
    now = time.time()
    with atomic(conn):
        for i, request_id in enumerate(ids):
            store.insert_request(
                conn,
                NewRequest(
                    request_id=request_id, requester=requester, model="hodlai-local",
                    system_prompt="Choose.", state_string="bench", action_set=ACTIONS,
                    content_hash="0x" + keccak(text=f"bench{request_id}").hex(),
                    block_number=i // ASK_BATCH + 1, block_hash="0x" + "00" * 32,
                    tx_hash="0x" + "00" * 32, log_index=i % ASK_BATCH,
                ),
                actor="bench",
            )  # fmt: skip
            store.transition(
                conn, request_id, Status.PENDING, Status.ANSWERED, actor="bench", now=now,
                set_columns={"answer_action": ACTIONS[request_id % 3],
                             "answer_cid": "bafkreibenchmarkcid", "answered_at": now},
            )  # fmt: skip
    conn.close()


async def fulfil(
    stack: Stack, db: Path, ids: list[int], window: int, rpc_url: str | None = None
) -> float:
    """Run the fulfiller until every request's transaction is mined; seconds taken."""
    fees = FeePolicy(max_fee_per_gas=100 * GWEI, max_priority_fee_per_gas=5 * GWEI)
    signer = LocalSigner(load_private_key(stack.key_file), chain_id=stack.deployment.chain_id)
    adb = AsyncDatabase(connect(db, durable=True))
    client = RpcClient([rpc_url or stack.node.rpc_url])
    manager = TxManager(
        db=adb,
        rpc=client,
        signer=signer,
        policy=TxPolicy(fees=fees, window=window),
        handlers={FULFIL_PURPOSE: FulfilmentPurpose()},
        claim=claim_sender(db, adb.conn, signer.address, owner="bench", chain_id=signer.chain_id),
    )
    worker = FulfillerWorker(
        db=adb,
        rpc=client,
        manager=manager,
        config=FulfillerConfig(
            provider=stack.deployment.provider_address, batch=32,
            gas=GasRule(margin_percent=25, cap=3_000_000), fees=fees, min_balance_wei=10**16,
            poll_s=0.05, checks_s=30.0, lease_s=60.0, recheck_s=30.0,
        ),
    )  # fmt: skip
    keys = [str(i) for i in ids]
    marks = ",".join("?" * len(keys))

    def mined(conn: Any) -> int:
        return int(
            conn.execute(
                f"SELECT COUNT(DISTINCT subject) FROM txs WHERE status = 'MINED' "
                f"AND subject IN ({marks})",
                keys,
            ).fetchone()[0]
        )

    started = time.perf_counter()
    try:
        while await adb.run(mined) < len(ids):
            if time.perf_counter() - started > RUN_TIMEOUT_S:
                raise RuntimeError(f"window {window}: not all fulfilled in {RUN_TIMEOUT_S} s")
            try:
                delay = await worker.step()
            except HodlaiError:  # as the process's run loop: back off and go on
                delay = 0.5
            if delay:
                await asyncio.sleep(delay)
        return time.perf_counter() - started
    finally:
        await manager.close()
        await client.aclose()
        adb.close()


def fulfilled_events(stack: Stack) -> list[tuple[int, str]]:
    """(request id, result action) of every fulfilment event on chain."""
    logs = rpc(
        stack.node.rpc_url,
        "eth_getLogs",
        [{"address": stack.deployment.provider_address, "fromBlock": "0x0", "toBlock": "latest",
          "topics": [REASONING_FULFILLED_TOPIC0]}],
    )  # fmt: skip
    out = []
    for entry in logs:
        action, _ = abi_decode(["string", "string"], bytes.fromhex(entry["data"][2:]))
        out.append((int(entry["topics"][1], 16), str(action)))
    return out


def check_exactly_once(stack: Stack, ids: list[int]) -> None:
    counts = Counter(request_id for request_id, _ in fulfilled_events(stack))
    wrong = [i for i in ids if counts[i] != 1]
    if wrong:
        raise RuntimeError(f"{len(wrong)} requests not fulfilled exactly once: {wrong[:5]}")


def lagging_verdicts(stack: Stack, db: Path, ids: list[int]) -> dict[str, int]:
    """What the ledger and the chain say about a lagging run (see the module docstring)."""
    conn = connect(db)
    rows = conn.execute("SELECT purpose, subject, tx_hash, status FROM txs").fetchall()
    answers = dict(conn.execute("SELECT request_id, answer_action FROM requests").fetchall())
    conn.close()
    own_dropped = 0
    for row in rows:
        if row["status"] in ("DROPPED", "REPLACED"):
            receipt = rpc(stack.node.rpc_url, "eth_getTransactionReceipt", [row["tx_hash"]])
            own_dropped += receipt is not None
    wanted = {str(i) for i in ids}
    events = [(str(r), a) for r, a in fulfilled_events(stack) if str(r) in wanted]
    return {
        "own_dropped": own_dropped,
        "reverted_sends": sum(1 for r in rows if r["status"] == "REVERTED"),
        "wrong_answers": sum(
            1 for request_id, action in events if answers.get(request_id) != action
        ),
        "signed": len(rows),
        "fulfilled": len({request_id for request_id, _ in events}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=640, help="per pipelined run")
    parser.add_argument("--sequential", type=int, default=8, help="per sequential run")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--lagging", action="store_true", help="also run through a lagging proxy")
    args = parser.parse_args()
    configure_logging("WARNING", json=True)

    seq_rates: list[float] = []
    pipe_rates: list[float] = []
    lag_rates: list[float] = []
    verdicts: Counter[str] = Counter()
    with (
        tempfile.TemporaryDirectory(prefix="bench-fulfiller-") as tmp,
        Anvil(block_time=BLOCK_TIME_S, gas_limit=BLOCK_GAS_LIMIT) as node,
    ):
        key_file = Path(tmp) / "oracle.json"
        oracle = generate_key_file(key_file)
        admin_key = node.accounts[0].private_key
        deployment = deploy_stack(
            node.rpc_url, admin_key, oracle_address=oracle, fund_wei=1_000 * 10**18
        )
        stack = Stack(node, deployment, key_file, admin_key)
        for rep in range(args.reps):
            for label, count, window, rates in (
                ("sequential", args.sequential, 1, seq_rates),
                ("pipelined", args.requests, args.window, pipe_rates),
            ):
                ids = ask(stack, count)
                db = Path(tmp) / f"{label}-{rep}.db"
                store_answered(db, ids, deployment.vault_address)
                seconds = asyncio.run(fulfil(stack, db, ids, window))
                check_exactly_once(stack, ids)
                rates.append(count / seconds)
                print(
                    f"rep {rep + 1}: {label:<10} window {window:>3}: {count:>4} fulfilments "
                    f"in {seconds:6.2f} s = {count / seconds:7.2f} /s"
                )
            if args.lagging:
                ids = ask(stack, args.requests)
                db = Path(tmp) / f"lagging-{rep}.db"
                store_answered(db, ids, deployment.vault_address)
                with RpcProxy(
                    node.rpc_url, lag=LAG_BLOCKS, stale_fraction=0.5, split_fraction=0.3,
                    seed=rep + 1,
                ) as proxy:  # fmt: skip
                    seconds = asyncio.run(fulfil(stack, db, ids, args.window, proxy.url))
                check_exactly_once(stack, ids)
                lag_rates.append(args.requests / seconds)
                verdicts.update(lagging_verdicts(stack, db, ids))
                print(
                    f"rep {rep + 1}: lagging    window {args.window:>3}: {args.requests:>4} "
                    f"fulfilments in {seconds:6.2f} s = {args.requests / seconds:7.2f} /s "
                    f"({dict(verdicts)})"
                )
    sequential = statistics.median(seq_rates)
    pipelined = statistics.median(pipe_rates)
    result: dict[str, Any] = {
        "pipelined_tps": round(pipelined, 2),
        "sequential_tps": round(sequential, 2),
        "ratio": round(pipelined / sequential, 1),
        "block_time_s": BLOCK_TIME_S,
        "window": args.window,
        "requests": args.requests,
        "reps": args.reps,
    }
    if args.lagging:
        result |= {
            "lagging_tps": round(statistics.median(lag_rates), 2),
            "own_dropped": verdicts["own_dropped"],
            "reverted_sends": verdicts["reverted_sends"],
            "wrong_answers": verdicts["wrong_answers"],
            "sends_per_fulfilment": round(verdicts["signed"] / max(1, verdicts["fulfilled"]), 3),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
