"""Helpers the indexer tests share: driving a real anvil (requests, fulfilments, mining,
reorgs) and reading the chain's own truth to compare the database with.

Named like the indexer test modules so it sits with them; it holds no tests itself.
Transactions are signed locally with eth-account and sent as raw transactions over plain
JSON-RPC, so the same code can also build the raw transactions ``anvil_reorg`` takes.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from eth_abi.abi import encode as abi_encode
from eth_account import Account
from eth_utils.crypto import keccak

from shared.chain.filters import LogFilter, LogSink
from shared.chain.rpc import RpcClient
from shared.runtime import run_loop
from workers.devnet.deploy import Deployment
from workers.oracle.contracts import REASONING_FULFILLED_TOPIC0, REASONING_REQUESTED_TOPIC0
from workers.oracle.indexer.main import Indexer, open_database, start_when_reachable
from workers.oracle.indexer.settings import IndexerSettings

# Gas for one `ask`: a maximal request (3.8 KB of strings) costs ~150k; headroom for anvil.
ASK_GAS = 1_500_000
# Gas per request inside `askBatch`, plus the transaction's own overhead.
BATCH_GAS_PER_REQUEST = 160_000
BATCH_GAS_BASE = 100_000
# Gas for `fulfillNodeReasoning`: the vault callback gets a 1M cap plus the provider's work.
FULFILL_GAS = 1_500_000
# Seconds a helper waits for a receipt before failing the test.
RECEIPT_TIMEOUT_S = 30.0

MAX_MODEL = "m" * 64
MAX_PROMPT = "p" * 1024
MAX_STATE = "s" * 2048
MAX_ACTIONS = tuple(f"{i}" + "a" * 63 for i in range(10))
UNICODE_PROMPT = "Résumé: 价格 ↑ 🚀 — décide «vite»; ∑ñ"
UNICODE_ACTIONS = ("ACHETER 🟢", "VENDRE 🔴", "保持")


def _selector(signature: str) -> bytes:
    return keccak(text=signature)[:4]


ASK_SELECTOR = _selector("ask(string,string,string,string[])")
ASK_BATCH_SELECTOR = _selector("askBatch(uint256,string,string,string,string[])")
FULFILL_SELECTOR = _selector("fulfillNodeReasoning(uint256,string,string)")
SET_FEE_SELECTOR = _selector("setModelFee(string,uint256)")


@dataclass(frozen=True)
class ChainLog:
    """One of the provider's events as the node itself reports it."""

    kind: str  # "requested" or "fulfilled"
    request_id: int
    block_number: int
    block_hash: str
    data: str
    raw: dict[str, Any]  # as eth_getLogs returned it


