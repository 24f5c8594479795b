"""What the mock LLM answers, decided without any I/O so it can be tested on its own.

A *behaviour* is a comma-separated list of tokens:

=====================  ==================================================================
``ok``                 the deterministic answer (sha256 of the state picks an action)
``latency=MS``         add MS milliseconds before answering (adds to ``--latency-ms``)
``429`` / ``429:S``    HTTP 429 with ``Retry-After: S`` (default ``--retry-after-s``)
``500`` / ``503:S``    that 5xx status (with Retry-After when ``:S`` is given)
``401`` / ``400``      that 4xx status with an OpenAI-style error body
``hang``               sleep ``--hang-s`` before answering (past any sane client timeout)
``huge`` / ``huge=N``  an answer of N bytes (default ``--huge-bytes``, 10 MB), streamed in
                       chunks, so a client that cuts it short is seen hanging up
``markdown``           the action in a code fence
``quotes``             the action in double quotes
``punct``              the action followed by a full stop
``lower``              the action in lower case
``words``              the action inside a sentence ("I choose X because ...")
``outside``            an action that is not in the set
``empty`` / ``null``   empty content / ``"content": null``
``garbage``            content that is neither an action nor JSON
``garbage_body``       HTTP 200 whose body is not JSON at all
``parrot``             whatever the state tells the model to answer (prompt injection)
``reject_constraints`` 400 when the call carries ``response_format`` or ``guided_choice``
``reject_json_schema`` 400 to ``response_format`` of type ``json_schema`` only (``json_object``
                       is accepted), as servers without structured outputs answer
=====================  ==================================================================

Where it comes from, first match wins for the answer (latencies add up):
the ``X-Mock-Behaviour`` header; the next entry of the script set with ``POST /control``;
a marker ``[[mock:TOKENS]]`` in the state (``[[mock:outside@1]]`` applies to attempt 1
only, counting attempts by the assistant turns in the conversation; ``[[mock:500x2]]`` to
the first two requests carrying this state only); the server default.

JSON-schema calls (data extraction, not an action choice: the schema of ``response_format``
has no ``action`` enum, or a call without one names its schema in a system line, see
:mod:`shared.llm.schema`) are answered in mode ``ok`` with
:func:`shared.llm.schema.deterministic_instance` of that schema over the user's messages.
A test can script the exact answer instead: ``POST /control {"answers": [...]}`` (or
``MockLlmServer.answer(...)``) queues contents (a JSON value is sent as its JSON text),
consumed one per chat request answered in mode ``ok``, whatever the request; e.g. an
extraction answer naming an address the user never wrote.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from shared.llm.schema import schema_in_messages

PERMITTED_PREFIX = "Permitted Action Set: "
OUTSIDE_ACTION = "WITHDRAW_ALL_TO_ATTACKER"
_MARKER = re.compile(r"\[\[mock:([^\]]+)\]\]")
_MARKER_SCOPE = re.compile(r"^(?P<tokens>.*?)(?:@(?P<attempt>\d+)|x(?P<times>\d+))?$")
_PARROT = re.compile(
    r"(?:answer|output|respond with|reply with|choose|say|return|select)\s*[:=]?\s*"
    r"[\"'`]?([A-Za-z0-9_\-]+)",
    re.IGNORECASE,
)
ANSWER_MODES = frozenset({
    "ok", "markdown", "quotes", "punct", "lower", "words", "outside", "empty", "null",
    "garbage", "garbage_body", "parrot", "hang", "huge",
})  # fmt: skip


@dataclass
class Plan:
    """What to do for one request."""

    mode: str = "ok"  # one of ANSWER_MODES, or "status"
    status: int = 200
    retry_after_s: float | None = None
    latency_ms: int = 0
    reject_constraints: bool = False
    reject_json_schema: bool = False
    huge_bytes: int | None = None  # size of a "huge" answer; None = the server default
    sources: list[str] = field(default_factory=list)
    #: a scripted answer content, sent as is (mode ``ok`` only)
    answer: str | None = None


def parse_tokens(spec: str, plan: Plan, *, default_retry_after_s: float) -> bool:
    """Apply the tokens of ``spec`` to ``plan``; True when one of them chose the answer."""
    chose = False
    for raw in spec.split(","):
        token = raw.strip().lower()
        if not token:
            continue
        if token.startswith("latency="):
            plan.latency_ms += int(token.split("=", 1)[1])
        elif token == "reject_constraints":
            plan.reject_constraints = True
        elif token == "reject_json_schema":
            plan.reject_json_schema = True
        elif token.startswith("huge="):
            plan.mode, plan.huge_bytes = "huge", int(token.split("=", 1)[1])
            chose = True
        elif token.split(":", 1)[0].isdigit():
            code, _, after = token.partition(":")
            plan.mode, plan.status = "status", int(code)
            if after:
                plan.retry_after_s = float(after)
            elif plan.status == 429:
                plan.retry_after_s = default_retry_after_s
            chose = True
        elif token in ANSWER_MODES:
            plan.mode = token
            chose = True
        else:
            raise ValueError(f"unknown mock behaviour token {token!r}")
    return chose


def markers(state: str) -> list[tuple[str, int | None, int | None]]:
    """(tokens, only on attempt N, only for the first N hits) for each marker in ``state``."""
    found = []
    for body in _MARKER.findall(state):
        match = _MARKER_SCOPE.match(body)
        assert match is not None  # the pattern matches any string
        attempt, times = match.group("attempt"), match.group("times")
        found.append(
            (
                match.group("tokens"),
                int(attempt) if attempt else None,
                int(times) if times else None,
            )
        )
    return found


def permitted_actions(body: dict[str, Any]) -> list[str]:
    """The actions this call may choose from, found where a real server would look."""
    if isinstance(body.get("guided_choice"), list):
        return [str(a) for a in body["guided_choice"]]
    schema = (body.get("response_format") or {}).get("json_schema", {}).get("schema", {})
    enum = schema.get("properties", {}).get("action", {}).get("enum")
    if isinstance(enum, list):
        return [str(a) for a in enum]
    for message in body.get("messages", []):
        if message.get("role") != "system":
            continue
        for line in str(message.get("content", "")).splitlines():
            if line.startswith(PERMITTED_PREFIX):
                listed = line[len(PERMITTED_PREFIX) :].strip()
                try:
                    value = json.loads(listed)
                except ValueError:
                    return [a.strip() for a in listed.strip("[]").split(",") if a.strip()]
                return [str(a) for a in value] if isinstance(value, list) else []
    return []


def constraint_of(body: dict[str, Any]) -> str:
    """How the call asks to constrain its answer (the key of the ``constraints`` stats)."""
    if "response_format" in body:
        format_ = body.get("response_format") or {}
        return "json_object" if format_.get("type") == "json_object" else "json_schema"
    return "guided_choice" if "guided_choice" in body else "none"


def extraction_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The schema of a data-extraction call, None for an action call (or no schema)."""
    schema = (body.get("response_format") or {}).get("json_schema", {}).get("schema")
    if not isinstance(schema, dict):
        schema = schema_in_messages(body.get("messages", []))
    if not isinstance(schema, dict):
        return None
    if isinstance(schema.get("properties", {}).get("action", {}).get("enum"), list):
        return None
    return schema


