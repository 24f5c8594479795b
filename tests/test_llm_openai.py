"""The OpenAI-compatible backend against the mock server over real HTTP (and a dead port)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from structlog.testing import capture_logs

from shared.errors import (
    BadAnswerError,
    LlmAccessError,
    LlmAnswerTooLargeError,
    LlmBusyError,
    LlmRejectedError,
    LlmTransportError,
)
from shared.llm import prompt
from shared.llm.backends.openai import (
    OpenAIBackend,
    chat_completions_url,
    parse_retry_after,
    public_endpoint,
)
from shared.llm.types import CompletionCall, Constraint, InferenceRequest
from workers.devnet.mockllm.server import MockLlmServer, authorization_fingerprint

ACTIONS = ("BUY", "SELL", "HOLD")
REQUEST = InferenceRequest(1, "gpt-test", "Manage the vault.", "price=3", ACTIONS)
CALL = CompletionCall("gpt-test", prompt.initial_messages(REQUEST), ACTIONS, "price=3")


@pytest.fixture
def mock_llm() -> Iterator[MockLlmServer]:
    server = MockLlmServer().start()
    yield server
    server.stop()


def _backend(
    server: MockLlmServer, constraint: Constraint = "json_schema", **kw: object
) -> OpenAIBackend:
    return OpenAIBackend(
        base_url=server.url, model_map={"gpt-test": "mock-1"}, constraint=constraint,
        api_key="sk-test-123", **kw,  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.fixture
async def backend(mock_llm: MockLlmServer) -> AsyncIterator[OpenAIBackend]:
    client = _backend(mock_llm)
    yield client
    await client.aclose()


@pytest.mark.parametrize("constraint", ["json_schema", "guided_choice", "none"])
async def test_each_constraint_is_sent_and_answered(
    mock_llm: MockLlmServer, constraint: Constraint
) -> None:
    client = _backend(mock_llm, constraint)
    try:
        completion = await client.complete(CALL)
    finally:
        await client.aclose()
    stats = mock_llm.stats()
    assert stats["constraints"] == {constraint: 1}
    assert stats["models"] == {"mock-1": 1}
    assert stats["authorization"] == {authorization_fingerprint("Bearer sk-test-123"): 1}
    assert "sk-test-123" not in json.dumps(stats)  # /stats never shows a key
    assert completion.backend_model == "mock-1"
    assert completion.params["constraint"] == constraint
    assert completion.params["temperature"] == 0
    if constraint == "json_schema":
        assert json.loads(completion.text)["action"] in ACTIONS
    else:
        assert completion.text in ACTIONS


async def test_refused_constraint_falls_back_to_none_and_is_remembered(
    mock_llm: MockLlmServer,
) -> None:
    mock_llm.configure(reject_constraints=True)
    client = _backend(mock_llm, "json_schema")
    try:
        with capture_logs() as logs:
            first = await client.complete(CALL)
            second = await client.complete(CALL)
    finally:
        await client.aclose()
    assert first.text in ACTIONS and second.text in ACTIONS
    assert first.params["constraint"] == "none" == second.params["constraint"]
    # one refused constrained call, then only unconstrained ones
    assert mock_llm.stats()["constraints"] == {"json_schema": 1, "none": 2}
    assert [e["event"] for e in logs].count("llm_constraint_refused") == 1


async def test_a_400_unrelated_to_the_constraint_is_not_remembered(mock_llm: MockLlmServer) -> None:
    mock_llm.script("400", "400", "ok")
    client = _backend(mock_llm, "guided_choice")
    try:
        with pytest.raises(LlmRejectedError) as caught:
            await client.complete(CALL)
        assert caught.value.status == 400
        assert (await client.complete(CALL)).params["constraint"] == "guided_choice"
    finally:
        await client.aclose()
    assert mock_llm.stats()["constraints"] == {"guided_choice": 2, "none": 1}


async def test_429_is_a_transport_error_carrying_retry_after(
    mock_llm: MockLlmServer, backend: OpenAIBackend
) -> None:
    mock_llm.script("429:7")
    with pytest.raises(LlmBusyError) as caught:
        await backend.complete(CALL)
    assert caught.value.retry_after == 7.0
    assert not isinstance(caught.value, LlmAccessError)


@pytest.mark.parametrize("status", ["500", "502", "503:2", "408"])
async def test_server_errors_are_transport_errors(
    mock_llm: MockLlmServer, backend: OpenAIBackend, status: str
) -> None:
    mock_llm.script(status)
    with pytest.raises(LlmTransportError, match=f"answered {status[:3]}") as caught:
        await backend.complete(CALL)
    assert caught.value.retry_after == (2.0 if status == "503:2" else None)
    # "come back later" (a rate limit, an overload) is never about the request
    assert isinstance(caught.value, LlmBusyError) == (status[:3] in ("503", "408"))


@pytest.mark.parametrize("status", ["401", "403", "404"])
async def test_access_denied_is_the_nodes_problem_not_the_requests(
    mock_llm: MockLlmServer, backend: OpenAIBackend, status: str
) -> None:
    mock_llm.script(status)
    with pytest.raises(LlmAccessError):
        await backend.complete(CALL)


async def test_other_4xx_reject_the_request(mock_llm: MockLlmServer) -> None:
    mock_llm.script("413")
    client = _backend(mock_llm, "none")
    try:
        with pytest.raises(LlmRejectedError) as caught:
            await client.complete(CALL)
    finally:
        await client.aclose()
    assert caught.value.status == 413


async def test_a_hang_past_the_timeout_is_a_transport_error(mock_llm: MockLlmServer) -> None:
    mock_llm.configure(hang_s=3.0)
    mock_llm.script("hang")
    client = _backend(mock_llm, timeout_s=0.3)
    try:
        with pytest.raises(LlmTransportError, match=r"timed out after 0\.3"):
            await client.complete(CALL)
    finally:
        await client.aclose()


async def test_a_non_json_body_is_a_transport_error(
    mock_llm: MockLlmServer, backend: OpenAIBackend
) -> None:
    mock_llm.script("garbage_body")
    with pytest.raises(LlmTransportError, match="malformed"):
        await backend.complete(CALL)


async def test_null_content_comes_back_as_empty_text(
    mock_llm: MockLlmServer, backend: OpenAIBackend
) -> None:
    mock_llm.script("null")
    assert (await backend.complete(CALL)).text == ""


async def test_connection_refused_is_a_transport_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = OpenAIBackend(base_url=f"http://127.0.0.1:{port}/v1", model_map={"gpt-test": "m"})
    try:
        with pytest.raises(LlmTransportError, match="unreachable"):
            await client.complete(CALL)
    finally:
        await client.aclose()


async def test_a_huge_answer_is_cut_at_the_byte_cap_without_being_read(
    mock_llm: MockLlmServer,
) -> None:
    mock_llm.script("huge")  # 10 MB, announced in Content-Length
    client = _backend(mock_llm, "none", max_response_bytes=64 * 1024)
    try:
        began = time.perf_counter()
        with pytest.raises(LlmAnswerTooLargeError, match="larger than 65536 bytes") as caught:
            await client.complete(CALL)
        elapsed = time.perf_counter() - began
        assert isinstance(caught.value, BadAnswerError) and caught.value.limit == 65536
        # the connection was dropped: the next call works on a fresh one
        assert (await client.complete(CALL)).text in ACTIONS
    finally:
        await client.aclose()
    await asyncio.sleep(0.3)  # the server notices the hang-up on its next write
    stats = mock_llm.stats()
    assert stats["aborted"] == 1
    assert stats["huge_sent_bytes"] < 5_000_000  # far from the 10 MB it had to send
    assert elapsed < 1.0  # sending it all takes the mock over 0.3 s of pauses alone


async def test_an_unannounced_huge_answer_is_cut_while_streaming() -> None:
    """A chunked answer without Content-Length: only the stream can be cut."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        sent = [0]

        def serve_chunked() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n"
                )
                chunk = b'{"choices":[{"message":{"content":"' + b"A" * 65536
                try:
                    for _ in range(160):  # ~10 MB
                        conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        sent[0] += len(chunk)
                        chunk = b"A" * 65536
                        time.sleep(0.002)
                except OSError:
                    return

        thread = threading.Thread(target=serve_chunked, daemon=True)
        thread.start()
        client = OpenAIBackend(
            base_url=f"http://127.0.0.1:{port}/v1", model_map={"gpt-test": "m"},
            constraint="none", max_response_bytes=100_000,
        )  # fmt: skip
        try:
            with pytest.raises(LlmAnswerTooLargeError, match="larger than 100000 bytes"):
                await client.complete(CALL)
        finally:
            await client.aclose()
        thread.join(timeout=5)
    assert sent[0] < 5_000_000


