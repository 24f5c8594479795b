"""shared/rpc.py: error classification of real providers' messages, batches, failover and
Retry-After, against httpx.MockTransport and a real loopback server (tests/rpc_proxy.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from shared.anvil import Anvil
from shared.errors import (
    ExecutionRevertedError,
    HodlaiError,
    RpcRangeTooLargeError,
    RpcRateLimitedError,
    RpcResponseError,
    RpcServerError,
    RpcTransportError,
    StaleNodeError,
)
from shared.rpc import RpcCall, RpcClient, classify_error, hex_int
from tests.rpc_proxy import Fault, RpcProxy

RANGE_MESSAGES = [
    (-32005, "query returned more than 10000 results"),  # geth, Infura
    (-32602, "Log response size exceeded. You can make eth_getLogs requests with up to a 2K "
             "block range and no limit on the response size"),  # Alchemy
    (-32614, "eth_getLogs is limited to a 10,000 range"),  # QuickNode
    (-32600, "block range is too wide"),  # Ankr
    (-32000, "exceed maximum block range: 5000"),  # BSC public nodes
    (-32005, "ranges over 10000 blocks are not supported"),  # LlamaRPC
    (-32000, "query exceeds max results 20000, retry with the range 1-100"),  # erigon
    (-32000, "Block range limit exceeded"),  # Chainstack
    (-32000, "requested too many blocks from 1 to 20000, maximum is set to 5000"),  # Nodereal
    (-32000, "query timeout exceeded"),
    (-32005, "limit exceeded"),  # EIP-1474 code with the generic message
]  # fmt: skip
RATE_MESSAGES = [
    (-32005, "daily request count exceeded, request rate limited"),  # Infura
    (429, "Your app has exceeded its compute units per second capacity"),  # Alchemy
    (-32000, "rate limit exceeded"),
    (-32029, "request limit reached"),
    (-32005, "project ID request rate exceeded"),
]
STALE_MESSAGES = [
    (-32000, "header not found"),  # geth: block unknown to this backend
    (-32602, "BlockOutOfRangeError: block height is 1 but requested was 5"),  # anvil
    (-32000, "unknown block"),
    (-32000, "block range extends beyond current head block"),
]


@pytest.mark.parametrize(("code", "message"), RANGE_MESSAGES)
def test_providers_range_errors_are_range_too_large(code: int, message: str) -> None:
    assert isinstance(classify_error({"code": code, "message": message}), RpcRangeTooLargeError)


@pytest.mark.parametrize(("code", "message"), RATE_MESSAGES)
def test_providers_rate_limits_are_rate_limited(code: int, message: str) -> None:
    assert type(classify_error({"code": code, "message": message})) is RpcRateLimitedError


@pytest.mark.parametrize(("code", "message"), STALE_MESSAGES)
def test_a_node_without_the_block_is_stale(code: int, message: str) -> None:
    assert isinstance(classify_error({"code": code, "message": message}), StaleNodeError)


def test_rate_limit_error_carries_the_wait_the_provider_put_in_its_data() -> None:
    error = classify_error({"code": 429, "message": "too many requests",
                            "data": {"retryAfter": 2.5}})  # fmt: skip
    assert isinstance(error, RpcRateLimitedError) and error.retry_after == 2.5


def test_reverts_internal_errors_and_the_rest_are_told_apart() -> None:
    revert = classify_error({"code": 3, "message": "execution reverted", "data": "0x1234"})
    assert isinstance(revert, ExecutionRevertedError) and revert.data == "0x1234"
    assert type(classify_error({"code": -32603, "message": "oops"})) is RpcServerError
    nonce = classify_error({"code": -32000, "message": "nonce too low"})
    assert type(nonce) is RpcResponseError and nonce.code == -32000


def _client(handler: Callable[[httpx.Request], httpx.Response], urls: int = 1) -> RpcClient:
    return RpcClient(
        [f"http://node{i}.test/key" for i in range(urls)],
        transport=httpx.MockTransport(handler),
    )


async def test_batch_results_come_back_in_call_order_whatever_the_server_order() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        calls = json.loads(request.content)
        answers = [{"jsonrpc": "2.0", "id": c["id"], "result": c["method"]} for c in calls]
        return httpx.Response(200, json=list(reversed(answers)))

    async with _client(handler) as client:
        calls = [RpcCall(m, []) for m in ("a", "b", "c")]
        assert await client.batch(calls) == ["a", "b", "c"]


async def test_batch_settled_keeps_each_slots_error_and_batch_raises_the_first() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        first, second = json.loads(request.content)
        return httpx.Response(200, json=[
            {"jsonrpc": "2.0", "id": first["id"], "result": "0x10"},
            {"jsonrpc": "2.0", "id": second["id"],
             "error": {"code": -32005, "message": "query returned more than 10000 results"}},
        ])  # fmt: skip

    async with _client(handler) as client:
        calls = [RpcCall("eth_blockNumber", []), RpcCall("eth_getLogs", [{}])]
        head, logs = await client.batch_settled(calls)
        assert hex_int(head) == 16 and isinstance(logs, RpcRangeTooLargeError)
        with pytest.raises(RpcRangeTooLargeError):
            await client.batch(calls)


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (httpx.Response(429, headers={"Retry-After": "3"}), RpcRateLimitedError),
        (httpx.Response(503, text="down"), RpcServerError),
        (httpx.Response(200, text="{not json"), RpcTransportError),
        (httpx.Response(200, json={"jsonrpc": "2.0", "id": 1}), RpcTransportError),
        (httpx.Response(413, text="too large"), RpcRangeTooLargeError),
    ],
)
async def test_http_failures_are_translated_and_move_to_the_next_url(
    response: httpx.Response, error: type[HodlaiError]
) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        return response

    async with _client(handler, urls=2) as client:
        with pytest.raises(error) as raised:
            await client.call("eth_blockNumber")
        if isinstance(raised.value, RpcRateLimitedError):
            assert raised.value.retry_after == 3.0
        moved = client.url.startswith("http://node1")
        assert moved is (error is not RpcRangeTooLargeError)  # a 413 is ours, not the node's


async def test_connection_refused_fails_over_and_the_healthy_url_is_kept() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.host)
        if request.url.host == "node0.test":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"jsonrpc": "2.0", "id": 1, "result": "0x1"})

    async with _client(handler, urls=2) as client:
        with pytest.raises(RpcTransportError, match=r"cannot reach http://node0\.test"):
            await client.call("eth_chainId")
        for _ in range(3):
            assert await client.call("eth_chainId") == "0x1"
    assert calls == ["node0.test", "node1.test", "node1.test", "node1.test"]


async def test_error_messages_never_show_the_api_key_in_the_url() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500)

    client = RpcClient(["https://rpc.example/v3/SECRETKEY"],
                       transport=httpx.MockTransport(handler))  # fmt: skip
    async with client:
        with pytest.raises(RpcServerError) as raised:
            await client.call("eth_chainId")
    assert "SECRETKEY" not in str(raised.value)


@pytest.fixture(scope="module")
def node() -> Any:
    with Anvil() as anvil:
        yield anvil


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault.HTTP_429, RpcRateLimitedError),
        (Fault.HTTP_500, RpcServerError),
        (Fault.MALFORMED_JSON, RpcTransportError),
        (Fault.CLOSE, RpcTransportError),
    ],
)
async def test_real_server_faults_are_classified_and_the_next_call_works(
    node: Anvil, fault: Fault, error: type[HodlaiError]
) -> None:
    with RpcProxy(node.rpc_url, retry_after_s=2) as proxy:
        async with RpcClient([proxy.url], timeout=5) as client:
            proxy.inject(fault)
            with pytest.raises(error) as raised:
                await client.batch([RpcCall("eth_blockNumber", []), RpcCall("eth_chainId", [])])
            if fault is Fault.HTTP_429:
                assert raised.value.retry_after == 2.0  # type: ignore[attr-defined]
            assert hex_int(await client.call("eth_chainId")) == node.chain_id


async def test_real_server_refusing_connections_is_a_transport_error(node: Anvil) -> None:
    with RpcProxy(node.rpc_url) as proxy:
        async with RpcClient([proxy.url], timeout=5) as client:
            assert hex_int(await client.call("eth_chainId")) == node.chain_id
            proxy.refuse_for(0.5)
            with pytest.raises(RpcTransportError):
                await client.call("eth_chainId")


def test_hex_int_refuses_what_is_not_a_quantity() -> None:
    assert hex_int("0x1a") == 26
    for bad in ("26", 26, None, "0xzz"):
        with pytest.raises((RpcTransportError, ValueError)):
            hex_int(bad)
