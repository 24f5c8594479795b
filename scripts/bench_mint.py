"""Benchmark of the mint executor (issue 20, "Measure"): ``python -m scripts.bench_mint``.

On a fresh anvil with the devnet's mint part (USDC-like token, MintToken, ``hodlai
mint-server``), ``hodlai mint-executor`` processes, with ``HODLAI_MINT_INTERVAL_S=0``:

1. **sequential**: one task of ``SEQUENTIAL_MINTS`` mints bought one at a time
   (``HODLAI_MINT_MAX_BATCH=1``): its mints per second, and each purchase's round trip
   (payment row recorded → mint answered);
2. **direct**: the same number of ``mint(to)`` calls sent straight to the token by a minter
   (no x402, no settle): the x402 overhead per mint is the mean purchase round trip minus the
   mean direct round trip;
3. **concurrent**: 20 tasks of 50 mints at once (``HODLAI_MINT_MAX_BATCH=10``): mints per
   second from the first purchase to the last.

Afterwards every agent wallet's ``AuthorizationUsed`` logs are counted against the mints
that landed for its user: a surplus is a double payment. The last line is the JSON object
``{"mints_per_s", "sequential_mints_per_s", "x402_overhead_ms", "double_payments"}``; the
target is mints_per_s ≥ 5 × sequential_mints_per_s with 0 double payments
(docs/BENCHMARKS.md).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from eth_abi.abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils.crypto import keccak

from shared.db import connect
from shared.keys.vault import Vault
from shared.logs import configure_logging
from shared.tx.authorizations.eip3009 import (
    AUTHORIZATION_USED_TOPIC,
    TRANSFER_TOPIC,
    TRANSFER_WITH_AUTHORIZATION_SELECTOR,
    Kind,
    address_topic,
    eip712_domain,
    encode_call,
    typed_data,
)
from workers.devnet.anvil import Anvil
from workers.devnet.parts import DevAccountKey, DevnetChain
from workers.mint import store
from workers.mint.devnet import setup
from workers.mint.keyfile import load_mint_keys

ROOT = Path(__file__).resolve().parent.parent
HODLAI = str(ROOT / ".venv" / "bin" / "hodlai") if (ROOT / ".venv").exists() else "hodlai"
TASKS, PER_TASK = int(os.environ.get("BENCH_MINT_TASKS", "20")), 50
SEQUENTIAL_MINTS = int(os.environ.get("BENCH_MINT_SEQUENTIAL", "20"))
PRICE = 1_000_000
ZERO_TOPIC = "0x" + "00" * 32


def rpc(url: str, method: str, params: list[Any]) -> Any:
    answer = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method,
                                   "params": params}, timeout=60).json()  # fmt: skip
    if "error" in answer:
        raise RuntimeError(f"{method}: {answer['error']}")
    return answer["result"]


def send(url: str, sender: str, to: str, data: str) -> dict[str, Any]:
    tx_hash = rpc(url, "eth_sendTransaction", [{"from": sender, "to": to, "data": data}])
    while True:
        receipt = rpc(url, "eth_getTransactionReceipt", [tx_hash])
        if receipt is not None:
            return dict(receipt)
        time.sleep(0.005)


def call(url: str, to: str, signature: str, types: list[str], args: list[Any]) -> str:
    data = "0x" + keccak(text=signature).hex()[:8] + abi_encode(types, args).hex()
    return str(rpc(url, "eth_call", [{"to": to, "data": data}, "latest"]))


def logs(url: str, address: str, topics: list[Any]) -> list[Any]:
    found: list[Any] = rpc(
        url,
        "eth_getLogs",
        [{"address": address, "fromBlock": "0x0", "toBlock": "latest", "topics": topics}],
    )
    return found


class Bench:
    def __init__(self, anvil: Anvil, workdir: Path) -> None:
        self.anvil = anvil
        self.url = anvil.rpc_url
        self.workdir = workdir
        chain = DevnetChain(
            rpc_url=anvil.rpc_url, chain_id=anvil.chain_id, state_dir=workdir / "state",
            db_path=workdir / "node.db",
            accounts=tuple(DevAccountKey(a.address, a.private_key) for a in anvil.accounts),
        )  # fmt: skip
        self.part = setup(chain)
        self.settings = {s.name: s.value for s in self.part.settings}
        self.usdc = self.settings["HODLAI_MINT_USDC_ADDRESS"]
        self.token = self.settings["HODLAI_MINT_TOKENS"].split(",")[0]
        self.keys = load_mint_keys(self.settings["HODLAI_MINT_KEY_FILE"])
        self.funder = anvil.accounts[2]
        self.procs: list[subprocess.Popen[bytes]] = []

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HODLAI_")}
        env |= self.settings
        env |= {
            "HODLAI_DB_PATH": str(self.workdir / "node.db"), "HODLAI_RPC_URLS": self.url,
            "HODLAI_CHAIN_ID": str(self.anvil.chain_id), "HODLAI_CONFIRMATIONS": "0",
            "HODLAI_LOCK_DIR": str(self.workdir / "locks"),
            "HODLAI_MINT_SERVER_PRICE_PER_MINT": str(PRICE), "HODLAI_MINT_INTERVAL_S": "0",
            "HODLAI_MINT_CHECK_INTERVAL_S": "0.5", "LOG_LEVEL": "WARNING",
        }  # fmt: skip
        return env | extra

    def start(self, command: str, **extra: str) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{command}.log").open("ab")
        proc = subprocess.Popen([HODLAI, command], env=self.env(**extra), cwd=self.workdir,
                                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()

    def wait_server(self) -> None:
        url = self.settings["HODLAI_MINT_SERVER_URL"] + "/healthz"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the mint server did not listen")

    def task(self, quantity: int) -> store.Task:
        """A funded task for a fresh user: created as the chat does, funded by another
        account's EIP-3009 authorization submitted directly (it counts the same)."""
        user = Account.create().address
        conn = connect(self.workdir / "node.db", durable=True)
        try:
            vault = Vault(conn, self.keys.master_key())
            wallet_id, agent = store.ensure_agent_wallet(conn, vault.ensure_wallet, user,
                                                         now=time.time())  # fmt: skip
            task = store.create_task(
                conn, store.NewTask(
                    user_address=user, token_address=self.token, quantity=quantity,
                    price_per_mint=PRICE, chain_id=self.anvil.chain_id, usdc_address=self.usdc,
                    server_url=self.settings["HODLAI_MINT_SERVER_URL"],
                    pay_to=self.settings["HODLAI_MINT_PAY_TO"],
                ), wallet_id=wallet_id, agent_address=agent, timeout_s=3600, now=time.time(),
            )  # fmt: skip
        finally:
            conn.close()
        name = self._string("name()")
        version = self._string("version()")
        nonce = secrets.token_bytes(32)
        message = {
            "from": self.funder.address,
            "to": agent,
            "value": task.total_cost,
            "validAfter": 0,
            "validBefore": task.payment_deadline,
            "nonce": nonce,
        }
        domain = eip712_domain(name=name, version=version, chain_id=self.anvil.chain_id,
                               token=self.usdc)  # fmt: skip
        signed = Account.sign_message(
            encode_typed_data(full_message=typed_data(Kind.TRANSFER, domain, message)),
            self.funder.private_key,
        )
        args = [message[k] for k in ("from", "to", "value", "validAfter", "validBefore", "nonce")]
        data = encode_call(
            TRANSFER_WITH_AUTHORIZATION_SELECTOR,
            ["address", "address", "uint256", "uint256", "uint256", "bytes32", "uint8",
             "bytes32", "bytes32"],
            [*args, signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")],
        )  # fmt: skip
        assert send(self.url, self.anvil.accounts[7].address, self.usdc, data)["status"] == "0x1"
        return task

    def _string(self, signature: str) -> str:
        from eth_abi.abi import decode

        return str(decode(["string"], bytes.fromhex(call(self.url, self.usdc, signature, [],
                                                          [])[2:]))[0])  # fmt: skip

    def wait_done(self, ids: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            view = sqlite3.connect(f"file:{self.workdir / 'node.db'}?mode=ro", uri=True)
            try:
                marks = ",".join("?" * len(ids))
                done = view.execute(
                    f"SELECT COUNT(*) FROM ai_agent_tasks WHERE id IN ({marks})"
                    " AND status IN ('completed', 'failed')",
                    ids,
                ).fetchone()[0]
            finally:
                view.close()
            if sys.stdout.isatty():
                print(f"\r   {done}/{len(ids)} tasks done", end="", flush=True)
            if done == len(ids):
                print(f"\r   {done}/{len(ids)} tasks done")
                return
            time.sleep(0.5)
        raise RuntimeError("the tasks did not finish in time")

    def purchases(self, ids: list[str]) -> list[tuple[float, float]]:
        """(recorded, minted) times of the minted payments of these tasks."""
        view = sqlite3.connect(f"file:{self.workdir / 'node.db'}?mode=ro", uri=True)
        try:
            marks = ",".join("?" * len(ids))
            rows = view.execute(
                f"SELECT created_at, updated_at FROM mint_payments WHERE"
                f" task_id IN ({marks}) AND status = 'minted'",
                ids,
            ).fetchall()
        finally:
            view.close()
        return [(float(a), float(b)) for a, b in rows]

    def double_payments(self, tasks: list[store.Task]) -> int:
        surplus = 0
        for task in tasks:
            uses = logs(self.url, self.usdc, [AUTHORIZATION_USED_TOPIC,
                                              address_topic(task.agent_address)])  # fmt: skip
            mints = logs(self.url, self.token, [TRANSFER_TOPIC, ZERO_TOPIC,
                                                address_topic(task.user_address)])  # fmt: skip
            surplus += max(0, len(uses) - len(mints))
        return surplus

    def direct_mints(self, n: int) -> float:
        """Mean ms of a direct mint(to) by a minter (no x402): send and receipt."""
        owner = self.anvil.accounts[0].address
        minter = self.anvil.accounts[9].address
        data = "0x" + keccak(text="configureMinter(address,bool)").hex()[:8] + abi_encode(
            ["address", "bool"], [minter, True]).hex()  # fmt: skip
        send(self.url, owner, self.token, data)
        times = []
        for _ in range(n):
            target = Account.create().address
            data = "0x" + keccak(text="mint(address)").hex()[:8] + abi_encode(
                ["address"], [target]).hex()  # fmt: skip
            began = time.perf_counter()
            assert send(self.url, minter, self.token, data)["status"] == "0x1"
            times.append((time.perf_counter() - began) * 1000)
        return statistics.mean(times)


def main() -> int:
    configure_logging("WARNING")
    with tempfile.TemporaryDirectory(prefix="bench-mint-") as tmp, Anvil() as anvil:
        bench = Bench(anvil, Path(tmp))
        server = bench.start("mint-server")
        try:
            bench.wait_server()
            print(f"== sequential: one task of {SEQUENTIAL_MINTS} mints, one at a time")
            one = bench.task(SEQUENTIAL_MINTS)
            executor = bench.start("mint-executor", HODLAI_MINT_MAX_BATCH="1")
            bench.wait_done([one.id], 600)
            bench.stop(executor)
            sequential = bench.purchases([one.id])
            span = max(b for _, b in sequential) - min(a for a, _ in sequential)
            sequential_rate = len(sequential) / span
            round_trip = statistics.mean((b - a) * 1000 for a, b in sequential)
            direct = bench.direct_mints(SEQUENTIAL_MINTS)
            print(f"   {sequential_rate:.2f} mints/s; purchase round trip {round_trip:.0f} ms,"
                  f" direct mint {direct:.0f} ms")  # fmt: skip
            print(f"== concurrent: {TASKS} tasks of {PER_TASK} mints at once")
            tasks = [bench.task(PER_TASK) for _ in range(TASKS)]
            executor = bench.start("mint-executor", HODLAI_MINT_MAX_BATCH="10",
                                   HODLAI_MINT_CONCURRENCY="50")  # fmt: skip
            bench.wait_done([t.id for t in tasks], 1800)
            bench.stop(executor)
            bought = bench.purchases([t.id for t in tasks])
            span = max(b for _, b in bought) - min(a for a, _ in bought)
            rate = len(bought) / span
            doubles = bench.double_payments([one, *tasks])
            print(
                f"   {len(bought)} mints in {span:.1f} s: {rate:.2f} mints/s "
                f"({rate / sequential_rate:.1f}x sequential); double payments {doubles}"
            )
        finally:
            for proc in bench.procs:
                bench.stop(proc)
            bench.stop(server)
    print(json.dumps({
        "mints_per_s": round(rate, 2), "sequential_mints_per_s": round(sequential_rate, 2),
        "x402_overhead_ms": round(round_trip - direct, 1), "double_payments": doubles,
    }))  # fmt: skip
    return 0 if doubles == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
