"""Validation before any LLM call: each way a request can be unanswerable."""

from __future__ import annotations

import pytest

from shared.errors import InvalidRequestError
from shared.llm.types import InferenceRequest
from shared.llm.validate import DEFAULT_LIMITS, StringLimits, validate_request

SERVED = frozenset({"hodlai-local"})


def _request(**changes: object) -> InferenceRequest:
    fields: dict[str, object] = {
        "request_id": 1, "model": "hodlai-local", "system_prompt": "Manage the vault.",
        "state_string": "price=1.00\ntrend=flat", "action_set": ("BUY", "SELL", "HOLD"),
    }  # fmt: skip
    fields.update(changes)
    return InferenceRequest(**fields)  # type: ignore[arg-type]


def test_a_well_formed_request_passes() -> None:
    validate_request(_request(), serves=SERVED.__contains__)


def test_limits_are_inclusive_and_counted_in_utf8_bytes() -> None:
    validate_request(
        _request(
            system_prompt="é" * 512, state_string="x" * 2048,
            action_set=tuple(f"A{i}" + "b" * 61 for i in range(10)), model="m" * 64,
        ),
        serves=lambda _m: True,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"action_set": ()}, "actionSet is empty"),
        ({"action_set": ("BUY", "BUY")}, "appears more than once"),
        ({"action_set": ("BUY", "")}, r"actionSet\[1\] is empty"),
        ({"action_set": ("BUY", "   ")}, "empty or blank"),
        ({"action_set": (" BUY",)}, "leading or trailing whitespace"),
        ({"action_set": tuple(f"A{i}" for i in range(11))}, "11 items, more than 10"),
        ({"action_set": ("B" * 65,)}, "65 bytes, more than 64"),
        ({"action_set": ("é" * 33,)}, "66 bytes, more than 64"),
        ({"action_set": ("BUY\nSELL",)}, "control character U\\+000A"),
        ({"model": "m" * 65}, "model is 65 bytes"),
        ({"model": ""}, "model is empty"),
        ({"model": "gpt-unknown"}, "not served by this node"),
        ({"system_prompt": "p" * 1025}, "systemPrompt is 1025 bytes"),
        ({"state_string": "s" * 2049}, "stateString is 2049 bytes"),
        ({"state_string": "price=1\x00"}, "control character U\\+0000"),
        ({"system_prompt": "esc \x1b[31m red"}, "control character U\\+001B"),
        ({"state_string": "bad \udcff byte"}, "not valid UTF-8"),
        ({"action_set": ("BUY", "S\udc80")}, "not valid UTF-8"),
    ],
)
def test_unanswerable_requests_are_refused_with_a_reason(
    changes: dict[str, object], reason: str
) -> None:
    with pytest.raises(InvalidRequestError, match=reason):
        validate_request(_request(**changes), serves=SERVED.__contains__)


RAISED = StringLimits(
    max_model_bytes=128, max_prompt_bytes=4096, max_state_bytes=8192, max_actions=20,
    max_action_bytes=100,
)  # fmt: skip


def test_limits_raised_on_chain_admit_what_the_defaults_refuse() -> None:
    big = _request(
        model="m" * 128, system_prompt="p" * 4096, state_string="s" * 8192,
        action_set=tuple(f"A{i:02d}" + "b" * 97 for i in range(20)),
    )  # fmt: skip
    with pytest.raises(InvalidRequestError, match="model is 128 bytes, more than 64"):
        validate_request(big, serves=lambda _m: True)
    validate_request(big, serves=lambda _m: True, limits=RAISED)
    assert RAISED.admit(big) and not DEFAULT_LIMITS.admit(big)
    with pytest.raises(InvalidRequestError, match="stateString is 8193 bytes, more than 8192"):
        validate_request(_request(state_string="s" * 8193), serves=SERVED.__contains__,
                         limits=RAISED)  # fmt: skip


def test_widened_limits_take_the_larger_of_each() -> None:
    lowered = StringLimits(32, 100, 200, 3, 8)
    assert lowered.widened(DEFAULT_LIMITS) == DEFAULT_LIMITS
    assert lowered.widened(RAISED) == RAISED
    mixed = StringLimits(32, 9000, 200, 30, 8).widened(DEFAULT_LIMITS)
    assert mixed == StringLimits(64, 9000, 2048, 30, 64)
    # uint256 "no limit" values from the contract work as limits
    assert StringLimits(2**256 - 1, 2**256 - 1, 2**256 - 1, 2**256 - 1, 2**256 - 1).admit(
        _request(state_string="s" * 100_000)
    )
