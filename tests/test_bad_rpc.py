"""tests/bad_rpc.py does what its docstring promises, so other tests can rely on its modes."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from tests.bad_rpc import HTML_PAGE, BadRpc, Mode
from workers.devnet.anvil import Anvil


def _post(url: str, body: object, timeout: float = 10.0) -> httpx.Response:
    return httpx.post(url, content=json.dumps(body), timeout=timeout)


def _call(method: str, call_id: int = 1, params: list[Any] | None = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": call_id, "method": method, "params": params or []}


def test_forward_answers_from_the_upstream_and_rewrite_changes_entries(
    anvil_session: Anvil,
) -> None:
    def rewrite(call: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
        return {**answer, "result": "0xbad"} if call["method"] == "eth_blockNumber" else answer

    with BadRpc(anvil_session.rpc_url) as server:
        batch = [_call("eth_chainId", 1), _call("eth_blockNumber", 2)]
        answers = _post(server.url, batch).json()
        assert [a["id"] for a in answers] == [1, 2]
        assert answers[0]["result"] == hex(anvil_session.chain_id)
        server.rewrite = rewrite
        assert _post(server.url, batch).json()[1]["result"] == "0xbad"
        server.mode = Mode.OTHER_CHAIN
        assert _post(server.url, _call("eth_chainId")).json()["result"] == hex(56)
        assert _post(server.url, _call("net_version")).json()["result"] == "56"
        assert [seen.mode for seen in server.seen] == [Mode.FORWARD] * 2 + [Mode.OTHER_CHAIN] * 2


def test_without_upstream_it_answers_the_basic_calls_itself() -> None:
    with BadRpc(chain_id=97, block_number=12) as server:
        assert _post(server.url, _call("eth_chainId")).json()["result"] == hex(97)
        assert _post(server.url, _call("eth_blockNumber")).json()["result"] == hex(12)
        assert _post(server.url, _call("eth_getLogs")).json()["error"]["code"] == -32601


def test_once_applies_to_the_next_matching_requests_then_the_mode_returns() -> None:
    with BadRpc() as server:
        server.once(Mode.HTTP_500, method="eth_blockNumber")
        server.once(Mode.HTML)
        assert _post(server.url, _call("eth_chainId")).content == HTML_PAGE
        assert _post(server.url, _call("eth_blockNumber")).status_code == 500
        assert _post(server.url, _call("eth_blockNumber")).status_code == 200
        assert server.methods_seen() == ["eth_chainId", "eth_blockNumber", "eth_blockNumber"]
        server.mode = Mode.CLOSE
        with pytest.raises(httpx.RemoteProtocolError):
            _post(server.url, _call("eth_chainId"))


def test_trickle_sends_one_byte_per_interval() -> None:
    with BadRpc(mode=Mode.TRICKLE, trickle_interval_s=0.1) as server:
        started = time.monotonic()
        with httpx.stream("POST", server.url, content=json.dumps(_call("eth_chainId"))) as reply:
            arrivals = []
            for byte in reply.iter_raw(1):
                arrivals.append((time.monotonic() - started, byte))
                if len(arrivals) == 5:
                    break
    assert [t for t, _ in arrivals][-1] >= 0.45  # five bytes, 0.1 s apart
    assert b"".join(b for _, b in arrivals) == b'{"jso'


@pytest.mark.parametrize("declared", [False, True])
def test_huge_answers_are_valid_json_of_the_announced_size(declared: bool) -> None:
    size = 300_000
    with BadRpc(mode=Mode.HUGE, huge_bytes=size, huge_declared=declared) as server:
        single = _post(server.url, _call("eth_getLogs", 7))
        batch = _post(server.url, [_call("a", 1), _call("b", 2)])
    assert ("content-length" in single.headers) is declared
    answer = single.json()
    assert answer["id"] == 7 and answer["result"] == "0x" + "0" * size
    assert [len(a["result"]) for a in batch.json()] == [2 + size // 2] * 2
    with BadRpc(huge_bytes=size) as server:
        assert server.huge_length(_call("x", 7)) == len(single.content)
