"""A whole node on this machine: ``hodlai devnet`` plus the node's processes.

Used by ``make demo`` (scripts/demo.py), the end-to-end benchmark and the chaos test, so
that all three start, feed, watch and stop the node the same way. Everything is a real OS
process talking over loopback HTTP: anvil, the indexer, the inference shards, the
fulfiller. Requests are submitted through the example vault from anvil's unlocked dev
accounts (``eth_sendTransaction``), as a vault owner would.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from dotenv import dotenv_values
from eth_abi.abi import decode as abi_decode
from web3 import HTTPProvider, Web3

from shared.contracts import artifact
from workers.oracle.contracts import REASONING_FULFILLED_TOPIC0, REASONING_REQUESTED_TOPIC0

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# Fees for ask transactions: far above anvil's base fee even while the fulfiller fills blocks
# (web3's defaults fall below it under load and anvil drops such transactions).
ASK_FEES = {"maxFeePerGas": 50 * 10**9, "maxPriorityFeePerGas": 10**9}
# Seconds to wait for `hodlai devnet` to deploy; anvil starts in ~50 ms, deploying ~1-2 s.
DEVNET_READY_TIMEOUT_S = 60.0
# Seconds a stopped process gets to finish or release its work before SIGKILL.
STOP_GRACE_S = 15.0


@dataclass(frozen=True)
class Ask:
    """One request a vault makes."""

    state: str
    actions: tuple[str, ...] = ("BUY", "SELL", "HOLD")
    prompt: str = "You manage a BNB treasury vault. Pick the action that protects holders."
    model: str = "hodlai-local"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the devnet's env file gives it to hodlai api)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalNode:
    workdir: Path
    block_time: float | None = None
    inference_shards: int = 2
    env_overrides: dict[str, str] = field(default_factory=dict)
    devnet: subprocess.Popen[bytes] | None = None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    ready: dict[str, Any] = field(default_factory=dict)

    # ---- chain --------------------------------------------------------------------------

    def start_chain(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        ready_file = self.workdir / "ready.json"
        argv = [str(BIN / "hodlai"), "devnet", "--state-dir", str(self.workdir),
                "--ready-file", str(ready_file), "--api-port", str(free_port())]  # fmt: skip
        if self.block_time is not None:
            argv += ["--block-time", str(self.block_time)]
        log = (self.workdir / "logs" / "devnet.log").open("ab")
        self.devnet = subprocess.Popen(argv, stdout=log, stderr=log, cwd=ROOT)
        deadline = time.monotonic() + DEVNET_READY_TIMEOUT_S
        while not ready_file.exists():
            if self.devnet.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"hodlai devnet did not come up; see {self.workdir / 'logs' / 'devnet.log'}"
                )
            time.sleep(0.05)
        self.ready = json.loads(ready_file.read_text())
        values = dotenv_values(self.ready["env_file"])
        self.env = {k: v for k, v in values.items() if v is not None}
        # The devnet's env file starts the embedded model (what a newcomer gets); benchmarks
        # and tests of the node's machinery want the deterministic backend unless they say
        # otherwise (the demo and the replay tests ask for the model in env_overrides).
        self.env["HODLAI_LLM_BACKEND"] = "local"
        self.env.update(self.env_overrides)
        self.env["HODLAI_WORKER_COUNT"] = str(self.inference_shards)

    @property
    def rpc_url(self) -> str:
        return str(self.ready["rpc_url"])

    @property
    def db_path(self) -> Path:
        return Path(self.env["HODLAI_DB_PATH"])

    def process_env(self, **extra: str) -> dict[str, str]:
        env = {**os.environ, **self.env, **extra}
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        return env

    # ---- node processes -------------------------------------------------------------------

    def commands(self) -> dict[str, list[str]]:
        hodlai = str(BIN / "hodlai")
        cmds = {"indexer": [hodlai, "indexer"], "fulfiller": [hodlai, "fulfiller"]}
        for shard in range(self.inference_shards):
            cmds[f"inference{shard}"] = [hodlai, "inference", "--worker-id", str(shard),
                                         "--worker-count", str(self.inference_shards)]  # fmt: skip
        return cmds

    def start(self, name: str) -> subprocess.Popen[bytes]:
        log = (self.workdir / "logs" / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            self.commands()[name], stdout=log, stderr=log, env=self.process_env(), cwd=ROOT
        )
        self.processes[name] = proc
        return proc

    def start_all(self) -> None:
        for name in self.commands():
            self.start(name)

    def kill(self, name: str) -> None:
        """SIGKILL, as a crash would: no chance to release anything."""
        proc = self.processes[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    def stop(self, name: str) -> int | None:
        proc = self.processes[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def stop_all(self) -> dict[str, int | None]:
        codes = {name: self.stop(name) for name in list(self.processes)}
        if self.devnet is not None and self.devnet.poll() is None:
            self.devnet.send_signal(signal.SIGTERM)
            try:
                self.devnet.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.devnet.kill()
                self.devnet.wait()
        return codes

    def __enter__(self) -> LocalNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    # ---- the vault side -------------------------------------------------------------------

    def web3(self) -> Web3:
        return Web3(HTTPProvider(self.rpc_url, request_kwargs={"timeout": 30}))

    def submit(self, asks: Sequence[Ask], *, sender_index: int = 2) -> list[int]:
        """Send each ask through the example vault and return the request ids, in order."""
        return [request_id for request_id, _ in self.submit_timed(asks, sender_index=sender_index)]

    def submit_timed(
        self, asks: Sequence[Ask], *, sender_index: int = 2
    ) -> list[tuple[int, float]]:
        """Like submit; each id comes with the perf_counter time its send returned."""
        w3 = self.web3()
        sender = list(w3.eth.accounts)[sender_index]
        deployment = self.ready["deployment"]
        provider = w3.eth.contract(address=deployment["provider_address"],
                                   abi=artifact("HoldAIProvider").abi)  # fmt: skip
        vault = w3.eth.contract(address=deployment["vault_address"],
                                abi=artifact("ExampleDecisionVault").abi)  # fmt: skip
        fees = {model: provider.functions.getModelFee(model).call()
                for model in {ask.model for ask in asks}}  # fmt: skip
        sent = []
        for ask in asks:
            call = vault.functions.ask(ask.model, ask.prompt, ask.state, list(ask.actions))
            params = {"from": sender, "value": fees[ask.model], "gas": 1_500_000, **ASK_FEES}
            sent.append((call.transact(params), time.perf_counter()))
        out = []
        topic = REASONING_REQUESTED_TOPIC0.removeprefix("0x")
        for tx_hash, at in sent:
            receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120, poll_latency=0.05)
            if receipt["status"] != 1:
                raise RuntimeError(f"ask transaction {tx_hash.hex()} reverted")
            out += [(int.from_bytes(log["topics"][1], "big"), at) for log in receipt["logs"]
                    if log["topics"][0].hex().removeprefix("0x") == topic]  # fmt: skip
        return out

    def decisions(self, request_ids: Iterable[int]) -> dict[int, tuple[str, str, int]]:
        """What the vault recorded: id -> (action, cid, times delivered)."""
        w3 = self.web3()
        vault = w3.eth.contract(address=self.ready["deployment"]["vault_address"],
                                abi=artifact("ExampleDecisionVault").abi)  # fmt: skip
        out = {}
        for request_id in request_ids:
            action, cid, received = vault.functions.decisionOf(request_id).call()
            deliveries = vault.functions.deliveriesOf(request_id).call()
            if received:
                out[request_id] = (action, cid, deliveries)
        return out

    def fulfilled_events(self) -> list[tuple[int, str, int]]:
        """Every HoldAI_ReasoningFulfilled on chain: (request id, action, block)."""
        body = {
            "jsonrpc": "2.0", "id": 1, "method": "eth_getLogs",
            "params": [{"address": self.ready["deployment"]["provider_address"],
                        "fromBlock": "0x0", "toBlock": "latest",
                        "topics": [REASONING_FULFILLED_TOPIC0]}],
        }  # fmt: skip
        logs = httpx.post(self.rpc_url, json=body, timeout=60).json()["result"]
        out = []
        for log in logs:
            action, _cid = abi_decode(["string", "string"], bytes.fromhex(log["data"][2:]))
            out.append((int(log["topics"][1], 16), action, int(log["blockNumber"], 16)))
        return out
