"""A loopback JSON-RPC proxy (tests/rpc_proxy.py's, forwarding to a real anvil) that also
lies the ways the indexer must survive, switchable while it runs:

- ``alter_logs``: every request log of an ``eth_getLogs`` answer carries other data (a byte
  of its strings made invalid UTF-8) under its true block hash, transaction and position;
- ``null_headers``: ``eth_getBlockByNumber`` answers null, like a node that reports a head
  but serves no headers (every poll is then inconsistent, forever).

Holds no tests itself.
"""

from __future__ import annotations

import json
from typing import Any

from tests.rpc_proxy import RpcProxy
from workers.oracle.contracts import REASONING_REQUESTED_TOPIC0


class LyingProxy(RpcProxy):
    """An RpcProxy whose answers are altered after forwarding, while a mode is on."""

    def __init__(self, upstream: str, **kwargs: Any) -> None:
        super().__init__(upstream, **kwargs)
        self.alter_logs = False
        self.null_headers = False

    def answer(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        status, headers, payload = super().answer(body)
        if status != 200 or not (self.alter_logs or self.null_headers):
            return status, headers, payload
        request = json.loads(body)
        calls = request if isinstance(request, list) else [request]
        answers = json.loads(payload)
        items = answers if isinstance(answers, list) else [answers]
        # The proxy answers in the order of the calls.
        for call, item in zip(calls, items, strict=True):
            method = call.get("method")
            if self.null_headers and method == "eth_getBlockByNumber" and "result" in item:
                item["result"] = None
                self._count("null_headers")
            if self.alter_logs and method == "eth_getLogs" and isinstance(item.get("result"), list):
                for entry in item["result"]:
                    if entry.get("topics", [None])[0] == REASONING_REQUESTED_TOPIC0:
                        entry["data"] = _corrupt(entry["data"])
                        self._count("altered_logs")
        return status, headers, json.dumps(answers).encode()


def _corrupt(data: str) -> str:
    """The same ABI layout with the last byte of the last string set to 0xff: it still
    decodes, but is not UTF-8 (what one bad backend answer did in issue 10)."""
    raw = bytearray.fromhex(data[2:])
    for index in range(len(raw) - 1, -1, -1):
        if raw[index] != 0:
            raw[index] = 0xFF
            break
    return "0x" + raw.hex()
