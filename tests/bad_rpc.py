"""A loopback JSON-RPC server that answers like a hostile or broken endpoint, on demand.

``BadRpc`` is a real threaded HTTP server on 127.0.0.1 (``port=0``: a free port), run in
this process as a context manager; ``url`` is its address. Every HTTP request (a single call
or a batch) is answered according to the current :class:`Mode`, which can be switched at
any time (``server.mode = Mode.HTML``); one-off modes queued with :meth:`BadRpc.once` are
applied first, to the next matching requests. The modes:

- ``FORWARD`` -- a correct answer. With ``upstream`` (e.g. an anvil's URL) every call is
  forwarded there; without one the server itself answers ``eth_chainId`` (``chain_id``),
  ``net_version`` and ``eth_blockNumber`` (``block_number``), and refuses anything else with
  JSON-RPC -32601. A ``rewrite`` hook (``server.rewrite = fn``, ``fn(call, answer) ->
  answer``) may change each entry of a forwarded answer, e.g. to serve malformed logs under a
  good block hash.
- ``HTML`` -- 200 with a text/html page (a captive portal, a CDN error page) instead of JSON.
- ``TRICKLE`` -- the correct answer with its true Content-Length, sent one byte every
  ``trickle_interval_s`` seconds (httpx's per-read timeout never fires).
- ``HUGE`` -- 200 with a valid JSON-RPC answer of about ``huge_bytes`` bytes (each result a
  hex string of zeros), generated in 64 KiB chunks while it is sent, never built in memory;
  with ``huge_declared`` it announces its Content-Length, otherwise it is sent chunked.
- ``OTHER_CHAIN`` -- ``eth_chainId`` and ``net_version`` report ``other_chain_id``;
  everything else is answered as in ``FORWARD`` (so a proxy "re-pointed at another chain").
- ``HTTP_500`` -- 500 with a short text body.
- ``CLOSE`` -- read the request, close the connection without answering.

It records, per HTTP request, the mode applied and the methods asked (:attr:`BadRpc.seen`),
so a test can show what a client asked of it (e.g. only ``eth_chainId`` of a wrong-chain
URL). Also a process for manual runs::

    python -m tests.bad_rpc --upstream http://127.0.0.1:8545 --mode trickle
"""

from __future__ import annotations

import argparse
import enum
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

import httpx

# Seconds the server waits for the upstream node.
UPSTREAM_TIMEOUT_S = 60.0
# Seconds serve_forever waits between shutdown checks: short, so stopping is quick.
SERVE_POLL_S = 0.02
# Bytes per chunk of a HUGE answer: what a real server's socket writes look like.
HUGE_CHUNK_BYTES = 64 * 1024
HTML_PAGE = (
    b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
    b"<body><h1>502 Bad Gateway</h1><p>cloudflare</p></body></html>"
)

Rewrite = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]


class Mode(enum.Enum):
    FORWARD = "forward"
    HTML = "html"
    TRICKLE = "trickle"
    HUGE = "huge"
    OTHER_CHAIN = "other_chain"
    HTTP_500 = "http_500"
    CLOSE = "close"


@dataclass(frozen=True)
class Seen:
    """One HTTP request the server received: the mode it was answered in and its methods."""

    mode: Mode
    methods: tuple[str, ...]


@dataclass
class _Once:
    mode: Mode
    method: str | None  # only requests containing this method; None = any


