"""A fetched job's size limits count UTF-8 bytes of its JSON, not ASCII escapes: Chinese and
emoji inputs and result schemas just under, at and just over HODLAI_DISPATCH_MAX_INPUT_BYTES,
checked by the validator and end to end through the dispatcher and the strict mock queue."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.dispatch_fixtures import World, job, outcomes, world  # noqa: F401 -- the fixture
from workers.dispatch.errors import InvalidJobError
from workers.dispatch.jobs import Envelope, json_size, validate
from workers.dispatch.mock.queue import ANSWER_SCHEMA

LIMIT = 256 * 1024
CHINESE = "中"  # 3 bytes in UTF-8, 6 characters as the escape \\u4e2d
EMOJI = "😀"  # 4 bytes in UTF-8, 12 characters as the escapes \\ud83d\\ude00


def _text_of(size: int, char: str) -> str:
    """A JSON string value whose compact UTF-8 JSON text is exactly ``size`` bytes: as many
    ``char`` as fit, padded with ASCII."""
    room = size - 2  # the two quotes
    width = len(char.encode())
    return char * (room // width) + "a" * (room % width)


def _body(**changes: Any) -> dict[str, Any]:
    body = {"category": "summarize", "tags": ["en"], "skill_level": 1, "input": "x",
            "result_schema": ANSWER_SCHEMA, "deadline": time.time() + 60}  # fmt: skip
    return {**body, **changes}


def _check(body: dict[str, Any]) -> None:
    validate(Envelope("job-1", "r", 1, body), now=time.time(), max_deadline_s=86_400.0,
             max_input_bytes=LIMIT)  # fmt: skip


@pytest.mark.parametrize("char", [CHINESE, EMOJI])
def test_an_input_of_exactly_the_limit_in_utf8_bytes_is_accepted_and_one_byte_more_refused(
    char: str,
) -> None:
    at_limit = _text_of(LIMIT, char)
    assert json_size(at_limit) == LIMIT
    assert len(json.dumps(at_limit)) > 1.9 * LIMIT  # the old measure: escapes, far over
    _check(_body(input=at_limit))
    _check(_body(input={"text": _text_of(LIMIT - len('{"text":}'), char)}))
    over = at_limit + "a"
    with pytest.raises(InvalidJobError, match=f"input is {LIMIT + 1} bytes of UTF-8 JSON"):
        _check(_body(input=over))
    with pytest.raises(InvalidJobError, match="larger than the 262144-byte limit"):
        _check(_body(input=at_limit[:-1] + char))  # one character more, 1..4 bytes over


def test_the_independent_runs_210_kb_chinese_input_is_accepted() -> None:
    text = CHINESE * 70_000  # 210,000 bytes of UTF-8; 420,002 characters escaped
    assert json_size({"text": text}) == 210_011
    _check(_body(input={"text": text}))


@pytest.mark.parametrize("char", [CHINESE, EMOJI])
def test_a_result_schema_is_measured_in_utf8_bytes_too(char: str) -> None:
    def schema(description_bytes: int) -> dict[str, Any]:
        return {**ANSWER_SCHEMA, "description": _text_of(description_bytes, char)}

    base = json_size(schema(2))  # with an empty description
    fits = schema(LIMIT - base + 2)
    assert json_size(fits) == LIMIT
    _check(_body(result_schema=fits))
    with pytest.raises(InvalidJobError, match=f"result_schema is {LIMIT + 1} bytes"):
        _check(_body(result_schema=schema(LIMIT - base + 3)))


def test_a_lone_surrogate_is_measured_without_failing() -> None:
    # JSON allows "\ud800"; Python decodes it to a lone surrogate, which strict UTF-8 refuses.
    value = json.loads('"\\ud800"')
    assert json_size(value) == 5
    _check(_body(input=value))


def test_chinese_and_emoji_inputs_under_the_limit_are_dispatched_and_over_it_failed_back(
    world: World,
) -> None:
    world.add_agents([{"name": "reader", "script": ["ok:5", "ok:5"]}])
    under_zh = {**job(1), "input": {"text": CHINESE * 80_000}}  # 240,011 bytes
    under_emoji = {**job(2), "input": {"text": EMOJI * 65_000}}  # 260,011 bytes
    over = {**job(3), "input": {"text": EMOJI * 65_534}}  # 262,147 bytes
    world.enqueue([under_zh, under_emoji, over])
    world.run_until(lambda: len(outcomes(world)) == 3)
    got = outcomes(world)
    assert got["job-1"]["kind"] == got["job-2"]["kind"] == "result"
    body = got["job-3"]["body"]
    assert (body["status"], body["code"]) == ("FAILED", "invalid_job")
    assert body["reason"] == (
        "input is 262147 bytes of UTF-8 JSON, larger than the 262144-byte limit"
    )
    assert {c["job_id"] for c in world.agents["reader"].calls} == {"job-1", "job-2"}
