"""Prometheus metrics and a health endpoint, one small HTTP server per process.

``serve(port, health)`` starts a daemon thread serving ``/metrics`` (Prometheus text format)
and ``/healthz`` (200 while the process's loop is making progress, 503 otherwise, with a
one-line JSON reason). Port 0 in settings means "do not serve"; tests pass 0 to the server
itself to get a free port.

The metric objects live here so every process names them the same way.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

REQUESTS = Gauge("hodlai_requests", "Requests in the state store by status", ["status"])
INDEXER_LAG = Gauge("hodlai_indexer_lag_blocks", "Chain head minus the indexer cursor")
INDEXER_CURSOR = Gauge("hodlai_indexer_cursor_block", "Last block the indexer accepted")
LLM_LATENCY = Histogram(
    "hodlai_llm_latency_seconds",
    "Latency of one LLM call",
    ["backend", "outcome"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
ANSWERS = Counter("hodlai_answers_total", "Requests answered or failed by inference", ["outcome"])
TXS_IN_FLIGHT = Gauge("hodlai_txs_in_flight", "Signed fulfilment transactions not yet mined")
TXS = Counter("hodlai_txs_total", "Fulfilment transactions by outcome", ["outcome"])
ERRORS = Counter("hodlai_errors_total", "Errors by process and kind", ["process", "kind"])
# RPC URLs are labelled by scheme://host:port only (shared.config.redact_url): API keys in a
# URL's path or query never reach a metric.
RPC_FAILOVERS = Counter("hodlai_rpc_failovers_total", "RPC URL failovers by reason", ["reason"])
RPC_WRONG_CHAIN = Counter(
    "hodlai_rpc_wrong_chain_total", "Times an RPC URL reported another chain id", ["url"]
)
RPC_QUARANTINED = Gauge(
    "hodlai_rpc_url_quarantined", "1 while an RPC URL is quarantined (another chain)", ["url"]
)


class Health:
    """Liveness as seen by the loop: it calls ``beat()`` after every healthy iteration."""

    def __init__(self, stale_after_s: float) -> None:
        self.stale_after_s = stale_after_s
        self._last_beat = time.monotonic()
        self._detail = "starting"
        self._lock = threading.Lock()

    def beat(self, detail: str = "ok") -> None:
        with self._lock:
            self._last_beat = time.monotonic()
            self._detail = detail

    def check(self) -> tuple[bool, str]:
        with self._lock:
            age = time.monotonic() - self._last_beat
            detail = self._detail
        if age > self.stale_after_s:
            return False, f"no healthy loop iteration for {age:.0f} s (last: {detail})"
        return True, detail


class _Handler(BaseHTTPRequestHandler):
    health: Health

    def do_GET(self) -> None:
        if self.path.startswith("/metrics"):
            body = generate_latest()
            self._send(200, CONTENT_TYPE_LATEST, body)
        elif self.path.startswith("/healthz"):
            ok, detail = self.health.check()
            payload = json.dumps({"ok": ok, "detail": detail}).encode()
            self._send(200 if ok else 503, "application/json", payload)
        else:
            self._send(404, "text/plain", b"not found\n")

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Scrapes every few seconds would drown the structured log; stay quiet."""


def serve(port: int, health: Health, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Serve /metrics and /healthz on a daemon thread; returns the server (``server_port``)."""
    handler = type("Handler", (_Handler,), {"health": health})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return server
