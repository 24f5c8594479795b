"""Prometheus metrics and a health endpoint, one small HTTP server per process.

``serve(port, health)`` starts a daemon thread serving ``/metrics`` (Prometheus text format)
and ``/healthz`` (200 while the process's loop is making progress, 503 otherwise, with a
one-line JSON reason). Port 0 in settings means "do not serve"; tests pass 0 to the server
itself to get a free port. A port in use is a ConfigError naming the setting. Idle clients
cannot pile up threads: one thread serves every connection, each with a read timeout.

The core's metric objects live here so every process names them the same way; an
executor's own metrics live in its package (the oracle's in workers/oracle/metrics.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import socket
import threading
import time
from http import HTTPStatus
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import Metric

from shared.errors import ConfigError

# Seconds a client has to send its request (and to take the answer): a scraper sends at once,
# so this only ends idle or stalled connections.
READ_TIMEOUT_S: Final = 5.0
# Connections served at once; more are closed at once. Prometheus and a health probe need a
# few; the cap bounds what a local client can make this process hold.
MAX_CONNECTIONS: Final = 256
# Bytes of request head accepted (request line + headers); scrapers send a few hundred.
MAX_REQUEST_BYTES: Final = 16 * 1024


class ExecutorLabelled:
    """The process's metrics as /metrics serves them: every sample carries the label
    ``executor`` (oracle, mint, distribution, dispatch) of the process that serves it, set
    once by shared.runtime.run_worker, so one Prometheus job can tell the executors apart
    while the code names each metric once, without that label."""

    def __init__(self) -> None:
        self.executor: str | None = None

    def collect(self) -> list[Metric]:
        families = list(REGISTRY.collect())
        if self.executor is None:
            return families
        for family in families:
            family.samples = [
                sample._replace(labels={**sample.labels, "executor": self.executor})
                for sample in family.samples
            ]
        return families


EXPOSITION = ExecutorLabelled()


def label_executor(executor: str) -> None:
    """Name the executor this process serves metrics for (see ExecutorLabelled)."""
    EXPOSITION.executor = executor


LLM_LATENCY = Histogram(
    "hodlai_llm_latency_seconds",
    "Latency of one LLM call",
    ["backend", "outcome"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
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
    """Liveness as seen by the loop: it calls ``beat()`` after every healthy iteration and
    ``step_failed()`` after every failed one.

    Unhealthy when no iteration was healthy for ``stale_after_s``, or when the last
    ``permanent_failures_unhealthy`` iterations all failed permanently: such a loop is busy
    but achieves nothing (e.g. two indexers fighting over one cursor), and its back-off stays
    short of the staleness limit."""

    def __init__(self, stale_after_s: float, *, permanent_failures_unhealthy: int = 3) -> None:
        self.stale_after_s = stale_after_s
        self.permanent_failures_unhealthy = permanent_failures_unhealthy
        self._last_beat = time.monotonic()
        self._detail = "starting"
        self._permanent_streak = 0
        self._last_failure = ""
        self._lock = threading.Lock()

    def beat(self, detail: str = "ok") -> None:
        with self._lock:
            self._last_beat = time.monotonic()
            self._detail = detail
            self._permanent_streak = 0

    def step_failed(self, detail: str, *, permanent: bool) -> None:
        with self._lock:
            self._permanent_streak = self._permanent_streak + 1 if permanent else 0
            self._last_failure = detail

    def check(self) -> tuple[bool, str]:
        with self._lock:
            age = time.monotonic() - self._last_beat
            detail = self._detail
            streak = self._permanent_streak
            failure = self._last_failure
        if streak >= self.permanent_failures_unhealthy:
            return False, f"the last {streak} loop steps failed permanently (last: {failure})"
        if age > self.stale_after_s:
            return False, f"no healthy loop iteration for {age:.0f} s (last: {detail})"
        return True, detail


class MetricsServer:
    """``/metrics`` and ``/healthz`` on one thread running its own event loop.

    An idle or slow client costs a socket and a few hundred bytes, not a thread (the standard
    library's ThreadingHTTPServer kept one thread per idle connection: 60 idle sockets, 61
    threads). Each connection gets ``READ_TIMEOUT_S`` to send its request and is closed after
    one answer; past ``MAX_CONNECTIONS`` new ones are closed at once.
    """

    def __init__(self, sock: socket.socket, health: Health) -> None:
        self.health = health
        self.server_port: int = sock.getsockname()[1]
        self._sock = sock
        # The open connections, each with the task answering it.
        self._writers: dict[asyncio.StreamWriter, asyncio.Task[None]] = {}
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="metrics", daemon=True)
        self._thread.start()
        self._ready.wait()

    def shutdown(self) -> None:
        """Stop serving and close the socket; returns once the thread has ended."""
        if self._stopped is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._ready.set()  # also when start_server failed: __init__ must not wait forever
            self._loop.close()
            self._sock.close()

    async def _serve(self) -> None:
        self._stopped = asyncio.Event()
        server = await asyncio.start_server(self._handle, sock=self._sock, limit=MAX_REQUEST_BYTES)
        self._ready.set()
        async with server:
            await self._stopped.wait()
            # Connections still open (idle clients) end with the server: closing them ends
            # their handlers' reads (cancelling the handlers would log a traceback each).
            handlers = list(self._writers.values())
            for writer in list(self._writers):
                writer.transport.abort()
            if handlers:
                await asyncio.wait(handlers, timeout=READ_TIMEOUT_S)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._writers[writer] = task
        try:
            if len(self._writers) <= MAX_CONNECTIONS:
                await self._answer(reader, writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError):  # fmt: skip
            pass  # the client went away, stayed silent, or sent garbage: just close
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self._writers.pop(writer, None)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
        method, _, rest = head.decode("latin-1").partition(" ")
        path = rest.partition(" ")[0]
        if method not in ("GET", "HEAD"):
            code, content_type, body = 405, "text/plain", b"method not allowed\n"
        elif path.startswith("/metrics"):
            code, content_type, body = 200, CONTENT_TYPE_LATEST, generate_latest(EXPOSITION)
        elif path.startswith("/healthz"):
            ok, detail = self.health.check()
            payload = json.dumps({"ok": ok, "detail": detail}).encode()
            code, content_type, body = (200 if ok else 503), "application/json", payload
        else:
            code, content_type, body = 404, "text/plain", b"not found\n"
        header = (
            f"HTTP/1.1 {code} {HTTPStatus(code).phrase}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(header.encode("latin-1") + (b"" if method == "HEAD" else body))
        await asyncio.wait_for(writer.drain(), READ_TIMEOUT_S)


def serve(
    port: int, health: Health, host: str = "127.0.0.1", *, setting: str = "HODLAI_METRICS_PORT"
) -> MetricsServer:
    """Serve /metrics and /healthz on a daemon thread; returns the server (``server_port``,
    ``shutdown()``). A port that cannot be bound raises ConfigError naming ``setting``."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"{setting}: {port} is not a TCP port (0-65535)")
    try:
        sock = socket.create_server((host, port), reuse_port=False)
    except OSError as exc:
        reason = "in use by another process" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise ConfigError(f"{setting}: cannot serve metrics on {host}:{port}: {reason}") from None
    return MetricsServer(sock, health)
