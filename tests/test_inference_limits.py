"""The contract's string limits as the inference worker applies them: read from a real
provider on anvil, never stricter than the contract was when it accepted a request, and the
defaults (with a log line saying so) when the RPC is unreachable."""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_abi.abi import encode as abi_encode
from eth_utils.crypto import keccak
from structlog.testing import capture_logs

from shared.chain.rpc import RpcClient
from shared.contracts import artifact
from shared.errors import RpcResponseError
from shared.llm.validate import DEFAULT_LIMITS, StringLimits
from tests.chain_fixtures import DeployedStack
from tests.conftest import make_request
from tests.test_inference_processes import Workers, count, wait_for
from workers.devnet.mockllm.server import MockLlmServer
from workers.oracle import store
from workers.oracle.contracts import decode_reasoning_requested
from workers.oracle.inference.limits import (
    GET_STRING_LIMITS_SELECTOR,
    ContractStringLimits,
    decode_string_limits,
)
from workers.oracle.store import NewRequest

RAISED = StringLimits(64, 1024, 4096, 10, 64)
SET_LIMITS_SELECTOR = keccak(text="setStringLimits(uint256,uint256,uint256,uint256,uint256)")[:4]
ASK_SELECTOR = keccak(text="ask(string,string,string,string[])")[:4]


@pytest.fixture
def mock_llm() -> Iterator[MockLlmServer]:
    server = MockLlmServer().start()
    yield server
    server.stop()


class Chain:
    """Admin and user transactions through anvil's unlocked dev accounts."""

    def __init__(self, stack: DeployedStack) -> None:
        self.stack = stack
        self.http = httpx.Client(timeout=30)

    def rpc(self, method: str, params: list[Any]) -> Any:
        answer = self.http.post(
            self.stack.rpc_url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        ).json()
        assert "error" not in answer, answer
        return answer["result"]

    def send(self, sender: str, to: str, data: bytes, value: int = 0) -> dict[str, Any]:
        tx = {"from": sender, "to": to, "data": "0x" + data.hex(), "value": hex(value),
              "gas": hex(2_000_000)}  # fmt: skip
        tx_hash = self.rpc("eth_sendTransaction", [tx])
        deadline = time.monotonic() + 30
        while (receipt := self.rpc("eth_getTransactionReceipt", [tx_hash])) is None:
            assert time.monotonic() < deadline, f"no receipt for {tx_hash}"
            time.sleep(0.01)
        assert int(receipt["status"], 16) == 1, receipt
        return dict(receipt)

    def set_limits(self, limits: StringLimits) -> None:
        words = [limits.max_model_bytes, limits.max_prompt_bytes, limits.max_state_bytes,
                 limits.max_actions, limits.max_action_bytes]  # fmt: skip
        self.send(
            self.stack.deployment.admin,
            self.stack.deployment.provider_address,
            SET_LIMITS_SELECTOR + abi_encode(["uint256"] * 5, words),
        )

    def ask(self, state: str) -> NewRequest:
        """``vault.ask`` on chain; returns the request as the indexer would store it."""
        deployment = self.stack.deployment
        data = ASK_SELECTOR + abi_encode(
            ["string", "string", "string", "string[]"],
            ["hodlai-local", "Choose.", state, ["BUY", "SELL", "HOLD"]],
        )
        user = self.stack.anvil.accounts[2].address
        receipt = self.send(user, deployment.vault_address, data, deployment.models["hodlai-local"])
        (log,) = [
            entry for entry in receipt["logs"]
            if entry["address"].lower() == deployment.provider_address.lower()
            and len(entry["topics"]) == 3
        ]  # fmt: skip
        event = decode_reasoning_requested(log["topics"], log["data"])
        return NewRequest(
            request_id=event.request_id, requester=event.requester, model=event.model,
            system_prompt=event.system_prompt, state_string=event.state_string,
            action_set=event.action_set, content_hash="0x" + "00" * 32,
            block_number=int(receipt["blockNumber"], 16), block_hash=receipt["blockHash"],
            tx_hash=receipt["transactionHash"], log_index=int(log["logIndex"], 16),
        )  # fmt: skip


@pytest.fixture
def chain(deployed: DeployedStack) -> Iterator[Chain]:
    driver = Chain(deployed)
    yield driver
    driver.http.close()


@pytest.fixture
def workers(tmp_path: Path, db_path: Path, mock_llm: MockLlmServer) -> Iterator[Workers]:
    group = Workers(tmp_path, db_path, mock_llm)
    yield group
    for proc in group.procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def log_events(workers: Workers) -> list[dict[str, Any]]:
    return [json.loads(line) for line in workers.logs().splitlines() if line.startswith("{")]


