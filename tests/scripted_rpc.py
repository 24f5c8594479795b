"""A scripted JSON-RPC node for transaction tests: a loopback HTTP proxy to anvil whose answers
to ``eth_sendRawTransaction`` and to the 'latest' block a test decides.

- Every raw transaction sent through it is kept (``sent``), so a test counts sends exactly.
- ``refuse``: raw -> an error message to answer instead of forwarding (a node refusing it:
  "transaction underpriced", "exceeds block gas limit", ...), or None to forward it.
- ``swallow``: raw -> True to answer its hash as accepted without forwarding it (a node that
  took it into a pool that will never see a block).
- ``latest_lag``: answer this many of the next ``eth_getBlockByNumber('latest')`` entries
  with the header ``lag_blocks`` below the head, as a lagging backend behind a load balancer
  does (its base fee is that block's); ``head_lag`` likewise for ``eth_blockNumber``.

Batches are answered entry by entry, in order. Other methods are forwarded unchanged.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

import httpx
from eth_utils.crypto import keccak

# Seconds the proxy waits for anvil.
UPSTREAM_TIMEOUT_S = 30.0


def raw_hash(raw: str) -> str:
    """The transaction hash of a 0x-hex raw transaction."""
    return "0x" + keccak(bytes.fromhex(raw.removeprefix("0x"))).hex()


class ScriptedNode:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.sent: list[str] = []
        self.refuse: Callable[[str], str | None] = lambda raw: None
        self.swallow: Callable[[str], bool] = lambda raw: False
        self.latest_lag = 0
        self.head_lag = 0
        self.lag_blocks = 5
        self.lagged_answers = 0
        self._lock = threading.Lock()
        self._client = httpx.Client(timeout=UPSTREAM_TIMEOUT_S)
        self._server: ThreadingHTTPServer | None = None

    def sends_of(self, raw: str) -> int:
        with self._lock:
            return sum(1 for r in self.sent if r.lower() == raw.lower())

    # --- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> Self:
        node = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
                answer = (
                    [node._answer(e) for e in body]
                    if isinstance(body, list)
                    else node._answer(body)
                )
                payload = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: tests read the node's records instead."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True).start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self._client.close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # --- answers ----------------------------------------------------------------------------

    def _forward(self, entry: dict[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = self._client.post(self.upstream, json=entry).json()
        return answer

    def _answer(self, entry: dict[str, Any]) -> dict[str, Any]:
        method, params, rid = entry.get("method"), entry.get("params") or [], entry.get("id")
        if method == "eth_sendRawTransaction":
            raw = str(params[0])
            with self._lock:
                self.sent.append(raw)
            refusal = self.refuse(raw)
            if refusal is not None:
                return {"jsonrpc": "2.0", "id": rid, "error": {"code": -32000, "message": refusal}}
            if self.swallow(raw):
                return {"jsonrpc": "2.0", "id": rid, "result": raw_hash(raw)}
        if method == "eth_blockNumber":
            with self._lock:
                lag = self.head_lag > 0
                self.head_lag -= 1 if lag else 0
            if lag:
                answer = self._forward(entry)
                lowered = max(0, int(answer["result"], 16) - self.lag_blocks)
                return {**answer, "result": hex(lowered)}
        if method == "eth_getBlockByNumber" and params and params[0] == "latest":
            with self._lock:
                lag = self.latest_lag > 0
                if lag:
                    self.latest_lag -= 1
                    self.lagged_answers += 1
            if lag:
                head = int(self._forward({"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber",
                                          "params": []})["result"], 16)  # fmt: skip
                behind = hex(max(0, head - self.lag_blocks))
                return self._forward({**entry, "params": [behind, *params[1:]]})
        return self._forward(entry)
