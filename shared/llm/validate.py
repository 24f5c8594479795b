"""Checks a request can be answered at all, before any LLM call is made.

Guarantee: :func:`validate_request` either returns, or raises InvalidRequestError with a
reason an operator can read; it never calls out. A request that fails here can never be
answered as it stands (re-sending it gives the same failure), so the worker marks it FAILED
instead of spending LLM calls on it.

The byte limits are the contract's defaults (integration plan, ``reason``). They are
re-checked here because the contract's admin can raise them and a node must still refuse
what it cannot handle, and because the answer must fit ``fulfillNodeReasoning``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable

from shared.errors import InvalidRequestError
from shared.llm.types import InferenceRequest

# Bytes of UTF-8, as the contract counts them.
MAX_MODEL_BYTES = 64
MAX_SYSTEM_PROMPT_BYTES = 1024
MAX_STATE_BYTES = 2048
MAX_ACTIONS = 10
MAX_ACTION_BYTES = 64

# Free text may span lines; any other control character (NUL, ESC, ...) has no business in
# a prompt and is a classic way to smuggle terminal or parser tricks into logs and traces.
_TEXT_CONTROLS_ALLOWED = frozenset("\n\r\t")


def validate_request(request: InferenceRequest, *, serves: Callable[[str], bool]) -> None:
    """Raise InvalidRequestError naming the first problem; ``serves`` says which models the
    node answers for."""
    _check_text("model", request.model, MAX_MODEL_BYTES, multiline=False)
    if not request.model.strip():
        raise InvalidRequestError("model is empty")
    _check_text("systemPrompt", request.system_prompt, MAX_SYSTEM_PROMPT_BYTES, multiline=True)
    _check_text("stateString", request.state_string, MAX_STATE_BYTES, multiline=True)
    actions = request.action_set
    if not actions:
        raise InvalidRequestError("actionSet is empty")
    if len(actions) > MAX_ACTIONS:
        raise InvalidRequestError(f"actionSet has {len(actions)} items, more than {MAX_ACTIONS}")
    seen: set[str] = set()
    for index, action in enumerate(actions):
        name = f"actionSet[{index}]"
        _check_text(name, action, MAX_ACTION_BYTES, multiline=False)
        if not action.strip():
            raise InvalidRequestError(f"{name} is empty or blank")
        # Answers are whitespace-stripped before matching, so such an action could never be
        # chosen exactly.
        if action != action.strip():
            raise InvalidRequestError(f"{name} {action!r} has leading or trailing whitespace")
        if action in seen:
            raise InvalidRequestError(f"{name} {action!r} appears more than once")
        seen.add(action)
    if not serves(request.model):
        raise InvalidRequestError(f"model {request.model!r} is not served by this node")


def _check_text(name: str, value: str, limit: int, *, multiline: bool) -> None:
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        # Lone surrogates: what invalid UTF-8 from the chain becomes when decoded leniently.
        raise InvalidRequestError(f"{name} is not valid UTF-8 (at character {exc.start})") from exc
    if size > limit:
        raise InvalidRequestError(f"{name} is {size} bytes, more than {limit}")
    for position, char in enumerate(value):
        if multiline and char in _TEXT_CONTROLS_ALLOWED:
            continue
        if unicodedata.category(char) == "Cc":
            raise InvalidRequestError(
                f"{name} contains control character U+{ord(char):04X} at {position}"
            )
