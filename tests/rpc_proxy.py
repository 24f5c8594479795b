"""A loopback JSON-RPC proxy that misbehaves like real RPC infrastructure, on demand.

It forwards HTTP JSON-RPC (single calls and batches) to an upstream node (anvil) and can:

- **lag like a load-balanced backend**: a chosen share of HTTP requests is answered from a
  view ``lag`` blocks behind the head. That view reports ``eth_blockNumber`` = head - lag,
  has no header above it (``eth_getBlockByNumber`` -> null, "latest" -> its own head), and
  clamps ``eth_getLogs`` to it (a range starting above it returns no logs), which is exactly
  what a lagging backend does. One HTTP request is answered from one view, like one backend.
  Which requests lag: every ``stale_every``-th (round robin over a fresh and a lagging
  backend) or each with probability ``stale_fraction`` (seeded).
  The lagging view covers the transaction methods too: ``eth_getTransactionCount``,
  ``eth_call``, ``eth_estimateGas``, ``eth_getBalance`` and ``eth_getCode`` answer at its head
  ("latest") or with anvil's BlockOutOfRangeError for a block above it; a receipt or a
  transaction mined above it reads as null, exactly as a backend that has not seen that
  block yet.
- **split a batch across backends** (``logs_lag``): eth_getLogs entries are answered from a
  view ``logs_lag`` blocks behind while the rest of the same batch is fresh, as a load
  balancer that spreads one batch's entries over backends would. ``split_fraction`` does
  the same for any entry: each entry of a fresh answer independently comes from the lagging
  view with that probability.
- **refuse wide getLogs** like a provider's range limit (``max_logs_range``): the getLogs
  entry gets the JSON-RPC error geth/Infura return for too many results.
- **inject one-off faults** into the next HTTP requests (:meth:`RpcProxy.inject`): a
  range-too-large error, 429 with Retry-After, 500, malformed JSON, the connection closed
  without an answer; and :meth:`RpcProxy.refuse_for` closes the listening socket so that
  connections are refused for a while.

Used as a context manager in tests, or as a process for manual and chaos runs::

    python -m tests.rpc_proxy --upstream http://127.0.0.1:8545 --stale-every 2 --lag 5
"""

from __future__ import annotations

import argparse
import enum
import json
import random
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

import httpx

# Seconds the proxy waits for the upstream node.
UPSTREAM_TIMEOUT_S = 60.0
# Seconds serve_forever waits between shutdown checks: short, so stopping is quick.
SERVE_POLL_S = 0.02
RANGE_ERROR = {"code": -32005, "message": "query returned more than 10000 results"}


class Fault(enum.Enum):
    """One-off misbehaviours, applied to the next matching HTTP request."""

    RANGE_TOO_LARGE = "range_too_large"  # getLogs entries answer the "too many results" error
    HTTP_429 = "http_429"  # 429 with Retry-After
    HTTP_500 = "http_500"
    MALFORMED_JSON = "malformed_json"  # 200 with a body that is not JSON
    CLOSE = "close"  # read the request, close the connection without answering


@dataclass
class _Pending:
    fault: Fault
    method: str | None  # only requests containing this method; None = any


