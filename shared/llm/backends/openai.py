"""An OpenAI-compatible ``/v1/chat/completions`` backend over httpx.

Speaks to anything with that protocol: the HodlAI API router, OpenRouter, OpenAI, vLLM,
Ollama, llama.cpp's server. Temperature 0, bounded tokens, one total timeout per call.

Constrained decoding, chosen per node (``HODLAI_LLM_CONSTRAINED``):
- ``json_schema``: ``response_format`` with a JSON schema ``{"action": enum[actions]}``
  (OpenAI structured outputs; also vLLM, llama.cpp, Ollama, many OpenRouter models);
- ``guided_choice``: vLLM's ``guided_choice`` list of the actions;
- ``none``: plain text.
The answer is validated either way (:mod:`shared.llm.answer`). When a server answers 400/422
to a constrained call, the same call is sent once more without the constraint; if that one
is accepted, the backend model is remembered as unconstrained for the life of the process
(logged once), so we do not pay the refusal on every call. If it is refused too, the 400
was about the request, not the constraint, and nothing is remembered.

A JSON-schema call (``CompletionCall.json_schema``, :mod:`shared.llm.schema`) carries
``response_format: {type: json_schema, json_schema: {name, strict: true, schema}}``. An
endpoint that refuses it (400/422) is asked again with ``{type: json_object}`` (JSON, any
shape: what Ollama, older vLLM and many OpenRouter models accept), and if that is refused too,
with no ``response_format``; the step that was accepted is remembered per backend model
(``llm_schema_constraint_refused``). A node set to ``HODLAI_LLM_CONSTRAINED=none`` starts at
no ``response_format``. The caller validates the answer in every case.

Errors are translated here, at the boundary:
- 408, 409, 425, 429, 503 -> LlmBusyError ("come back later": about us, not the request),
  with the server's Retry-After when it sent one;
- timeout, connection refused/reset, any other 5xx, a malformed body -> LlmTransportError
  (with Retry-After when sent);
- 401, 403, 404 -> LlmAccessError (the node's key, plan or model id is wrong: pause);
- any other 4xx -> LlmRejectedError (this request is refused);
- a 2xx answer larger than ``max_response_bytes`` -> LlmAnswerTooLargeError (a bad answer).

Answers are read as a stream and cut at ``max_response_bytes``: a runaway or hostile
endpoint costs at most that much memory, never the whole of what it sends (the connection
is dropped with the rest unread). ``Accept-Encoding: identity`` asks for no compression, so
the bytes counted are the bytes kept.

The endpoint recorded in a completion's params (and so in the public reasoning trace) is
the URL without its userinfo, query and fragment: a base URL like
``https://user:PASSWORD@host/v1?key=…`` must not put its credentials on IPFS.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from shared.errors import (
    InvalidRequestError,
    LlmAccessError,
    LlmAnswerTooLargeError,
    LlmBusyError,
    LlmRejectedError,
    LlmTransportError,
)
from shared.llm.types import (
    AnswerFormat,
    Completion,
    CompletionCall,
    Constraint,
    SchemaConstraint,
)

log = structlog.get_logger(__name__)

# Seconds for one whole completion call. Answers are a few tokens; 60 s leaves room for a
# queued, large hosted model without letting a hung server hold a lease for long.
DEFAULT_TIMEOUT_S = 60.0
# Tokens the model may produce. An action is at most 64 bytes (~16-64 tokens) plus a JSON
# wrapper; 128 bounds cost and latency while leaving room for that.
DEFAULT_MAX_TOKENS = 128
# Characters of an error body kept in logs and error messages.
BODY_SNIPPET = 300
# Bytes read of one HTTP answer. An answer is <= 128 tokens: with its JSON envelope well under
# 2 KiB, so 64 KiB leaves room for verbose servers (usage, logprobs, reasoning fields) while a
# runaway 10 MB answer is cut at the socket instead of landing in memory, the retry prompt
# and the trace.
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024
# Statuses on which a constrained call is re-sent without the constraint.
_CONSTRAINT_REFUSED = frozenset({400, 422})
_ACCESS_DENIED = frozenset({401, 403, 404})
# "Come back later": rate limits, overload, a proxy's request timeout. Never the request's fault.
_BUSY = frozenset({408, 409, 425, 429, 503})
# Connections per httpx pool; see OpenAIBackend.__init__ for why there are several pools.
CONNECTIONS_PER_POOL = 8
# Name of the JSON schema in response_format (OpenAI requires one).
SCHEMA_NAME = "holdai_action"


def chat_completions_url(base_url: str) -> str:
    """The endpoint for ``base_url``: ``.../v1`` as OpenAI clients expect, or a bare host.
    A query string (some gateways take the key there) stays a query string."""
    url = httpx.URL(base_url)
    path = url.path.rstrip("/")
    if not path.endswith("/chat/completions"):
        path = (path or "/v1") + "/chat/completions"
    return str(url.copy_with(path=path))


def public_endpoint(url: str) -> str:
    """``url`` without userinfo, query and fragment: what may be shown in a public trace."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "<unparseable url>"
    return str(parsed.copy_with(userinfo=b"", query=None, fragment=None))


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    at = time.time() if now is None else now
    return max(0.0, when.timestamp() - at)


