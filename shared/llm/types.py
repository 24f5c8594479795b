"""The value types of the LLM client and the one contract every backend fulfils.

A backend turns one chat exchange into one completion text. It does not judge the answer,
does not retry bad answers and does not know about requests, leases or the database: that
is :func:`shared.llm.inference.execute_holdai_inference`'s job, so that every backend gets
the same validation and the worker never knows which backend it talks to.

Backend errors are the node's own: ``LlmTransportError`` (retry later; ``LlmBusyError`` when
the endpoint said so), ``LlmAccessError`` (the endpoint refuses this node: an operator must
act), ``LlmRejectedError`` (the endpoint refuses this one request), ``LlmAnswerTooLargeError``
(the answer was larger than the backend reads). Nothing from httpx escapes a backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

Role = Literal["system", "user", "assistant"]
#: How a backend may constrain decoding to the permitted actions.
Constraint = Literal["json_schema", "guided_choice", "none"]
#: What the model is asked to write: the action alone, or the JSON object
#: ``{"reasoning": "…", "action": "…"}`` (a backend that constrains decoding to that object
#: asks for it; :mod:`shared.llm.answer` reads the action out of either).
AnswerFormat = Literal["action", "reasoned_json"]
#: How a backend held a JSON-schema answer (see :mod:`shared.llm.schema`): to the schema, to
#: "some JSON object" (an endpoint that refused the schema), or not at all.
SchemaConstraint = Literal["json_schema", "json_object", "none"]


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str

    def as_json(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class InferenceRequest:
    """One reasoning request, as emitted on chain, plus where it came from (for the trace)."""

    request_id: int
    model: str
    system_prompt: str
    state_string: str
    action_set: tuple[str, ...]
    chain_id: int | None = None
    provider: str | None = None
    requester: str | None = None
    #: keccak the indexer stored for the content; ties the trace to the exact row version
    content_hash: str | None = None
    generation: int | None = None


@dataclass(frozen=True)
class JsonSchema:
    """A JSON schema the answer is held to, and its name (OpenAI's ``response_format`` needs
    one: letters, digits, ``_`` and ``-``, at most 64)."""

    name: str
    schema: Mapping[str, object]


@dataclass(frozen=True)
class CompletionCall:
    """What a backend is asked: the messages, plus the facts it may use to constrain output.

    Two kinds of call: choose one action of ``action_set`` (the oracle's), or, when
    ``json_schema`` is set, answer JSON held to that schema (data extraction; ``action_set``
    and ``state_string`` are then not used). Build the second with :meth:`structured`."""

    model: str  # the on-chain model name; the backend maps it to its own id
    messages: tuple[ChatMessage, ...]
    action_set: tuple[str, ...]
    state_string: str
    json_schema: JsonSchema | None = None
    #: tokens the answer may take; None: the backend's own bound
    max_tokens: int | None = None

    @classmethod
    def structured(
        cls,
        model: str,
        messages: tuple[ChatMessage, ...],
        schema: JsonSchema,
        *,
        max_tokens: int | None = None,
    ) -> CompletionCall:
        """A JSON-schema call (see :mod:`shared.llm.schema`)."""
        return cls(model, messages, (), "", json_schema=schema, max_tokens=max_tokens)


@dataclass(frozen=True)
class Completion:
    """A backend's raw answer. ``text`` is unjudged: it may be anything the model said."""

    text: str
    backend_model: str
    #: decoding parameters actually used (temperature, max tokens, constraint in force, ...)
    params: Mapping[str, object] = field(default_factory=dict)
    #: what names the model and the decoder exactly, recorded once per trace: the weights'
    #: sha256, the runtime's versions, the grammar in force. Empty for a remote endpoint,
    #: which tells us none of it.
    runtime: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Attempt:
    """One exchange with the model, as recorded in the trace."""

    number: int  # 1-based, counting attempts spent by earlier claims of the request too
    raw: str | None  # what the model said; None when the call failed below the answer
    outcome: Literal["answered", "bad_answer", "rejected"]
    detail: str  # the action chosen, or what was wrong
    latency_s: float
    params: Mapping[str, object]


@dataclass(frozen=True)
class InferenceResult:
    """The chosen action, the model's raw text for it, and the reasoning trace."""

    action: str
    reasoning: str  # the raw text of the accepted answer, as the model wrote it
    attempts: tuple[Attempt, ...]
    trace: Mapping[str, object]
    trace_json: str  # canonical JSON (ASCII); its UTF-8 bytes are what ``cid`` addresses
    cid: str


class LlmBackend(Protocol):
    """Anything that can answer a chat exchange for the models it serves."""

    #: short name for logs, metrics and the trace ("llama", "openai", "local")
    name: str
    #: what the prompt asks the model to write (see AnswerFormat)
    answer_format: AnswerFormat

    def serves(self, model: str) -> bool:
        """True when ``model`` (an on-chain model name) is configured on this node."""
        ...

    async def complete(self, call: CompletionCall) -> Completion:
        """One chat completion. Raises LlmTransportError / LlmAccessError / LlmRejectedError /
        LlmAnswerTooLargeError."""
        ...

    async def aclose(self) -> None:
        """Release connections; the backend is unusable afterwards."""
        ...
