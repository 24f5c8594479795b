"""The GBNF grammar of the answer object: literals that match exactly their characters, a
bounded reasoning, a token budget that can never cut an answer, the same text every time."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.llm.grammar import (
    REASONING_MAX_CHARS,
    action_json,
    gbnf_literal,
    max_answer_bytes,
    reasoned_action_grammar,
)

NASTY = ('"```"', "back\\slash", "BU\u200bY", "BUY", "Buy", "🚀 moon", "**bold**", "価格")


def unescape_gbnf_literal(literal: str) -> str:
    """An independent reading of a GBNF literal: the characters it matches."""
    assert literal.startswith('"') and literal.endswith('"')
    body, out, i = literal[1:-1], [], 0
    while i < len(body):
        char = body[i]
        assert char != '"', "an unescaped quote would end the literal"
        assert 0x20 <= ord(char) < 0x7F, f"raw {char!r} in a literal"
        if char != "\\":
            out.append(char)
            i += 1
            continue
        kind = body[i + 1]
        if kind in '"\\':
            out.append(kind)
            i += 2
        else:
            width = {"u": 4, "U": 8}[kind]
            out.append(chr(int(body[i + 2 : i + 2 + width], 16)))
            i += 2 + width
    return "".join(out)


@given(st.text(min_size=1, max_size=64))
def test_a_gbnf_literal_matches_exactly_its_text(text: str) -> None:
    assert unescape_gbnf_literal(gbnf_literal(text)) == text


def test_each_action_is_one_alternative_written_as_its_json_literal() -> None:
    grammar = reasoned_action_grammar(NASTY)
    action_line = next(line for line in grammar.splitlines() if line.startswith("action ::="))
    alternatives = action_line.removeprefix("action ::= ").split(" | ")
    decoded = [json.loads(unescape_gbnf_literal(alt)) for alt in alternatives]
    assert decoded == list(NASTY)  # the very strings, in order, near-duplicates kept apart


def test_the_reasoning_is_bounded_and_cannot_hold_a_quote_or_an_escape() -> None:
    grammar = reasoned_action_grammar(("A",))
    assert f"reasoning ::= char{{0,{REASONING_MAX_CHARS}}}" in grammar
    assert 'char ::= [^"\\\\\\x00-\\x1F\\x7F]' in grammar


def test_the_token_budget_covers_the_longest_answer_the_grammar_admits() -> None:
    actions = ("🚀" * 16, "x" * 64, '"' * 32)  # the longest actions, 64 bytes each
    # json.dumps' default separators write the object exactly as the grammar does
    longest = json.dumps(
        {"reasoning": "😀" * REASONING_MAX_CHARS, "action": '"' * 32}, ensure_ascii=False
    )
    assert max_answer_bytes(actions) == len(longest.encode("utf-8"))
    assert action_json('"' * 32) == '"' + '\\"' * 32 + '"'


def test_the_same_action_set_always_gives_the_same_grammar() -> None:
    assert reasoned_action_grammar(NASTY) == reasoned_action_grammar(tuple(NASTY))


def test_an_empty_action_set_has_no_grammar() -> None:
    with pytest.raises(ValueError, match="at least one"):
        reasoned_action_grammar(())
