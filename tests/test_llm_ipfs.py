"""Best-effort pinning against a local kubo-like /api/v0/add server over real HTTP."""

from __future__ import annotations

import email
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from multiformats import CID, multihash
from structlog.testing import capture_logs

from shared.llm.cid import cid_v1_raw
from shared.llm.ipfs import pin_trace


class FakeKubo:
    """Stores what it is given; answers like kubo, or fails / lies on request."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, list[str]], bytes]] = []
        self.mode = "ok"
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                url = urlparse(self.path)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                message = email.message_from_bytes(
                    f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + body
                )
                parts = [p.get_payload(decode=True) for p in message.walk() if not p.is_multipart()]
                data = parts[0] if parts and isinstance(parts[0], bytes) else b""
                fake.received.append((parse_qs(url.query), data))
                if url.path != "/api/v0/add" or fake.mode == "500":
                    self._send(500, b'{"Message":"boom"}')
                    return
                cid = CID("base32", 1, "raw", multihash.digest(data, "sha2-256"))
                if fake.mode == "dag-pb":  # what kubo says without raw-leaves
                    cid = CID("base32", 1, "dag-pb", multihash.digest(data, "sha2-256"))
                self._send(200, json.dumps({"Name": "t", "Hash": str(cid), "Size": "1"}).encode())

            def _send(self, status: int, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()


@pytest.fixture
def kubo() -> Iterator[FakeKubo]:
    fake = FakeKubo()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


TRACE = b'{"action":"BUY","schema":"hodlai.reasoning-trace/1"}'


async def test_pinning_sends_the_trace_bytes_as_a_raw_cidv1_leaf(kubo: FakeKubo) -> None:
    async with httpx.AsyncClient() as client:
        assert await pin_trace(client, kubo.url, TRACE, cid=cid_v1_raw(TRACE), request_id=1)
    params, data = kubo.received[0]
    assert data == TRACE
    assert params["cid-version"] == ["1"] and params["raw-leaves"] == ["true"]


async def test_a_failing_ipfs_node_is_only_logged(kubo: FakeKubo) -> None:
    kubo.mode = "500"
    async with httpx.AsyncClient() as client:
        with capture_logs() as logs:
            assert not await pin_trace(client, kubo.url, TRACE, cid=cid_v1_raw(TRACE), request_id=1)
    assert [e["event"] for e in logs] == ["ipfs_pin_failed"]


async def test_an_unreachable_ipfs_node_is_only_logged() -> None:
    async with httpx.AsyncClient() as client:
        with capture_logs() as logs:
            ok = await pin_trace(client, "http://127.0.0.1:9", TRACE, cid="bafy", request_id=1)
    assert not ok and logs[0]["event"] == "ipfs_pin_failed"


async def test_another_cid_from_the_ipfs_node_is_logged_and_ours_kept(kubo: FakeKubo) -> None:
    kubo.mode = "dag-pb"
    async with httpx.AsyncClient() as client:
        with capture_logs() as logs:
            assert not await pin_trace(client, kubo.url, TRACE, cid=cid_v1_raw(TRACE), request_id=1)
    assert logs[0]["event"] == "ipfs_cid_mismatch" and logs[0]["cid"] == cid_v1_raw(TRACE)
