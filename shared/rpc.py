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

# "Your getLogs asked for too much": the messages and codes of the common nodes and providers
# (geth, erigon, nethermind, Alchemy, Infura, QuickNode, Ankr, Chainstack, Nodereal, BSC public
# nodes, Cloudflare, LlamaRPC, anvil). Checked before the rate-limit patterns because some of
# them also say "limit exceeded"; see tests/test_rpc.py for the messages they are pinned to.
_RANGE_PATTERNS = re.compile(
    r"block range|range (is )?too (large|wide|big)|blocks? range|too many (results|blocks|logs)|"
    r"query returned more than|returned more than \d+|more than \d+ (results|logs)|"
    r"max(imum)? (block )?range|range (limit|exceeded)|ranges? (over|greater than)|"
    r"(is|are) limited to .*(block|range)|exceeds? max(imum)? (results|logs|range|block)|"
    r"log response size|response size|response (is )?too (big|large)|query timeout|"
    r"limit(ed)? .*\b\d+ (blocks|results|logs)\b|too many (requested )?blocks",
    re.IGNORECASE,
)
_RATE_PATTERNS = re.compile(
    r"rate.?limit|too many requests|capacity|throttl|request limit|exceeded .*(quota|credits|"
    r"compute units)|daily limit|limit reached|rate exceeded|requests? per second|\brps\b",
    re.IGNORECASE,
)
# The node does not have the block asked about (a lagging backend, or asked beyond its head).
_STALE_PATTERNS = re.compile(
    r"header not found|unknown block|block not found|missing trie node|after last accepted block|"
    r"BlockOutOfRange|block height is \d+ but requested|beyond (the )?(current )?head|"
    r"requested block .* (is )?(not|greater|higher|after)|block .* not (yet )?available|"
    r"invalid block range params",
    re.IGNORECASE,
)
# EIP-1474's -32005 "limit exceeded" is a size or a rate limit depending on the message; one
# with an unrecognised message counts as "too large": the indexer then halves its range, which
# ends a size limit and costs little under a rate limit, whereas backing off with the same
# range would repeat a size limit forever.
_LIMIT_CODE = -32005
_REVERT_CODES = frozenset({3, -32015})
_RATE_CODES = frozenset({429, -32029, -32090})


@dataclass(frozen=True)
class RpcCall:
    method: str
    params: Sequence[Any]


def classify_error(error: dict[str, Any]) -> HodlaiError:  # noqa: PLR0911 -- one return per class
    """Turn a JSON-RPC error object into the matching node error.

    Order matters: a revert is recognised first (its message can say anything), then a node
    that lacks the block asked about ("... beyond current head" also names a block range),
    then "range too large" (whose messages can contain "limit exceeded"), then rate limits,
    then server faults. Anything else (geth's -32000 "nonce too low", "insufficient funds",
    ...) is a permanent RpcResponseError carrying its code, for the caller to read.
    """
    code = error.get("code")
    message = str(error.get("message", ""))
    data = error.get("data")
    int_code = code if isinstance(code, int) and not isinstance(code, bool) else None
    text = f"JSON-RPC error {code}: {message}"
    if int_code in _REVERT_CODES or "revert" in message.lower():
        return ExecutionRevertedError(text, code=int_code, data=data)
    if _STALE_PATTERNS.search(message):
        return StaleNodeError(text)
    if _RANGE_PATTERNS.search(message):
        return RpcRangeTooLargeError(text)
    if _RATE_PATTERNS.search(message) or int_code in _RATE_CODES:
        return RpcRateLimitedError(text, retry_after=_data_retry_after(data))
    if int_code == _LIMIT_CODE:
        return RpcRangeTooLargeError(text)
    if int_code == -32603 or "internal error" in message.lower():
        return RpcServerError(text)
    return RpcResponseError(text, code=int_code, data=data)


def _data_retry_after(data: object) -> float | None:
    """Some providers put the wait into the error's data (``{"retryAfter": 1.5}`` or
    ``{"backoff_seconds": 2}``)."""
    if not isinstance(data, dict):
        return None
    for key in ("retryAfter", "retry_after", "backoff_seconds", "try_again_in"):
        value = data.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return float(value)
    return None


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
