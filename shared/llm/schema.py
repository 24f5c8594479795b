"""JSON-schema answers: what a caller that extracts data (rather than chooses an action) shares
with every backend.

A caller sets :attr:`shared.llm.types.CompletionCall.json_schema`; each backend then holds
the answer to the schema as far as it can:

- ``llama`` (embedded): decoding is held to a grammar made from the schema by llama.cpp's own
  converter (``json_schema_to_gbnf``, what llama.cpp's ``response_format={"type":
  "json_object", "schema": …}`` does inside ``create_chat_completion``), so the text is JSON
  the schema admits unless the token budget cut it;
- ``openai``: ``response_format: {type: json_schema, json_schema: {name, strict, schema}}``;
  an endpoint that refuses it (400/422) is asked with ``{type: json_object}``, then with no
  ``response_format`` at all, and remembered per model (``llm_schema_constraint_refused``);
- ``local`` (no model): :func:`deterministic_instance`, a JSON value of the schema filled from
  the user's own text by fixed rules, the same on every machine.

Guarantees of this module: nothing here trusts the answer. :func:`parse_json_answer` only
finds the JSON object in what the model wrote (a fenced or chatty answer of an endpoint
without the constraint included) or raises :class:`BadAnswerError`; what the values mean,
and whether they are believed, is the caller's to check. The prompt line
:func:`schema_instruction` carries the schema in the system message too, so an endpoint that
constrains nothing is still told what to write.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from shared.errors import BadAnswerError
from shared.llm.types import ChatMessage

#: How the schema is named in a system prompt line (the mock LLM reads it back from there when
#: a call carries no ``response_format``).
SCHEMA_LINE_PREFIX = "Answer JSON schema: "
# Characters of an answer searched for its JSON object: a schema answer is a few hundred
# bytes; anything much longer is not one, and is not scanned quadratically.
MAX_ANSWER_CHARS = 8192
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
# A standalone integer in free text: ASCII-delimited so that "100个" counts and the digits of
# "0x1234" or "v2" do not.
_INTEGER = re.compile(r"(?<![0-9A-Za-z_.])[0-9]+(?![0-9A-Za-z_])")


def schema_json(schema: Mapping[str, object]) -> str:
    """The schema as canonical JSON (what is hashed and sent)."""
    return json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def schema_instruction(schema: Mapping[str, object]) -> str:
    """One system-prompt line naming the schema the answer must follow."""
    return SCHEMA_LINE_PREFIX + schema_json(schema)


def schema_in_messages(messages: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The schema a :func:`schema_instruction` line of a system message names, if any."""
    for message in messages:
        if message.get("role") != "system":
            continue
        for line in str(message.get("content", "")).splitlines():
            if line.startswith(SCHEMA_LINE_PREFIX):
                try:
                    value = json.loads(line[len(SCHEMA_LINE_PREFIX) :])
                except ValueError:
                    return None
                return value if isinstance(value, dict) else None
    return None


def parse_json_answer(text: str) -> dict[str, Any]:
    """The JSON object the model wrote: the whole text, a fenced block, or the first balanced
    ``{…}`` in it. BadAnswerError when there is none."""
    if len(text) > MAX_ANSWER_CHARS:
        raise BadAnswerError(f"the answer is {len(text)} characters, not a JSON object")
    candidates = [text.strip(), *(block.strip() for block in _FENCE.findall(text))]
    start = text.find("{")
    if start >= 0:
        candidates.append(text[start:])
    decoder = json.JSONDecoder()
    for candidate in candidates:
        begin = candidate.find("{")
        if begin < 0:
            continue
        try:
            value, _ = decoder.raw_decode(candidate, begin)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    raise BadAnswerError("the answer holds no JSON object")


def user_texts(messages: Sequence[ChatMessage]) -> list[str]:
    """The user messages of a conversation, newest first."""
    return [message.content for message in reversed(messages) if message.role == "user"]


def deterministic_instance(schema: Mapping[str, Any], texts: Sequence[str]) -> Any:
    """A value of ``schema`` filled from ``texts`` (the user's messages, newest first) by
    fixed rules, for the test backend and the mock LLM. Rules, per schema node:

    - ``enum``: the one member the newest text naming exactly one names (a string as a whole
      word, case-insensitive; an integer as a standalone integer), else the first member;
    - string with a ``pattern``: the first match of the pattern (its anchors dropped) in the
      texts, newest first; else ``""`` if the pattern admits it, else the ``default``;
    - integer / number: the first standalone ASCII integer in the texts, newest first, else
      ``minimum`` (or 0);
    - object: every property, filled by these rules; array: empty; boolean: false; a type
      list takes its first non-null type, or null when nothing was found for it.
    """
    return _fill(schema, texts)


def _fill(schema: Mapping[str, Any], texts: Sequence[str]) -> Any:
    if "enum" in schema and isinstance(schema["enum"], list) and schema["enum"]:
        return _enum(schema["enum"], texts)
    kind = schema.get("type")
    nullable = isinstance(kind, list) and "null" in kind
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties") or {}
        return {name: _fill(sub, texts) for name, sub in properties.items()}
    if kind == "string":
        return _fill_string(schema, texts, nullable=nullable)
    if kind in ("integer", "number"):
        return _fill_integer(schema, texts, nullable=nullable)
    return {"array": [], "boolean": False}.get(str(kind))


def _fill_string(schema: Mapping[str, Any], texts: Sequence[str], *, nullable: bool) -> Any:
    pattern = schema.get("pattern")
    found = _pattern_match(pattern, texts)
    if found is not None:
        return found
    if nullable:
        return None
    if pattern is None or re.fullmatch(str(pattern), ""):
        return ""
    return schema.get("default", "")


def _fill_integer(schema: Mapping[str, Any], texts: Sequence[str], *, nullable: bool) -> Any:
    for text in texts:
        match = _INTEGER.search(text)
        if match:
            return int(match.group())
    return None if nullable else int(schema.get("minimum", 0))


def _enum(members: list[Any], texts: Sequence[str]) -> Any:
    for text in texts:
        named = [member for member in members if _names(text, member)]
        if len(named) == 1:
            return named[0]
    return members[0]


def _names(text: str, member: object) -> bool:
    """True when ``text`` names ``member``: a string as a whole word (case-insensitive), an
    integer as a standalone integer."""
    if isinstance(member, bool) or not isinstance(member, str | int) or member == "":
        return False
    if isinstance(member, int):
        return any(int(found) == member for found in _INTEGER.findall(text))
    return bool(re.search(rf"(?<![A-Za-z0-9_]){re.escape(member)}(?![A-Za-z0-9_])", text, re.I))


def _pattern_match(pattern: object, texts: Sequence[str]) -> str | None:
    if not isinstance(pattern, str):
        return None
    unanchored = pattern.removeprefix("^").removesuffix("$")
    try:
        compiled = re.compile(unanchored)
    except re.error:
        return None
    for text in texts:
        for match in compiled.finditer(text):
            if match.group():
                return match.group()
    return None


def schema_sha256(schema: Mapping[str, object]) -> str:
    return hashlib.sha256(schema_json(schema).encode("utf-8")).hexdigest()
