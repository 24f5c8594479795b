"""The deterministic backend (``local``): answers with no model at all, for unit tests.

It is not a model: the node's default is the embedded model (:mod:`shared.llm.backends.llama`).
This backend stays so that tests of the worker, the store and the chain run in
milliseconds with answers they can predict.

Guarantees: the same request always gets the same answer, on any machine and in any
process; the answer is always one of the permitted actions; nothing is imported or
contacted beyond the standard library.

Rule, in order: if exactly one permitted action appears in the state as a whole word
(case-insensitive), that one, so a test can steer the vault by writing e.g. "signal=SELL"
into the state; otherwise the SHA-256 of the model, prompt, state and actions picks one.

A JSON-schema call (``call.json_schema``) is answered with
:func:`shared.llm.schema.deterministic_instance` of the schema over the user's messages,
newest first: a test writes "mint 100 of 0x…" and gets that address and that number back.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping

from shared.llm.schema import deterministic_instance, user_texts
from shared.llm.types import AnswerFormat, Completion, CompletionCall

#: The on-chain model the local backend serves when no map is configured.
DEFAULT_LOCAL_MODELS: Mapping[str, str] = {"hodlai-local": "hodlai-local-v1"}


class LocalBackend:
    """Deterministic stand-in for a model; see the module docstring for the rule."""

    name = "local"
    answer_format: AnswerFormat = "action"

    def __init__(self, model_map: Mapping[str, str] | None = None) -> None:
        self._models = dict(model_map or DEFAULT_LOCAL_MODELS)

    def serves(self, model: str) -> bool:
        return model in self._models

    async def complete(self, call: CompletionCall) -> Completion:
        if call.json_schema is not None:
            value = deterministic_instance(call.json_schema.schema, user_texts(call.messages))
            return Completion(
                text=json.dumps(value, ensure_ascii=False),
                backend_model=self._models.get(call.model, call.model),
                params={"temperature": 0, "rule": "schema_from_text", "constraint": "json_schema"},
            )
        action, rule = choose(call.model, call.messages[0].content, call.state_string,
                              call.action_set)  # fmt: skip
        return Completion(
            text=action,
            backend_model=self._models.get(call.model, call.model),
            params={"temperature": 0, "rule": rule},
        )

    async def aclose(self) -> None:
        """Nothing to release."""


def choose(model: str, system: str, state: str, action_set: tuple[str, ...]) -> tuple[str, str]:
    """(action, rule that chose it) for these inputs."""
    named = [
        action
        for action in action_set
        if re.search(rf"(?<!\w){re.escape(action)}(?!\w)", state, re.IGNORECASE)
    ]
    if len(named) == 1:
        return named[0], "named_in_state"
    digest = hashlib.sha256(
        json.dumps([model, system, state, list(action_set)], ensure_ascii=False).encode()
    ).digest()
    return action_set[int.from_bytes(digest[:8], "big") % len(action_set)], "hash"
