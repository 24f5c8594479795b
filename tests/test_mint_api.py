"""The mint routes of ``hodlai api`` and ``hodlai mint-executor`` as processes on one database
and a real anvil, buying from the x402-only reference server: funding checks (each refusal a
400 with its reason, nothing recorded or sent), idempotent funding, the relayer's
submission, cancel/retry with SIWE, the payment timeout and a funding just before it."""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from siwe import SiweMessage

from tests.mint_fixtures import PRICE, MintChain, Node, Process, mint_chain, reference_server
from tests.test_api import TOKEN_A, Api, _start, _tokens_file
from workers.devnet.anvil import Anvil
from workers.mint.executor import timeout_message


@dataclass
class Stack:
    chain: MintChain
    node: Node
    api: Api
    executor: Process

    def http(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        return httpx.Client(base_url=self.api.url, timeout=30, headers=headers)

    def transfers(self) -> int:
        conn = self.node.conn()
        try:
            return int(conn.execute("SELECT COUNT(*) FROM mint_transfers").fetchone()[0])
        finally:
            conn.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("mintapi")
    with Anvil() as anvil:
        chain = mint_chain(anvil, tmp)
        url, server = reference_server(chain, tmp)
        node = Node(chain, url, tmp, extra={"HODLAI_MINT_RATE_PER_MIN": "1000"})
        executor = node.start_executor()
        env = {k: v for k, v in node.env().items() if k.startswith(("HODLAI_", "LOG_"))}
        env["HODLAI_API_TOKENS_FILE"] = str(_tokens_file(tmp))
        time.sleep(1.0)  # the executor migrates the database first
        api = _start(node.db_path, **env)
        try:
            yield Stack(chain, node, api, executor)
        finally:
            api.stop()
            executor.stop()
            server.stop()


def _siwe(stack: Stack, key: str, action: str, task_id: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    message = SiweMessage(
        domain=stack.api.url.removeprefix("http://"),
        address=Account.from_key(key).address,
        statement=f"hodlai: {action} task {task_id}",
        uri=stack.api.url,
        version="1",
        chain_id=stack.chain.anvil.chain_id,
        nonce=secrets.token_hex(8),
        issued_at=now.isoformat().replace("+00:00", "Z"),
        expiration_time=(now + timedelta(minutes=2)).isoformat().replace("+00:00", "Z"),
    ).prepare_message()
    signature = Account.sign_message(encode_defunct(text=message), key).signature.hex()
    return {"siwe": {"message": message, "signature": "0x" + signature.removeprefix("0x")}}


def test_six_bad_fundings_are_each_a_400_with_its_reason_and_nothing_is_sent(
    stack: Stack,
) -> None:
    chain, node = stack.chain, stack.node
    user, key = chain.user(2)
    _, other_key = chain.user(3)
    task = node.create_task(user, 3)
    cost, deadline = task.total_cost, task.payment_deadline
    used_nonce = secrets.token_bytes(32)
    # a nonce already used on chain: the user spent it on another transfer
    from tests.mint_fixtures import pay_directly

    spent = chain.sign_funding(key, chain.user(4)[0], 1, valid_before=deadline, nonce=used_nonce)
    assert pay_directly(chain, spent)["status"] == "0x1"
    before = chain.usdc.balance(user)
    cases = {
        "funding_wrong_signer": {**chain.sign_funding(other_key, task.agent_address, cost,
                                                      valid_before=deadline)},
        "funding_wrong_to": chain.sign_funding(key, chain.pay_to, cost, valid_before=deadline),
        "funding_value_too_low": chain.sign_funding(key, task.agent_address, cost - 1,
                                                    valid_before=deadline),
        "funding_expired": chain.sign_funding(key, task.agent_address, cost,
                                              valid_before=int(time.time()) - 5),
        "funding_nonce_used": chain.sign_funding(key, task.agent_address, cost,
                                                 valid_before=deadline, nonce=used_nonce),
        "funding_valid_before_past_deadline": chain.sign_funding(
            key, task.agent_address, cost, valid_before=deadline + 1),
    }  # fmt: skip
    # wrong signer: another key signed an authorization that names this user as from
    forged = cases["funding_wrong_signer"]
    forged["authorization"]["from"] = user
    with stack.http() as http:
        for reason, body in cases.items():
            answer = http.post(f"/api/ai-agent/task/{task.id}/fund", json=body)
            assert answer.status_code == 400, (reason, answer.text)
            assert answer.json()["error"] == reason, answer.text
        assert http.post("/api/ai-agent/task/nope/fund", json=cases["funding_wrong_to"]
                         ).status_code in (400, 404)  # fmt: skip
    assert stack.transfers() == 0
    time.sleep(1.5)
    assert chain.usdc.balance(user) == before
    assert chain.usdc.balance(task.agent_address) == 0
    assert node.task(task.id).status.value == "pending_payment"


def test_a_funding_posted_twice_is_one_submission_and_the_task_completes(stack: Stack) -> None:
    chain, node = stack.chain, stack.node
    user, key = chain.user(5)
    task = node.create_task(user, 4)
    body = chain.sign_funding(key, task.agent_address, task.total_cost,
                              valid_before=task.payment_deadline)  # fmt: skip
    with stack.http() as http:
        first = http.post(f"/api/ai-agent/task/{task.id}/fund", json=body)
        second = http.post(f"/api/ai-agent/task/{task.id}/fund", json=body)
        assert first.status_code == 200, first.text
        assert second.json() == first.json()
        done = node.wait_task(task.id, "completed", "failed", timeout=60)
        assert done.status.value == "completed", done.error_message
        third = http.post(f"/api/ai-agent/task/{task.id}/fund", json=body)
        assert third.json() == first.json()
        view = http.get(f"/api/ai-agent/task/{task.id}").json()
        listed = http.get(f"/api/ai-agent/tasks/{user}").json()["tasks"]
    assert view["status"] == "completed" and view["mintsCompleted"] == 4
    assert view["fundingTxHash"]
    assert view["account"] == {"funded": str(4 * PRICE), "spentOnMints": str(4 * PRICE),
                               "held": "0", "refunded": "0"}  # fmt: skip
    assert [t["id"] for t in listed] == [task.id]
    assert len(chain.uses_by(user)) == 1  # the funding authorization, used once
    assert len(chain.mints_to(user)) == 4
    assert chain.usdc.balance(task.agent_address) == 0


def test_another_user_cannot_cancel_and_a_completed_task_cannot_be_retried(stack: Stack) -> None:
    chain, node = stack.chain, stack.node
    user, key = chain.user(5)
    _, stranger_key = chain.user(6)
    task = node.create_task(user, 2)
    with stack.http() as http:
        refused = http.post(f"/api/ai-agent/task/{task.id}/cancel",
                            json=_siwe(stack, stranger_key, "cancel", task.id))  # fmt: skip
        assert refused.status_code == 403, refused.text
        wrong_action = http.post(f"/api/ai-agent/task/{task.id}/cancel",
                                 json=_siwe(stack, key, "retry", task.id))  # fmt: skip
        assert wrong_action.status_code == 403, wrong_action.text
        assert node.task(task.id).status.value == "pending_payment"
        proof = _siwe(stack, key, "cancel", task.id)
        ok = http.post(f"/api/ai-agent/task/{task.id}/cancel", json=proof)
        assert ok.status_code == 200 and ok.json()["status"] == "cancelled", ok.text
        again = http.post(f"/api/ai-agent/task/{task.id}/cancel", json=proof)
        assert again.status_code == 401  # the nonce is spent
        completed = next(t for t in http.get(f"/api/ai-agent/tasks/{user}").json()["tasks"]
                         if t["status"] == "completed")  # fmt: skip
        retry = http.post(f"/api/ai-agent/task/{completed['id']}/retry",
                          json=_siwe(stack, key, "retry", completed["id"]))  # fmt: skip
        assert retry.status_code == 409, retry.text
    with stack.http(TOKEN_A) as admin:
        assert admin.post(f"/api/ai-agent/task/{completed['id']}/retry").status_code == 409


def test_an_unpaid_task_is_cancelled_at_its_deadline_with_the_seeds_message(stack: Stack) -> None:
    user, _ = stack.chain.user(2)
    task = stack.node.create_task(user, 1, timeout_s=3)
    done = stack.node.wait_task(task.id, "cancelled", timeout=20)
    assert done.error_message == timeout_message(3)
    assert done.error_message.startswith("Payment timeout: No sufficient balance received within")
    assert timeout_message(600) == (
        "Payment timeout: No sufficient balance received within 10 minutes"
    )
    assert done.completed_at is not None and done.completed_at >= task.payment_deadline


def test_a_funding_two_seconds_before_the_deadline_completes(stack: Stack) -> None:
    chain, node = stack.chain, stack.node
    user, key = chain.user(4)
    task = node.create_task(user, 3, timeout_s=6)
    while time.time() < task.payment_deadline - 2:
        time.sleep(0.05)
    body = chain.sign_funding(key, task.agent_address, task.total_cost,
                              valid_before=task.payment_deadline)  # fmt: skip
    with stack.http() as http:
        answer = http.post(f"/api/ai-agent/task/{task.id}/fund", json=body)
    assert answer.status_code == 200, answer.text
    done = node.wait_task(task.id, "completed", "failed", "cancelled", timeout=60)
    assert done.status.value == "completed", done.error_message
    assert len(chain.mints_to(user)) == 3


def test_a_chinese_chat_creates_a_task_that_names_the_wallet_cost_and_deadline(
    stack: Stack,
) -> None:
    chain = stack.chain
    user, key = chain.user(6)
    with stack.http() as http:
        first = http.post(
            "/api/ai-agent/chat", json={"userAddress": user, "message": "我想 mint 5 个 token"}
        )
        assert first.status_code == 200, first.text
        assert first.json()["task"] is None
        assert "地址" in first.json()["reply"]
        second = http.post("/api/ai-agent/chat", json={"userAddress": user, "message": chain.token})
        assert second.status_code == 200, second.text
        task = second.json()["task"]
        assert task is not None, second.json()["reply"]
        reply = second.json()["reply"]
        assert task["quantity"] == 5 and task["totalCost"] == str(5 * PRICE)
        assert task["agentAddress"] in reply and task["id"] in reply
        assert task["status"] == "pending_payment" and task["userAddress"] == user
        unsold = http.post(
            "/api/ai-agent/chat",
            json={"userAddress": user, "message": f"mint 3 of {chain.usdc.address}"},
        )
        assert unsold.json()["task"] is None
        body = chain.sign_funding(key, task["agentAddress"], int(task["totalCost"]),
                                  valid_before=int(datetime.fromisoformat(
                                      task["paymentDeadline"].replace("Z", "+00:00")
                                  ).timestamp()))  # fmt: skip
        assert http.post(f"/api/ai-agent/task/{task['id']}/fund", json=body).status_code == 200
    done = stack.node.wait_task(task["id"], "completed", "failed", timeout=60)
    assert done.status.value == "completed", done.error_message
    assert len(chain.mints_to(user)) == 5


def test_the_demo_part_chats_in_chinese_funds_and_sees_exactly_25_mints(stack: Stack) -> None:
    from types import SimpleNamespace

    from scripts import demo_mint

    chain = stack.chain
    node = SimpleNamespace(
        rpc_url=chain.anvil.rpc_url,
        env={
            "HODLAI_API_URL": stack.api.url, "HODLAI_MINT_USDC_ADDRESS": chain.usdc.address,
            "HODLAI_MINT_TOKENS": chain.token, "HODLAI_MINT_PAY_TO": chain.pay_to,
        },
    )  # fmt: skip
    demo = demo_mint.prepare(node)
    assert demo.user == chain.user(1)[0]
    demo_mint.wait(demo, lambda: True)
    assert demo.task is not None and "任务" in demo.replies[-1]
    assert demo_mint.report(demo)


def test_a_failed_task_is_refunded_to_its_user_and_then_cannot_be_retried(stack: Stack) -> None:
    chain, node = stack.chain, stack.node
    user, key = chain.user(3)
    # A token the server does not sell: every purchase is refused before anything is signed.
    task = node.create_task(user, 2, token=chain.usdc.address)
    body = chain.sign_funding(key, task.agent_address, task.total_cost,
                              valid_before=task.payment_deadline)  # fmt: skip
    from tests.mint_fixtures import pay_directly

    before = chain.usdc.balance(user)
    assert pay_directly(chain, body)["status"] == "0x1"
    failed = node.wait_task(task.id, "failed", "completed", timeout=60)
    assert failed.status.value == "failed" and "failed 4 times" in (failed.error_message or "")
    assert failed.mints_failed == 2 * 4 and failed.mints_completed == 0  # 2 mints, 1 + 3 tries
    with stack.http() as http:
        view = http.get(f"/api/ai-agent/task/{task.id}").json()
        assert view["account"] == {"funded": str(task.total_cost), "spentOnMints": "0",
                                   "held": str(task.total_cost), "refunded": "0"}  # fmt: skip
        refund = http.post(f"/api/ai-agent/task/{task.id}/refund",
                           json=_siwe(stack, key, "refund", task.id))  # fmt: skip
        assert refund.status_code == 200, refund.text
        assert refund.json()["account"]["refunded"] == str(task.total_cost)
        assert refund.json()["account"]["held"] == "0"
        deadline = time.monotonic() + 30
        while chain.usdc.balance(user) != before and time.monotonic() < deadline:
            time.sleep(0.2)
        assert chain.usdc.balance(user) == before
        assert chain.usdc.balance(task.agent_address) == 0
        again = http.post(f"/api/ai-agent/task/{task.id}/refund",
                          json=_siwe(stack, key, "refund", task.id))  # fmt: skip
        assert again.status_code == 200 and again.json()["refund"]["value"] == str(task.total_cost)
        retry = http.post(f"/api/ai-agent/task/{task.id}/retry",
                          json=_siwe(stack, key, "retry", task.id))  # fmt: skip
        assert retry.status_code == 409 and retry.json()["error"] == "no_funds", retry.text
    assert len(chain.uses_by(task.agent_address)) == 1  # the refund, once


def test_mint_show_prints_a_task_and_its_money_account(stack: Stack) -> None:
    import json
    import subprocess

    from tests.mint_fixtures import ROOT

    user, _ = stack.chain.user(5)
    with stack.http() as http:
        task = next(t for t in http.get(f"/api/ai-agent/tasks/{user}").json()["tasks"]
                    if t["status"] == "completed")  # fmt: skip
    hodlai = str(ROOT / ".venv" / "bin" / "hodlai")
    env = stack.node.env()
    shown = subprocess.run([hodlai, "mint", "show", task["id"]], env=env, capture_output=True,
                           text=True, timeout=60, check=True).stdout  # fmt: skip
    lines = {line.split()[0]: line.split()[-1] for line in shown.splitlines() if line.strip()}
    assert "money account" in shown and lines["funded"] == task["account"]["funded"]
    assert lines["held"] == task["account"]["held"]
    detail = json.loads(subprocess.run([hodlai, "mint", "show", task["id"], "--json"], env=env,
                                       capture_output=True, text=True, timeout=60,
                                       check=True).stdout)  # fmt: skip
    assert detail["account"] == task["account"]
    assert len([p for p in detail["payments"] if p["status"] == "minted"]) == task["quantity"]


def test_user_calls_are_limited_per_address_and_per_ip_with_retry_after() -> None:
    from types import SimpleNamespace

    from shared.api.errors import Refusal
    from workers.mint.routes import MintApi
    from workers.mint.settings import MintSettings

    api = MintApi(MintSettings(mint_rate_per_min=3))
    one = SimpleNamespace(client=SimpleNamespace(host="10.0.0.1"))
    other = SimpleNamespace(client=SimpleNamespace(host="10.0.0.2"))
    for _ in range(3):
        api.limit(one, "0x" + "aa" * 20)  # type: ignore[arg-type]
    with pytest.raises(Refusal) as limited:
        api.limit(one, "0x" + "bb" * 20)  # type: ignore[arg-type]  # the same IP
    assert limited.value.status_code == 429 and limited.value.code == "rate_limited"
    assert 1 <= int((limited.value.headers or {})["Retry-After"]) <= 60
    with pytest.raises(Refusal):
        api.limit(other, "0x" + "aa" * 20)  # type: ignore[arg-type]  # the same user
    api.limit(other, "0x" + "cc" * 20)  # type: ignore[arg-type]  # neither: allowed


def test_a_funding_someone_else_submits_first_counts_once(stack: Stack) -> None:
    from tests.mint_fixtures import pay_directly

    chain, node = stack.chain, stack.node
    user, key = chain.user(8)
    task = node.create_task(user, 2)
    body = chain.sign_funding(key, task.agent_address, task.total_cost,
                              valid_before=task.payment_deadline)  # fmt: skip
    with stack.http() as http:
        assert http.post(f"/api/ai-agent/task/{task.id}/fund", json=body).status_code == 200
    # Another account submits the same authorization at once (a front end, a bot): whichever
    # lands first, the authorization is used once and the task is funded once.
    with contextlib.suppress(AssertionError):  # the relayer was first: refused or reverted
        pay_directly(chain, body, submitter=6)
    done = node.wait_task(task.id, "completed", "failed", timeout=60)
    assert done.status.value == "completed", done.error_message
    assert len(chain.uses_by(user)) == 1
    conn = node.conn()
    try:
        from workers.mint import store

        (funding,) = store.transfers(conn, task_id=task.id)
    finally:
        conn.close()
    deadline = time.monotonic() + 20
    while funding.status.value != "confirmed" and time.monotonic() < deadline:
        time.sleep(0.2)
        conn = node.conn()
        try:
            (funding,) = store.transfers(conn, task_id=task.id)
        finally:
            conn.close()
    assert funding.status.value == "confirmed"
