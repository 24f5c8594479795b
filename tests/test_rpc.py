"""shared/chain/rpc.py: error classification of real providers' messages, batches, failover and
Retry-After, against httpx.MockTransport and real loopback servers (tests/rpc_proxy.py,
tests/bad_rpc.py); the chain check of every URL, the total deadline and the size cap."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from shared.chain.rpc import (
    DEFAULT_MAX_RESPONSE_BYTES,
    MAX_JSON_DEPTH,
    RpcCall,
    RpcClient,
    classify_error,
    hex_int,
)
from shared.errors import (
    ConfigError,
    ExecutionRevertedError,
    HodlaiError,
    RetryableError,
    RpcChainMismatchError,
    RpcDeadlineError,
    RpcNoUsableUrlError,
    RpcRangeTooLargeError,
    RpcRateLimitedError,
    RpcResponseError,
    RpcResponseTooLargeError,
    RpcServerError,
    RpcTransportError,
    StaleNodeError,
)
from tests.bad_rpc import BadRpc, Mode
from tests.rpc_proxy import Fault, RpcProxy
from workers.devnet.anvil import Anvil

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
    calls: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append((request.url.host, json.loads(request.content)["method"]))
        if request.url.host == "node0.test":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"jsonrpc": "2.0", "id": 1, "result": "0x1"})

    async with _client(handler, urls=2) as client:
        with pytest.raises(RpcTransportError, match=r"cannot reach http://node0\.test"):
            await client.call("eth_blockNumber")
        for _ in range(3):
            assert await client.call("eth_blockNumber") == "0x1"
    # node0's chain check fails; node1's chain is checked once, then it serves every call.
    assert (
        calls
        == [("node0.test", "eth_chainId"), ("node1.test", "eth_chainId")]
        + [("node1.test", "eth_blockNumber")] * 3
    )


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


# --- hostile endpoints (tests/bad_rpc.py): deadline, size cap, chain check --------------------

MIB = 1024 * 1024


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_trickling_server_is_cut_off_at_the_deadline_and_failed_over() -> None:
    # One byte every 0.5 s: httpx's per-read timeout (5 s) never fires; only a total one does.
    with BadRpc(mode=Mode.TRICKLE, trickle_interval_s=0.5) as slow, BadRpc(block_number=7) as ok:
        async with RpcClient([slow.url, ok.url], timeout=5, deadline_s=1.5) as client:
            failovers = _metric("hodlai_rpc_failovers_total", reason="deadline")
            started = time.monotonic()
            async with asyncio.timeout(20):  # the test's own guard: unfixed, this hangs ~20 s
                with pytest.raises(RpcDeadlineError, match=r"within 1\.5 s"):
                    await client.call("eth_blockNumber")
            assert time.monotonic() - started < 3.0
            assert hex_int(await client.call("eth_blockNumber")) == 7
            assert _metric("hodlai_rpc_failovers_total", reason="deadline") == failovers + 1


async def test_a_single_urls_trickled_answer_ends_at_the_deadline() -> None:
    # The whole answer would take ~40 bytes x 2 s = 80 s.
    with BadRpc(mode=Mode.TRICKLE, trickle_interval_s=2.0) as slow:
        async with RpcClient([slow.url], deadline_s=2.0) as client:
            async with asyncio.timeout(20):
                with pytest.raises(RpcDeadlineError):
                    await client.call("eth_chainId")


@pytest.mark.parametrize("declared", [False, True], ids=["chunked", "content_length"])
async def test_a_huge_answer_is_cut_at_the_cap_and_memory_stays_bounded(declared: bool) -> None:
    # 200 MB, as the indexer received: unfixed, the client read and parsed all of it (tracemalloc
    # peak 600 MiB); now it stops at the default cap, or before reading when the length is
    # announced.
    huge = 200 * MIB
    with BadRpc(huge_bytes=huge, huge_declared=declared) as bad, BadRpc() as ok:
        async with RpcClient([bad.url, ok.url]) as client:
            assert await client.call("eth_chainId") == hex(31337)
            bad.mode = Mode.HUGE
            raised: HodlaiError | None = None
            tracemalloc.start()
            try:
                await client.call("eth_getLogs", [{}])
            except HodlaiError as exc:
                raised = exc
            finally:
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
            assert peak < DEFAULT_MAX_RESPONSE_BYTES * 1.5 < huge / 2, f"peak {peak / MIB:.0f} MiB"
            assert isinstance(raised, RpcResponseTooLargeError)
            assert isinstance(raised, RpcRangeTooLargeError)  # the indexer halves on it
            if declared:
                assert peak < 2 * MIB  # refused on the header, nothing read
            assert client.url == ok.url
            assert await client.call("eth_chainId") == hex(31337)


async def test_a_small_cap_keeps_memory_small_whatever_the_server_sends() -> None:
    with BadRpc(mode=Mode.HUGE, huge_bytes=50 * MIB) as bad:
        async with RpcClient([bad.url], max_response_bytes=MIB) as client:
            tracemalloc.start()
            try:
                with pytest.raises(RpcResponseTooLargeError, match="cap of 1048576 bytes"):
                    await client.call("eth_getLogs", [{}])
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert peak < 4 * MIB
            bad.mode = Mode.FORWARD
            assert await client.call("eth_chainId") == hex(31337)


async def test_an_answer_under_the_cap_is_read_whole() -> None:
    with BadRpc(mode=Mode.HUGE, huge_bytes=3 * MIB) as bad:
        async with RpcClient([bad.url], max_response_bytes=4 * MIB) as client:
            result = await client.call("eth_getLogs", [{}])
            assert len(result) == 2 + 3 * MIB


@pytest.mark.parametrize("body", [b"[" * 100_000, b'[{"a":' * 50_000, b"[" * 600 + b"]" * 600])
async def test_deeply_nested_json_is_a_malformed_answer_not_a_segfault(body: bytes) -> None:
    # The fulfiller imports py_ecc (through eth-account), which raises the recursion limit to
    # 100,000; there, json.loads of 100k nested "[" overflowed the C stack and killed the
    # process (unfixed, this test ends pytest with "Fatal Python error: Segmentation fault").
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body)

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)
    try:
        async with _client(handler) as client:
            with pytest.raises(RpcTransportError, match="malformed JSON"):
                await client.call("eth_blockNumber")
    finally:
        sys.setrecursionlimit(limit)


@pytest.mark.parametrize(
    ("body", "result"),
    [
        (b'\xef\xbb\xbf{"jsonrpc":"2.0","id":1,"result":"0x1"}', "0x1"),  # a BOM
        (b'{"jsonrpc":"2.0","id":1,"result":"\\ud800"}', "\ud800"),  # a lone surrogate
        (b'{"jsonrpc":"2.0","id":1,"result":[NaN]}', None),
    ],
)
async def test_answers_json_accepts_and_msgspec_refuses_are_still_read(
    body: bytes, result: object
) -> None:
    # The client parses with msgspec, which refuses these; json, which accepted them before,
    # reads them instead, so the set of accepted answers did not change.
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body)

    async with _client(handler) as client:
        answer = await client.call("eth_blockNumber")
    if result is None:
        assert len(answer) == 1 and answer[0] != answer[0]  # NaN
    else:
        assert answer == result


async def test_an_answer_nesting_as_deep_as_allowed_is_read() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        nested = "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1)
        return httpx.Response(200, content=f'{{"jsonrpc":"2.0","id":1,"result":{nested}}}')

    async with _client(handler) as client:
        assert isinstance(await client.call("eth_blockNumber"), list)


async def test_html_answers_and_a_500_fail_over_and_the_good_url_answers() -> None:
    with BadRpc(block_number=1) as first, BadRpc(block_number=2) as second:
        async with RpcClient([first.url, second.url], timeout=5) as client:
            assert hex_int(await client.call("eth_blockNumber")) == 1
            first.mode = Mode.HTML
            with pytest.raises(RpcTransportError, match="malformed JSON"):
                await client.call("eth_blockNumber")
            assert hex_int(await client.call("eth_blockNumber")) == 2
            second.once(Mode.HTTP_500)
            with pytest.raises(RpcServerError):
                await client.call("eth_blockNumber")
            first.mode = Mode.FORWARD
            assert hex_int(await client.call("eth_blockNumber")) == 1


async def test_a_failover_target_on_another_chain_is_quarantined_and_never_answers() -> None:
    # The incident: the right URL starts answering HTML, the next one is on chain 56.
    with BadRpc(block_number=10) as right, BadRpc(chain_id=56, block_number=99_999) as wrong:
        async with RpcClient([right.url, wrong.url], timeout=5) as client:
            answers = [hex_int(await client.call("eth_blockNumber"))]
            right.mode = Mode.HTML
            wrong_chain = _metric("hodlai_rpc_wrong_chain_total", url=wrong.url)
            with capture_logs() as logs:
                for _ in range(4):
                    try:
                        answers.append(hex_int(await client.call("eth_blockNumber")))
                    except RetryableError as exc:
                        assert isinstance(exc, RpcTransportError)
            assert answers == [10]  # nothing from chain 56 reached the caller
            assert client.chain_id == 31337  # pinned from the first URL
            assert wrong.methods_seen() == ["eth_chainId"]  # it was asked its chain, once
            assert [e for e in logs if e["event"] == "rpc_wrong_chain"] == [
                {"event": "rpc_wrong_chain", "log_level": "error", "url": wrong.url,
                 "reported_chain_id": 56, "expected_chain_id": 31337, "recheck_after_s": 600.0}
            ]  # fmt: skip
            assert _metric("hodlai_rpc_wrong_chain_total", url=wrong.url) == wrong_chain + 1
            assert _metric("hodlai_rpc_url_quarantined", url=wrong.url) == 1
            assert client.quarantined == [wrong.url]
            with pytest.raises(RpcNoUsableUrlError, match="quarantined") as raised:
                await client.call("eth_blockNumber")
            assert "serves chain 56, not 31337" in str(raised.value)
            right.mode = Mode.FORWARD
            assert hex_int(await client.call("eth_blockNumber")) == 10


async def test_expect_chain_checks_every_url_at_start_and_uses_the_first_that_serves_it() -> None:
    with (
        BadRpc(chain_id=56) as wrong,
        BadRpc(chain_id=31337, block_number=5) as right,
        BadRpc(chain_id=31337, block_number=6) as backup,
    ):
        async with RpcClient([wrong.url, right.url, backup.url]) as client:
            with capture_logs() as logs:
                await client.expect_chain(31337)
            assert client.url == right.url and client.quarantined == [wrong.url]
            assert any(e["event"] == "rpc_wrong_chain" for e in logs)
            assert [s.methods for s in backup.seen] == [("eth_chainId",)]  # checked at start
            assert hex_int(await client.call("eth_blockNumber")) == 5
            right.mode = Mode.CLOSE
            with pytest.raises(RpcTransportError):
                await client.call("eth_blockNumber")
            # The failover skips the quarantined URL and checks the backup's chain again.
            assert hex_int(await client.call("eth_blockNumber")) == 6
            assert wrong.methods_seen() == ["eth_chainId"]
            assert backup.methods_seen() == ["eth_chainId", "eth_chainId", "eth_blockNumber"]


async def test_expect_chain_with_every_url_on_another_chain_is_a_config_error() -> None:
    with BadRpc(chain_id=56) as one, BadRpc(chain_id=97) as two:
        async with RpcClient([f"{one.url}/v3/SECRETKEY?key=abc", two.url]) as client:
            with pytest.raises(RpcChainMismatchError) as raised:
                await client.expect_chain(31337)
    assert isinstance(raised.value, ConfigError)
    message = str(raised.value)
    assert "HODLAI_RPC_URLS" in message and "serves chain 56, not 31337" in message
    assert "chain 97" in message and "SECRETKEY" not in message and "key=abc" not in message


async def test_expect_chain_with_no_serving_url_and_one_unreachable_is_retryable() -> None:
    with BadRpc(chain_id=56) as wrong, BadRpc(mode=Mode.CLOSE) as dead:
        async with RpcClient([dead.url, wrong.url], timeout=2) as client:
            with pytest.raises(RpcNoUsableUrlError):
                await client.expect_chain(31337)
            dead.mode = Mode.FORWARD
            assert await client.call("eth_chainId") == hex(31337)


async def test_a_single_pinned_url_that_failed_is_checked_again_before_it_answers() -> None:
    # A proxy re-pointed at another chain after a hiccup: its next answers are not used.
    with BadRpc(block_number=3) as only:
        async with RpcClient([only.url], chain_id=31337) as client:
            assert hex_int(await client.call("eth_blockNumber")) == 3
            only.once(Mode.HTML)
            with pytest.raises(RpcTransportError):
                await client.call("eth_blockNumber")
            only.mode = Mode.OTHER_CHAIN
            with pytest.raises(RpcNoUsableUrlError, match="serves chain 56, not 31337"):
                await client.call("eth_blockNumber")
            assert only.methods_seen()[-1] == "eth_chainId"


async def test_a_quarantined_url_is_asked_again_after_the_quarantine() -> None:
    now = [0.0]
    with BadRpc(mode=Mode.OTHER_CHAIN, block_number=4) as flaky, BadRpc(mode=Mode.CLOSE) as down:
        client = RpcClient([flaky.url, down.url], chain_id=31337, quarantine_s=60,
                           timeout=2, clock=lambda: now[0])  # fmt: skip
        async with client:
            with pytest.raises(RpcTransportError):
                await client.call("eth_blockNumber")
            assert client.quarantined == [flaky.url]
            flaky.mode = Mode.FORWARD  # the operator fixed the proxy
            now[0] = 59.0
            with pytest.raises(RpcNoUsableUrlError):
                await client.call("eth_blockNumber")
            assert flaky.methods_seen() == ["eth_chainId"]
            now[0] = 61.0
            with capture_logs() as logs:
                for _ in range(3):  # the down URL fails over back to the re-checked one
                    try:
                        assert hex_int(await client.call("eth_blockNumber")) == 4
                        break
                    except RpcTransportError:
                        continue
            assert client.quarantined == []
            assert any(e["event"] == "rpc_url_released" for e in logs)
            assert _metric("hodlai_rpc_url_quarantined", url=flaky.url) == 0


async def test_one_url_and_no_chain_given_is_used_without_a_chain_check() -> None:
    # One URL, no chain given: nothing to fail over to; the caller checks eth_chainId itself.
    with BadRpc(block_number=8) as only:
        async with RpcClient([only.url]) as client:
            assert hex_int(await client.call("eth_blockNumber")) == 8
            assert only.methods_seen() == ["eth_blockNumber"] and client.chain_id is None


async def test_transport_error_messages_never_show_the_urls_secrets() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot connect to {request.url}", request=request)

    url = "https://user:pw@rpc.example/v3/SECRETKEY?key=abc"
    async with RpcClient([url], transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(RpcTransportError) as raised:
            await client.call("eth_chainId")
    message = str(raised.value)
    assert "https://rpc.example" in message
    assert not any(secret in message for secret in ("user", "pw@", "SECRETKEY", "key=abc"))


async def test_a_url_that_refuses_eth_chain_id_is_failed_over_not_a_permanent_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        call = json.loads(request.content)
        if request.url.host == "node0.test":
            error = {"code": -32601, "message": "the method eth_chainId does not exist"}
            return httpx.Response(200, json={"jsonrpc": "2.0", "id": call["id"], "error": error})
        return httpx.Response(200, json={"jsonrpc": "2.0", "id": call["id"], "result": "0x7a69"})

    async with _client(handler, urls=2) as client:
        with pytest.raises(RpcTransportError, match="refused eth_chainId"):
            await client.call("eth_blockNumber")
        assert await client.call("eth_blockNumber") == "0x7a69"
        assert client.url.startswith("http://node1")
