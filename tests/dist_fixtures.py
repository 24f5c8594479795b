"""Real anvil, real SQLite: a distribution token, the multisend and a funded source key, runs
written as the frame writes them (one transaction: the run and one pending transfer per
recipient), and the EVM payer driven until its runs are final. Everything is counted on
chain: balances and the token's Transfer logs."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from eth_utils.address import to_checksum_address

from shared import state
from shared.db import AsyncDatabase, atomic, connect
from shared.keys import generate_key_file
from workers.devnet.anvil import Anvil
from workers.distribution.evm.contracts import TRANSFER_TOPIC, address_topic, decode_uint
from workers.distribution.evm.deploy import Deployer
from workers.distribution.evm.payer import EvmPayer
from workers.distribution.evm.settings import EvmPaySettings
from workers.distribution.machine import RUNS, TRANSFERS

WHOLE = 10**18
CONFIRMATIONS = 2


@dataclass
class DistChain:
    anvil: Anvil
    admin: Deployer
    token: str
    multisend: str
    source: str
    key_file: Path
    db_path: Path

    def settings(self, **overrides: Any) -> EvmPaySettings:
        base: dict[str, Any] = {
            "rpc_urls": [self.anvil.rpc_url],
            "confirmations": CONFIRMATIONS,
            "db_path": self.db_path,
            "dist_key_file": self.key_file,
            "dist_multisend_address": self.multisend,
            "dist_token_address": self.token,
            "dist_poll_s": 0.2,
        }
        return EvmPaySettings(**{**base, **overrides})

    def env(self, **extra: str) -> dict[str, str]:
        """The settings as a subprocess's environment."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("HODLAI_")}
        env.update(
            HODLAI_RPC_URLS=self.anvil.rpc_url, HODLAI_CONFIRMATIONS=str(CONFIRMATIONS),
            HODLAI_DB_PATH=str(self.db_path), HODLAI_DIST_KEY_FILE=str(self.key_file),
            HODLAI_DIST_MULTISEND_ADDRESS=self.multisend, HODLAI_DIST_TOKEN_ADDRESS=self.token,
            HODLAI_DIST_POLL_S="0.2", **extra,
        )  # fmt: skip
        return env

    def rpc(self, method: str, params: list[Any]) -> Any:
        answer = httpx.post(
            self.anvil.rpc_url,
            json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
            timeout=30,
        ).json()
        assert "error" not in answer, answer
        return answer["result"]

    def balances(self, owners: Sequence[str], token: str | None = None) -> list[int]:
        """Token balances of ``owners`` at the latest block, in one batch request."""
        body = [
            {"jsonrpc": "2.0", "id": i, "method": "eth_call",
             "params": [{"to": token or self.token,
                         "data": "0x70a08231" + "00" * 12 + o.lower().removeprefix("0x")},
                        "latest"]}
            for i, o in enumerate(owners)
        ]  # fmt: skip
        answers = sorted(httpx.post(self.anvil.rpc_url, json=body, timeout=60).json(),
                         key=lambda a: a["id"])  # fmt: skip
        assert all("error" not in a for a in answers), answers
        return [decode_uint(a["result"]) for a in answers]

    def balance(self, owner: str, token: str | None = None) -> int:
        data = "0x70a08231" + "00" * 12 + owner.lower().removeprefix("0x")
        raw = self.rpc("eth_call", [{"to": token or self.token, "data": data}, "latest"])
        return decode_uint(raw)

    def transfer_logs(self, token: str | None = None) -> Counter[tuple[str, int]]:
        """(recipient, value) -> Transfer logs on chain (all blocks) paying a recipient from the
        source, directly or through the multisend."""
        payers = [address_topic(self.source), address_topic(self.multisend)]
        logs = self.rpc(
            "eth_getLogs",
            [{"fromBlock": "0x0", "toBlock": "latest", "address": token or self.token,
              "topics": [TRANSFER_TOPIC, payers]}],
        )  # fmt: skip
        found: Counter[tuple[str, int]] = Counter()
        for entry in logs:
            to = to_checksum_address("0x" + entry["topics"][2][-40:])
            if to != self.multisend:
                found[(to, int(entry["data"], 16))] += 1
        return found


def dist_chain(anvil: Anvil, tmp_path: Path, *, tokens: int = 10**7) -> DistChain:
    """A DistToken and a multisend; a fresh source key (0600) with ``tokens`` whole tokens
    and 100 ether."""
    admin = Deployer(anvil.rpc_url, anvil.accounts[0].private_key)
    token = admin.deploy_token()
    multisend = admin.deploy_multisend()
    key_file = tmp_path / "source-key.json"
    source = generate_key_file(key_file)
    admin.fund([(source, 100 * WHOLE)])
    if tokens:
        admin.mint(token, [(source, tokens * WHOLE)])
    return DistChain(anvil, admin, token, multisend, source, key_file, tmp_path / "dist.db")


def recipients(n: int, salt: int = 7) -> list[str]:
    return [to_checksum_address(f"0x{salt:04x}{i:036x}") for i in range(1, n + 1)]


def create_run(
    conn: sqlite3.Connection,
    run_id: str,
    token: str,
    manifest: Sequence[tuple[str, int]],
    *,
    network: str = "devnet",
) -> None:
    """A run ``pending`` with its manifest and one pending transfer per recipient, in one
    transaction (as the frame creates them)."""
    total = sum(a for _, a in manifest)
    with atomic(conn):
        state.insert(
            conn, RUNS,
            {"run_id": run_id, "task_id": f"task-{run_id}", "network": network, "token": token,
             "slot": f"2026-12-07T00:00:00.000Z/{run_id}", "trigger": "manual",
             "total_amount": str(total), "decimals": 18,
             "manifest": json.dumps([{"address": a, "amount": str(v)} for a, v in manifest]),
             "manifest_hash": "0x" + "00" * 32},
            status="pending", actor="test",
        )  # fmt: skip
        state.insert_many(
            conn, TRANSFERS,
            [{"transfer_id": f"{run_id}:{i}", "run_id": run_id, "position": i, "address": a,
              "amount": str(v)} for i, (a, v) in enumerate(manifest)],
            status="pending", actor="test",
        )  # fmt: skip


def open_db(path: Path) -> AsyncDatabase:
    return AsyncDatabase(connect(path, durable=True))


def run_status(path: Path, run_id: str) -> tuple[str, str | None]:
    conn = connect(path)
    try:
        row = conn.execute(
            "SELECT status, reason FROM distribution_runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        return str(row[0]), row[1]
    finally:
        conn.close()


def transfers(path: Path, run_id: str) -> list[sqlite3.Row]:
    conn = connect(path)
    try:
        return conn.execute(
            "SELECT * FROM distribution_transfers WHERE run_id = ? ORDER BY position", (run_id,)
        ).fetchall()
    finally:
        conn.close()


async def pay_until(
    payer: EvmPayer, db_path: Path, run_id: str, *, until: Sequence[str] = ("completed", "failed"),
    within: float = 60.0,
) -> str:  # fmt: skip
    """Tick ``payer`` until the run's status is one of ``until``; returns it."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        did = await payer.tick()
        status, _ = run_status(db_path, run_id)
        if status in until:
            return status
        if not did:
            await asyncio.sleep(0.1)
    raise AssertionError(f"run {run_id} is {run_status(db_path, run_id)} after {within}s")
