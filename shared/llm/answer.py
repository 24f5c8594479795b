"""Turns whatever the model said into exactly one permitted action, or a BadAnswerError.

Guarantee: :func:`match_action` returns an element of ``action_set`` (the very string, not a
look-alike) or raises BadAnswerError saying what was wrong. No other outcome is possible,
whatever the model, the backend or a prompt injection in the state did. This is the line
of defence the rest of the node relies on; constrained decoding only makes it fire less.

Normalisation peels, repeatedly, what models wrap a one-word answer in: surrounding
whitespace, a JSON object ``{"action": ...}`` (constrained decoding), code fences and
backticks, markdown emphasis, quotes, trailing punctuation. Every intermediate form is a
candidate. An exact match of any candidate wins (earliest first, so an action that itself
ends in punctuation is still matched as written); then a match ignoring case, but only if
exactly one action matches. Extra words ("I choose BUY") are a bad answer, not a guess.
"""

from __future__ import annotations

import json
import re
from collections import deque

from shared.errors import BadAnswerError

# Characters shown of a bad answer in the error (and so in fail_reason and the retry hint).
SHOWN_CHARS = 80
# Characters of a stripped answer beyond which it cannot be a wrapped action: an action is at
# most 64 bytes and the wrappers add a few dozen characters. Also bounds the work below.
MAX_ANSWER_CHARS = 512
# Distinct normalised forms examined; real answers produce fewer than ten.
MAX_FORMS = 256

_FENCE = re.compile(r"^```[^\n`]*\n(.*?)\n?```$", re.DOTALL)
_QUOTE_PAIRS = (('"', '"'), ("'", "'"), ("`", "`"), ("“", "”"), ("‘", "’"), ("«", "»"))
_EMPHASIS = ("**", "__", "*", "_")
_TRAILING_PUNCTUATION = ".!?,;:。！？"


def candidates(raw: str) -> list[str]:
    """Every successively normalised form of ``raw``, most literal first, without repeats."""
    forms: list[str] = []
    seen: set[str] = set()
    todo = deque([raw])
    while todo and len(forms) < MAX_FORMS:
        text = todo.popleft()
        if text in seen:
            continue
        seen.add(text)
        forms.append(text)
        todo.extend(_peel(text))
    return [form for form in forms if form]


def _peel(text: str) -> list[str]:
    """The forms one normalisation step away from ``text``."""
    out: list[str] = []
    stripped = text.strip()
    if stripped != text:
        out.append(stripped)
    fence = _FENCE.match(stripped)
    if fence:
        out.append(fence.group(1))
    inner = _from_json(stripped)
    if inner is not None:
        out.append(inner)
    for opening, closing in _QUOTE_PAIRS:
        if len(stripped) >= 2 and stripped.startswith(opening) and stripped.endswith(closing):
            out.append(stripped[len(opening) : -len(closing)])
    for mark in _EMPHASIS:
        if len(stripped) > 2 * len(mark) and stripped.startswith(mark) and stripped.endswith(mark):
            out.append(stripped[len(mark) : -len(mark)])
    if stripped and stripped[-1] in _TRAILING_PUNCTUATION:
        out.append(stripped.rstrip(_TRAILING_PUNCTUATION))
    return out


def _from_json(text: str) -> str | None:
    """The action out of ``{"action": "X"}`` or ``"X"``, as constrained decoding produces."""
    if not text.startswith(("{", '"')):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, dict):
        value = value.get("action")
    return value if isinstance(value, str) else None


def match_action(raw: str | None, action_set: tuple[str, ...]) -> str:
    """The permitted action ``raw`` names, or BadAnswerError saying why there is none."""
    if raw is None or not raw.strip():
        raise BadAnswerError("the answer is empty")
    if len(raw.strip()) > MAX_ANSWER_CHARS:
        raise BadAnswerError(
            f"the answer is {len(raw.strip())} characters long; expected one action alone"
        )
    forms = candidates(raw)
    permitted = set(action_set)
    for form in forms:
        if form in permitted:
            return next(action for action in action_set if action == form)
    for form in forms:
        folded = form.casefold()
        matches = [action for action in action_set if action.casefold() == folded]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise BadAnswerError(
                f"{_shown(raw)} matches {len(matches)} permitted actions when case is ignored"
            )
    raise BadAnswerError(f"{_shown(raw)} is not one of the permitted actions")


def _shown(raw: str) -> str:
    text = raw.strip()
    if len(text) > SHOWN_CHARS:
        text = text[:SHOWN_CHARS] + "…"
    return json.dumps(text, ensure_ascii=False)
