"""The embedded model for real (SmolLM2-135M-Instruct on llama.cpp, what `make setup`
installs): every answer is exactly one member of its action set, whatever the set holds;
the same request gives the same answer; the trace names the model exactly; a prompt too
long for the context is refused; JSON-schema extraction stays inside its schema."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import json
import os
import random
from collections.abc import Iterator

import pytest

from shared.errors import InvalidRequestError, LlmRejectedError
from shared.llm import InferenceRequest, execute_holdai_inference, validate_request
from shared.llm.backends.llama import LlamaBackend, LoadParams, default_model_path
from shared.llm.grammar import REASONING_MAX_CHARS, reasoned_action_grammar
from shared.llm.types import ChatMessage, CompletionCall

# Threads for the test model: the suite runs one test at a time, so all of this machine's
# cores (2 here) serve the one generation in flight.
THREADS = len(os.sched_getaffinity(0))
ACTION_SETS = 50

# Actions that break naive handling: quotes, backslashes, fences, markdown, JSON look-alikes,
# emoji (also joined and flags), scripts other than Latin, invisible characters, and
# near-duplicates that differ only by case, a zero-width space or Unicode normalisation.
POOL = (
    "BUY", "SELL", "HOLD", "Buy", "buy", "BU\u200bY", "\u200bBUY", "HOLD.", "HOLD!",
    '"```"', "```", "`BUY`", "**SELL**", "_hold_", "# HOLD", "> quote", "[link](x)",
    '"quoted"', "'single'", "back\\slash", "\\", '\\"', 'a"b', '{"action": "BUY"}', "null",
    "🚀", "🚀 moon", "📉📉", "👨\u200d👩\u200d👧 family", "🇯🇵", "価格", "買う", "продать",
    "é", "e\u0301", "Ω", "\u2126", "ﬁne", "A\u00a0B", "\u202eRTL", "x" * 64, "🚀" * 16,
)  # fmt: skip


def action_sets() -> list[tuple[str, ...]]:
    """50 action sets of 1-10 actions, half of them built around near-duplicate families."""
    rng = random.Random(1313)
    families = [("BUY", "Buy", "buy", "BU\u200bY", "\u200bBUY"), ("é", "e\u0301"),
                ("Ω", "\u2126"), ('"```"', "```", "`BUY`"), ("HOLD", "HOLD.", "HOLD!")]  # fmt: skip
    sets = []
    for n in range(ACTION_SETS):
        size = 1 + n % 10
        chosen = list(rng.choice(families))[:size] if n % 2 else []
        rest = [a for a in POOL if a not in chosen]
        chosen += rng.sample(rest, size - len(chosen))
        rng.shuffle(chosen)
        sets.append(tuple(chosen))
    return sets


@pytest.fixture(scope="module")
def llama() -> Iterator[LlamaBackend]:
    path = default_model_path()
    assert path is not None, "the default model is missing: run `make setup`"
    backend = LlamaBackend.load(path, params=LoadParams(n_threads=THREADS))
    yield backend
    asyncio.run(backend.aclose())


def ask(action_set: tuple[str, ...], n: int = 0) -> InferenceRequest:
    return InferenceRequest(
        request_id=n, model="hodlai-local", system_prompt="Pick one.",
        state_string=f"tick {n}", action_set=action_set,
    )  # fmt: skip


def test_the_generated_sets_are_valid_requests_with_all_the_hard_cases() -> None:
    sets = action_sets()
    assert len(sets) == ACTION_SETS and {len(s) for s in sets} == set(range(1, 11))
    for action_set in sets:
        validate_request(ask(action_set), serves=lambda _model: True)
    covered = {a for s in sets for a in s}
    for hard in ('"```"', "BU\u200bY", "e\u0301", "back\\slash", "🚀 moon", "\u2126"):
        assert hard in covered


async def test_every_answer_is_exactly_one_member_of_its_action_set(llama: LlamaBackend) -> None:
    for n, action_set in enumerate(action_sets()):
        result = await execute_holdai_inference(ask(action_set, n), backend=llama)
        assert result.action in action_set, (action_set, result.reasoning)
        # the constraint made the very first answer a valid one
        assert len(result.attempts) == 1 and result.attempts[0].outcome == "answered"
        answer = json.loads(result.reasoning)
        assert list(answer) == ["reasoning", "action"] and answer["action"] == result.action
        assert isinstance(answer["reasoning"], str)
        assert len(answer["reasoning"]) <= REASONING_MAX_CHARS


async def test_the_same_request_twice_gives_the_same_answer(llama: LlamaBackend) -> None:
    request = ask(("BUY", "SELL", "HOLD"), 7)
    first = await execute_holdai_inference(request, backend=llama)
    # another request in between must not change it: no cached prefix is reused
    await execute_holdai_inference(ask(("STAKE", "WAIT"), 8), backend=llama)
    second = await execute_holdai_inference(request, backend=llama)
    assert second.reasoning == first.reasoning and second.action == first.action
    assert second.attempts[0].params == first.attempts[0].params


async def test_the_trace_names_the_model_the_runtime_the_grammar_and_the_sampling(
    llama: LlamaBackend,
) -> None:
    action_set = ("BUY", "SELL", "HOLD")
    result = await execute_holdai_inference(ask(action_set, 9), backend=llama)
    trace = json.loads(result.trace_json)
    backend = trace["backend"]
    runtime, params = backend["runtime"], backend["params"]
    path = default_model_path()
    assert path is not None
    assert backend["name"] == "llama" and backend["model"] == path.name
    assert runtime["gguf_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert runtime["gguf_bytes"] == path.stat().st_size
    assert runtime["llama_cpp_python"] == importlib.metadata.version("llama-cpp-python")
    assert runtime["ggml"] != "unknown" and "CPU" in runtime["system_info"]
    assert runtime["load"] == {"n_ctx": 4096, "n_batch": 512, "n_threads": THREADS, "seed": 0}
    grammar = reasoned_action_grammar(action_set)
    assert runtime["grammar"] == grammar
    assert params["grammar_sha256"] == hashlib.sha256(grammar.encode()).hexdigest()
    assert (params["temperature"], params["sampler"], params["seed"]) == (0.0, "greedy", 0)
    assert params["constraint"] == "gbnf" and params["finish_reason"] == "stop"


async def test_a_prompt_too_long_for_the_context_is_refused_naming_the_setting() -> None:
    path = default_model_path()
    assert path is not None
    small = LlamaBackend.load(path, params=LoadParams(n_ctx=512, n_threads=THREADS))
    try:
        call = CompletionCall(
            "hodlai-local", (ChatMessage("user", "price=1; " * 300),), ("BUY",), "price"
        )
        with pytest.raises(LlmRejectedError, match="HODLAI_LOCAL_MODEL_CONTEXT"):
            await small.complete(call)
    finally:
        await small.aclose()


async def test_a_model_it_does_not_serve_is_not_answered(llama: LlamaBackend) -> None:
    with pytest.raises(InvalidRequestError, match="not served"):
        await llama.complete(CompletionCall("gpt-4o", (ChatMessage("user", "x"),), ("A",), "x"))


def test_a_grammar_llama_cpp_cannot_parse_is_refused_before_sampling(
    llama: LlamaBackend,
) -> None:
    llama.check_grammar('root ::= "a" | "b"')
    with pytest.raises(LlmRejectedError, match="cannot parse"):
        llama.check_grammar('root ::= "a')  # sampling with it would crash the process


async def test_schema_extraction_stays_inside_the_schema(llama: LlamaBackend) -> None:
    schema = {
        "type": "object",
        "properties": {
            "token": {"type": "string", "enum": ["BNB", "ETH", "USDT"]},
            "amount": {"type": "integer"},
            "side": {"type": "string", "enum": ["buy", "sell"]},
        },
        "required": ["token", "amount", "side"],
        "additionalProperties": False,
    }
    messages = (
        ChatMessage("system", "Extract the order as JSON."),
        ChatMessage("user", "please sell 25 BNB for me"),
    )
    completion = await llama.complete_structured(messages, schema, max_tokens=64)
    order = json.loads(completion.text)
    assert set(order) == {"token", "amount", "side"}
    assert order["token"] in {"BNB", "ETH", "USDT"} and order["side"] in {"buy", "sell"}
    assert isinstance(order["amount"], int)
    assert completion.params["constraint"] == "json_schema"
    assert completion.runtime["gguf_sha256"] == llama.model.sha256
