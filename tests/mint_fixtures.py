"""The mint executor on a real anvil: the USDC-like token, a MintToken, the node's key file,
an x402 mint server (the reference one built from x402's own parts, until the node's own
is used), the executor as a process, and the on-chain counts the tests judge by."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from eth_abi.abi import encode as abi_encode
from eth_account import Account
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from shared.contracts import artifact
from shared.db import connect
from shared.tx.authorizations.eip3009 import (
    AUTHORIZATION_USED_TOPIC,
    TRANSFER_TOPIC,
    Kind,
    address_topic,
)
from tests.eip3009_fixtures import Token, deploy_token, rpc, send, sign
from workers.devnet.anvil import Anvil
from workers.mint import store
from workers.mint.keyfile import MintKeys, generate_mint_key_file

ROOT = Path(__file__).resolve().parent.parent
PRICE = 100_000  # 0.1 USDC per mint, the seed's "1 USDC per 10 mints"
PER_MINT = 1000 * 10**18
ZERO_TOPIC = "0x" + "00" * 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(
    url: str, *, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{url}: the process exited with {proc.returncode}")
        try:
            httpx.post(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout} s")


@dataclass
class MintChain:
    anvil: Anvil
    usdc: Token
    token: str
    keys: MintKeys
    key_file: Path
    pay_to: str

    def token_balance(self, holder: str) -> int:
        data = (
            "0x"
            + keccak(text="balanceOf(address)").hex()[:8]
            + abi_encode(["address"], [holder]).hex()
        )
        return int(rpc(self.anvil, "eth_call", [{"to": self.token, "data": data}, "latest"]), 16)

    def mints_to(self, recipient: str) -> list[dict[str, Any]]:
        """Transfers of the minted token from the zero address to ``recipient``."""
        logs: list[dict[str, Any]] = rpc(
            self.anvil, "eth_getLogs",
            [{"address": self.token, "fromBlock": "0x0", "toBlock": "latest",
              "topics": [TRANSFER_TOPIC, ZERO_TOPIC, address_topic(recipient)]}],
        )  # fmt: skip
        return logs

    def uses_by(self, authorizer: str) -> list[dict[str, Any]]:
        logs: list[dict[str, Any]] = rpc(
            self.anvil, "eth_getLogs",
            [{"address": self.usdc.address, "fromBlock": "0x0", "toBlock": "latest",
              "topics": [AUTHORIZATION_USED_TOPIC, address_topic(authorizer)]}],
        )  # fmt: skip
        return logs

    def user(self, index: int) -> tuple[str, str]:
        account = self.anvil.accounts[index]
        return account.address, account.private_key

    def sign_funding(
        self,
        user_key: str,
        to: str,
        value: int,
        *,
        valid_after: int = 0,
        valid_before: int,
        nonce: bytes | None = None,
    ) -> dict[str, Any]:
        """The fund body as a wallet front end builds it (eth-account, outside the node)."""
        nonce = nonce or secrets.token_bytes(32)
        sender = Account.from_key(user_key).address
        message = {
            "from": sender, "to": to, "value": value, "validAfter": valid_after,
            "validBefore": valid_before, "nonce": nonce,
        }  # fmt: skip
        signed = sign(user_key, self.usdc.domain(), Kind.TRANSFER, message)
        return {
            "authorization": {
                "from": sender, "to": to, "value": str(value), "validAfter": valid_after,
                "validBefore": valid_before, "nonce": "0x" + nonce.hex(),
            },
            "signature": "0x" + signed.signature.hex(),
        }  # fmt: skip


def deploy_mint_token(anvil: Anvil, *, max_mints: int = 10_000) -> str:
    owner = anvil.accounts[0].address
    code = (
        artifact("MintToken").bytecode
        + abi_encode(
            ["string", "string", "uint256", "uint256"],
            ["Mint Me", "MINT", PER_MINT, PER_MINT * max_mints],
        ).hex()
    )
    receipt = send(anvil, owner, None, code)
    assert receipt["status"] == "0x1"
    return str(to_checksum_address(receipt["contractAddress"]))


def configure_minter(anvil: Anvil, token: str, minter: str) -> None:
    data = (
        "0x"
        + keccak(text="configureMinter(address,bool)").hex()[:8]
        + abi_encode(["address", "bool"], [minter, True]).hex()
    )
    assert send(anvil, anvil.accounts[0].address, token, data)["status"] == "0x1"


def fund_eth(anvil: Anvil, to: str, ether: int = 10) -> None:
    tx = {"from": anvil.accounts[0].address, "to": to, "value": hex(ether * 10**18)}
    rpc(anvil, "eth_sendTransaction", [tx])


def mint_chain(anvil: Anvil, tmp: Path) -> MintChain:
    usdc = deploy_token(anvil)
    for account in anvil.accounts:
        usdc.mint(account.address, 1_000_000 * 10**6)
    token = deploy_mint_token(anvil)
    key_file = tmp / "private.key"
    keys = generate_mint_key_file(key_file)
    fund_eth(anvil, keys.relayer_address)
    pay_to = Account.create().address
    return MintChain(anvil, usdc, token, keys, key_file, pay_to)


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


def reference_server(
    chain: MintChain, tmp: Path, *, max_timeout_s: int = 60
) -> tuple[str, Process]:
    """The x402-only mint server (tests/x402_reference_server.py) as a process."""
    facilitator = chain.anvil.accounts[8]
    minter = chain.anvil.accounts[9]
    configure_minter(chain.anvil, chain.token, minter.address)
    port = free_port()
    env = {
        **os.environ,
        "REF_RPC_URL": chain.anvil.rpc_url, "REF_CHAIN_ID": str(chain.anvil.chain_id),
        "REF_USDC": chain.usdc.address, "REF_TOKEN": chain.token,
        "REF_FACILITATOR_KEY": facilitator.private_key, "REF_MINTER_KEY": minter.private_key,
        "REF_PAY_TO": chain.pay_to, "REF_PRICE": str(PRICE), "REF_PORT": str(port),
        "REF_MAX_TIMEOUT_S": str(max_timeout_s),
    }  # fmt: skip
    log = tmp / f"reference-{port}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.x402_reference_server"], cwd=ROOT, env=env,
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/mint/{chain.token}", proc=proc)
    return url, Process(proc, log)


@dataclass
class Node:
    """The executor's settings, database and process."""

    chain: MintChain
    server_url: str
    tmp: Path
    extra: dict[str, str] = field(default_factory=dict)
    executor: Process | None = None

    @property
    def db_path(self) -> Path:
        return self.tmp / "node.db"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HODLAI_DB_PATH": str(self.db_path),
            "HODLAI_RPC_URLS": self.chain.anvil.rpc_url,
            "HODLAI_CHAIN_ID": str(self.chain.anvil.chain_id),
            "HODLAI_CONFIRMATIONS": "0",
            "HODLAI_MINT_USDC_ADDRESS": self.chain.usdc.address,
            "HODLAI_MINT_SERVER_URL": self.server_url,
            "HODLAI_MINT_KEY_FILE": str(self.chain.key_file),
            "HODLAI_MINT_CHECK_INTERVAL_S": "0.5",
            "HODLAI_MINT_INTERVAL_S": "0",
            "HODLAI_API_SIWE_CHAIN_IDS": str(self.chain.anvil.chain_id),
            "LOG_LEVEL": "INFO",
            **self.extra,
        }

    def start_executor(self) -> Process:
        log = self.tmp / f"executor-{time.monotonic_ns()}.log"
        proc = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "hodlai"), "mint-executor"], cwd=self.tmp,
            env=self.env(), stdout=log.open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.executor = Process(proc, log)
        return self.executor

    def conn(self) -> sqlite3.Connection:
        return connect(self.db_path, durable=True)

    def create_task(
        self,
        user: str,
        quantity: int,
        *,
        timeout_s: int = 600,
        price: int = PRICE,
        token: str | None = None,
    ) -> store.Task:
        """A task as the chat creates it (the agent wallet derived in the vault)."""
        from shared.keys.vault import Vault

        conn = self.conn()
        try:
            vault = Vault(conn, self.chain.keys.master_key())
            wallet_id, agent = store.ensure_agent_wallet(
                conn, vault.ensure_wallet, user, now=time.time()
            )
            return store.create_task(
                conn,
                store.NewTask(
                    user_address=user, token_address=token or self.chain.token, quantity=quantity,
                    price_per_mint=price, chain_id=self.chain.anvil.chain_id,
                    usdc_address=self.chain.usdc.address, server_url=self.server_url,
                    pay_to=self.chain.pay_to,
                ),
                wallet_id=wallet_id, agent_address=agent, timeout_s=timeout_s, now=time.time(),
            )  # fmt: skip
        finally:
            conn.close()

    def task(self, task_id: str) -> store.Task:
        conn = self.conn()
        try:
            return store.get_task(conn, task_id)
        finally:
            conn.close()

    def wait_task(self, task_id: str, *statuses: str, timeout: float = 60.0) -> store.Task:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            task = self.task(task_id)
            if task.status.value in statuses:
                return task
            if self.executor is not None and self.executor.proc.poll() is not None:
                raise AssertionError("the executor exited:\n" + self.executor.output())
            time.sleep(0.1)
        tail = self.executor.output() if self.executor else ""
        raise AssertionError(f"task {task_id} is {self.task(task_id).status}\n{tail}")


def pay_directly(chain: MintChain, body: dict[str, Any], submitter: int = 7) -> dict[str, Any]:
    """Submit a user's funding authorization from another account (not the node's relayer)."""
    from tests.eip3009_fixtures import payment_calldata

    auth = body["authorization"]
    raw = bytes.fromhex(body["signature"][2:])
    message = {
        "from": auth["from"], "to": auth["to"], "value": int(auth["value"]),
        "validAfter": int(auth["validAfter"]), "validBefore": int(auth["validBefore"]),
        "nonce": bytes.fromhex(auth["nonce"][2:]),
    }  # fmt: skip
    data = payment_calldata(Kind.TRANSFER, message, raw[64], raw[:32], raw[32:64])
    return send(chain.anvil, chain.anvil.accounts[submitter].address, chain.usdc.address, data)


def processes(*procs: Process) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            p.stop()
