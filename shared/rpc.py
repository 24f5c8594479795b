"""JSON-RPC over HTTP (httpx), with batches, error classification and URL failover.

Guarantees:
- Whatever goes wrong below (connection refused, timeout, HTTP status, malformed JSON, a
  JSON-RPC error object) comes out as one of the errors in shared/errors.py, classified as
  retryable or permanent; nothing from httpx or json escapes.
- A batch is one HTTP POST. Results come back in the order of the calls, whatever order the
  server answered in (anvil runs batch entries concurrently).
- With several URLs, a retryable transport failure moves the client to the next URL before
  the error is raised, so the caller's retry goes elsewhere; a healthy URL is kept.

web3.py is not used here: it refuses eth_sendRawTransaction inside a batch, and its
per-log decoding measured ~6x slower than raw JSON + eth-abi (FACTS.md).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from shared.errors import (
    ExecutionRevertedError,
    HodlaiError,
    RpcRangeTooLargeError,
    RpcRateLimitedError,
    RpcResponseError,
    RpcServerError,
    RpcTransportError,
    StaleNodeError,
)

log = structlog.get_logger(__name__)

# Seconds for one HTTP exchange; a getLogs over a few thousand blocks answers in well under 1 s
# on a healthy node, so 10 s separates "slow" from "gone" without hanging a poll for long.
DEFAULT_TIMEOUT_S = 10.0

# Messages and codes providers use for "your getLogs asked for too much" (geth, erigon,
# Alchemy, Infura, QuickNode, Ankr, BSC public nodes, Nodereal, anvil).
_RANGE_PATTERNS = re.compile(
    r"block range|range too (large|wide)|too many (results|blocks|logs)|"
    r"query returned more than|limit exceeded|response size|exceed(s|ed)? .*(range|limit|size)|"
    r"max(imum)? (block )?range|log response size|query timeout|returned more than \d+",
    re.IGNORECASE,
)
_RATE_PATTERNS = re.compile(r"rate.?limit|too many requests|capacity|throttl", re.IGNORECASE)
_STALE_PATTERNS = re.compile(
    r"header not found|unknown block|block not found|missing trie node|after last accepted block",
    re.IGNORECASE,
)
_RANGE_CODES = frozenset({-32005, -32614, -32602})  # -32602 only counts with a range message
_REVERT_CODES = frozenset({3, -32015})


@dataclass(frozen=True)
class RpcCall:
    method: str
    params: Sequence[Any]


def classify_error(error: dict[str, Any]) -> HodlaiError:
    """Turn a JSON-RPC error object into the matching node error."""
    code = error.get("code")
    message = str(error.get("message", ""))
    data = error.get("data")
    text = f"JSON-RPC error {code}: {message}"
    if code in _REVERT_CODES or "revert" in message.lower():
        return ExecutionRevertedError(text, code=code if isinstance(code, int) else None, data=data)
    if _RANGE_PATTERNS.search(message) or (code == -32005 and not _RATE_PATTERNS.search(message)):
        return RpcRangeTooLargeError(text)
    if _RATE_PATTERNS.search(message) or code == 429:
        return RpcRateLimitedError(text)
    if _STALE_PATTERNS.search(message):
        return StaleNodeError(text)
    if code == -32603 or "internal error" in message.lower():
        return RpcServerError(text)
    return RpcResponseError(text, code=code if isinstance(code, int) else None, data=data)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP-date; rare for RPC providers, fall back to our own backoff


class RpcClient:
    """An async JSON-RPC client over one or more HTTP endpoints (failover order)."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not urls:
            raise ValueError("RpcClient needs at least one URL")
        self.urls = list(urls)
        self._index = 0
        self._ids = itertools.count(1)
        self._http = httpx.AsyncClient(
            timeout=timeout,
            transport=transport,
            headers={"content-type": "application/json"},
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
        )

    @property
    def url(self) -> str:
        return self.urls[self._index]

    def failover(self, reason: str) -> None:
        """Move to the next URL (no-op with one URL)."""
        if len(self.urls) == 1:
            return
        old = self.url
        self._index = (self._index + 1) % len(self.urls)
        log.warning("rpc_failover", from_url=_redact(old), to_url=_redact(self.url), reason=reason)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> RpcClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def call(self, method: str, params: Sequence[Any] = ()) -> Any:
        """One call; returns ``result`` or raises the classified error."""
        payload = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        body = await self._post(payload)
        if not isinstance(body, dict):
            raise self._malformed(f"expected a JSON object for {method}, got {type(body).__name__}")
        return self._result(body)

    async def batch(self, calls: Sequence[RpcCall]) -> list[Any]:
        """All calls in one POST; raises the first error among them (in call order)."""
        results = await self.batch_settled(calls)
        for result in results:
            if isinstance(result, HodlaiError):
                raise result
        return results

    async def batch_settled(self, calls: Sequence[RpcCall]) -> list[Any | HodlaiError]:
        """All calls in one POST; each slot holds its result or its classified error."""
        if not calls:
            return []
        first = next(self._ids)
        ids = [first, *(next(self._ids) for _ in calls[1:])]
        payload = [
            {"jsonrpc": "2.0", "id": i, "method": c.method, "params": list(c.params)}
            for i, c in zip(ids, calls, strict=True)
        ]
        body = await self._post(payload)
        if isinstance(body, dict) and "error" in body:
            # Some servers answer a whole batch with one error object (e.g. batch too large).
            raise classify_error(body["error"])
        if not isinstance(body, list):
            raise self._malformed("expected a JSON array in answer to a batch")
        by_id: dict[Any, dict[str, Any]] = {}
        for item in body:
            if isinstance(item, dict):
                by_id[item.get("id")] = item
        out: list[Any | HodlaiError] = []
        for i, call in zip(ids, calls, strict=True):
            item = by_id.get(i)
            if item is None:
                raise self._malformed(f"batch answer lacks the result of {call.method}")
            try:
                out.append(self._result(item))
            except (RpcResponseError, RpcRangeTooLargeError, RpcServerError, StaleNodeError,
                    RpcRateLimitedError) as exc:  # fmt: skip
                out.append(exc)
        return out

    def _result(self, body: dict[str, Any]) -> Any:
        if "error" in body and body["error"] is not None:
            error = body["error"]
            if not isinstance(error, dict):
                raise self._malformed(f"error member is not an object: {error!r}")
            raise classify_error(error)
        if "result" not in body:
            raise self._malformed("answer has neither result nor error")
        return body["result"]

    async def _post(self, payload: object) -> Any:
        url = self.url
        try:
            response = await self._http.post(url, content=json.dumps(payload))
        except httpx.TimeoutException as exc:
            self.failover("timeout")
            raise RpcTransportError(f"timeout talking to {_redact(url)}") from exc
        except httpx.HTTPError as exc:
            self.failover(type(exc).__name__)
            raise RpcTransportError(f"cannot reach {_redact(url)}: {exc}") from exc
        if response.status_code == 429:
            self.failover("http_429")
            raise RpcRateLimitedError(
                f"{_redact(url)} rate-limited us (429)", retry_after=_retry_after(response)
            )
        if response.status_code >= 500:
            self.failover(f"http_{response.status_code}")
            raise RpcServerError(
                f"{_redact(url)} answered HTTP {response.status_code}",
                retry_after=_retry_after(response),
            )
        if response.status_code == 413:
            raise RpcRangeTooLargeError(f"{_redact(url)} answered 413: request too large")
        if response.status_code >= 400 and not response.content:
            raise RpcResponseError(f"{_redact(url)} answered HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError as exc:
            self.failover("malformed_json")
            raise RpcTransportError(f"{_redact(url)} answered malformed JSON") from exc

    def _malformed(self, what: str) -> RpcTransportError:
        self.failover("malformed_answer")
        return RpcTransportError(f"{_redact(self.url)}: {what}")


def _redact(url: str) -> str:
    """Provider URLs often carry an API key in the path or query; log only scheme and host."""
    try:
        parsed = httpx.URL(url)
    except (ValueError, TypeError):
        return "<url>"
    return f"{parsed.scheme}://{parsed.host}{':' + str(parsed.port) if parsed.port else ''}"


def hex_int(value: Any) -> int:
    """Parse a JSON-RPC quantity ('0x1a')."""
    if not isinstance(value, str) or not value.startswith("0x"):
        raise RpcTransportError(f"expected a hex quantity, got {value!r}")
    return int(value, 16)
