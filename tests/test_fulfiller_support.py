"""Helpers the fulfiller and transaction-manager tests share: driving a deployed stack on a
real anvil (requests, test vaults, mining control, balances) and building a fulfiller that
runs in-process against it, or as a real ``hodlai fulfiller`` process.

Named like the fulfiller test modules so it sits with them; it holds no tests itself.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from eth_abi.abi import encode as abi_encode
from web3 import Web3
from web3.contract import Contract

from shared.chain.rpc import RpcClient
from shared.contracts import PROJECT_ROOT, artifact
from shared.db import AsyncDatabase, connect
from shared.keys import load_private_key
from shared.tx.fees import FeePolicy
from shared.tx.manager import TxManager, TxPolicy
from shared.tx.senders import claim_sender
from shared.tx.signer import LocalSigner
from shared.tx.simulation import GasRule
from tests.chain_fixtures import DeployedStack
from tests.conftest import make_request
from workers.oracle import store
from workers.oracle.contracts import (
    ORACLE_ROLE,
    REASONING_FULFILLED_TOPIC0,
    REASONING_REQUESTED_TOPIC0,
)
from workers.oracle.fulfiller.provider import spend_policy
from workers.oracle.fulfiller.purpose import FULFIL_PURPOSE, FulfilmentPurpose
from workers.oracle.fulfiller.worker import FulfillerConfig, FulfillerWorker
from workers.oracle.store import Status

GWEI = 10**9
# Seconds a test waits for the fulfiller to reach an expected state before failing.
WAIT_S = 30.0
ACTIONS = ("BUY", "SELL", "HOLD")
CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
HODLAI = str(PROJECT_ROOT / ".venv" / "bin" / "hodlai")


class Chain:
    """The deployed provider and vaults on anvil, driven through its unlocked dev accounts."""

    def __init__(self, stack: DeployedStack) -> None:
        self.stack = stack
        self.deployment = stack.deployment
        self.w3 = Web3(Web3.HTTPProvider(stack.rpc_url, request_kwargs={"timeout": 60}))
        self.admin = stack.deployment.admin
        self.provider = self.w3.eth.contract(
            address=stack.deployment.provider_address, abi=artifact("HoldAIProvider").abi
        )
        self.vault = self.contract("ExampleDecisionVault", stack.deployment.vault_address)
        self.fee = int(self.provider.functions.getModelFee("hodlai-local").call())

    def rpc(self, method: str, params: Sequence[Any] = ()) -> Any:
        answer = self.w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
        if "error" in answer:
            raise RuntimeError(f"{method} failed: {answer['error']}")
        return answer["result"]

    def contract(self, name: str, address: str) -> Contract:
        return self.w3.eth.contract(
            address=Web3.to_checksum_address(address), abi=artifact(name).abi
        )

    def deploy_vault(self, name: str) -> Contract:
        """Deploy one of the test vaults (constructor: the provider address)."""
        art = artifact(name)
        data = art.bytecode + abi_encode(["address"], [self.deployment.provider_address]).hex()
        tx = self.w3.eth.send_transaction({"from": self.admin, "data": data, "gas": 5_000_000})
        receipt = self.w3.eth.wait_for_transaction_receipt(tx, timeout=WAIT_S)
        address = receipt["contractAddress"]
        assert address is not None
        return self.contract(name, address)

    def ask(
        self,
        count: int,
        *,
        vault: Contract | None = None,
        state: str = "price=1.00",
        actions: Sequence[str] = ACTIONS,
        wait: bool = True,
    ) -> list[int]:
        """``count`` requests from ``vault`` in one transaction; their ids."""
        target = vault or self.vault
        first = int(self.provider.functions.nextRequestId().call())
        tx = target.functions.askBatch(count, "hodlai-local", "Choose.", state, list(actions))
        tx_hash = tx.transact(
            {"from": self.admin, "value": self.fee * count, "gas": 30_000_000 // 2}
        )
        if wait:
            receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=WAIT_S)
            assert receipt["status"] == 1
        return list(range(first, first + count))

    def fulfilled_counts(self) -> Counter[int]:
        """How many HoldAI_ReasoningFulfilled events each request id has on chain."""
        logs = self.rpc(
            "eth_getLogs",
            [
                {
                    "address": self.deployment.provider_address,
                    "fromBlock": "0x0",
                    "toBlock": "latest",
                    "topics": [REASONING_FULFILLED_TOPIC0],
                }
            ],
        )
        return Counter(int(entry["topics"][1], 16) for entry in logs)

    def requested_ids(self) -> list[int]:
        logs = self.rpc(
            "eth_getLogs",
            [
                {
                    "address": self.deployment.provider_address,
                    "fromBlock": "0x0",
                    "toBlock": "latest",
                    "topics": [REASONING_REQUESTED_TOPIC0],
                }
            ],
        )
        return [int(entry["topics"][1], 16) for entry in logs]

    def request_blocks(self) -> dict[int, tuple[int, str]]:
        """request id -> (block number, block hash) of its HoldAI_ReasoningRequested log."""
        logs = self.rpc(
            "eth_getLogs",
            [
                {
                    "address": self.deployment.provider_address,
                    "fromBlock": "0x0",
                    "toBlock": "latest",
                    "topics": [REASONING_REQUESTED_TOPIC0],
                }
            ],
        )
        return {
            int(e["topics"][1], 16): (int(e["blockNumber"], 16), str(e["blockHash"]).lower())
            for e in logs
        }

    def deliveries(self, request_id: int, vault: Contract | None = None) -> int:
        return int((vault or self.vault).functions.deliveriesOf(request_id).call())

    def nonce(self, address: str, tag: str = "latest") -> int:
        return int(self.rpc("eth_getTransactionCount", [address, tag]), 16)

    def balance(self, address: str) -> int:
        return int(self.rpc("eth_getBalance", [address, "latest"]), 16)

    def set_balance(self, address: str, wei: int) -> None:
        self.rpc("anvil_setBalance", [address, hex(wei)])

    def automine(self, enabled: bool) -> None:
        self.rpc("evm_setAutomine", [enabled])

    def mine(self, blocks: int = 1) -> None:
        self.rpc("anvil_mine", [hex(blocks)])

    def grant_oracle(self, address: str) -> None:
        tx = self.provider.functions.grantRole(ORACLE_ROLE, address).transact({"from": self.admin})
        self.w3.eth.wait_for_transaction_receipt(tx, timeout=WAIT_S)

    def revoke_oracle(self, address: str) -> None:
        tx = self.provider.functions.revokeRole(ORACLE_ROLE, address).transact({"from": self.admin})
        self.w3.eth.wait_for_transaction_receipt(tx, timeout=WAIT_S)


def answer(
    conn: Any,
    request_ids: Sequence[int],
    *,
    requester: str,
    action: str = "BUY",
    actions: Sequence[str] = ACTIONS,
    chain: Chain | None = None,
) -> None:
    """Store the given on-chain requests as ANSWERED rows (as indexer + inference would).
    With ``chain``, each row carries the block number and hash of its request's log, as the
    indexer stores them (the fulfiller simulates at or above that block, and a transaction a
    reorg took out is only re-sent while that block is still on the chain)."""
    placed = chain.request_blocks() if chain is not None else {}
    for request_id in request_ids:
        request = make_request(request_id, requester=requester, action_set=tuple(actions))
        if request_id in placed:
            number, block_hash = placed[request_id]
            request = replace(request, block_number=number, block_hash=block_hash)
        else:
            request = replace(request, block_number=0)
        assert store.insert_request(conn, request, actor="test")
        store.transition(
            conn, request_id, Status.PENDING, Status.ANSWERED, actor="test",
            set_columns={
                "answer_action": action, "answer_cid": CID, "reasoning": "{}",
                "answered_at": time.time(),
            },
        )  # fmt: skip


def statuses(conn: Any, request_ids: Sequence[int]) -> dict[int, str]:
    out = {}
    for request_id in request_ids:
        row = store.get_request(conn, request_id)
        out[request_id] = "MISSING" if row is None else str(row["status"])
    return out


def fail_reason(conn: Any, request_id: int) -> str:
    row = store.get_request(conn, request_id)
    assert row is not None
    return str(row["fail_reason"])


def tx_rows(conn: Any) -> list[dict[str, Any]]:
    # The ledger names a fulfilment's subject generically; here it is the request it answers.
    return [
        dict(r)
        for r in conn.execute(
            "SELECT *, subject AS request_id, version AS generation, fingerprint AS content_hash"
            " FROM txs ORDER BY id"
        )
    ]


TEST_CONFIG = FulfillerConfig(
    provider="",
    batch=32,
    gas=GasRule(margin_percent=25, cap=3_000_000),
    fees=FeePolicy(max_fee_per_gas=100 * GWEI, max_priority_fee_per_gas=5 * GWEI),
    min_balance_wei=10**16,
    poll_s=0.05,
    checks_s=30.0,
    lease_s=60.0,
    recheck_s=30.0,
)
TEST_POLICY = TxPolicy(
    fees=TEST_CONFIG.fees,
    window=64,
    stuck_after_s=30.0,
    rebroadcast_after_s=5.0,
    confirmations=3,
    absent_after_s=0.3,  # seconds: the tests' chains mine on demand, no backend lags
)


@dataclass
class Fulfiller:
    """An in-process fulfiller on its own connection, stepped by the test."""

    worker: FulfillerWorker
    manager: TxManager
    db: AsyncDatabase
    rpc: RpcClient
    oracle: str

    async def step(self) -> float:
        return await self.worker.step()

    async def run_until(
        self, done: Callable[[], bool | Awaitable[bool]], *, within_s: float = WAIT_S
    ) -> int:
        """Step until ``done()`` holds; returns the number of steps."""
        deadline = time.monotonic() + within_s
        steps = 0
        while True:
            result = done()
            if not isinstance(result, bool):
                result = await result
            if result:
                return steps
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not reached after {steps} steps")
            delay = await self.worker.step()
            steps += 1
            await asyncio.sleep(min(delay, 0.05))

    async def close(self) -> None:
        await self.manager.close()
        await self.rpc.aclose()
        self.db.close()


def make_fulfiller(
    stack: DeployedStack,
    db_path: Path,
    *,
    policy: TxPolicy = TEST_POLICY,
    clock: Callable[[], float] = time.time,
    rpc_url: str | None = None,
    **config: Any,
) -> Fulfiller:
    """``rpc_url``: talk to the chain through this URL (a proxy) instead of anvil's own."""
    key = load_private_key(stack.oracle_key_file)
    signer = LocalSigner(key, chain_id=stack.deployment.chain_id)
    db = AsyncDatabase(connect(db_path, durable=True))
    rpc = RpcClient([rpc_url or stack.rpc_url])
    manager = TxManager(
        db=db,
        rpc=rpc,
        signer=signer,
        policy=policy,
        handlers={FULFIL_PURPOSE: FulfilmentPurpose()},
        claim=claim_sender(
            db_path, db.conn, signer.address, owner="test fulfiller", chain_id=signer.chain_id
        ),
        clock=clock,
        spend_policy=spend_policy(stack.deployment.provider_address),
    )
    worker = FulfillerWorker(
        db=db,
        rpc=rpc,
        manager=manager,
        config=replace(TEST_CONFIG, provider=stack.deployment.provider_address, **config),
        clock=clock,
    )
    return Fulfiller(worker=worker, manager=manager, db=db, rpc=rpc, oracle=signer.address)