class ChainDriver:
    """Sends requests and fulfilments to a deployed stack and reads its logs."""

    def __init__(
        self, rpc_url: str, deployment: Deployment, sender_key: str, *, model: str = ""
    ) -> None:
        self.rpc_url = rpc_url
        self.deployment = deployment
        self.account = Account.from_key(sender_key)
        self.model = model or "hodlai-local"
        self._http = httpx.Client(timeout=60.0)
        self._nonces: dict[str, int] = {}
        self._fees: dict[str, int] = {}

    def close(self) -> None:
        self._http.close()

    # --- raw JSON-RPC -----------------------------------------------------------------------

    def rpc(self, method: str, params: Sequence[Any] = ()) -> Any:
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}
        answer = self._http.post(self.rpc_url, json=body).json()
        if "error" in answer:
            raise RuntimeError(f"{method} failed: {answer['error']}")
        return answer["result"]

    def head(self) -> int:
        return int(self.rpc("eth_blockNumber"), 16)

    def mine(self, blocks: int = 1) -> None:
        self.rpc("anvil_mine", [hex(blocks)])

    def set_automine(self, enabled: bool) -> None:
        self.rpc("evm_setAutomine", [enabled])

    def snapshot(self) -> str:
        return str(self.rpc("evm_snapshot"))

    def revert(self, snapshot_id: str) -> None:
        assert self.rpc("evm_revert", [snapshot_id]) is True
        self._nonces.clear()  # the sender's nonce went back with the state

    def reorg(self, depth: int, raw_txs: Sequence[tuple[str, int]] = ()) -> None:
        """``anvil_reorg``: replace the last ``depth`` blocks; ``raw_txs`` are (tx, offset)."""
        self.rpc("anvil_reorg", [depth, [[tx, offset] for tx, offset in raw_txs]])
        self._nonces.clear()

    # --- transactions -----------------------------------------------------------------------

    def _nonce(self, address: str, explicit: int | None = None) -> int:
        if explicit is not None:
            return explicit
        if address not in self._nonces:
            self._nonces[address] = int(
                self.rpc("eth_getTransactionCount", [address, "pending"]), 16
            )
        nonce = self._nonces[address]
        self._nonces[address] = nonce + 1
        return nonce

    def _sign(
        self, key: Any, to: str, data: bytes, value: int, gas: int, nonce: int | None = None
    ) -> str:
        account = Account.from_key(key)
        tx = {
            "to": to,
            "data": "0x" + data.hex(),
            "value": value,
            "gas": gas,
            "gasPrice": self._gas_price(),
            "nonce": self._nonce(account.address, nonce),
            "chainId": self.deployment.chain_id,
        }
        return "0x" + bytes(account.sign_transaction(tx).raw_transaction).hex()

    def _gas_price(self) -> int:
        # From the base fee, not eth_gasPrice: anvil derives that from recent transactions'
        # prices, so paying a multiple of it would grow exponentially over a test.
        base = int(self.rpc("eth_getBlockByNumber", ["latest", False])["baseFeePerGas"], 16)
        return 2 * base + 10**9

    def send_raw(self, raw_tx: str) -> str:
        return str(self.rpc("eth_sendRawTransaction", [raw_tx]))

    def fee(self, model: str) -> int:
        return self._fees.get(model, int(self.deployment.models.get(model, 0)))

    def signed_ask(
        self,
        state: str,
        *,
        model: str | None = None,
        prompt: str = "Choose.",
        actions: Sequence[str] = ("BUY", "SELL", "HOLD"),
        nonce: int | None = None,
    ) -> str:
        """A signed ``vault.ask`` (``nonce`` given: for a block that replaces another)."""
        chosen = model or self.model
        data = ASK_SELECTOR + abi_encode(
            ["string", "string", "string", "string[]"], [chosen, prompt, state, list(actions)]
        )
        return self._sign(
            self.account.key,
            self.deployment.vault_address,
            data,
            self.fee(chosen),
            ASK_GAS,
            nonce,
        )

    def nonce_at(self, block: int) -> int:
        """The sender's nonce after block ``block``."""
        return int(self.rpc("eth_getTransactionCount", [self.account.address, hex(block)]), 16)

    def set_model_fee(self, admin_key: str, model: str, fee: int) -> None:
        data = SET_FEE_SELECTOR + abi_encode(["string", "uint256"], [model, fee])
        self.wait(
            self.send_raw(self._sign(admin_key, self.deployment.provider_address, data, 0, 500_000))
        )
        self._fees[model] = fee

    def ask(self, state: str, **kwargs: Any) -> str:
        return self.send_raw(self.signed_ask(state, **kwargs))

    def ask_batch(
        self,
        count: int,
        state: str,
        *,
        model: str | None = None,
        prompt: str = "Choose.",
        actions: Sequence[str] = ("BUY", "SELL", "HOLD"),
    ) -> str:
        chosen = model or self.model
        data = ASK_BATCH_SELECTOR + abi_encode(
            ["uint256", "string", "string", "string", "string[]"],
            [count, chosen, prompt, state, list(actions)],
        )
        gas = BATCH_GAS_BASE + BATCH_GAS_PER_REQUEST * count
        raw = self._sign(
            self.account.key,
            self.deployment.vault_address,
            data,
            self.fee(chosen) * count,
            gas,
        )
        return self.send_raw(raw)

    def fulfill(self, oracle_key: Any, request_id: int, action: str, cid: str = "bafy") -> str:
        data = FULFILL_SELECTOR + abi_encode(
            ["uint256", "string", "string"], [request_id, action, cid]
        )
        raw = self._sign(oracle_key, self.deployment.provider_address, data, 0, FULFILL_GAS)
        return self.send_raw(raw)

    def wait(self, tx_hash: str) -> dict[str, Any]:
        deadline = time.monotonic() + RECEIPT_TIMEOUT_S
        while time.monotonic() < deadline:
            receipt = self.rpc("eth_getTransactionReceipt", [tx_hash])
            if receipt is not None:
                assert int(receipt["status"], 16) == 1, f"transaction {tx_hash} reverted"
                return dict(receipt)
            time.sleep(0.01)
        raise TimeoutError(f"no receipt for {tx_hash}")

    # --- the chain's truth ------------------------------------------------------------------

    def logs(self, from_block: int = 0, to_block: int | None = None) -> list[ChainLog]:
        end = self.head() if to_block is None else to_block
        raw = self.rpc(
            "eth_getLogs",
            [
                {
                    "address": self.deployment.provider_address,
                    "fromBlock": hex(from_block),
                    "toBlock": hex(end),
                    "topics": [[REASONING_REQUESTED_TOPIC0, REASONING_FULFILLED_TOPIC0]],
                }
            ],
        )
        return [
            ChainLog(
                kind="requested"
                if entry["topics"][0] == REASONING_REQUESTED_TOPIC0
                else "fulfilled",
                request_id=int(entry["topics"][1], 16),
                block_number=int(entry["blockNumber"], 16),
                block_hash=entry["blockHash"],
                data=entry["data"],
                raw=dict(entry),
            )
            for entry in raw
        ]

    def requested_ids(self, from_block: int = 0) -> set[int]:
        return {entry.request_id for entry in self.logs(from_block) if entry.kind == "requested"}