def on_chain_env(stack: DeployedStack) -> dict[str, str]:
    return {
        "HODLAI_RPC_URLS": stack.rpc_url,
        "HODLAI_PROVIDER_ADDRESS": stack.deployment.provider_address,
        "HODLAI_CHAIN_ID": str(stack.deployment.chain_id),
    }


def test_the_selector_is_the_compiled_provider_s_five_word_getter() -> None:
    (entry,) = [e for e in artifact("HoldAIProvider").abi if e.get("name") == "getStringLimits"]
    assert [o["type"] for o in entry["outputs"]] == ["uint256"] * 5  # type: ignore[typeddict-item]
    assert keccak(text="getStringLimits()")[:4] == GET_STRING_LIMITS_SELECTOR


def test_decoding_refuses_what_is_not_five_words() -> None:
    words = "0x" + abi_encode(["uint256"] * 5, [1, 2, 3, 4, 2**256 - 1]).hex()
    assert decode_string_limits(words) == StringLimits(1, 2, 3, 4, 2**256 - 1)
    for bad in ("0x", "0x1234", None, "not hex"):
        with pytest.raises(RpcResponseError, match="not a HoldAIProvider"):
            decode_string_limits(bad)


async def test_limits_are_read_from_the_contract_and_only_ever_widen(
    deployed: DeployedStack, chain: Chain
) -> None:
    rpc = RpcClient([deployed.rpc_url])
    try:
        limits = ContractStringLimits(rpc, deployed.deployment.provider_address, refresh_s=60)
        await limits.refresh()
        assert limits.current == DEFAULT_LIMITS
        chain.set_limits(RAISED)
        await limits.refresh()
        assert limits.current == RAISED
        chain.set_limits(StringLimits(32, 100, 200, 3, 8))  # lowered: older requests passed more
        await limits.refresh()
        assert limits.current == RAISED
    finally:
        await rpc.aclose()


def test_a_request_under_raised_on_chain_limits_is_answered(
    conn: sqlite3.Connection, deployed: DeployedStack, chain: Chain, workers: Workers
) -> None:
    chain.set_limits(RAISED)
    request = chain.ask("x" * 3000)  # the contract took it, and its fee
    store.insert_request(conn, request, actor="indexer")
    workers.start(0, 1, **on_chain_env(deployed))
    wait_for(lambda: count(conn, "ANSWERED") == 1, timeout=30)
    assert workers.stop_all() == [0]
    read = [e for e in log_events(workers) if e["event"] == "string_limits_read"]
    assert read[0]["applied"]["max_state_bytes"] == 4096


def test_a_request_made_before_the_limits_were_lowered_is_still_answered(
    conn: sqlite3.Connection, deployed: DeployedStack, chain: Chain, workers: Workers
) -> None:
    chain.set_limits(RAISED)
    request = chain.ask("y" * 3000)
    chain.set_limits(DEFAULT_LIMITS)  # lowered after the request was accepted
    store.insert_request(conn, request, actor="indexer")
    # not on chain, over every limit the contract ever had: refused with the reason (the
    # limit it names depends on whether the other request's read came first)
    store.insert_request(conn, make_request(10**6, state_string="z" * 5000), actor="test")
    workers.start(0, 1, **on_chain_env(deployed))
    wait_for(lambda: count(conn, "ANSWERED") == 1 and count(conn, "FAILED") == 1, timeout=30)
    assert workers.stop_all() == [0]
    failed = store.get_request(conn, 10**6)
    assert failed is not None
    assert "stateString is 5000 bytes, more than" in failed["fail_reason"]
    assert "string_limits_read" in workers.logs()


def test_with_the_rpc_unreachable_the_defaults_apply_and_the_log_says_so(
    conn: sqlite3.Connection, workers: Workers
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    store.insert_request(conn, make_request(1, state_string="x" * 3000), actor="test")
    store.insert_request(conn, make_request(2), actor="test")
    workers.start(0, 1, HODLAI_RPC_URLS=dead)
    wait_for(lambda: count(conn, "ANSWERED") == 1 and count(conn, "FAILED") == 1, timeout=30)
    assert workers.stop_all() == [0]
    row = store.get_request(conn, 1)
    assert row is not None and "stateString is 3000 bytes, more than 2048" in row["fail_reason"]
    unavailable = [e for e in log_events(workers) if e["event"] == "string_limits_unavailable"]
    assert unavailable and unavailable[0]["using"] == "contract defaults"
    assert unavailable[0]["limits"]["max_state_bytes"] == 2048


async def test_without_an_rpc_the_defaults_apply_and_the_log_says_so() -> None:
    with capture_logs() as logs:
        limits = ContractStringLimits(None, "0x" + "11" * 20, refresh_s=60)
        await limits.refresh()
        assert not limits.due(time.time())
    assert limits.current == DEFAULT_LIMITS
    assert [e["event"] for e in logs] == ["string_limits_default"]
    assert logs[0]["reason"] == "HODLAI_RPC_URLS is not set"