class OpenAIBackend:
    """One OpenAI-compatible endpoint; see the module docstring."""

    name = "openai"
    answer_format: AnswerFormat = "action"

    def __init__(
        self,
        *,
        base_url: str,
        model_map: Mapping[str, str],
        api_key: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        constraint: Constraint = "json_schema",
        max_connections: int = 16,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        extra_headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._url = chat_completions_url(base_url)
        self._public_url = public_endpoint(self._url)
        self._max_response_bytes = max_response_bytes
        self._models = dict(model_map)
        self._timeout_s = timeout_s
        self._max_tokens = max_tokens
        self._constraint: Constraint = constraint
        self._unconstrained: set[str] = set()  # backend models that refused the constraint
        # backend model -> the strongest schema constraint it accepted after a refusal
        self._schema_level: dict[str, SchemaConstraint] = {}
        headers = {
            "Content-Type": "application/json",
            "Accept-Encoding": "identity",
            **dict(extra_headers or {}),
        }
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        # httpcore matches each queued request against every pooled connection, so one pool's
        # CPU cost per request grows with its size (measured: ~3.6 ms per answer at 32
        # connections on this box, most of a worker's CPU). Several small pools, each call
        # going to the least busy one, keep that cost flat as concurrency grows.
        pools = max(1, math.ceil(max_connections / CONNECTIONS_PER_POOL))
        per_pool = math.ceil(max_connections / pools)
        self._clients = [
            httpx.AsyncClient(
                headers=headers,
                timeout=httpx.Timeout(timeout_s),
                limits=httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool),
                transport=transport,
            )
            for _ in range(pools)
        ]
        self._busy = [0] * pools

    def serves(self, model: str) -> bool:
        return model in self._models

    def constraint_for(self, backend_model: str) -> Constraint:
        """The constraint the next call for ``backend_model`` will carry."""
        return "none" if backend_model in self._unconstrained else self._constraint

    async def complete(self, call: CompletionCall) -> Completion:
        backend_model = self._models.get(call.model)
        if backend_model is None:
            raise InvalidRequestError(f"model {call.model!r} is not served by this node")
        if call.json_schema is not None:
            return await self._complete_schema(backend_model, call)
        constraint = self.constraint_for(backend_model)
        response = await self._post(self._body(backend_model, call, constraint))
        if response.status in _CONSTRAINT_REFUSED and constraint != "none":
            refused_with, refusal = response.status, response.snippet()
            response = await self._post(self._body(backend_model, call, "none"))
            if response.is_success:
                self._unconstrained.add(backend_model)
                log.warning(
                    "llm_constraint_refused", constraint=constraint, model=backend_model,
                    status=refused_with, body=refusal, fallback="none",
                )  # fmt: skip
                constraint = "none"
        _raise_for_status(response)
        if response.cut:
            raise LlmAnswerTooLargeError(
                f"the answer is larger than {self._max_response_bytes} bytes"
                f"{_announced(response)}; the rest was not read",
                limit=self._max_response_bytes,
            )
        return Completion(
            text=_content(response),
            backend_model=backend_model,
            params={
                "temperature": 0,
                "max_tokens": self._max_tokens,
                "constraint": constraint,
                "endpoint": self._public_url,
            },
        )

    def schema_constraint_for(self, backend_model: str) -> SchemaConstraint:
        """The constraint the next JSON-schema call for ``backend_model`` will carry."""
        if self._constraint == "none":
            return "none"
        return self._schema_level.get(backend_model, "json_schema")

    async def _complete_schema(self, backend_model: str, call: CompletionCall) -> Completion:
        first = constraint = self.schema_constraint_for(backend_model)
        max_tokens = call.max_tokens or self._max_tokens
        refusals: list[tuple[SchemaConstraint, int, str]] = []
        while True:
            response = await self._post(
                self._schema_body(backend_model, call, constraint, max_tokens)
            )
            if response.status not in _CONSTRAINT_REFUSED or constraint == "none":
                break
            refusals.append((constraint, response.status, response.snippet()))
            constraint = "json_object" if constraint == "json_schema" else "none"
        if refusals and response.is_success and constraint != first:
            self._schema_level[backend_model] = constraint
            for refused, status, body in refusals:
                log.warning(
                    "llm_schema_constraint_refused", constraint=refused, model=backend_model,
                    status=status, body=body, fallback=constraint,
                )  # fmt: skip
        _raise_for_status(response)
        if response.cut:
            raise LlmAnswerTooLargeError(
                f"the answer is larger than {self._max_response_bytes} bytes"
                f"{_announced(response)}; the rest was not read",
                limit=self._max_response_bytes,
            )
        return Completion(
            text=_content(response),
            backend_model=backend_model,
            params={
                "temperature": 0,
                "max_tokens": max_tokens,
                "constraint": constraint,
                "endpoint": self._public_url,
            },
        )

    def _schema_body(
        self,
        backend_model: str,
        call: CompletionCall,
        constraint: SchemaConstraint,
        max_tokens: int,
    ) -> dict[str, Any]:
        assert call.json_schema is not None  # only JSON-schema calls come here
        body: dict[str, Any] = {
            "model": backend_model,
            "messages": [message.as_json() for message in call.messages],
            "temperature": 0,
            "max_tokens": max_tokens,
            "stream": False,
        }
        if constraint == "json_schema":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": call.json_schema.name,
                    "strict": True,
                    "schema": dict(call.json_schema.schema),
                },
            }
        elif constraint == "json_object":
            body["response_format"] = {"type": "json_object"}
        return body

    def _body(
        self, backend_model: str, call: CompletionCall, constraint: Constraint
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": backend_model,
            "messages": [message.as_json() for message in call.messages],
            "temperature": 0,
            "max_tokens": self._max_tokens,
            "stream": False,
        }
        if constraint == "json_schema":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": SCHEMA_NAME,
                    "strict": True,
                    "schema": {
                        "type": "object",
                        "properties": {"action": {"type": "string", "enum": list(call.action_set)}},
                        "required": ["action"],
                        "additionalProperties": False,
                    },
                },
            }
        elif constraint == "guided_choice":
            body["guided_choice"] = list(call.action_set)
        return body

    async def _post(self, body: dict[str, Any]) -> _Reply:
        try:
            # httpx's timeout bounds each read; this bounds the whole exchange, so a server
            # that trickles bytes cannot hold a request (and its lease) for ever.
            async with asyncio.timeout(self._timeout_s):
                return await self._client_post(body)
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise LlmTransportError(f"LLM call timed out after {self._timeout_s} s") from exc
        except httpx.HTTPError as exc:
            raise LlmTransportError(
                f"LLM endpoint unreachable: {type(exc).__name__}: {exc}"
            ) from exc

    async def _client_post(self, body: dict[str, Any]) -> _Reply:
        index = min(range(len(self._clients)), key=self._busy.__getitem__)
        self._busy[index] += 1
        try:
            async with self._clients[index].stream("POST", self._url, json=body) as response:
                return await _read_capped(response, self._max_response_bytes)
        finally:
            self._busy[index] -= 1

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()


