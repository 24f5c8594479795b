"""The audit ``hodlai replay`` performs on one answered request.

Four checks, each reported with what was expected and what was found:
- ``trace_cid``: the stored trace's bytes hash to the CID the node answered with (and the
  text is the canonical form of its own JSON, so nobody re-serialised it).
- ``inputs``: the trace describes this request: its ``inputs_sha256`` is the SHA-256 of the
  request's event data as the indexer stored it from the chain.
- ``onchain_cid``: the CID the fulfilment carried on chain (the indexer's
  ``fulfilled_cid``) is the recomputed one. A request not yet fulfilled fails this check.
- ``answer``: the messages recorded in the trace, sent again through the backend the trace
  names (for ``llama``: the same weights by SHA-256, loaded with the recorded parameters,
  decoding held to the grammar rebuilt from the action set), give the same raw text and so
  the same action. For ``llama`` the rebuilt grammar and the rendered prompt must also hash
  as recorded.

Guarantee: the audit reads the database only (the caller opens it read-only) and writes
nothing anywhere; the report is ``ok`` only when every check passed.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.errors import ConfigError, HodlaiError
from shared.llm.answer import match_action
from shared.llm.backends.llama import LlamaBackend, LoadParams
from shared.llm.backends.local import LocalBackend
from shared.llm.cid import cid_v1_raw
from shared.llm.trace import canonical_json, inputs_sha256
from shared.llm.types import ChatMessage, CompletionCall, InferenceRequest, LlmBackend
from workers.oracle.inference.settings import InferenceSettings

# Completion params of the llama backend that must come out the same on a re-run: together
# they say the same prompt was read under the same grammar with the same decoder.
_REPRODUCIBLE_PARAMS = (
    "grammar_sha256", "prompt_sha256", "prompt_tokens", "completion_tokens", "temperature",
    "seed", "max_tokens",
)  # fmt: skip


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    expected: str | None = None
    found: str | None = None

    def as_json(self) -> dict[str, object]:
        return {"ok": self.ok, "detail": self.detail, "expected": self.expected,
                "found": self.found}  # fmt: skip


@dataclass(frozen=True)
class Report:
    request_id: int
    status: str
    backend: str | None
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    def as_json(self) -> dict[str, object]:
        return {
            "request_id": str(self.request_id), "status": self.status, "backend": self.backend,
            "ok": self.ok, "checks": {check.name: check.as_json() for check in self.checks},
        }  # fmt: skip


async def audit(row: sqlite3.Row, settings: InferenceSettings) -> Report:
    """Run the four checks on ``row`` (a ``requests`` row)."""
    request_id = int(row["request_id"])
    text = row["reasoning"]
    if not text or row["answer_cid"] is None:
        missing = Check("trace_cid", False, f"request is {row['status']}: it has no answer trace")
        return Report(request_id, row["status"], None, (missing,))
    trace = json.loads(text)
    cid = cid_v1_raw(text.encode("utf-8"))
    checks = [
        _check_trace_cid(text, trace, cid, row["answer_cid"]),
        _check_inputs(row, trace),
        _check_onchain(cid, row["fulfilled_cid"]),
        await _check_answer(row, trace, settings),
    ]
    return Report(request_id, row["status"], str(trace["backend"]["name"]), tuple(checks))


def _check_trace_cid(text: str, trace: Mapping[str, Any], cid: str, answer_cid: str) -> Check:
    if canonical_json(trace) != text:
        return Check("trace_cid", False, "the stored trace is not in canonical form",
                     expected=answer_cid, found=cid)  # fmt: skip
    if cid != answer_cid:
        return Check("trace_cid", False, "the stored trace does not hash to the answer's CID",
                     expected=answer_cid, found=cid)  # fmt: skip
    return Check("trace_cid", True, "the stored trace hashes to the answer's CID",
                 expected=answer_cid, found=cid)  # fmt: skip


def _request_of(row: sqlite3.Row) -> InferenceRequest:
    return InferenceRequest(
        request_id=int(row["request_id"]), model=row["model"], system_prompt=row["system_prompt"],
        state_string=row["state_string"], action_set=tuple(json.loads(row["action_set"])),
    )  # fmt: skip


def _check_inputs(row: sqlite3.Row, trace: Mapping[str, Any]) -> Check:
    expected = inputs_sha256(_request_of(row))
    recorded = trace.get("request", {}).get("inputs_sha256")
    same_id = trace.get("request", {}).get("request_id") == str(row["request_id"])
    if recorded != expected or not same_id:
        return Check("inputs", False, "the trace describes other inputs than this request's",
                     expected=expected, found=recorded)  # fmt: skip
    return Check("inputs", True, "the trace describes this request's on-chain inputs",
                 expected=expected, found=recorded)  # fmt: skip


def _check_onchain(cid: str, fulfilled_cid: str | None) -> Check:
    if fulfilled_cid is None:
        return Check("onchain_cid", False, "no fulfilment on chain yet (not FULFILLED)",
                     expected=cid)  # fmt: skip
    if fulfilled_cid != cid:
        return Check("onchain_cid", False, "the CID on chain is not the stored trace's",
                     expected=cid, found=fulfilled_cid)  # fmt: skip
    return Check("onchain_cid", True, "the fulfilment on chain carries the stored trace's CID",
                 expected=cid, found=fulfilled_cid)  # fmt: skip


def _answered(trace: Mapping[str, Any]) -> Mapping[str, Any] | None:
    attempts = trace.get("attempts") or []
    last = attempts[-1] if attempts else None
    return last if last and last.get("outcome") == "answered" else None


async def _check_answer(
    row: sqlite3.Row, trace: Mapping[str, Any], settings: InferenceSettings
) -> Check:
    accepted = _answered(trace)
    if accepted is None or trace.get("action") is None:
        return Check("answer", False, "the trace records no accepted answer")
    recorded_raw = str(accepted["raw"])
    request = _request_of(row)
    call = CompletionCall(
        model=request.model,
        messages=tuple(ChatMessage(m["role"], m["content"]) for m in trace["messages"]),
        action_set=request.action_set,
        state_string=request.state_string,
    )
    try:
        backend = _backend_for(trace, settings)
    except ConfigError as exc:
        return Check("answer", False, f"cannot re-run: {exc}", expected=recorded_raw)
    try:
        completion = await backend.complete(call)
    except HodlaiError as exc:
        return Check("answer", False, f"the re-run failed: {exc}", expected=recorded_raw)
    finally:
        await backend.aclose()
    raw = completion.text
    if "raw_cut" in accepted:  # the trace kept the beginning only
        same = raw[: len(recorded_raw)] == recorded_raw and (
            len(raw) == accepted["raw_cut"]["full_chars"]
        )
    else:
        same = raw == recorded_raw
    try:
        action = match_action(raw, request.action_set)
    except HodlaiError:
        action = None
    if not same or action != trace["action"]:
        return Check("answer", False, "the re-run gave another answer",
                     expected=recorded_raw, found=raw)  # fmt: skip
    differing = _differing_params(trace, completion.params)
    if differing:
        return Check("answer", False, f"same answer, but the decoding differed: {differing}",
                     expected=recorded_raw, found=raw)  # fmt: skip
    return Check("answer", True, f"the re-run gave the same answer: {action}",
                 expected=recorded_raw, found=raw)  # fmt: skip


def _differing_params(trace: Mapping[str, Any], params: Mapping[str, object]) -> list[str]:
    if trace["backend"]["name"] != LlamaBackend.name:
        return []
    recorded = trace["backend"]["params"]
    return [
        f"{name} {recorded.get(name)!r} -> {params.get(name)!r}"
        for name in _REPRODUCIBLE_PARAMS
        if recorded.get(name) != params.get(name)
    ]


def _backend_for(trace: Mapping[str, Any], settings: InferenceSettings) -> LlmBackend:
    """The backend the trace names, set up as the trace says it was (ConfigError if it
    cannot be here)."""
    name = trace["backend"]["name"]
    model = trace["request"]["model"]
    label = str(trace["backend"]["model"])
    if name == LocalBackend.name:
        return LocalBackend({model: label})
    if name == LlamaBackend.name:
        runtime = trace["backend"].get("runtime") or {}
        load = runtime.get("load") or {}
        path, _ = settings.model_source()
        return LlamaBackend.load(
            path, params=LoadParams(**{k: int(v) for k, v in load.items()}),
            model_map={model: label}, expected_sha256=runtime.get("gguf_sha256"),
        )  # fmt: skip
    if name == "openai":
        from workers.oracle.inference.main import build_backend

        openai = settings.model_copy(update={"llm_backend": "openai"})
        openai.check_backend()
        return build_backend(openai)
    raise ConfigError(f"the trace names backend {name!r}, which this node does not have")
