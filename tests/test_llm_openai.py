"""The OpenAI-compatible backend against the mock server over real HTTP (and a dead port)."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Iterator

import pytest
from structlog.testing import capture_logs

from shared.errors import LlmAccessError, LlmRejectedError, LlmTransportError
from shared.llm import prompt
from shared.llm.backends.openai import OpenAIBackend, chat_completions_url, parse_retry_after
from shared.llm.types import CompletionCall, Constraint, InferenceRequest
from workers.mockllm.server import MockLlmServer

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
    assert stats["authorization"] == {"Bearer sk-test-123": 1}
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
    with pytest.raises(LlmTransportError) as caught:
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
    ],
)
def test_chat_completions_url_follows_the_openai_base_url_convention(base: str, url: str) -> None:
    assert chat_completions_url(base) == url


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", now=40.0) == 60.0
