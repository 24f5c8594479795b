"""JSON-RPC over HTTP: batches, error classification, URL failover, and a client that a
hostile or misconfigured endpoint cannot fool, hang or blow up.

Guarantees:
- Whatever goes wrong below (connection refused, timeout, HTTP status, malformed JSON, a
  JSON-RPC error object) comes out as one of the errors in shared/errors.py, classified as
  retryable or permanent; nothing from aiohttp, httpx or the JSON parsers escapes.
- A batch is one HTTP POST. Results come back in the order of the calls, whatever order the
  server answered in (anvil runs batch entries concurrently).
- With several URLs, a retryable transport failure moves the client to the next URL before
  the error is raised, so the caller's retry goes elsewhere; a healthy URL is kept.
- **Chain.** A client that knows its chain (``chain_id=`` or :meth:`RpcClient.expect_chain`)
  or has several URLs (it then pins the chain the first URL to answer reports) returns no
  answer from a URL whose ``eth_chainId`` it has not checked since the URL was last failed
  over to or failed. A URL on another chain is quarantined: never used for answers, logged
  as ``rpc_wrong_chain`` (error), counted in ``hodlai_rpc_wrong_chain_total``, and asked
  again after ``quarantine_s``. While no URL is usable, calls raise RpcNoUsableUrlError
  (retryable), naming the state of each URL.
- **Deadline.** A call (connect, send, the whole answer) ends within ``deadline_s`` or
  raises RpcDeadlineError and fails over; httpx's ``timeout`` only bounds each read, so a
  server trickling a byte at a time would otherwise hold the call forever.
- **Size.** The answer is streamed and cut off once it exceeds ``max_response_bytes``
  (RpcResponseTooLargeError, a range error, and failover); an announced Content-Length above
  the cap is refused before reading. A call holds at most the cap, not what the server sends.
- URLs appear in logs, errors and metrics as ``scheme://host:port`` only.

HTTP goes through aiohttp: receiving a 17 MB getLogs answer (5,000 request logs) cost 14-20
ms of CPU with it against 50-65 ms through httpx's async stream (``python -m
scripts.bench_indexer_split --readers``, docs/BENCHMARKS.md). A client
built with an httpx ``transport=`` (tests' httpx.MockTransport) talks through httpx instead;
both go through the same status, size, depth and JSON checks. web3.py is not used here: it
refuses eth_sendRawTransaction inside a batch, and its per-log decoding measured ~6x slower
than raw JSON + eth-abi (FACTS.md).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
import msgspec
import structlog

from shared.config import redact_url, redact_urls_in
from shared.errors import (
    ExecutionRevertedError,
    HodlaiError,
    RpcChainMismatchError,
    RpcDeadlineError,
    RpcNoUsableUrlError,
    RpcRangeTooLargeError,
    RpcRateLimitedError,
    RpcResponseError,
    RpcResponseTooLargeError,
    RpcServerError,
    RpcTransportError,
    StaleNodeError,
)
from shared.metrics import RPC_FAILOVERS, RPC_QUARANTINED, RPC_WRONG_CHAIN

log = structlog.get_logger(__name__)

# Seconds for one HTTP read (connect, write, each read of the answer); a getLogs over a few
# thousand blocks starts answering in well under 1 s on a healthy node, so 10 s separates
# "slow" from "gone" without hanging a poll for long.
DEFAULT_TIMEOUT_S = 10.0
# Seconds for a whole call: connect, send and every byte of the answer. A poll of the
# indexer's target (5,000 request logs, ~19.5 MB of JSON) arrives in well under 1 s on a LAN
# and in ~10 s at 2 MB/s; 30 s is room for a slow link, and a trickling server fails over
# within one poll instead of never.
DEFAULT_DEADLINE_S = 30.0
# Bytes of one answer at most. A request log is ~3.9 KB of JSON (measured: 5,008 logs with
# ~1.2 KB of strings each = 19.5 MB), so 64 MiB holds ~17,000 logs, over 3x the indexer's
# target poll: an honest poll that overshoots the target fits, and one above the cap only
# makes the indexer halve its range. Parsed, such an answer peaks at ~3x its size, so this
# also bounds what one answer can cost (a 200 MB answer took the indexer to 1.36 GB).
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
# How deep an answer's JSON may nest; what we read nests < 10 deep. json's C decoder recurses
# once per level, and py_ecc (imported by the fulfiller through eth-account) raises the
# recursion limit to 100,000, so "[[[[..." 100k deep overflowed the C stack there: a segfault
# of the whole process, not an error. Answers nesting deeper are malformed.
MAX_JSON_DEPTH = 512
# Seconds a URL found on another chain is skipped before its eth_chainId is asked again. A
# wrong-chain URL is nearly always a configuration error: re-asking every 10 min keeps the
# error in the log without flooding it, and a proxy pointed back at the right chain returns.
QUARANTINE_RECHECK_S = 600.0
# Connections at most, as many as the senders' concurrent calls need.
MAX_CONNECTIONS = 32
# Bytes per read of an answer that announces no length (or is compressed): the size cap is
# checked after each one.
READ_CHUNK_BYTES = 1 << 20

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


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP-date; rare for RPC providers, fall back to our own backoff


@dataclass(eq=False)
class _Endpoint:
    """One URL and what the client knows about the chain behind it."""

    url: str
    label: str  # redact_url(url): what logs, errors and metrics show
    checked: bool = False  # eth_chainId matched since it was last failed over to, or failed
    reported: int | None = None  # the chain id it last reported
    quarantined_until: float | None = None  # clock() time of its next check, if quarantined
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one chain check at a time


class RpcClient:
    """An async JSON-RPC client over one or more HTTP endpoints (failover order).

    ``chain_id`` is the chain every URL must serve (HODLAI_CHAIN_ID, or the database's);
    without it a client with several URLs pins the chain the first URL to answer reports,
    and a client with one URL checks nothing (its caller checks eth_chainId at start).
    Workers call :meth:`expect_chain` with the chain they checked against the database.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
        chain_id: int | None = None,
        deadline_s: float = DEFAULT_DEADLINE_S,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        quarantine_s: float = QUARANTINE_RECHECK_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            raise ValueError("RpcClient needs at least one URL")
        if deadline_s <= 0 or max_response_bytes <= 0:
            raise ValueError("deadline_s and max_response_bytes must be positive")
        self.urls = list(urls)
        self._endpoints = [_Endpoint(url, redact_url(url)) for url in self.urls]
        self._index = 0
        self._ids = itertools.count(1)
        self._expected = chain_id
        self._checks_chain = chain_id is not None or len(self.urls) > 1
        self._deadline_s = deadline_s
        self._max_bytes = max_response_bytes
        self._quarantine_s = quarantine_s
        self._clock = clock
        self._timeout = timeout
        # aiohttp's session is made on first use, inside the event loop it belongs to.
        self._session: aiohttp.ClientSession | None = None
        self._http = (
            httpx.AsyncClient(
                timeout=timeout,
                transport=transport,
                headers={"content-type": "application/json"},
                limits=httpx.Limits(max_connections=MAX_CONNECTIONS,
                                    max_keepalive_connections=16),
            )
            if transport is not None
            else None
        )  # fmt: skip

    @property
    def url(self) -> str:
        return self._endpoints[self._index].url

    @property
    def chain_id(self) -> int | None:
        """The chain every URL must serve: given, or pinned from the first answer; None
        while unknown (or never checked: one URL and no chain given)."""
        return self._expected

    @property
    def quarantined(self) -> list[str]:
        """The URLs (redacted) currently quarantined for serving another chain."""
        return [ep.label for ep in self._endpoints if ep.quarantined_until is not None]

    async def expect_chain(self, chain_id: int) -> None:
        """Pin the client to ``chain_id`` and check every URL now (concurrently).

        URLs on another chain are quarantined (``rpc_wrong_chain``); unreachable ones are
        checked before their first use. The first URL that serves the chain becomes the
        current one. Raises RpcChainMismatchError (permanent: fix HODLAI_RPC_URLS) when every
        URL answered and none serves the chain, RpcNoUsableUrlError (retryable) when none
        serves it and some did not answer.
        """
        if self._expected is not None and self._expected != chain_id:
            log.warning("rpc_chain_repinned", old_chain_id=self._expected, chain_id=chain_id)
            for ep in self._endpoints:
                self._release(ep)
                ep.checked = False
        self._expected = chain_id
        self._checks_chain = True
        outcomes = await asyncio.gather(
            *(self._check(ep) for ep in self._endpoints), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, HodlaiError):
                raise outcome
        serving = [i for i, outcome in enumerate(outcomes) if outcome is True]
        log.info(
            "rpc_chain_checked",
            chain_id=chain_id,
            serving=len(serving),
            quarantined=len(self.quarantined),
            unreachable=sum(isinstance(o, HodlaiError) for o in outcomes),
        )
        if serving:
            self._index = serving[0]
            return
        if any(isinstance(outcome, HodlaiError) for outcome in outcomes):
            raise RpcNoUsableUrlError(f"no RPC URL serves chain {chain_id} now: {self._states()}")
        raise RpcChainMismatchError(
            f"no URL of HODLAI_RPC_URLS serves chain {chain_id}: {self._states()}"
        )

    def failover(self, reason: str) -> None:
        """Move to the next URL (no-op with one URL); its chain is checked before its first
        answer is used."""
        self._move_from(self._index, reason)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> RpcClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def call(self, method: str, params: Sequence[Any] = ()) -> Any:
        """One call; returns ``result`` or raises the classified error."""
        payload = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        ep, body = await self._post(payload)
        if not isinstance(body, dict):
            raise self._malformed(ep, f"expected a JSON object for {method}, got "
                                  f"{type(body).__name__}")  # fmt: skip
        return self._result(ep, body)

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
        ep, body = await self._post(payload)
        if isinstance(body, dict) and "error" in body:
            # Some servers answer a whole batch with one error object (e.g. batch too large).
            error = body["error"]
            if not isinstance(error, dict):
                raise self._malformed(ep, f"error member is not an object: {error!r}")
            raise classify_error(error)
        if not isinstance(body, list):
            raise self._malformed(ep, "expected a JSON array in answer to a batch")
        by_id: dict[Any, dict[str, Any]] = {}
        for item in body:
            if isinstance(item, dict):
                by_id[item.get("id")] = item
        out: list[Any | HodlaiError] = []
        for i, call in zip(ids, calls, strict=True):
            item = by_id.get(i)
            if item is None:
                raise self._malformed(ep, f"batch answer lacks the result of {call.method}")
            try:
                out.append(self._result(ep, item))
            except (RpcResponseError, RpcRangeTooLargeError, RpcServerError, StaleNodeError,
                    RpcRateLimitedError) as exc:  # fmt: skip
                out.append(exc)
        return out

    # --- answers ----------------------------------------------------------------------------

    def _result(self, ep: _Endpoint, body: dict[str, Any]) -> Any:
        if "error" in body and body["error"] is not None:
            error = body["error"]
            if not isinstance(error, dict):
                raise self._malformed(ep, f"error member is not an object: {error!r}")
            raise classify_error(error)
        if "result" not in body:
            raise self._malformed(ep, "answer has neither result nor error")
        return body["result"]

    def _malformed(self, ep: _Endpoint, what: str) -> RpcTransportError:
        self._failed(ep, "malformed_answer")
        return RpcTransportError(f"{ep.label}: {what}")

    async def _post(self, payload: object) -> tuple[_Endpoint, Any]:
        """Send ``payload`` to the current URL once its chain is checked; the parsed body."""
        try:
            ep = await self._ready()
            return ep, await self._exchange(ep, payload)
        except RpcNoUsableUrlError:
            raise
        except RpcTransportError as exc:
            # The URL that just failed was the last one not quarantined: say so.
            open_urls = [e for e in self._endpoints if not self._is_quarantined(e)]
            if len(self._endpoints) > 1 and len(open_urls) <= 1:
                raise RpcNoUsableUrlError(
                    f"{exc}; every other RPC URL is quarantined: {self._states()}",
                    retry_after=exc.retry_after,
                ) from exc
            raise

    async def _exchange(self, ep: _Endpoint, payload: object) -> Any:
        """One POST to ``ep`` under the deadline and the size cap; the parsed JSON body."""
        content = json.dumps(payload)
        try:
            async with asyncio.timeout(self._deadline_s):
                if self._http is not None:
                    async with self._http.stream("POST", ep.url, content=content) as response:
                        return await self._read_answer(
                            ep, response.status_code, response.headers,
                            self._read_capped(ep, response.headers, response.aiter_bytes()),
                        )  # fmt: skip
                async with self._aiohttp().post(ep.url, data=content) as answer:
                    return await self._read_answer(
                        ep, answer.status, answer.headers, self._read_aiohttp(ep, answer)
                    )
        except aiohttp.ServerTimeoutError as exc:  # a TimeoutError too: before the deadline's
            self._failed(ep, "timeout")
            raise RpcTransportError(f"timeout talking to {ep.label}") from exc
        except TimeoutError as exc:
            self._failed(ep, "deadline")
            raise RpcDeadlineError(
                f"{ep.label} sent no complete answer within {self._deadline_s:g} s"
            ) from exc
        except httpx.TimeoutException as exc:
            self._failed(ep, "timeout")
            raise RpcTransportError(f"timeout talking to {ep.label}") from exc
        except (httpx.HTTPError, aiohttp.ClientError) as exc:
            self._failed(ep, type(exc).__name__)
            raise RpcTransportError(f"cannot reach {ep.label}: {redact_urls_in(str(exc))}") from exc

    def _aiohttp(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={"content-type": "application/json"},
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self._timeout, sock_read=self._timeout
                ),
                connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS),
                # As httpx did: HTTP(S)_PROXY and NO_PROXY from the environment are honoured.
                trust_env=True,
            )
        return self._session

    async def _read_aiohttp(self, ep: _Endpoint, answer: aiohttp.ClientResponse) -> bytearray:
        """The body of an aiohttp answer under the size cap. An uncompressed answer that
        announces its length (anvil's, geth's) is read in one call: the parser stops at that
        length, which the cap has already been checked against."""
        declared = answer.headers.get("content-length", "").strip()
        identity = answer.headers.get("content-encoding", "identity").strip() == "identity"
        if declared.isdigit() and identity and int(declared) <= self._max_bytes:
            return bytearray(await answer.read())
        return await self._read_capped(
            ep, answer.headers, answer.content.iter_chunked(READ_CHUNK_BYTES)
        )

    async def _read_answer(
        self,
        ep: _Endpoint,
        status: int,
        headers: Mapping[str, str],
        read: Coroutine[Any, Any, bytearray],
    ) -> Any:
        """Classify the answer by its status, then ``read`` its body and parse it (``read``
        is closed unread when the status already decided)."""
        try:
            self._refuse_status(ep, status, headers)
        except HodlaiError:
            read.close()
            raise
        body = await read
        if status >= 400 and not body:
            raise RpcResponseError(f"{ep.label} answered HTTP {status}")
        if _nests_too_deep(body):
            self._failed(ep, "malformed_json")
            raise RpcTransportError(
                f"{ep.label} answered malformed JSON (nested deeper than {MAX_JSON_DEPTH})"
            )
        try:
            return _parse_json(body)
        except (ValueError, RecursionError) as exc:
            self._failed(ep, "malformed_json")
            raise RpcTransportError(f"{ep.label} answered malformed JSON") from exc

    def _refuse_status(self, ep: _Endpoint, status: int, headers: Mapping[str, str]) -> None:
        if status == 429:
            self._failed(ep, "http_429")
            raise RpcRateLimitedError(
                f"{ep.label} rate-limited us (429)", retry_after=_retry_after(headers)
            )
        if status >= 500:
            self._failed(ep, f"http_{status}")
            raise RpcServerError(
                f"{ep.label} answered HTTP {status}", retry_after=_retry_after(headers)
            )
        if status == 413:
            raise RpcRangeTooLargeError(f"{ep.label} answered 413: request too large")

    async def _read_capped(
        self, ep: _Endpoint, headers: Mapping[str, str], chunks: AsyncIterator[bytes]
    ) -> bytearray:
        """The body, read chunk by chunk and abandoned as soon as it passes the cap."""
        declared = headers.get("content-length", "").strip()
        if declared.isdigit() and int(declared) > self._max_bytes:
            self._failed(ep, "too_large")
            raise RpcResponseTooLargeError(
                f"{ep.label} announced an answer of {int(declared)} bytes, more than the "
                f"cap of {self._max_bytes}"
            )
        body = bytearray()
        async for chunk in chunks:
            body += chunk
            if len(body) > self._max_bytes:
                self._failed(ep, "too_large")
                raise RpcResponseTooLargeError(
                    f"{ep.label} sent more than the cap of {self._max_bytes} bytes; "
                    "the answer was cut off"
                )
        return body

    # --- URLs and their chain ---------------------------------------------------------------

    async def _ready(self) -> _Endpoint:
        """The current URL once it is known to serve the chain, skipping quarantined ones."""
        if not self._checks_chain:
            return self._endpoints[self._index]
        for _ in self._endpoints:
            ep = self._endpoints[self._index]
            if await self._check(ep):
                return ep
            if ep is self._endpoints[self._index]:
                self._move_from(self._index, "wrong_chain")
        raise RpcNoUsableUrlError(f"no usable RPC URL: {self._states()}")

    async def _check(self, ep: _Endpoint) -> bool:
        """Whether ``ep`` serves the expected chain, asking its eth_chainId unless known.
        Transport errors propagate (and fail over, like any call's)."""
        async with ep.lock:
            if ep.checked:
                return True
            if self._is_quarantined(ep):
                return False
            payload = {"jsonrpc": "2.0", "id": next(self._ids), "method": "eth_chainId",
                       "params": []}  # fmt: skip
            body = await self._exchange(ep, payload)
            if not isinstance(body, dict):
                raise self._malformed(ep, "expected a JSON object for eth_chainId")
            try:
                result = self._result(ep, body)
            except RpcResponseError as exc:  # e.g. "method not found": no use for us
                self._failed(ep, "chain_check_refused")
                raise RpcTransportError(f"{ep.label} refused eth_chainId: {exc}") from exc
            if not isinstance(result, str) or not re.fullmatch(r"0x[0-9a-fA-F]{1,64}", result):
                raise self._malformed(ep, f"eth_chainId answered {str(result)[:40]!r}")
            reported = int(result, 16)
            ep.reported = reported
            if self._expected is None:
                self._expected = reported
                log.info("rpc_chain_pinned", chain_id=reported, url=ep.label)
            if reported != self._expected:
                self._quarantine(ep)
                return False
            self._release(ep)
            ep.checked = True
            return True

    def _is_quarantined(self, ep: _Endpoint) -> bool:
        """Quarantined and not yet due for another check."""
        return ep.quarantined_until is not None and self._clock() < ep.quarantined_until

    def _quarantine(self, ep: _Endpoint) -> None:
        ep.checked = False
        ep.quarantined_until = self._clock() + self._quarantine_s
        RPC_WRONG_CHAIN.labels(url=ep.label).inc()
        RPC_QUARANTINED.labels(url=ep.label).set(1)
        log.error(
            "rpc_wrong_chain",
            url=ep.label,
            reported_chain_id=ep.reported,
            expected_chain_id=self._expected,
            recheck_after_s=self._quarantine_s,
        )

    def _release(self, ep: _Endpoint) -> None:
        if ep.quarantined_until is not None:
            ep.quarantined_until = None
            RPC_QUARANTINED.labels(url=ep.label).set(0)
            log.info("rpc_url_released", url=ep.label, chain_id=ep.reported)

    def _failed(self, ep: _Endpoint, reason: str) -> None:
        """``ep`` failed a call: check its chain again before its next answer is used, and
        fail over if it is still the current URL (a burst of concurrent failures of one URL
        moves the client once, not once per call)."""
        ep.checked = False
        index = self._endpoints.index(ep)
        if index == self._index:
            self._move_from(index, reason)

    def _move_from(self, index: int, reason: str) -> None:
        count = len(self._endpoints)
        if count == 1:
            return
        steps = range(1, count + 1)
        candidates = [(index + step) % count for step in steps]
        usable = [i for i in candidates if not self._is_quarantined(self._endpoints[i])]
        self._index = usable[0] if usable else candidates[0]
        old, new = self._endpoints[index], self._endpoints[self._index]
        new.checked = False
        if new is old:
            return  # every other URL is quarantined: stay, and check this one again
        RPC_FAILOVERS.labels(reason=reason).inc()
        log.warning("rpc_failover", from_url=old.label, to_url=new.label, reason=reason)

    def _states(self) -> str:
        """Each URL's state, for an error message."""
        parts = []
        for ep in self._endpoints:
            if self._is_quarantined(ep):
                state = f"quarantined (serves chain {ep.reported}, not {self._expected})"
            elif ep.checked:
                state = f"serves chain {ep.reported}"
            else:
                state = "not reachable or not checked yet"
            parts.append(f"{ep.label} {state}")
        return "; ".join(parts)


