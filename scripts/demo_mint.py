"""The mint executor's part of ``make demo`` (issue 20, seeds 000 and 001).

Under the node's one honcho (scripts/demo.py: :func:`prepare`, :func:`env`, :func:`wait`,
:func:`report`), with the devnet's mint part (USDC-like token, a MintToken, ``hodlai
mint-server``) and ``hodlai api``:

1. a chat in Chinese, as the seed's, creates a task for 25 mints (``POST
   /api/ai-agent/chat``, two turns: the quantity, then the token address);
2. the demo signs the funding authorization with eth-account, as a wallet would, and posts
   it (``POST /api/ai-agent/task/{id}/fund``);
3. it shows the task's progress live (``GET /api/ai-agent/task/{id}``);
4. it prints the on-chain token and USDC balances and the task's money account.

It succeeds only if exactly 25 mints landed on chain (Transfers from the zero address to the
user) and the money account adds up (funded = spent on mints + held + refunded, spent = 25 ×
price, and the agent wallet's USDC equals what it holds).
"""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from eth_abi.abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils.crypto import keccak

from shared.tx.authorizations.eip3009 import (
    TRANSFER_TOPIC,
    Kind,
    address_topic,
    eip712_domain,
    typed_data,
)

QUANTITY = 25
# The devnet's user: anvil's default account 1 (test keys, public knowledge); the devnet
# credits it 1,000,000 USDC.
USER_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
TIMEOUT_S = 180.0
ZERO_TOPIC = "0x" + "00" * 32


@dataclass
class MintDemo:
    api_url: str
    rpc_url: str
    usdc: str
    token: str
    pay_to: str
    user: str = field(default_factory=lambda: Account.from_key(USER_KEY).address)
    task: dict[str, Any] | None = None
    mints_before: int = 0
    replies: list[str] = field(default_factory=list)


def prepare(node: Any) -> MintDemo:
    """The demo's view of the devnet (``node.env``: the devnet env file's settings)."""
    settings: dict[str, str] = dict(node.env)
    demo = MintDemo(
        api_url=settings["HODLAI_API_URL"].rstrip("/"),
        rpc_url=str(node.rpc_url),
        usdc=settings["HODLAI_MINT_USDC_ADDRESS"],
        token=settings["HODLAI_MINT_TOKENS"].split(",")[0],
        pay_to=settings["HODLAI_MINT_PAY_TO"],
    )
    demo.mints_before = len(_mints(demo))
    return demo


def env() -> dict[str, str]:
    """The executor's settings for the demo: the seed's batches, a quicker pace."""
    return {
        "HODLAI_MINT_ENABLED": "true",
        "HODLAI_MINT_CHECK_INTERVAL_S": "2",
        "HODLAI_MINT_INTERVAL_S": "1",
        "HODLAI_MINT_MAX_BATCH": "10",
    }


def wait(demo: MintDemo, alive: Callable[[], bool]) -> None:
    """Chat, fund, and show the task's progress live until it ends (or time is up)."""
    with httpx.Client(base_url=demo.api_url, timeout=60) as http:
        _await_api(http, alive)
        for message in ("我想 mint 25 个 token", demo.token):
            answer = _post(http, "/api/ai-agent/chat",
                           {"userAddress": demo.user, "message": message})  # fmt: skip
            print(f"   user: {message}")
            print("   AI:   " + answer["reply"].replace("\n", "\n         "))
            demo.replies.append(answer["reply"])
            demo.task = answer["task"] or demo.task
        if demo.task is None:
            print("   the chat created no task")
            return
        task = demo.task
        body = _sign_funding(demo, task)
        funded = _post(http, f"/api/ai-agent/task/{task['id']}/fund", body)
        print(f"   funding authorization signed with eth-account, posted: {funded['status']}")
        tty = sys.stdout.isatty()
        began = time.monotonic()
        while time.monotonic() - began < TIMEOUT_S and alive():
            task = http.get(f"/api/ai-agent/task/{task['id']}").json()
            line = (
                f"t={time.monotonic() - began:5.1f}s  {task['status']:<16} minted "
                f"{task['mintsCompleted']:>2}/{task['quantity']}  failed attempts "
                f"{task['mintsFailed']}"
            )
            print(("\r" + line) if tty else line, end="" if tty else "\n", flush=True)
            if task["status"] in ("completed", "failed", "cancelled"):
                break
            time.sleep(1.0)
        print()
        demo.task = task


def report(demo: MintDemo) -> bool:
    """The on-chain balances and the money account; True when exactly 25 mints landed and
    the account adds up."""
    task = demo.task
    if task is None:
        print("== mint: no task")
        return False
    mints = len(_mints(demo)) - demo.mints_before
    account = task["account"]
    funded, spent, held, refunded = (
        int(account[k]) for k in ("funded", "spentOnMints", "held", "refunded")
    )
    agent = task["agentAddress"]
    print(f"   token {demo.token}: user {demo.user} holds {_balance(demo, demo.token, demo.user)}"
          f" ({mints} mints landed)")  # fmt: skip
    for who, address in (("user", demo.user), ("agent wallet", agent), ("payTo", demo.pay_to)):
        print(f"   USDC {who:<12} {address}: {_balance(demo, demo.usdc, address) / 1e6:,.6f}")
    print(f"   money account: funded {funded} = spent on mints {spent} + held {held} + "
          f"refunded {refunded} (base units)")  # fmt: skip
    adds_up = funded == spent + held + refunded
    ok = (
        task["status"] == "completed"
        and mints == QUANTITY
        and task["mintsCompleted"] == QUANTITY
        and adds_up
        and spent == QUANTITY * int(task["pricePerMint"])
        and _balance(demo, demo.usdc, agent) >= held
    )
    print(f"== mint: {'exactly 25 mints, the account balances' if ok else 'NOT as expected'}")
    print(f"   try: hodlai mint show {task['id']}")
    return ok


