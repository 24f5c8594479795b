"""eth_sendRawTransaction outcomes: every refusal a real anvil gives, the messages of geth and
BSC nodes, a failed POST, all sorted into what they mean for the transaction."""

from __future__ import annotations

import json

import httpx
import pytest

from shared.chain.rpc import RpcClient
from shared.errors import RpcResponseError
from shared.tx.broadcast import BroadcastOutcome, broadcast, classify_send_error
from shared.tx.fees import GWEI, Fees
from shared.tx.signer import Call, LocalSigner
from workers.devnet.anvil import Anvil

Out = BroadcastOutcome


@pytest.mark.parametrize(
    ("message", "outcome"),
    [
        ("already known", Out.ALREADY_KNOWN),
        ("known transaction: 0xabc", Out.ALREADY_KNOWN),
        ("nonce too low: next nonce 5, tx nonce 3", Out.NONCE_TOO_LOW),
        ("replacement transaction underpriced", Out.UNDERPRICED),
        ("transaction underpriced: tip needed 1, tip permitted 0", Out.UNDERPRICED),
        ("insufficient funds for gas * price + value: balance 0", Out.INSUFFICIENT_FUNDS),
        ("exceeds block gas limit", Out.REJECTED),
        ("intrinsic gas too low", Out.REJECTED),
        ("tx fee (1.20 ether) exceeds the configured cap (1.00 ether)", Out.REJECTED),
        ("txpool is full", Out.UNAVAILABLE),
        ("something nobody has seen before", Out.UNAVAILABLE),
    ],
)
def test_geth_and_bsc_refusals_are_classified(message: str, outcome: BroadcastOutcome) -> None:
    assert classify_send_error(RpcResponseError(f"JSON-RPC error -32000: {message}")) is outcome


async def test_every_refusal_of_a_real_anvil_is_classified() -> None:
    with Anvil(no_mining=True) as node:
        signer = LocalSigner(bytes.fromhex(node.accounts[2].private_key[2:]), chain_id=31337)
        to_self = Call(to=signer.address, data=b"", value=0, gas_limit=21_000)
        fair = Fees(max_fee_per_gas=3 * GWEI, max_priority_fee_per_gas=GWEI)
        first = signer.sign(to_self, nonce=0, fees=fair)
        below_base_fee = Fees(max_fee_per_gas=1, max_priority_fee_per_gas=1)
        unaffordable = Call(signer.address, b"", 10**30, 21_000)
        above_block_gas = Call(signer.address, b"", 0, 50_000_000)
        cases = [
            (first, Out.ACCEPTED),
            (first, Out.ALREADY_KNOWN),
            (signer.sign(to_self, nonce=1, fees=below_base_fee), Out.UNDERPRICED),
            (signer.sign(unaffordable, nonce=1, fees=fair), Out.INSUFFICIENT_FUNDS),
            (signer.sign(above_block_gas, nonce=1, fees=fair), Out.REJECTED),
        ]
        async with RpcClient([node.rpc_url]) as rpc:
            for signed, expected in cases:
                (result,) = await broadcast(rpc, [(signed.tx_hash, signed.raw)])
                assert result.outcome is expected, result.detail
            await rpc.call("evm_mine")
            higher = Fees(max_fee_per_gas=9 * GWEI, max_priority_fee_per_gas=2 * GWEI)
            replacement = signer.sign(to_self, nonce=0, fees=higher)
            (late,) = await broadcast(rpc, [(replacement.tx_hash, replacement.raw)])
            assert late.outcome is Out.NONCE_TOO_LOW


async def test_a_failed_post_marks_its_whole_chunk_unavailable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with RpcClient(["http://127.0.0.1:1"], transport=httpx.MockTransport(refuse)) as rpc:
        results = await broadcast(rpc, [("0x01", "0xaa"), ("0x02", "0xbb")])
    assert [r.outcome for r in results] == [Out.UNAVAILABLE, Out.UNAVAILABLE]
    assert not any(r.in_pool for r in results)


async def test_a_node_reporting_another_hash_is_not_trusted_with_the_transaction() -> None:
    def other_hash(request: httpx.Request) -> httpx.Response:
        calls = json.loads(request.content)
        return httpx.Response(
            200, json=[{"jsonrpc": "2.0", "id": c["id"], "result": "0xff"} for c in calls]
        )

    async with RpcClient(["http://node"], transport=httpx.MockTransport(other_hash)) as rpc:
        (result,) = await broadcast(rpc, [("0x01", "0xaa")])
    assert result.outcome is Out.UNAVAILABLE and "0xff" in result.detail