def stored_requests(conn: sqlite3.Connection) -> dict[int, sqlite3.Row]:
    return {int(row["request_id"]): row for row in conn.execute("SELECT * FROM requests")}


def creations_per_id(conn: sqlite3.Connection) -> dict[int, int]:
    """How many times each request row was created, from the audit trail."""
    return {
        int(row[0]): int(row[1])
        for row in conn.execute(
            "SELECT entity_id, COUNT(*) FROM transitions WHERE from_status IS NULL "
            "GROUP BY entity_id"
        )
    }


def action_set(row: sqlite3.Row) -> tuple[str, ...]:
    return tuple(json.loads(row["action_set"]))


def indexer_settings(
    db_path: Path, rpc_urls: Sequence[str], deployment: Deployment, **overrides: Any
) -> IndexerSettings:
    """Settings for an in-process indexer; no environment or .env file is read."""
    values: dict[str, Any] = {
        "db_path": db_path,
        "rpc_urls": list(rpc_urls),
        "provider_address": deployment.provider_address,
        "start_block": deployment.deploy_block,
        "confirmations": 0,
        "indexer_poll_interval_s": 0.05,
    }
    values.update(overrides)
    return IndexerSettings(_env_file=None, **values)  # type: ignore[call-arg]


async def run_indexer(
    settings: IndexerSettings,
    *,
    until: Callable[[Indexer], bool] | None = None,
    limit_s: float = 60.0,
    rpc_timeout: float = 5.0,
    sinks: Sequence[tuple[LogFilter, LogSink[Any, Any]]] = (),
) -> Indexer:
    """Run a real indexer in this event loop (the production run_loop, with its back-off)
    until ``until(indexer)`` holds after a step (default: caught up). Returns it, closed.
    ``sinks`` are registered on its poller beside the oracle's."""
    db = open_database(settings.db_path)
    rpc = RpcClient(settings.rpc_urls, timeout=rpc_timeout)
    indexer = Indexer(settings, rpc=rpc, db=db)
    for log_filter, sink in sinks:
        indexer.register(log_filter, sink)
    done = until or (lambda ix: ix.caught_up)
    stop = asyncio.Event()

    async def step() -> float:
        delay = await indexer.step()
        if done(indexer):
            stop.set()
        return delay

    try:
        async with asyncio.timeout(limit_s):
            if await start_when_reachable(indexer, stop):
                await run_loop("indexer", step, stop=stop)
    finally:
        await indexer.close()
        await rpc.aclose()
        db.close()
    return indexer


def caught_up_to(block: int) -> Callable[[Indexer], bool]:
    """``until`` for run_indexer: the committed cursor has reached ``block``."""
    return lambda ix: ix.caught_up and ix.anchor.number >= block
