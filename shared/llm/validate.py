"""Checks a request can be answered at all, before any LLM call is made.

Guarantee: :func:`validate_request` either returns, or raises InvalidRequestError with a
reason an operator can read; it never calls out. A request that fails here can never be
answered as it stands (re-sending it gives the same failure), so the worker marks it FAILED
instead of spending LLM calls on it.

The byte limits are the contract's (``getStringLimits()``), passed in as
:class:`StringLimits`; without them the contract's defaults apply (integration plan,
``reason``). The contract's admin can raise them with ``setStringLimits``, and a request
emitted on chain has passed them at its block, so a caller must never pass limits stricter
than the contract had then (see ``workers/oracle/inference/limits.py``). The other checks
(duplicates, blanks, control characters, the served model) are the node's own: such a
request could be accepted on chain but never answered as it stands.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from shared.errors import InvalidRequestError
from shared.llm.types import InferenceRequest

# The contract's defaults (its constructor), in bytes of UTF-8 as the contract counts them.
MAX_MODEL_BYTES = 64
MAX_SYSTEM_PROMPT_BYTES = 1024
MAX_STATE_BYTES = 2048
MAX_ACTIONS = 10
MAX_ACTION_BYTES = 64


@dataclass(frozen=True)
class StringLimits:
    """The provider's input limits, in the order ``getStringLimits()`` returns them: bytes,
    except ``max_actions`` (items)."""

    max_model_bytes: int = MAX_MODEL_BYTES
    max_prompt_bytes: int = MAX_SYSTEM_PROMPT_BYTES
    max_state_bytes: int = MAX_STATE_BYTES
    max_actions: int = MAX_ACTIONS
    max_action_bytes: int = MAX_ACTION_BYTES

    def widened(self, other: StringLimits) -> StringLimits:
        """Each limit the larger of the two: what both sets of limits accept, and more."""
        return StringLimits(
            max(self.max_model_bytes, other.max_model_bytes),
            max(self.max_prompt_bytes, other.max_prompt_bytes),
            max(self.max_state_bytes, other.max_state_bytes),
            max(self.max_actions, other.max_actions),
            max(self.max_action_bytes, other.max_action_bytes),
        )

    def admit(self, request: InferenceRequest) -> bool:
        """True when every field of ``request`` is within these limits (sizes only)."""
        return (
            _size(request.model) <= self.max_model_bytes
            and _size(request.system_prompt) <= self.max_prompt_bytes
            and _size(request.state_string) <= self.max_state_bytes
            and len(request.action_set) <= self.max_actions
            and all(_size(action) <= self.max_action_bytes for action in request.action_set)
        )


#: The limits a freshly deployed provider has.
DEFAULT_LIMITS = StringLimits()

# Free text may span lines; any other control character (NUL, ESC, ...) has no business in
# a prompt and is a classic way to smuggle terminal or parser tricks into logs and traces.
_TEXT_CONTROLS_ALLOWED = frozenset("\n\r\t")


def validate_request(
    request: InferenceRequest,
    *,
    serves: Callable[[str], bool],
    limits: StringLimits = DEFAULT_LIMITS,
) -> None:
    """Raise InvalidRequestError naming the first problem; ``serves`` says which models the
    node answers for, ``limits`` are the contract's."""
    _check_text("model", request.model, limits.max_model_bytes, multiline=False)
    if not request.model.strip():
        raise InvalidRequestError("model is empty")
    _check_text("systemPrompt", request.system_prompt, limits.max_prompt_bytes, multiline=True)
    _check_text("stateString", request.state_string, limits.max_state_bytes, multiline=True)
    actions = request.action_set
    if not actions:
        raise InvalidRequestError("actionSet is empty")
    if len(actions) > limits.max_actions:
        raise InvalidRequestError(
            f"actionSet has {len(actions)} items, more than {limits.max_actions}"
        )
    seen: set[str] = set()
    for index, action in enumerate(actions):
        name = f"actionSet[{index}]"
        _check_text(name, action, limits.max_action_bytes, multiline=False)
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


def _size(value: str) -> int:
    """UTF-8 bytes of ``value``; lone surrogates count as the 3 bytes they would take (they
    are refused by the text checks anyway)."""
    return len(value.encode("utf-8", "surrogatepass"))


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