async def test_the_endpoint_in_params_has_no_credentials(mock_llm: MockLlmServer) -> None:
    url = mock_llm.url.replace("http://", "http://user:PASSWORD@") + "?api-key=SECRET"
    client = OpenAIBackend(base_url=url, model_map={"gpt-test": "mock-1"})
    try:
        completion = await client.complete(CALL)
    finally:
        await client.aclose()
    assert completion.params["endpoint"] == mock_llm.url + "/chat/completions"
    assert "PASSWORD" not in json.dumps(mock_llm.stats())


@pytest.mark.parametrize(
    ("url", "public"),
    [
        (
            "https://u:p@h.example/v1/chat/completions?key=k#f",
            "https://h.example/v1/chat/completions",
        ),
        ("http://127.0.0.1:8000/v1/chat/completions", "http://127.0.0.1:8000/v1/chat/completions"),
        ("https://:tok@h/v1?x=1", "https://h/v1"),
    ],
)
def test_public_endpoint_strips_userinfo_query_and_fragment(url: str, public: str) -> None:
    assert public_endpoint(url) == public


def test_only_mapped_models_are_served(mock_llm: MockLlmServer) -> None:
    client = _backend(mock_llm)
    assert client.serves("gpt-test") and not client.serves("mock-1")


@pytest.mark.parametrize(
    ("base", "url"),
    [
        ("https://api.hodlai.fun/v1", "https://api.hodlai.fun/v1/chat/completions"),
        ("https://openrouter.ai/api/v1/", "https://openrouter.ai/api/v1/chat/completions"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1/chat/completions"),
        ("http://h/v1/chat/completions", "http://h/v1/chat/completions"),
        ("https://gw.example/v1?key=abc", "https://gw.example/v1/chat/completions?key=abc"),
    ],
)
def test_chat_completions_url_follows_the_openai_base_url_convention(base: str, url: str) -> None:
    assert chat_completions_url(base) == url


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", now=40.0) == 60.0