class BadRpc:
    """The server; ``url`` is what the client under test should use."""

    def __init__(
        self,
        upstream: str | None = None,
        *,
        mode: Mode = Mode.FORWARD,
        chain_id: int = 31337,
        other_chain_id: int = 56,
        block_number: int = 100,
        trickle_interval_s: float = 2.0,
        huge_bytes: int = 200 * 1024 * 1024,
        huge_declared: bool = False,
        port: int = 0,
    ) -> None:
        self.upstream = upstream
        self.chain_id = chain_id
        self.other_chain_id = other_chain_id
        self.block_number = block_number
        self.trickle_interval_s = trickle_interval_s
        self.huge_bytes = huge_bytes
        self.huge_declared = huge_declared
        self.rewrite: Rewrite | None = None
        self._mode = mode
        self._port = port
        self._lock = threading.Lock()
        self._once: deque[_Once] = deque()
        self._seen: list[Seen] = []
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._local = threading.local()

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> Self:
        self._stopping.clear()
        self._server = self._make_server(self._port)
        self._port = self._server.server_address[1]
        thread = threading.Thread(
            target=self._server.serve_forever, args=(SERVE_POLL_S,), name="bad-rpc", daemon=True
        )
        thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; answers being trickled or streamed end at their next write."""
        self._stopping.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    # --- controls -------------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        with self._lock:
            return self._mode

    @mode.setter
    def mode(self, mode: Mode) -> None:
        with self._lock:
            self._mode = mode

    def once(self, mode: Mode, times: int = 1, *, method: str | None = None) -> None:
        """Answer the next ``times`` HTTP requests (that contain ``method``) in ``mode``."""
        with self._lock:
            self._once.extend(_Once(mode, method) for _ in range(times))

    @property
    def seen(self) -> list[Seen]:
        """Every HTTP request received so far, in order."""
        with self._lock:
            return list(self._seen)

    def methods_seen(self) -> list[str]:
        """Every method asked so far, flattened over requests and batches."""
        return [method for seen in self.seen for method in seen.methods]

    # --- answering ------------------------------------------------------------------------

    def _choose(self, methods: tuple[str, ...]) -> Mode:
        with self._lock:
            mode = self._mode
            for index, pending in enumerate(self._once):
                if pending.method is None or pending.method in methods:
                    del self._once[index]
                    mode = pending.mode
                    break
            self._seen.append(Seen(mode, methods))
            return mode

    def answer(self, request: Any, mode: Mode) -> Any:
        """The correct JSON answer to ``request`` (FORWARD / OTHER_CHAIN)."""
        calls = request if isinstance(request, list) else [request]
        answers = [self._answer_one(call, mode) for call in calls if isinstance(call, dict)]
        upstream_calls = [call for call, answer in answers if answer is None]
        forwarded: dict[Any, dict[str, Any]] = {}
        if upstream_calls:
            reply = self._upstream(upstream_calls)
            forwarded = {item.get("id"): item for item in reply if isinstance(item, dict)}
        out = []
        for call, local in answers:
            if local is not None:
                out.append(local)
                continue
            answer = forwarded.get(call.get("id"), _error(call, -32603, "no upstream answer"))
            out.append(answer if self.rewrite is None else self.rewrite(call, answer))
        return out if isinstance(request, list) else out[0]

    def _answer_one(
        self, call: dict[str, Any], mode: Mode
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """(call, its answer), or (call, None) when the upstream must answer it."""
        method = call.get("method")
        if mode is Mode.OTHER_CHAIN and method in ("eth_chainId", "net_version"):
            value = (
                hex(self.other_chain_id) if method == "eth_chainId" else str(self.other_chain_id)
            )
            return call, _result(call, value)
        if self.upstream is not None:
            return call, None
        if method == "eth_chainId":
            return call, _result(call, hex(self.chain_id))
        if method == "net_version":
            return call, _result(call, str(self.chain_id))
        if method == "eth_blockNumber":
            return call, _result(call, hex(self.block_number))
        return call, _error(call, -32601, f"method {method!r} not found")

    def _upstream(self, calls: list[dict[str, Any]]) -> list[Any]:
        assert self.upstream is not None
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = httpx.Client(
                timeout=UPSTREAM_TIMEOUT_S, headers={"content-type": "application/json"}
            )
            self._local.client = client
        reply = client.post(self.upstream, content=json.dumps(calls)).json()
        return reply if isinstance(reply, list) else [reply]

    def _huge_parts(self, request: Any) -> list[tuple[bytes, int]]:
        """A HUGE answer as (JSON text, zeros that follow it) pieces; ~``huge_bytes`` in all."""
        calls = request if isinstance(request, list) else [request]
        per_call = max(1, self.huge_bytes // len(calls))
        parts: list[tuple[bytes, int]] = [(b"[" if isinstance(request, list) else b"", 0)]
        for position, call in enumerate(calls):
            call_id = json.dumps(call.get("id") if isinstance(call, dict) else None)
            head = ("," if position else "") + '{"jsonrpc": "2.0", "id": ' + call_id
            parts.append((f'{head}, "result": "0x'.encode(), per_call))
            parts.append((b'"}', 0))
        parts.append((b"]" if isinstance(request, list) else b"", 0))
        return parts

    def huge_length(self, request: Any) -> int:
        """The byte length of the HUGE answer to ``request``."""
        return sum(len(text) + zeros for text, zeros in self._huge_parts(request))

    def huge_chunks(self, request: Any) -> Iterator[bytes]:
        """The HUGE answer to ``request``, at most HUGE_CHUNK_BYTES at a time."""
        block = b"0" * HUGE_CHUNK_BYTES
        for text, zeros in self._huge_parts(request):
            if text:
                yield text
            for start in range(0, zeros, HUGE_CHUNK_BYTES):
                yield block[: min(zeros - start, HUGE_CHUNK_BYTES)]

    # --- the HTTP server ------------------------------------------------------------------

    def _make_server(self, port: int) -> ThreadingHTTPServer:
        bad = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like a real endpoint

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                request = json.loads(self.rfile.read(length))
                calls = request if isinstance(request, list) else [request]
                methods = tuple(str(c.get("method")) for c in calls if isinstance(c, dict))
                mode = bad._choose(methods)
                try:
                    self._respond(request, mode)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up: that is the point

            def _respond(self, request: Any, mode: Mode) -> None:
                if mode is Mode.CLOSE:
                    self.close_connection = True
                elif mode is Mode.HTTP_500:
                    self._send(500, "text/plain", b"internal server error")
                elif mode is Mode.HTML:
                    self._send(200, "text/html; charset=utf-8", HTML_PAGE)
                elif mode is Mode.HUGE:
                    self._send_huge(request)
                elif mode is Mode.TRICKLE:
                    self._trickle(json.dumps(bad.answer(request, Mode.FORWARD)).encode())
                else:
                    self._send(
                        200, "application/json", json.dumps(bad.answer(request, mode)).encode()
                    )

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _trickle(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.flush()
                for index in range(len(body)):
                    if bad._stopping.wait(bad.trickle_interval_s):
                        self.close_connection = True
                        return
                    self.wfile.write(body[index : index + 1])
                    self.wfile.flush()

            def _send_huge(self, request: Any) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if bad.huge_declared:
                    self.send_header("Content-Length", str(bad.huge_length(request)))
                else:
                    self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for chunk in bad.huge_chunks(request):
                    if bad._stopping.is_set():
                        self.close_connection = True
                        return
                    if bad.huge_declared:
                        self.wfile.write(chunk)
                    else:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                if not bad.huge_declared:
                    self.wfile.write(b"0\r\n\r\n")

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: tests read ``seen`` instead."""

        server = ThreadingHTTPServer(("127.0.0.1", port), Handler, bind_and_activate=False)
        server.allow_reuse_address = True
        server.daemon_threads = True
        server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.server_bind()
        server.server_activate()
        return server


def _result(call: dict[str, Any], value: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": call.get("id"), "result": value}


def _error(call: dict[str, Any], code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": call.get("id"), "error": {"code": code, "message": message}}


def main(argv: list[str] | None = None, *, ready: Callable[[str], None] = print) -> None:
    parser = argparse.ArgumentParser(description="A hostile JSON-RPC endpoint for tests")
    parser.add_argument("--upstream", default=None, help="forward correct answers here")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--mode", choices=[m.value for m in Mode], default=Mode.FORWARD.value)
    parser.add_argument("--chain-id", type=int, default=31337)
    parser.add_argument("--other-chain-id", type=int, default=56)
    parser.add_argument("--trickle-interval-s", type=float, default=2.0)
    parser.add_argument("--huge-bytes", type=int, default=200 * 1024 * 1024)
    args = parser.parse_args(argv)
    server = BadRpc(
        args.upstream,
        mode=Mode(args.mode),
        chain_id=args.chain_id,
        other_chain_id=args.other_chain_id,
        trickle_interval_s=args.trickle_interval_s,
        huge_bytes=args.huge_bytes,
        port=args.port,
    ).start()
    ready(server.url)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