_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_NESTING_STEP = [0] * 256
for _opener, _closer in (b"[]", b"{}"):
    _NESTING_STEP[_opener], _NESTING_STEP[_closer] = 1, -1


def _nests_too_deep(body: bytearray) -> bool:
    """Whether ``body``'s brackets nest deeper than MAX_JSON_DEPTH, at C speed (~5 ms for a
    16 MB getLogs answer). Brackets inside strings count too: that can only over-estimate."""
    brackets = body.translate(None, _NOT_BRACKETS)
    if len(brackets) <= MAX_JSON_DEPTH:
        return False
    depths = itertools.accumulate(map(_NESTING_STEP.__getitem__, brackets))
    return any(depth > MAX_JSON_DEPTH for depth in depths)


def _parse_json(body: bytearray) -> Any:
    """The answer's JSON, checked for depth beforehand (_nests_too_deep). msgspec parses a
    getLogs answer in about half the time json takes (23-27 against 42-50 ms for 17 MB of
    request logs; orjson 37-42 ms: ``scripts.bench_indexer_split --readers``).
    It is stricter than json (no BOM, NaN or lone surrogate escapes), so what it refuses is
    parsed by json, which accepts exactly what this client accepted before."""
    try:
        return _msgspec_decode(body)
    except msgspec.DecodeError:
        return json.loads(body)


_msgspec_decode = msgspec.json.Decoder().decode


def hex_int(value: Any) -> int:
    """Parse a JSON-RPC quantity ('0x1a')."""
    if not isinstance(value, str) or not value.startswith("0x"):
        raise RpcTransportError(f"expected a hex quantity, got {value!r}")
    return int(value, 16)
