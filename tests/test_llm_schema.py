"""JSON-schema answers in the core LLM interface: the deterministic fill of the test backend,
the answer parser, what the OpenAI-compatible backend puts on the wire (and its fallback
ladder), and the mock LLM's scripted and schema-filled answers over real HTTP."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shared.errors import BadAnswerError
from shared.llm.backends.local import LocalBackend
from shared.llm.backends.openai import OpenAIBackend
from shared.llm.schema import (
    deterministic_instance,
    parse_json_answer,
    schema_in_messages,
    schema_instruction,
)
from shared.llm.types import ChatMessage, Completion, CompletionCall, JsonSchema
from workers.devnet.mockllm.server import MockLlmServer

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "side": {"type": "string", "enum": ["buy", "sell"]},
        "token": {"type": "string", "pattern": "^(0x[0-9a-fA-F]{4})?$"},
        "amount": {"type": "integer", "minimum": 0},
        "size": {"type": "integer", "enum": [0, 5, 25]},
    },
    "required": ["side", "token", "amount", "size"],
    "additionalProperties": False,
}
ORDER = JsonSchema("order", SCHEMA)


def _call(*texts: str, schema: JsonSchema = ORDER) -> CompletionCall:
    messages = (ChatMessage("system", "Extract." + "\n" + schema_instruction(schema.schema)),
                *(ChatMessage("user", text) for text in texts))  # fmt: skip
    return CompletionCall.structured("hodlai-local", messages, schema, max_tokens=64)


def test_the_deterministic_fill_reads_the_users_text_newest_first() -> None:
    assert deterministic_instance(SCHEMA, ["sell 25 of 0xBEEF now"]) == {
        "side": "sell", "token": "0xBEEF", "amount": 25, "size": 25,
    }  # fmt: skip
    # nothing named: first enum member, "" (the pattern admits it), the minimum
    assert deterministic_instance(SCHEMA, ["hello"]) == {
        "side": "buy", "token": "", "amount": 0, "size": 0,
    }  # fmt: skip
    # the newest text wins; an older one fills what the newer lacks
    assert deterministic_instance(SCHEMA, ["0xCAFE", "sell 5 of 0xBEEF"]) == {
        "side": "sell", "token": "0xCAFE", "amount": 5, "size": 5,
    }  # fmt: skip
    nullable = {"type": "object", "properties": {"n": {"type": ["integer", "null"]}}}
    assert deterministic_instance(nullable, ["none here"]) == {"n": None}


async def test_the_local_backend_answers_schema_calls_deterministically() -> None:
    backend = LocalBackend()
    first = await backend.complete(_call("buy 5 of 0xBEEF"))
    assert json.loads(first.text) == {"side": "buy", "token": "0xBEEF", "amount": 5, "size": 5}
    assert (await backend.complete(_call("buy 5 of 0xBEEF"))).text == first.text
    assert first.params["constraint"] == "json_schema"


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1}', ' {"a": 1} ', '```json\n{"a": 1}\n```', 'Sure! Here it is: {"a": 1} Thanks.',
        '```\n{"a": 1}\n``` and {"b": 2}',
    ],
)  # fmt: skip
def test_parse_json_answer_finds_the_object(text: str) -> None:
    assert parse_json_answer(text) == {"a": 1}


@pytest.mark.parametrize("text", ["", "no json", "[1, 2]", "{not json}", "{" * 9000])
def test_parse_json_answer_refuses_what_is_not_an_object(text: str) -> None:
    with pytest.raises(BadAnswerError):
        parse_json_answer(text)


def test_the_schema_travels_in_a_system_line() -> None:
    messages = [{"role": "system", "content": "x\n" + schema_instruction(SCHEMA) + "\ny"}]
    assert schema_in_messages(messages) == SCHEMA
    assert schema_in_messages([{"role": "user", "content": schema_instruction(SCHEMA)}]) is None


async def test_the_openai_backend_sends_a_strict_json_schema_then_json_object_then_nothing() -> (
    None
):
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        if "response_format" in body:
            return httpx.Response(400, json={"error": {"message": "no response_format here"}})
        answer = {"choices": [{"message": {"role": "assistant", "content": '{"a": 1}'}}]}
        return httpx.Response(200, json=answer)

    backend = OpenAIBackend(base_url="http://llm.test/v1", model_map={"hodlai-local": "m"},
                            transport=httpx.MockTransport(handler))  # fmt: skip
    completion = await backend.complete(_call("buy 5"))
    assert completion.text == '{"a": 1}' and completion.params["constraint"] == "none"
    assert completion.params["max_tokens"] == 64
    assert bodies[0]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "order", "strict": True, "schema": SCHEMA},
    }
    assert bodies[1]["response_format"] == {"type": "json_object"}
    assert "response_format" not in bodies[2]
    assert backend.schema_constraint_for("m") == "none"
    await backend.complete(_call("buy 5"))
    assert len(bodies) == 4 and "response_format" not in bodies[3]  # remembered
    # the oracle's action calls keep their own constraint
    assert backend.constraint_for("m") == "json_schema"
    await backend.aclose()


@pytest.fixture
def server() -> Iterator[MockLlmServer]:
    mock = MockLlmServer().start()
    yield mock
    mock.stop()


def _chat(server: MockLlmServer, body: dict[str, Any]) -> str:
    response = httpx.post(server.url + "/chat/completions", json=body, timeout=5)
    response.raise_for_status()
    content: str = response.json()["choices"][0]["message"]["content"]
    return content


def _extraction(text: str, response_format: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "m",
        "messages": [
            {"role": "system", "content": schema_instruction(SCHEMA)},
            {"role": "user", "content": text},
        ],
    }
    if response_format is not None:
        body["response_format"] = response_format
    return body


def test_the_mock_fills_extraction_schemas_and_plays_scripted_answers(
    server: MockLlmServer,
) -> None:
    strict = {"type": "json_schema", "json_schema": {"name": "order", "schema": SCHEMA}}
    filled = json.loads(_chat(server, _extraction("sell 5 of 0xBEEF", strict)))
    assert filled == {"side": "sell", "token": "0xBEEF", "amount": 5, "size": 5}
    # json_object and no response_format: the schema is read from the system line
    assert json.loads(_chat(server, _extraction("sell 5", {"type": "json_object"})))["amount"] == 5
    assert json.loads(_chat(server, _extraction("sell 5")))["side"] == "sell"
    # scripted over HTTP (a JSON value and a raw string), consumed one per request
    control = server.url.removesuffix("/v1") + "/control"
    answers = {"answers": [{"token": "0xDEAD"}, "not json"]}
    httpx.post(control, json=answers, timeout=5).raise_for_status()
    assert json.loads(_chat(server, _extraction("sell 5 of 0xBEEF", strict))) == {"token": "0xDEAD"}
    assert _chat(server, _extraction("sell 5 of 0xBEEF", strict)) == "not json"
    assert json.loads(_chat(server, _extraction("sell 5 of 0xBEEF", strict)))["token"] == "0xBEEF"
    stats = server.stats()
    assert stats["scripted_answers"] == 2 and stats["answers_left"] == 0
    assert stats["constraints"] == {"json_schema": 4, "json_object": 1, "none": 1}


def test_reject_json_schema_refuses_only_the_schema_and_keeps_the_scripted_answer(
    server: MockLlmServer,
) -> None:
    server.configure(reject_json_schema=True)
    server.answer({"token": "0xDEAD"})
    strict = {"type": "json_schema", "json_schema": {"name": "order", "schema": SCHEMA}}
    refused = httpx.post(server.url + "/chat/completions", json=_extraction("x", strict), timeout=5)
    assert refused.status_code == 400
    assert json.loads(_chat(server, _extraction("x", {"type": "json_object"}))) == {
        "token": "0xDEAD"
    }


def test_the_mock_llm_command_refusing_json_schema_gets_json_object_from_the_backend() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "mock-llm", "--port", "0", "--reject-json-schema"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split(" on ")[1].strip()

        async def ask() -> Completion:
            backend = OpenAIBackend(base_url=url, model_map={"hodlai-local": "m"})
            try:
                return await backend.complete(_call("sell 5 of 0xBEEF"))
            finally:
                await backend.aclose()

        completion = asyncio.run(ask())
        assert completion.params["constraint"] == "json_object"
        assert json.loads(completion.text)["token"] == "0xBEEF"
        stats = httpx.get(url.removesuffix("/v1") + "/stats", timeout=5).json()
        assert stats["constraints"] == {"json_schema": 1, "json_object": 1}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