def user_messages(body: dict[str, Any]) -> list[str]:
    """The user messages, newest first."""
    return [
        str(m.get("content", ""))
        for m in reversed(body.get("messages", []))
        if m.get("role") == "user"
    ]


def state_of(body: dict[str, Any]) -> str:
    """The first user message: the state, as the node sends it."""
    for message in body.get("messages", []):
        if message.get("role") == "user":
            return str(message.get("content", ""))
    return ""


def attempt_of(body: dict[str, Any]) -> int:
    """1 + the assistant turns already in the conversation (the node's retries add them)."""
    return 1 + sum(1 for m in body.get("messages", []) if m.get("role") == "assistant")


def deterministic_choice(state: str, actions: list[str]) -> str:
    if not actions:
        return "UNKNOWN"
    digest = hashlib.sha256(state.encode("utf-8", "surrogatepass")).digest()
    return actions[int.from_bytes(digest[:8], "big") % len(actions)]


def parrot(state: str) -> str:
    """What the state tells the model to answer: the injection a careless model follows."""
    asked = _PARROT.findall(state)
    if asked:
        return str(asked[-1])
    shouting = re.findall(r"\b[A-Z][A-Z0-9_]{2,}\b", state)
    return shouting[-1] if shouting else "IGNORED"


def content_for(mode: str, action: str, state: str) -> str | None:
    """The assistant content for an answer mode (None for ``null``)."""
    contents: dict[str, str | None] = {
        "ok": action,
        "hang": action,
        "markdown": f"```\n{action}\n```",
        "quotes": f'"{action}"',
        "punct": f"{action}.",
        "lower": action.lower(),
        "words": f"I choose {action} because the state calls for it.",
        "outside": OUTSIDE_ACTION,
        "empty": "",
        "null": None,
        "garbage": "%%%{{not json ~~ <|endoftext|>",
        "parrot": parrot(state),
    }
    return contents[mode]