@dataclass(frozen=True)
class _Reply:
    """An HTTP answer read at most up to the byte cap."""

    status: int
    headers: httpx.Headers
    body: bytes  # all of it, or its first ``max_response_bytes`` when ``cut``
    cut: bool

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300

    def snippet(self) -> str:
        text = self.body[: BODY_SNIPPET * 4].decode("utf-8", "replace")
        return text[:BODY_SNIPPET].replace("\n", " ")


async def _read_capped(response: httpx.Response, limit: int) -> _Reply:
    """Read ``response`` up to ``limit`` bytes and stop: the rest is never read."""
    announced = _content_length(response.headers)
    if response.is_success and announced is not None and announced > limit:
        return _Reply(response.status_code, response.headers, b"", cut=True)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        if len(chunk) > limit - size:
            chunks.append(chunk[: limit - size])
            return _Reply(response.status_code, response.headers, b"".join(chunks), cut=True)
        chunks.append(chunk)
        size += len(chunk)
    return _Reply(response.status_code, response.headers, b"".join(chunks), cut=False)


def _content_length(headers: httpx.Headers) -> int | None:
    try:
        return int(headers["Content-Length"])
    except (KeyError, ValueError):
        return None


def _announced(reply: _Reply) -> str:
    announced = _content_length(reply.headers)
    return f" (the endpoint announced {announced})" if announced is not None else ""


def _raise_for_status(response: _Reply) -> None:
    status = response.status
    if response.is_success:
        return
    detail = f"LLM endpoint answered {status}: {response.snippet()}"
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    if status in _BUSY:
        raise LlmBusyError(detail, retry_after=retry_after)
    if status >= 500:
        raise LlmTransportError(detail, retry_after=retry_after)
    if status in _ACCESS_DENIED:
        raise LlmAccessError(detail)
    raise LlmRejectedError(detail, status=status)


def _content(response: _Reply) -> str:
    """The assistant's text (a refusal counts as text: it is judged like any answer)."""
    try:
        message = json.loads(response.body)["choices"][0]["message"]
        content = message.get("content")
        if not content and message.get("refusal"):
            content = message["refusal"]
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise LlmTransportError(f"malformed LLM response: {response.snippet()}") from exc
    if content is None:
        return ""
    if isinstance(content, list):  # some servers return content parts
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content)
