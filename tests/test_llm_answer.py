"""Answer normalisation: whatever the model says, the result is an element of the set."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import BadAnswerError
from shared.llm.answer import MAX_ANSWER_CHARS, candidates, match_action

ACTIONS = ("BUY", "SELL", "HOLD")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("BUY", "BUY"),
        ("  SELL \n", "SELL"),
        ("```\nHOLD\n```", "HOLD"),
        ("```text\nHOLD\n```", "HOLD"),
        ("`BUY`", "BUY"),
        ('"SELL"', "SELL"),
        ("'SELL'", "SELL"),
        ("“HOLD”", "HOLD"),
        ("**BUY**", "BUY"),
        ("SELL.", "SELL"),
        ('"SELL".', "SELL"),
        ('```\n"BUY"\n```', "BUY"),
        ('{"action": "HOLD"}', "HOLD"),
        ('```json\n{"action": "SELL"}\n```', "SELL"),
        ("buy", "BUY"),
        ("Hold!", "HOLD"),
    ],
)
def test_wrapped_answers_normalise_to_the_permitted_action(raw: str, expected: str) -> None:
    assert match_action(raw, ACTIONS) == expected


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        (None, "empty"),
        ("I choose BUY because prices rise", "not one of the permitted"),
        ("WITHDRAW_ALL", "not one of the permitted"),
        ("BUY SELL", "not one of the permitted"),
        ('{"choice": "BUY"}', "not one of the permitted"),
        ("B" * (MAX_ANSWER_CHARS + 1), "characters long"),
    ],
)
def test_answers_outside_the_set_are_bad_answers(raw: str | None, problem: str) -> None:
    with pytest.raises(BadAnswerError, match=problem):
        match_action(raw, ACTIONS)


def test_exact_match_wins_over_a_case_insensitive_one() -> None:
    assert match_action("buy", ("BUY", "buy")) == "buy"
    assert match_action("BUY", ("BUY", "buy")) == "BUY"


def test_case_insensitive_match_must_be_unique() -> None:
    with pytest.raises(BadAnswerError, match="matches 2 permitted actions"):
        match_action("Buy", ("BUY", "buy"))


def test_an_action_ending_in_punctuation_is_matched_as_written() -> None:
    assert match_action("SELL!", ("SELL!", "SELL")) == "SELL!"
    assert match_action("SELL", ("SELL!", "SELL")) == "SELL"


def test_the_returned_action_is_the_element_of_the_set_not_the_answer_text() -> None:
    actions = ("Rebalance", "Hold")
    result = match_action("REBALANCE", actions)
    assert result == "Rebalance" and result is actions[0]


def test_deeply_nested_wrappers_stay_bounded() -> None:
    raw = '"' * 200 + "BUY" + '"' * 200
    assert match_action(raw, ACTIONS) == "BUY"
    assert len(candidates("`'\"*" * 100)) <= 256


@given(
    raw=st.text(max_size=80),
    actions=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=10, unique=True),
)
def test_match_action_returns_a_member_of_the_set_or_raises(raw: str, actions: list[str]) -> None:
    try:
        chosen = match_action(raw, tuple(actions))
    except BadAnswerError:
        return
    assert chosen in actions