class RpcProxy:
    """The proxy server; ``url`` is what the node under test should use."""

    def __init__(
        self,
        upstream: str,
        *,
        lag: int = 0,
        stale_every: int = 0,
        stale_fraction: float = 0.0,
        seed: int = 1,
        max_logs_range: int | None = None,
        logs_lag: int = 0,
        split_fraction: float = 0.0,
        retry_after_s: float = 1.0,
        port: int = 0,
    ) -> None:
        self.upstream = upstream
        self.lag = lag
        self.stale_every = stale_every
        self.stale_fraction = stale_fraction
        self.max_logs_range = max_logs_range
        self.logs_lag = logs_lag
        self.split_fraction = split_fraction
        self.retry_after_s = retry_after_s
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._faults: deque[_Pending] = deque()
        self._requests = 0
        self._refusing_until = 0.0
        self._stats: Counter[str] = Counter()
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._local = threading.local()

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> Self:
        self._server = self._make_server(self._port)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(SERVE_POLL_S,), name="rpc-proxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
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

    # --- controls -----------------------------------------------------------------------------

    def inject(self, fault: Fault, times: int = 1, *, method: str | None = None) -> None:
        """Apply ``fault`` to the next ``times`` HTTP requests (that contain ``method``)."""
        with self._lock:
            self._faults.extend(_Pending(fault, method) for _ in range(times))

    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    def refuse_for(self, seconds: float) -> None:
        """Close the listening socket (connections are refused) and reopen it later on the
        same port; connections kept alive are closed at their next request."""
        with self._lock:
            self._refusing_until = time.monotonic() + seconds
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        self._count("refused_periods")
        timer = threading.Timer(seconds, self._reopen)
        timer.daemon = True
        timer.start()

    def _reopen(self) -> None:
        for _ in range(100):
            try:
                self._server = self._make_server(self._port)
                break
            except OSError:
                time.sleep(0.05)  # the old socket may still be in the way for a moment
        else:
            raise RuntimeError(f"cannot reopen the proxy on port {self._port}")
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(SERVE_POLL_S,), name="rpc-proxy", daemon=True
        )
        self._thread.start()

    @property
    def stats(self) -> Counter[str]:
        """Counters: http_requests, stale_answers, range_refusals, fault_<name>, ..."""
        with self._lock:
            return Counter(self._stats)

    def _count(self, name: str) -> None:
        with self._lock:
            self._stats[name] += 1

    def refusing(self) -> bool:
        with self._lock:
            return time.monotonic() < self._refusing_until

    # --- the server -------------------------------------------------------------------------

    def _make_server(self, port: int) -> ThreadingHTTPServer:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like a real endpoint

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                if proxy.refusing():
                    self.close_connection = True
                    return
                status, headers, payload = proxy.answer(body)
                if status == 0:
                    self.close_connection = True  # Fault.CLOSE: no answer at all
                    return
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: tests read the proxy's counters instead."""

        server = ThreadingHTTPServer(("127.0.0.1", port), Handler, bind_and_activate=False)
        server.allow_reuse_address = True
        server.daemon_threads = True
        server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.server_bind()
        server.server_activate()
        return server

    def _client(self) -> httpx.Client:
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = httpx.Client(
                timeout=UPSTREAM_TIMEOUT_S, headers={"content-type": "application/json"}
            )
            self._local.client = client
        return client

    def _upstream(self, payload: object) -> Any:
        response = self._client().post(self.upstream, content=json.dumps(payload))
        return response.json()

    def _take_fault(self, methods: set[str]) -> Fault | None:
        with self._lock:
            for index, pending in enumerate(self._faults):
                if pending.method is None or pending.method in methods:
                    del self._faults[index]
                    return pending.fault
        return None

    def _split_entry(self) -> bool:
        with self._lock:
            return self.lag > 0 and self._random.random() < self.split_fraction

    def _is_stale(self) -> bool:
        with self._lock:
            self._requests += 1
            if self.lag <= 0:
                return False
            if self.stale_every > 0:
                return self._requests % self.stale_every == 0
            return self._random.random() < self.stale_fraction

    def answer(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """(HTTP status, headers, body) for one HTTP request; status 0 = close silently."""
        request = json.loads(body)
        calls = request if isinstance(request, list) else [request]
        methods = {str(c.get("method")) for c in calls if isinstance(c, dict)}
        self._count("http_requests")
        fault = self._take_fault(methods)
        if fault is not None:
            self._count(f"fault_{fault.value}")
            if fault is Fault.HTTP_429:
                return 429, {"Retry-After": f"{self.retry_after_s:g}"}, b"rate limited"
            if fault is Fault.HTTP_500:
                return 500, {}, b"internal server error"
            if fault is Fault.MALFORMED_JSON:
                return 200, {"Content-Type": "application/json"}, b'{"jsonrpc": "2.0", "res'
            if fault is Fault.CLOSE:
                return 0, {}, b""
        view_head: int | None = None
        logs_view: int | None = None
        if self._is_stale():
            view_head = max(0, self._head() - self.lag)
            self._count("stale_answers")
        elif self.logs_lag > 0 and "eth_getLogs" in methods:
            logs_view = max(0, self._head() - self.logs_lag)
            self._count("split_answers")
        answers = self._forward(calls, view_head, fault is Fault.RANGE_TOO_LARGE, logs_view)
        out = answers if isinstance(request, list) else answers[0]
        return 200, {"Content-Type": "application/json"}, json.dumps(out).encode()

    def _head(self) -> int:
        return int(self._upstream(_call("eth_blockNumber", []))["result"], 16)

    def _forward(
        self,
        calls: list[dict[str, Any]],
        view_head: int | None,
        refuse_logs: bool,
        logs_view: int | None = None,
    ) -> list[dict[str, Any]]:
        """Answer ``calls``: synthesised where the view or a fault decides, else upstream
        (answers that a lagging view would not have are filtered afterwards)."""
        local: dict[int, dict[str, Any]] = {}
        upstream: list[dict[str, Any]] = []
        views: dict[int, int] = {}
        head = self._head() if view_head is None and self.split_fraction > 0 else None
        for index, call in enumerate(calls):
            view = view_head
            if view is None and head is not None and self._split_entry():
                view = max(0, head - self.lag)
                self._count("split_entries")
            decided = self._decide(call, view, refuse_logs)
            if logs_view is not None and call.get("method") == "eth_getLogs":
                decided = _in_view(call, logs_view) if isinstance(decided, dict) else decided
            if isinstance(decided, _Synth):
                local[index] = {"jsonrpc": "2.0", "id": call.get("id"), **decided.body}
            else:
                upstream.append(decided)
                if view is not None:
                    views[index] = view
        answered: dict[Any, dict[str, Any]] = {}
        if upstream:
            for item in self._upstream(upstream):
                answered[item.get("id")] = item
        out = []
        for i, c in enumerate(calls):
            if i in local:
                out.append(local[i])
                continue
            item = answered[c.get("id")]
            out.append(_hide_above(c, item, views[i]) if i in views else item)
        return out

    def _decide(
        self, call: dict[str, Any], view_head: int | None, refuse_logs: bool
    ) -> _Synth | dict[str, Any]:
        refusal = self._refusal(call, refuse_logs)
        if refusal is not None:
            return refusal
        return call if view_head is None else _in_view(call, view_head)

    def _refusal(self, call: dict[str, Any], refuse_logs: bool) -> _Synth | None:
        """The provider-style "too many results" error for a getLogs we refuse."""
        params = list(call.get("params") or [])
        if call.get("method") != "eth_getLogs" or not params or "blockHash" in params[0]:
            return None
        if refuse_logs:
            return _Synth({"error": RANGE_ERROR})
        if self.max_logs_range is not None:
            first = _block(params[0].get("fromBlock"), 0) or 0
            last = _block(params[0].get("toBlock"), None)
            if last is not None and last - first + 1 > self.max_logs_range:
                self._count("range_refusals")
                return _Synth({"error": RANGE_ERROR})
        return None


# Methods whose last parameter is a block tag, and its position.
_BLOCK_PARAM = {
    "eth_getTransactionCount": 1,
    "eth_call": 1,
    "eth_estimateGas": 1,
    "eth_getBalance": 1,
    "eth_getCode": 1,
}


def _out_of_range(view_head: int, asked: int) -> _Synth:
    message = f"BlockOutOfRangeError: block height is {view_head} but requested was {asked}"
    return _Synth({"error": {"code": -32602, "message": message}})


def _hide_above(call: dict[str, Any], item: dict[str, Any], view_head: int) -> dict[str, Any]:
    """An upstream answer as a backend at ``view_head`` would give it: receipts and
    transactions mined above it are unknown there."""
    if call.get("method") not in ("eth_getTransactionReceipt", "eth_getTransactionByHash"):
        return item
    result = item.get("result")
    mined = isinstance(result, dict) and result.get("blockNumber")
    if mined and int(str(mined), 16) > view_head:
        return {**item, "result": None}
    return item


def _at_view_block(
    call: dict[str, Any], params: list[Any], position: int, view_head: int
) -> _Synth | dict[str, Any]:
    """A call with a block tag, answered at the view's head (or refused above it)."""
    tag = params[position] if len(params) > position else "latest"
    asked = _block(tag, view_head)
    if asked is None or tag == "pending":
        return call
    if asked > view_head:
        return _out_of_range(view_head, asked)
    padded = params + ["latest"] * (position + 1 - len(params))
    padded[position] = hex(asked)
    return {**call, "params": padded}


def _in_view(call: dict[str, Any], view_head: int) -> _Synth | dict[str, Any]:
    """``call`` as a backend whose head is ``view_head`` answers it."""
    method = call.get("method")
    params = list(call.get("params") or [])
    if method == "eth_blockNumber":
        return _Synth({"result": hex(view_head)})
    if method in _BLOCK_PARAM:
        return _at_view_block(call, params, _BLOCK_PARAM[str(method)], view_head)
    if method == "eth_getBlockByNumber" and params:
        number = _block(params[0], view_head)
        if number is None or number > view_head:
            return _Synth({"result": None})
        return {**call, "params": [hex(number), *params[1:]]}
    if method == "eth_getLogs" and params and "blockHash" not in params[0]:
        return _logs_in_view(call, dict(params[0]), view_head)
    return call


def _logs_in_view(
    call: dict[str, Any], query: dict[str, Any], view_head: int
) -> _Synth | dict[str, Any]:
    first = _block(query.get("fromBlock"), view_head) or 0
    last = _block(query.get("toBlock"), view_head)
    last = view_head if last is None else min(last, view_head)
    if first > last:
        return _Synth({"result": []})
    query["fromBlock"], query["toBlock"] = hex(first), hex(last)
    return {**call, "params": [query]}


@dataclass(frozen=True)
class _Synth:
    body: dict[str, Any]


def _call(method: str, params: list[Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}


def _block(tag: object, latest: int | None) -> int | None:
    """A block parameter as a number ("latest" and friends resolve to ``latest``)."""
    if isinstance(tag, str) and tag.startswith("0x"):
        return int(tag, 16)
    if isinstance(tag, int):
        return tag
    return latest


def main(argv: list[str] | None = None, *, ready: Callable[[str], None] = print) -> None:
    parser = argparse.ArgumentParser(description="A misbehaving JSON-RPC proxy for tests")
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--lag", type=int, default=0, help="blocks the stale view trails by")
    parser.add_argument("--stale-every", type=int, default=0)
    parser.add_argument("--stale-fraction", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-logs-range", type=int, default=None)
    parser.add_argument("--logs-lag", type=int, default=0, help="getLogs alone lags by N")
    parser.add_argument(
        "--split-fraction", type=float, default=0.0, help="share of batch entries that lag"
    )
    args = parser.parse_args(argv)
    proxy = RpcProxy(
        args.upstream,
        lag=args.lag,
        stale_every=args.stale_every,
        stale_fraction=args.stale_fraction,
        seed=args.seed,
        max_logs_range=args.max_logs_range,
        logs_lag=args.logs_lag,
        split_fraction=args.split_fraction,
        port=args.port,
    ).start()
    ready(proxy.url)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        proxy.stop()


if __name__ == "__main__":
    main()
