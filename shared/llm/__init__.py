"""The LLM client every executor shares.

One interface, :func:`execute_holdai_inference`: validate the request, ask a backend,
accept only an action of the request's ``actionSet`` (retrying bad answers with feedback),
and return the action with its reasoning trace and the trace's CIDv1. Backends
(``openai``, ``local``) sit behind the :class:`LlmBackend` protocol, so callers never know
which one they talk to.
"""

from shared.llm.answer import match_action
from shared.llm.cid import cid_v1_raw
from shared.llm.inference import DEFAULT_ATTEMPTS, execute_holdai_inference
from shared.llm.types import (
    Attempt,
    ChatMessage,
    Completion,
    CompletionCall,
    Constraint,
    InferenceRequest,
    InferenceResult,
    JsonSchema,
    LlmBackend,
    SchemaConstraint,
)
from shared.llm.validate import validate_request

__all__ = [
    "DEFAULT_ATTEMPTS",
    "Attempt",
    "ChatMessage",
    "Completion",
    "CompletionCall",
    "Constraint",
    "InferenceRequest",
    "InferenceResult",
    "JsonSchema",
    "LlmBackend",
    "SchemaConstraint",
    "cid_v1_raw",
    "execute_holdai_inference",
    "match_action",
    "validate_request",
]
