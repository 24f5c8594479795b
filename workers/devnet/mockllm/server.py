"""A real HTTP server speaking the OpenAI chat-completions protocol, deterministically.

Endpoints:
- ``POST /v1/chat/completions``: answers per :mod:`workers.devnet.mockllm.behaviour`; honours
  ``response_format`` (json_schema) and ``guided_choice`` like vLLM does, unless told to
  reject them with 400.
- ``GET /v1/models``: the model ids seen so far plus ``mock``.
- ``GET /stats``: counts (requests, by behaviour, by constraint, by model, authorization
  headers seen, in flight now and at most, request body sizes, bytes of huge answers sent
  and answers the client hung up on), so tests can assert call counts. Authorization
  headers are counted by scheme and a short SHA-256 fingerprint, never by value: /stats
  is a plain HTTP page, and a key shown there is a key leaked.
- ``POST /control``: change the defaults (``behaviour``, ``latency_ms``, ``hang_s``,
  ``retry_after_s``, ``reject_constraints``, ``reject_json_schema``, ``huge_bytes``), queue a
  ``script`` of behaviours consumed one per chat request, and queue ``answers``: exact
  contents (a JSON value is sent as its JSON text) consumed one per chat request answered
  in mode ``ok``, e.g. an extraction answer the test wants "the model" to give.
- ``POST /reset``: clear the counters, the script, the answers and the per-state hit
  counters.

Guarantees: the same request gets the same answer; every chat request is counted before
it is answered (or hangs), so a test can see a call that never completed. Built on the
standard library's ThreadingHTTPServer: one thread per connection, so client concurrency
is real and latency is slept in parallel.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from shared.llm.schema import deterministic_instance
from workers.devnet.mockllm import behaviour as bh

log = structlog.get_logger(__name__)

# Pending connections the listening socket queues. The stdlib default (5) drops SYNs when a
# benchmark opens 100+ connections at once, which shows up as 1 s connect stalls.
LISTEN_BACKLOG = 1024
# Seconds serve_forever waits between checks for shutdown when run on a thread: stop() in a
# test fixture returns within it (the stdlib default of 0.5 s adds up over a test suite).
STOP_POLL_S = 0.05
# Bytes per write of a "huge" answer, and seconds between writes: small enough that a client
# which stops reading is noticed (its socket is closed, our next write fails) long before the
# whole answer has gone out, even with the kernel's socket buffers in between.
HUGE_CHUNK_BYTES = 64 * 1024
HUGE_CHUNK_PAUSE_S = 0.002
# Hex digits of SHA-256 shown for an Authorization header: enough to tell keys apart in a
# test, far too few to be the key.
FINGERPRINT_HEX = 8


def authorization_fingerprint(value: str) -> str:
    """How /stats shows an Authorization header: its scheme and a short hash, or "none"."""
    if not value:
        return "none"
    scheme, _, credentials = value.partition(" ")
    digest = hashlib.sha256(credentials.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{scheme} sha256:{digest[:FINGERPRINT_HEX]}"


@dataclass
class MockConfig:
    """Server-wide defaults, also settable at run time through ``POST /control``."""

    behaviour: str = "ok"
    latency_ms: int = 0
    # Seconds a "hang" sleeps: far past any client timeout used here.
    hang_s: float = 30.0
    # Seconds sent in Retry-After with a bare "429".
    retry_after_s: float = 1.0
    reject_constraints: bool = False
    # 400 to response_format json_schema only (json_object passes): a server without
    # structured outputs.
    reject_json_schema: bool = False
    # Bytes of a bare "huge" answer's content: the runaway answer of issue 10.
    huge_bytes: int = 10_000_000


class MockState:
    """Everything the handler threads share, behind one lock."""

    def __init__(self, config: MockConfig) -> None:
        self.lock = threading.Lock()
        self.config = config
        self.script: deque[str] = deque()
        self.answers: deque[str] = deque()
        self.hits: Counter[str] = Counter()
        self.stats: dict[str, Any] = {}
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.script.clear()
            self.answers.clear()
            self.hits.clear()
            self.stats = {
                "requests": 0,
                "answered": 0,
                "by_behaviour": Counter(),
                "constraints": Counter(),
                "models": Counter(),
                "authorization": Counter(),
                "in_flight": 0,
                "max_in_flight": 0,
                "request_bytes": 0,
                "max_request_bytes": 0,
                "huge_sent_bytes": 0,
                "aborted": 0,
                "scripted_answers": 0,
            }

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            out = {k: dict(v) if isinstance(v, Counter) else v for k, v in self.stats.items()}
            out["script_left"] = len(self.script)
            out["answers_left"] = len(self.answers)
            out["config"] = asdict(self.config)
            return out

    def plan(self, body: dict[str, Any], header: str | None) -> bh.Plan:
        state = bh.state_of(body)
        with self.lock:
            config = self.config
            plan = bh.Plan(
                latency_ms=config.latency_ms, reject_constraints=config.reject_constraints,
                reject_json_schema=config.reject_json_schema,
            )  # fmt: skip
            retry = config.retry_after_s
            chosen = False
            if header:
                chosen = bh.parse_tokens(header, plan, default_retry_after_s=retry)
                plan.sources.append("header")
            if not chosen and self.script:
                chosen = bh.parse_tokens(self.script.popleft(), plan, default_retry_after_s=retry)
                plan.sources.append("script")
            for tokens, attempt, times in bh.markers(state):
                if attempt is not None and attempt != bh.attempt_of(body):
                    continue
                if times is not None:
                    key = f"{tokens}x{times}|{state}"
                    self.hits[key] += 1
                    if self.hits[key] > times:
                        continue
                probe = bh.Plan()
                if bh.parse_tokens(tokens, probe, default_retry_after_s=retry) and not chosen:
                    plan.mode, plan.status = probe.mode, probe.status
                    plan.retry_after_s = probe.retry_after_s
                    plan.huge_bytes = probe.huge_bytes
                    chosen = True
                plan.latency_ms += probe.latency_ms
                plan.reject_constraints |= probe.reject_constraints
                plan.reject_json_schema |= probe.reject_json_schema
                plan.sources.append("marker")
            if not chosen:
                bh.parse_tokens(config.behaviour, plan, default_retry_after_s=retry)
            refused = (plan.reject_constraints and bh.constraint_of(body) != "none") or (
                plan.reject_json_schema and bh.constraint_of(body) == "json_schema"
            )
            if plan.mode == "ok" and self.answers and not refused:
                plan.answer = self.answers.popleft()
                plan.sources.append("answers")
                self.stats["scripted_answers"] += 1
        return plan


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse connections like in production
    # Headers and body go out in two writes; with Nagle on, the body waits for the client's
    # delayed ACK (~40 ms on Linux), which would dwarf the latencies we simulate.
    disable_nagle_algorithm = True
    state: MockState

    def do_GET(self) -> None:
        if self.path.startswith("/v1/models"):
            with self.state.lock:
                ids = sorted({"mock", *self.state.stats["models"]})
            self._json(200, {"object": "list", "data": [{"id": i, "object": "model"} for i in ids]})
        elif self.path.startswith("/stats"):
            self._json(200, self.state.snapshot())
        else:
            self._json(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._json(
                400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}}
            )
            return
        if self.path.startswith("/v1/chat/completions"):
            with self.state.lock:
                self.state.stats["request_bytes"] += len(raw)
                self.state.stats["max_request_bytes"] = max(
                    self.state.stats["max_request_bytes"], len(raw)
                )
            self._chat(body)
        elif self.path.startswith("/control"):
            self._control(body)
        elif self.path.startswith("/reset"):
            self.state.reset()
            self._json(200, {"ok": True})
        else:
            self._json(404, {"error": {"message": f"no route {self.path}"}})

    def _control(self, body: dict[str, Any]) -> None:
        with self.state.lock:
            for key, value in body.items():
                if key == "script":
                    self.state.script.extend(str(item) for item in value)
                elif key == "answers":
                    self.state.answers.extend(_answer_text(item) for item in value)
                elif hasattr(self.state.config, key):
                    setattr(self.state.config, key, type(getattr(self.state.config, key))(value))
        self._json(200, self.state.snapshot())

    def _chat(self, body: dict[str, Any]) -> None:
        constraint = bh.constraint_of(body)
        try:
            plan = self.state.plan(body, self.headers.get("X-Mock-Behaviour"))
        except ValueError as exc:
            self._json(400, {"error": {"message": str(exc), "type": "mock_control_error"}})
            return
        stats = self.state.stats
        with self.state.lock:
            stats["requests"] += 1
            stats["by_behaviour"][plan.mode if plan.mode != "status" else str(plan.status)] += 1
            stats["constraints"][constraint] += 1
            stats["models"][str(body.get("model"))] += 1
            stats["authorization"][
                authorization_fingerprint(self.headers.get("Authorization", ""))
            ] += 1
            stats["in_flight"] += 1
            stats["max_in_flight"] = max(stats["max_in_flight"], stats["in_flight"])
        try:
            self._answer(body, plan, constraint)
        finally:
            with self.state.lock:
                stats["in_flight"] -= 1

    def _answer(self, body: dict[str, Any], plan: bh.Plan, constraint: str) -> None:
        if plan.latency_ms:
            time.sleep(plan.latency_ms / 1000)
        if plan.mode == "hang":
            time.sleep(self.state.config.hang_s)
        if plan.reject_constraints and constraint != "none":
            self._json(400, {"error": {
                "message": f"{constraint} is not supported by this server",
                "type": "invalid_request_error", "param": constraint,
            }})  # fmt: skip
            return
        if plan.reject_json_schema and constraint == "json_schema":
            self._json(400, {"error": {
                "message": "response_format json_schema is not supported; use json_object",
                "type": "invalid_request_error", "param": "response_format",
            }})  # fmt: skip
            return
        if plan.mode == "status":
            headers = {}
            if plan.retry_after_s is not None:
                headers["Retry-After"] = f"{plan.retry_after_s:g}"
            self._json(plan.status, {"error": {"message": f"mock status {plan.status}"}}, headers)
            return
        if plan.mode == "garbage_body":
            self._raw(200, b"<html>502 Bad Gateway from a confused proxy", "text/html")
            return
        state = bh.state_of(body)
        action = bh.deterministic_choice(state, bh.permitted_actions(body))
        if plan.mode == "huge":
            size = plan.huge_bytes if plan.huge_bytes is not None else self.state.config.huge_bytes
            self._huge(body, action, size)
            return
        schema = bh.extraction_schema(body)
        content = bh.content_for(plan.mode, action, state)
        if plan.answer is not None:
            content = plan.answer
        elif schema is not None and plan.mode in ("ok", "hang"):
            content = json.dumps(
                deterministic_instance(schema, bh.user_messages(body)), ensure_ascii=False
            )
        elif (
            content is not None
            and constraint == "json_schema"
            and plan.mode in ("ok", "hang", "lower", "outside", "parrot")
        ):
            content = json.dumps({"action": content})
        with self.state.lock:
            self.state.stats["answered"] += 1
        self._json(200, {
            "id": f"mock-{time.monotonic_ns()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "mock"),
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }],
            "usage": {"prompt_tokens": 0, "completion_tokens": 1, "total_tokens": 1},
        })  # fmt: skip

    def _huge(self, body: dict[str, Any], action: str, size: int) -> None:
        """A 200 whose content is ``size`` bytes of the action repeated, written in chunks."""
        content = (action + " ") * (size // (len(action) + 1) + 1)
        data = json.dumps({
            "id": f"mock-{time.monotonic_ns()}", "object": "chat.completion",
            "model": body.get("model", "mock"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content[:size]},
                         "finish_reason": "length"}],
        }).encode()  # fmt: skip
        stats = self.state.stats
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            for start in range(0, len(data), HUGE_CHUNK_BYTES):
                if start:
                    time.sleep(HUGE_CHUNK_PAUSE_S)
                chunk = data[start : start + HUGE_CHUNK_BYTES]
                self.wfile.write(chunk)
                with self.state.lock:
                    stats["huge_sent_bytes"] += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            with self.state.lock:
                stats["aborted"] += 1
            self.close_connection = True
            return
        with self.state.lock:
            stats["answered"] += 1

    def _json(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
        self._raw(status, json.dumps(payload).encode(), "application/json", headers)

    def _raw(
        self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout, killed worker): nothing to answer

    def log_message(self, format: str, *args: object) -> None:
        """Per-request access logs would drown benchmark output; /stats has the counts."""


def _answer_text(item: object) -> str:
    """A queued answer: a string is the content itself, anything else its JSON text."""
    return item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)


class _Server(ThreadingHTTPServer):
    request_queue_size = LISTEN_BACKLOG
    daemon_threads = True


class MockLlmServer:
    """The mock server; ``start()`` serves on a daemon thread (tests), ``serve_forever()``
    blocks (the CLI)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, config: MockConfig | None = None):
        self.state = MockState(config or MockConfig())
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._server = _Server((host, port), handler)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = str(self._server.server_address[0])
        return f"http://{host}:{self.port}/v1"

    def start(self) -> MockLlmServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": STOP_POLL_S},
            name="mock-llm",
            daemon=True,
        )
        self._thread.start()
        return self

    # In-process equivalents of /control and /stats, for tests that run the server in-thread.
    def script(self, *behaviours: str) -> None:
        with self.state.lock:
            self.state.script.extend(behaviours)

    def answer(self, *contents: object) -> None:
        """Queue exact answer contents (see ``POST /control`` ``answers``)."""
        with self.state.lock:
            self.state.answers.extend(_answer_text(item) for item in contents)

    def configure(self, **settings: object) -> None:
        with self.state.lock:
            for key, value in settings.items():
                if not hasattr(self.state.config, key):
                    raise AttributeError(f"MockConfig has no {key!r}")
                setattr(self.state.config, key, value)

    def stats(self) -> dict[str, Any]:
        return self.state.snapshot()

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
