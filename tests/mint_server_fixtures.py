"""A real ``hodlai mint-server`` on a real anvil, as a subprocess, with the devnet's mint part
deploying its contracts and keys; x402's own client to buy from it; chain reads to count."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_abi.abi import encode as abi_encode
from eth_account import Account
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from x402 import x402Client
from x402.extensions.payment_identifier import (
    PAYMENT_IDENTIFIER,
    append_payment_identifier_to_extensions,
)
from x402.http.clients import x402_httpx_transport
from x402.mechanisms.evm.exact import register_exact_evm_client
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.schemas import PaymentPayload, PaymentRequired

from shared.contracts import artifact
from shared.tx.authorizations.eip3009 import AUTHORIZATION_USED_TOPIC, TRANSFER_TOPIC
from workers.devnet.anvil import Anvil
from workers.devnet.parts import DevAccountKey, DevnetChain, DevnetPart
from workers.mint.devnet import setup

ROOT = Path(__file__).resolve().parent.parent
PRICE = 2_500_000  # 2.5 USDC per mint
START_LIMIT_S = 30.0


def rpc(anvil: Anvil, method: str, params: list[Any]) -> Any:
    answer = httpx.post(
        anvil.rpc_url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
        timeout=30,
    ).json()  # fmt: skip
    assert "error" not in answer, answer
    return answer["result"]


def view(anvil: Anvil, to: str, signature: str, types: list[str] | None = None,
         args: list[Any] | None = None) -> int:  # fmt: skip
    data = keccak(text=signature)[:4] + (abi_encode(types, args or []) if types else b"")
    return int(rpc(anvil, "eth_call", [{"to": to, "data": "0x" + data.hex()}, "latest"]), 16)


def logs(anvil: Anvil, address: str, topic0: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = rpc(
        anvil, "eth_getLogs",
        [{"address": address, "fromBlock": "0x0", "toBlock": "latest", "topics": [topic0]}],
    )  # fmt: skip
    return found


@dataclass
class MintDevnet:
    anvil: Anvil
    part: DevnetPart
    tmp: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def settings(self) -> dict[str, str]:
        return {s.name: s.value for s in self.part.settings}

    @property
    def url(self) -> str:
        return self.settings["HODLAI_MINT_SERVER_URL"]

    @property
    def usdc(self) -> str:
        return self.settings["HODLAI_MINT_USDC_ADDRESS"]

    @property
    def token(self) -> str:
        return self.settings["HODLAI_MINT_TOKENS"].split(",")[0]

    @property
    def pay_to(self) -> str:
        return self.settings["HODLAI_MINT_PAY_TO"]

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HODLAI_")}
        env |= self.settings
        env |= {
            "HODLAI_DB_PATH": str(self.tmp / "mint.db"),
            "HODLAI_RPC_URLS": self.anvil.rpc_url,
            "HODLAI_LOCK_DIR": str(self.tmp / "locks"),
            "HODLAI_MINT_SERVER_PRICE_PER_MINT": str(PRICE),
            "HODLAI_MINT_SERVER_SETTLE_TIMEOUT_S": "30",
            "LOG_LEVEL": "INFO",
        }
        return env | extra

    def start(self, **extra: str) -> subprocess.Popen[bytes]:
        """Start the server; return once it listens (or fail with its log)."""
        log = open(self.tmp / "server.log", "ab")  # noqa: SIM115 -- the process keeps it
        process = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "mint-server"], env=self.env(**extra),
            cwd=self.tmp, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.processes.append(process)
        deadline = time.monotonic() + START_LIMIT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"mint-server exited {process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return process
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        pytest.fail(f"mint-server did not listen in time:\n{self.log()}")

    def log(self) -> str:
        path = self.tmp / "server.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    # --- on chain -------------------------------------------------------------------------

    def usdc_balance(self, who: str) -> int:
        return view(self.anvil, self.usdc, "balanceOf(address)", ["address"], [who])

    def token_balance(self, who: str) -> int:
        return view(self.anvil, self.token, "balanceOf(address)", ["address"], [who])

    def mints(self) -> list[dict[str, Any]]:
        """Transfers of the MintToken from the zero address."""
        return [
            entry
            for entry in logs(self.anvil, self.token, TRANSFER_TOPIC)
            if int(entry["topics"][1], 16) == 0
        ]

    def authorizations_used(self) -> list[dict[str, Any]]:
        return logs(self.anvil, self.usdc, AUTHORIZATION_USED_TOPIC)

    def tokens_per_mint(self) -> int:
        return view(self.anvil, self.token, "tokensPerMint()")


@pytest.fixture
def mint_devnet(tmp_path: Path) -> Iterator[MintDevnet]:
    with Anvil() as anvil:
        chain = DevnetChain(
            rpc_url=anvil.rpc_url,
            chain_id=anvil.chain_id,
            state_dir=tmp_path / "state",
            db_path=tmp_path / "mint.db",
            accounts=tuple(DevAccountKey(a.address, a.private_key) for a in anvil.accounts),
        )
        devnet = MintDevnet(anvil, setup(chain), tmp_path)
        try:
            yield devnet
        finally:
            devnet.stop()


class FixedPaymentId:
    """A client extension (x402's ClientExtension protocol) that attaches a chosen payment
    identifier, so a test can present the same identifier twice."""

    key = PAYMENT_IDENTIFIER

    def __init__(self, payment_id: str) -> None:
        self.payment_id = payment_id

    def enrich_payment_payload(
        self, payment_payload: PaymentPayload, payment_required: PaymentRequired
    ) -> PaymentPayload:
        extensions = dict(payment_required.extensions or {})
        append_payment_identifier_to_extensions(extensions, self.payment_id)
        return payment_payload.model_copy(update={"extensions": extensions})


class Recorder(httpx.AsyncBaseTransport):
    """The real transport, keeping every request's headers (to replay a payment)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.sent: list[httpx.Headers] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request.headers)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def payment_header(self) -> str:
        for headers in reversed(self.sent):
            if "payment-signature" in headers:
                return headers["payment-signature"]
        raise AssertionError("no paid request was sent")


def buyer(devnet: MintDevnet, account: int, payment_id: str) -> tuple[x402Client, Recorder]:
    """x402's own client for anvil account ``account``: its exact EVM scheme, its spend
    controls allowing our USDC (it refuses unknown money by default), our payment id."""
    client = x402Client()
    register_exact_evm_client(
        client, EthAccountSigner(Account.from_key(devnet.anvil.accounts[account].private_key))
    )
    client.set_spend_controls(
        {"allowed_assets": [{"network": f"eip155:{devnet.anvil.chain_id}", "asset": devnet.usdc,
                             "max_amount_per_payment": str(PRICE)}]}
    )  # fmt: skip
    client.register_extension(FixedPaymentId(payment_id))  # type: ignore[arg-type]
    return client, Recorder()


async def buy(devnet: MintDevnet, account: int, payment_id: str, *, to: str | None = None,
              token: str | None = None) -> tuple[httpx.Response, Recorder]:  # fmt: skip
    client, recorder = buyer(devnet, account, payment_id)
    query = "" if to is None else f"?to={to}"
    async with httpx.AsyncClient(
        transport=x402_httpx_transport(client, recorder), timeout=60
    ) as http:
        response = await http.post(f"{devnet.url}/mint/{token or devnet.token}{query}")
    return response, recorder


def deploy_small_token(devnet: MintDevnet, *, mints: int, minter: str) -> str:
    """Another MintToken, of ``mints`` mints at most, ``minter`` holding the role (anvil's
    account 0 deploys it, unlocked)."""
    owner = devnet.anvil.accounts[0].address
    code = (
        artifact("MintToken").bytecode
        + abi_encode(
            ["string", "string", "uint256", "uint256"], ["Small", "SML", 10**18, mints * 10**18]
        ).hex()
    )
    receipt = _send(devnet.anvil, owner, None, code)
    token = str(to_checksum_address(receipt["contractAddress"]))
    grant = keccak(text="configureMinter(address,bool)")[:4] + abi_encode(
        ["address", "bool"], [minter, True]
    )
    assert _send(devnet.anvil, owner, token, "0x" + grant.hex())["status"] == "0x1"
    return token


def _send(anvil: Anvil, sender: str, to: str | None, data: str) -> dict[str, Any]:
    tx: dict[str, Any] = {"from": sender, "data": data}
    if to is not None:
        tx["to"] = to
    tx_hash = rpc(anvil, "eth_sendTransaction", [tx])
    for _ in range(200):
        receipt = rpc(anvil, "eth_getTransactionReceipt", [tx_hash])
        if receipt is not None:
            result: dict[str, Any] = receipt
            return result
        time.sleep(0.05)
    raise AssertionError(f"no receipt for {tx_hash}")
