"""A small asyncio HTTP/1.1 server for the test doubles: keep-alive, ``Content-Length``
bodies, JSON in and out, thousands of requests a second on one core.

The standard library's ThreadingHTTPServer costs a thread per kept-alive connection; the
dispatcher keeps hundreds open to its agents, and a mock that hangs must hold a connection
without holding a thread. Only what the doubles need is implemented: no chunked request
bodies (refused with 411), no pipelining beyond reading requests in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

# Bytes of a request head (request line + headers) accepted; clients send a few hundred.
MAX_HEAD_BYTES: Final = 64 * 1024
# Bytes of a request body accepted: a fetch of 1,000 jobs is well below.
MAX_BODY_BYTES: Final = 16 * 1024 * 1024
# Seconds a kept-alive connection may sit idle before the server closes it.
IDLE_TIMEOUT_S: Final = 120.0


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclass
class Response:
    status: int = 200
    body: Any = None  # serialised as JSON unless ``raw`` is given
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self, *, keep_alive: bool) -> bytes:
        payload = self.raw if self.raw is not None else json.dumps(self.body).encode()
        content_type = "application/octet-stream" if self.raw is not None else "application/json"
        lines = [f"HTTP/1.1 {self.status} {_phrase(self.status)}",
                 f"Content-Type: {self.headers.get('Content-Type', content_type)}",
                 f"Content-Length: {len(payload)}",
                 f"Connection: {'keep-alive' if keep_alive else 'close'}"]  # fmt: skip
        lines += [f"{k}: {v}" for k, v in self.headers.items() if k != "Content-Type"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Status"


Handler = Callable[[Request], Awaitable[Response]]


class HttpServer:
    """Serves ``handler`` on ``host:port`` (0 picks a free port) in the running loop."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._connection, self.host, self.port, limit=MAX_HEAD_BYTES, backlog=1024
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError, asyncio.CancelledError):  # fmt: skip
            pass  # the client went away or sent garbage, or the server is closing
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT_S)
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, version = [*request_line.split(" "), "", "", ""][:3]
        headers: dict[str, str] = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        if "chunked" in headers.get("transfer-encoding", "").lower():
            writer.write(Response(411, {"error": "length_required"}).encode(keep_alive=False))
            await writer.drain()
            return False
        length = int(headers.get("content-length", "0") or 0)
        if length > MAX_BODY_BYTES:
            writer.write(Response(413, {"error": "too_large"}).encode(keep_alive=False))
            await writer.drain()
            return False
        body = await reader.readexactly(length) if length else b""
        parts = urlsplit(target)
        request = Request(method, parts.path, dict(parse_qsl(parts.query)), headers, body)
        try:
            response = await self.handler(request)
        except (ValueError, KeyError, TypeError) as exc:  # a malformed body from the client
            response = Response(400, {"error": "bad_request", "message": str(exc)[:200]})
        writer.write(response.encode(keep_alive=keep_alive))
        await writer.drain()
        return keep_alive


class ServerThread:
    """Runs coroutines (servers) on an event loop of their own, in a daemon thread, so a
    test's own loop and the servers' never wait on each other."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="mock", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, servers: list[HttpServer]) -> None:
        async def close_all() -> None:
            for server in servers:
                await server.close()

        with contextlib.suppress(Exception):
            self.run(close_all(), timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
