"""The reasoning trace: the document whose CID goes on chain with every answer.

Guarantees:
- The trace holds what an auditor needs to check an answer and re-run it: the request id,
  chain id and provider; a SHA-256 of the exact inputs; the model, the backend's model id
  and the decoding parameters; the messages sent; the raw answer of every attempt; the
  chosen action; timings; the node version. For a model run on this node (the ``llama``
  backend) ``backend.runtime`` names it exactly: the weights' SHA-256 and size, the
  llama-cpp-python and ggml versions, the CPU features the build uses, the loading
  parameters, and the grammar decoding was held to; ``hodlai replay`` re-runs from these.
- ``inputs_sha256`` is the SHA-256 of the ABI encoding of ``(model, systemPrompt,
  stateString, actionSet)``, which is byte for byte the ``data`` field of the
  ``HoldAI_ReasoningRequested`` log: anyone can check it against the chain without this code.
- :func:`canonical_json` is deterministic (sorted keys, no whitespace, ASCII only, no NaN),
  so the same document always has the same bytes and the same CID. ASCII escaping also
  means the stored text and the addressed bytes are the same even if a model answered
  with a lone surrogate.
- The trace is bounded: each attempt keeps at most ``TRACE_RAW_CHARS`` of the model's raw
  answer; a longer one is cut, and ``raw_cut`` records what was kept and the full length,
  so an auditor sees that it was cut and by how much. (The answer itself is bounded before
  it gets here, by the backend's byte cap.)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

from eth_abi.abi import encode as abi_encode

from shared import __version__
from shared.llm.answer import MAX_ANSWER_CHARS
from shared.llm.types import Attempt, ChatMessage, InferenceRequest

TRACE_SCHEMA = "hodlai.reasoning-trace/1"
# The non-indexed parameters of HoldAI_ReasoningRequested, in event order.
EVENT_DATA_TYPES = ("string", "string", "string", "string[]")
# Characters of one attempt's raw answer kept in the trace: twice the longest answer that can
# still be matched to an action (longer ones are rejected unread), so every answer that was
# judged on its content is kept whole and a runaway one shows its beginning.
TRACE_RAW_CHARS = 2 * MAX_ANSWER_CHARS


def inputs_sha256(request: InferenceRequest) -> str:
    """0x-hex SHA-256 of the request's event data (see the module docstring)."""
    data = abi_encode(
        list(EVENT_DATA_TYPES),
        [request.model, request.system_prompt, request.state_string, list(request.action_set)],
    )
    return "0x" + hashlib.sha256(data).hexdigest()


def canonical_json(document: Mapping[str, object]) -> str:
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def build_trace(
    request: InferenceRequest,
    *,
    backend: str,
    backend_model: str | None,
    params: Mapping[str, object],
    messages: Sequence[ChatMessage],
    runtime: Mapping[str, object] | None = None,
    attempts: Sequence[Attempt],
    action: str | None,
    prior_attempts: int,
    started_at: float,
    finished_at: float,
) -> dict[str, object]:
    """The trace document. ``action`` is None when no attempt gave a valid answer;
    ``runtime`` (see :class:`shared.llm.types.Completion`) is recorded when not empty."""
    backend_entry: dict[str, object] = {
        "name": backend, "model": backend_model, "params": dict(params)
    }  # fmt: skip
    if runtime:
        backend_entry["runtime"] = dict(runtime)
    return {
        "schema": TRACE_SCHEMA,
        "node_version": __version__,
        "request": {
            "request_id": str(request.request_id),
            "chain_id": request.chain_id,
            "provider": request.provider,
            "requester": request.requester,
            "content_hash": request.content_hash,
            "generation": request.generation,
            "inputs_sha256": inputs_sha256(request),
            "model": request.model,
            "action_set": list(request.action_set),
        },
        "backend": backend_entry,
        "messages": [message.as_json() for message in messages],
        # Attempts spent by earlier claims of this request (a crash, an LLM outage): their raw
        # answers are not in this document, only their number.
        "prior_attempts": prior_attempts,
        "attempts": [_attempt(attempt) for attempt in attempts],
        "action": action,
        "timings": {
            "started_at": round(started_at, 6),
            "finished_at": round(finished_at, 6),
            "total_s": round(finished_at - started_at, 6),
        },
    }


def _attempt(attempt: Attempt) -> dict[str, object]:
    entry: dict[str, object] = {
        "number": attempt.number,
        "raw": attempt.raw,
        "outcome": attempt.outcome,
        "detail": attempt.detail,
        "latency_s": round(attempt.latency_s, 6),
        "params": dict(attempt.params),
    }
    if attempt.raw is not None and len(attempt.raw) > TRACE_RAW_CHARS:
        entry["raw"] = attempt.raw[:TRACE_RAW_CHARS]
        entry["raw_cut"] = {"kept_chars": TRACE_RAW_CHARS, "full_chars": len(attempt.raw)}
    return entry
