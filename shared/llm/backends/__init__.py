"""LLM backends behind :class:`shared.llm.types.LlmBackend`: ``llama`` (a GGUF model run in
this process; the default), ``openai`` (any OpenAI-compatible HTTP endpoint) and ``local``
(deterministic, no model: for unit tests)."""

from shared.llm.backends.llama import LlamaBackend
from shared.llm.backends.local import LocalBackend
from shared.llm.backends.openai import OpenAIBackend

__all__ = ["LlamaBackend", "LocalBackend", "OpenAIBackend"]