def run(workdir: Path) -> bool:
    """The mint flow alone (``python -m scripts.demo_mint``): ``hodlai devnet``, then ``hodlai
    api``, ``hodlai mint-server`` and ``hodlai mint-executor`` as processes on its database."""
    import shutil
    import signal
    import subprocess

    from scripts.localnode import BIN, LocalNode
    from shared.logs import configure_logging

    shutil.rmtree(workdir, ignore_errors=True)
    configure_logging("WARNING")
    node = LocalNode(workdir, inference_shards=0)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        print("== hodlai devnet: USDC-like token, MintToken, the mint server's keys")
        node.start_chain()
        for command in ("api", "mint-server", "mint-executor"):
            log = (workdir / "logs" / f"{command}.log").open("ab")
            procs.append(subprocess.Popen(
                [str(BIN / "hodlai"), command], stdout=log, stderr=log, cwd=workdir,
                env=node.process_env(**env()),
            ))  # fmt: skip
        demo = prepare(node)
        print(f"== chat with the mint agent at {demo.api_url}")
        wait(demo, lambda: all(p.poll() is None for p in procs))
        return report(demo)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
        if node.devnet is not None and node.devnet.poll() is None:
            node.devnet.send_signal(signal.SIGTERM)
            node.devnet.wait(30)


# --- helpers --------------------------------------------------------------------------------


def _await_api(http: httpx.Client, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and alive():
        try:
            if http.get("/healthz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)


def _post(http: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = http.post(path, json=body)
    if answer.status_code != 200:
        raise RuntimeError(f"POST {path}: {answer.status_code} {answer.text}")
    result: dict[str, Any] = answer.json()
    return result


def _sign_funding(demo: MintDemo, task: dict[str, Any]) -> dict[str, Any]:
    """The user's EIP-3009 TransferWithAuthorization to the agent wallet, as a wallet
    signs it (eth-account), under the token's own EIP-712 domain read from the chain."""
    from datetime import datetime

    name = _string(demo, demo.usdc, "name()")
    version = _string(demo, demo.usdc, "version()")
    chain_id = int(_rpc(demo, "eth_chainId", []), 16)
    deadline = int(
        datetime.fromisoformat(task["paymentDeadline"].replace("Z", "+00:00")).timestamp()
    )
    nonce = secrets.token_bytes(32)
    message = {
        "from": demo.user, "to": task["agentAddress"], "value": int(task["totalCost"]),
        "validAfter": 0, "validBefore": deadline, "nonce": nonce,
    }  # fmt: skip
    domain = eip712_domain(name=name, version=version, chain_id=chain_id, token=demo.usdc)
    signed = Account.sign_message(
        encode_typed_data(full_message=typed_data(Kind.TRANSFER, domain, message)), USER_KEY
    )
    return {
        "authorization": {
            "from": demo.user, "to": task["agentAddress"], "value": task["totalCost"],
            "validAfter": 0, "validBefore": deadline, "nonce": "0x" + nonce.hex(),
        },
        "signature": "0x" + bytes(signed.signature).hex(),
    }  # fmt: skip


def _rpc(demo: MintDemo, method: str, params: list[Any]) -> Any:
    answer = httpx.post(
        demo.rpc_url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
        timeout=30,
    ).json()  # fmt: skip
    return answer["result"]


def _call(demo: MintDemo, to: str, signature: str, types: list[str], args: list[Any]) -> str:
    data = "0x" + keccak(text=signature).hex()[:8] + abi_encode(types, args).hex()
    return str(_rpc(demo, "eth_call", [{"to": to, "data": data}, "latest"]))


def _balance(demo: MintDemo, token: str, holder: str) -> int:
    return int(_call(demo, token, "balanceOf(address)", ["address"], [holder]), 16)


def _string(demo: MintDemo, token: str, signature: str) -> str:
    from eth_abi.abi import decode

    raw = bytes.fromhex(_call(demo, token, signature, [], [])[2:])
    return str(decode(["string"], raw)[0])


def _mints(demo: MintDemo) -> list[Any]:
    logs: list[Any] = _rpc(
        demo, "eth_getLogs",
        [{"address": demo.token, "fromBlock": "0x0", "toBlock": "latest",
          "topics": [TRANSFER_TOPIC, ZERO_TOPIC, address_topic(demo.user)]}],
    )  # fmt: skip
    return logs


if __name__ == "__main__":
    sys.exit(0 if run(Path(__file__).resolve().parent.parent / ".devnet" / "demo-mint") else 1)
