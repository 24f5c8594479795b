"""LLM backends behind :class:`shared.llm.types.LlmBackend`: ``openai`` (any
OpenAI-compatible HTTP endpoint) and ``local`` (deterministic, no network)."""

from shared.llm.backends.local import LocalBackend
from shared.llm.backends.openai import OpenAIBackend

__all__ = ["LocalBackend", "OpenAIBackend"]