def fulfiller_env(stack: DeployedStack, db_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a real ``hodlai fulfiller`` process for this stack."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HODLAI_")}
    env.update(
        {
            "HODLAI_DB_PATH": str(db_path),
            "HODLAI_RPC_URLS": stack.rpc_url,
            "HODLAI_PROVIDER_ADDRESS": stack.deployment.provider_address,
            "HODLAI_CHAIN_ID": str(stack.deployment.chain_id),
            "HODLAI_KEY_FILE": str(stack.oracle_key_file),
            "HODLAI_FULFILLER_POLL_S": "0.05",
            "LOG_LEVEL": "INFO",
        }
    )
    env.update(extra)
    return env


def start_fulfiller(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``hodlai fulfiller``; its output goes to ``log_path`` (appended)."""
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            [HODLAI, "fulfiller"],
            env=env,
            cwd=str(log_path.parent),  # keep the project's .env (if any) out of the test
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def indexer_env(
    stack: DeployedStack, db_path: Path, *, rpc_url: str | None = None, confirmations: int = 3
) -> dict[str, str]:
    """The environment of a real ``hodlai indexer`` process for this stack."""
    return {
        "PATH": os.environ.get("PATH", ""),
        "HODLAI_DB_PATH": str(db_path),
        "HODLAI_RPC_URLS": rpc_url or stack.rpc_url,
        "HODLAI_PROVIDER_ADDRESS": stack.deployment.provider_address,
        "HODLAI_START_BLOCK": str(stack.deployment.deploy_block),
        "HODLAI_CONFIRMATIONS": str(confirmations),
        "HODLAI_INDEXER_POLL_INTERVAL_S": "0.2",
        "LOG_LEVEL": "WARNING",
    }


def start_indexer(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``hodlai indexer``; its output goes to ``log_path``."""
    with open(log_path, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "indexer"],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=log_path.parent,
        )  # fmt: skip


def answer_pending(conn: Any, choose: Callable[[tuple[str, ...]], str] | None = None) -> int:
    """Stand in for inference: PENDING -> ANSWERED with ``choose(action_set)`` (the first
    permitted action by default). Returns how many rows it answered."""
    claimed = store.claim(conn, owner="answerer", limit=500)
    for row in claimed:
        action = choose(row.action_set) if choose else row.action_set[0]
        store.transition(
            conn, row.request_id, Status.PENDING, Status.ANSWERED, actor="answerer",
            lease_owner="answerer", generation=row.generation,
            set_columns={"answer_action": action, "answer_cid": CID, "reasoning": "{}",
                         "answered_at": time.time()},
        )  # fmt: skip
    return len(claimed)


async def step_like_the_loop(fulfiller: Fulfiller) -> None:
    """One fulfiller step as the process's run loop takes it: an error is logged, backed off
    from and survived, not raised."""
    try:
        delay = await fulfiller.step()
    except Exception:
        delay = 0.5
    await asyncio.sleep(min(delay, 0.05))


class ManualClock:
    """Wall-clock time plus an offset the test moves forward (leases, stuck timers)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds
