"""``execute_holdai_inference``: the one interface between a request and an LLM.

Guarantees:
- The request is validated before any call (InvalidRequestError, no LLM call made).
- The result's ``action`` is always an element of the request's ``actionSet``; anything else
  the model says is a bad answer, retried with feedback saying what was wrong, up to
  ``max_attempts``; then AttemptsExhaustedError carrying the trace of every attempt.
- A request the endpoint refuses (LlmRejectedError, e.g. 400) spends an attempt like a bad
  answer, so a passing glitch is retried but a hopeless request ends within the budget.
- An answer larger than the backend reads (LlmAnswerTooLargeError) is a bad answer whose
  text is never kept: the retry says why without repeating it, and the trace records it
  without it. Long answers that were read are cut in the feedback and in the trace, so no
  answer makes the next prompt or the stored trace grow with it.
- Transport trouble (LlmTransportError, LlmAccessError) propagates at once and spends no
  attempt: the caller pauses and tries the request later, when its budget is intact.
- Every accepted answer comes with a reasoning trace (:mod:`shared.llm.trace`) and the
  CIDv1 of its canonical bytes.

Backends sit behind :class:`shared.llm.types.LlmBackend`; nothing here knows which one.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import structlog

from shared.errors import (
    AttemptsExhaustedError,
    BadAnswerError,
    LlmAnswerTooLargeError,
    LlmRejectedError,
    LlmTransportError,
)
from shared.llm import prompt
from shared.llm.answer import match_action
from shared.llm.cid import cid_v1_raw
from shared.llm.trace import build_trace, canonical_json
from shared.llm.types import (
    Attempt,
    ChatMessage,
    CompletionCall,
    InferenceRequest,
    InferenceResult,
    LlmBackend,
)
from shared.llm.validate import DEFAULT_LIMITS, StringLimits, validate_request
from shared.metrics import LLM_LATENCY

log = structlog.get_logger(__name__)

# Attempts (bad answers or refusals) before a request fails; the design's default. A model
# that misses three times with feedback is unlikely to hit on the fourth.
DEFAULT_ATTEMPTS = 3

OnAttempt = Callable[[Attempt], Awaitable[None]]


async def execute_holdai_inference(
    request: InferenceRequest,
    *,
    backend: LlmBackend,
    max_attempts: int = DEFAULT_ATTEMPTS,
    prior_attempts: int = 0,
    on_attempt: OnAttempt | None = None,
    clock: Callable[[], float] = time.time,
    limits: StringLimits = DEFAULT_LIMITS,
) -> InferenceResult:
    """Ask ``backend`` to choose one action of ``request.action_set``.

    ``prior_attempts`` is how many attempts earlier claims of this request already spent
    (numbering continues from there); ``max_attempts`` is what is left of the budget.
    ``on_attempt`` is awaited after every attempt, before the next one (the worker persists
    the spent budget there); its errors propagate. ``limits`` are the contract's string
    limits (see :mod:`shared.llm.validate`).
    """
    validate_request(request, serves=backend.serves, limits=limits)
    started_at = clock()
    messages: tuple[ChatMessage, ...] = prompt.initial_messages(request, backend.answer_format)
    attempts: list[Attempt] = []
    backend_model: str | None = None
    params: dict[str, object] = {}
    runtime: dict[str, object] = {}
    for offset in range(max_attempts):
        number = prior_attempts + offset + 1
        sent = messages
        began = time.perf_counter()
        try:
            completion = await backend.complete(
                CompletionCall(request.model, sent, request.action_set, request.state_string)
            )
        except LlmTransportError:
            _observe(backend.name, "transport_error", began)
            raise
        except LlmAnswerTooLargeError as exc:
            attempt = Attempt(number, None, "bad_answer", str(exc), _since(began), {})
            _observe(backend.name, "bad_answer", began)
            log.info(
                "llm_bad_answer", request_id=str(request.request_id), attempt=number,
                problem=str(exc),
            )  # fmt: skip
            messages = sent + prompt.feedback(
                prompt.discarded_answer(exc.limit), str(exc), request.action_set,
                backend.answer_format,
            )  # fmt: skip
        except LlmRejectedError as exc:
            attempt = Attempt(number, None, "rejected", str(exc), _since(began), {})
            _observe(backend.name, "rejected", began)
            log.warning(
                "llm_request_rejected", request_id=str(request.request_id), attempt=number,
                status=exc.status, error=str(exc),
            )  # fmt: skip
        else:
            backend_model = completion.backend_model
            params = dict(completion.params)
            runtime = dict(completion.runtime)
            try:
                action = match_action(completion.text, request.action_set)
            except BadAnswerError as exc:
                attempt = Attempt(
                    number, completion.text, "bad_answer", str(exc), _since(began), params
                )
                _observe(backend.name, "bad_answer", began)
                log.info(
                    "llm_bad_answer", request_id=str(request.request_id), attempt=number,
                    problem=str(exc),
                )  # fmt: skip
                messages = sent + prompt.feedback(
                    completion.text, str(exc), request.action_set, backend.answer_format
                )
            else:
                attempt = Attempt(
                    number, completion.text, "answered", action, _since(began), params
                )
                _observe(backend.name, "ok", began)
                attempts.append(attempt)
                if on_attempt is not None:
                    await on_attempt(attempt)
                return _result(
                    request, backend=backend.name, backend_model=backend_model, params=params,
                    runtime=runtime, messages=sent, attempts=attempts, action=action,
                    raw=completion.text, prior_attempts=prior_attempts, started_at=started_at,
                    finished_at=clock(),
                )  # fmt: skip
        attempts.append(attempt)
        if on_attempt is not None:
            await on_attempt(attempt)
    trace = build_trace(
        request, backend=backend.name, backend_model=backend_model, params=params,
        runtime=runtime, messages=messages, attempts=attempts, action=None,
        prior_attempts=prior_attempts,
        started_at=started_at, finished_at=clock(),
    )  # fmt: skip
    total = prior_attempts + len(attempts)
    last = attempts[-1].detail if attempts else "spent by earlier attempts"
    raise AttemptsExhaustedError(
        f"no valid answer in {total} attempt(s); last: {last}", trace_json=canonical_json(trace)
    )


def _result(
    request: InferenceRequest,
    *,
    backend: str,
    backend_model: str | None,
    params: dict[str, object],
    runtime: dict[str, object],
    messages: tuple[ChatMessage, ...],
    attempts: list[Attempt],
    action: str,
    raw: str,
    prior_attempts: int,
    started_at: float,
    finished_at: float,
) -> InferenceResult:
    """The accepted answer with its trace and the trace's CID."""
    trace = build_trace(
        request, backend=backend, backend_model=backend_model, params=params, runtime=runtime,
        messages=messages, attempts=attempts, action=action, prior_attempts=prior_attempts,
        started_at=started_at, finished_at=finished_at,
    )  # fmt: skip
    trace_json = canonical_json(trace)
    return InferenceResult(
        action=action,
        reasoning=raw,
        attempts=tuple(attempts),
        trace=trace,
        trace_json=trace_json,
        cid=cid_v1_raw(trace_json.encode("utf-8")),
    )


def _since(began: float) -> float:
    return time.perf_counter() - began


def _observe(backend: str, outcome: str, began: float) -> None:
    LLM_LATENCY.labels(backend=backend, outcome=outcome).observe(_since(began))
