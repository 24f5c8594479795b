"""Under a fee spike (issue 18, item 6), through a scripted node on a real anvil: a replacement
is never priced from a node behind the head already seen; a transaction refused for its price
is sent again only when the base fee (or its own fees) changed, not on every poll; and each
refusal or fee-cap stop is logged once per transaction."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from shared.chain.rpc import RpcClient
from shared.errors import StaleNodeError
from shared.tx.fees import GWEI, MARKET_ATTEMPTS, Fees, fetch_market
from tests.scripted_rpc import ScriptedNode
from tests.tx_world import VALUE, World, make_world
from workers.devnet.anvil import Anvil

SPIKE_BASE_FEE = 50 * GWEI
FAIR_LOW = Fees(max_fee_per_gas=3 * GWEI, max_priority_fee_per_gas=GWEI)
# What geth answers a transaction below the base fee.
UNDERPRICED = "max fee per gas less than block base fee: maxFeePerGas: 3000000000"


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    with make_world(tmp_path, monkeypatch) as made:
        yield made


def _next_base_fee(world: World, base_fee: int) -> None:
    """Mine a block whose base fee is ``base_fee`` (the spike, as the chain reports it)."""
    world.rpc("anvil_setNextBlockBaseFeePerGas", [hex(base_fee)])
    world.rpc("evm_mine", [])


async def test_a_replacement_is_priced_at_a_head_no_older_than_the_last_poll(
    world: World,
) -> None:
    async with world.manager() as manager:
        await manager.start()
        recorded = await manager.record([world.payment("s1")], FAIR_LOW)
        await manager.broadcast(recorded)
        for _ in range(6):  # the spike: our 3 gwei transaction stays out of these blocks
            _next_base_fee(world, SPIKE_BASE_FEE)
        await manager.poll()  # the head after the spike is now the best seen
        # (anvil drops it from its pool under the spike; the node we send to keeps it)
        world.scripted.swallow = lambda raw: raw == recorded[0].signed.raw  # type: ignore[union-attr]
        world.clock.advance(manager.policy.stuck_after_s + 1)
        world.scripted.latest_lag = 1  # the market read reaches a backend...
        world.scripted.lag_blocks = 6  # ...still before the spike
        report = await manager.poll()
        assert world.scripted.lagged_answers == 1
        assert report.counts["replaced"] == 1
    bump = world.rows()[-1]
    # Priced from the spike's 50 gwei base fee, not from the lagging backend's (~1 gwei:
    # the wasted 3.375 gwei replacement).
    assert int(bump["max_fee_per_gas"]) >= SPIKE_BASE_FEE


async def test_a_price_refused_transaction_is_resent_only_when_the_base_fee_moves(
    world: World,
) -> None:
    world.scripted.refuse = lambda raw: UNDERPRICED
    async with world.manager() as manager:
        await manager.start()
        recorded = await manager.record([world.payment("s2")], FAIR_LOW)
        signed = recorded[0].signed
        assert signed is not None
        with capture_logs() as logs:
            await manager.broadcast(recorded)
            for _ in range(10):  # polls faster than a re-pricing is due
                world.clock.advance(0.3)
                await manager.poll()
            assert world.scripted.sends_of(signed.raw) == 1  # not once per poll
            _next_base_fee(world, 2 * GWEI)  # the base fee moved
            await manager.poll()
            assert world.scripted.sends_of(signed.raw) == 2
            await manager.poll()
            assert world.scripted.sends_of(signed.raw) == 2
        refusals = [e for e in logs if e["event"] == "tx_broadcast_refused"]
        assert len(refusals) == 1  # once for the transaction in that state
        # Due for re-pricing: a bump has new fees, so it is a new transaction, and is sent.
        world.scripted.refuse = lambda raw: None
        world.clock.advance(manager.policy.rebroadcast_after_s)
        report = await manager.poll()
        assert report.counts["replaced"] == 1
        assert world.scripted.sends_of(signed.raw) == 2
        world.rpc("evm_mine", [])
        await manager.poll()
    assert world.balance() == VALUE
    assert [r["status"] for r in world.rows()] == ["REPLACED", "MINED"]


async def test_a_transaction_at_the_fee_cap_is_said_once_however_long_the_spike(
    world: World,
) -> None:
    async with world.manager() as manager:
        await manager.start()
        near_cap = Fees(max_fee_per_gas=95 * GWEI, max_priority_fee_per_gas=GWEI)
        recorded = await manager.record([world.payment("s3")], near_cap)
        await manager.broadcast(recorded)
        world.clock.advance(manager.policy.stuck_after_s + 1)
        with capture_logs() as logs:
            for _ in range(5):
                world.clock.advance(1)
                await manager.poll()
        assert [e["event"] for e in logs].count("tx_fee_cap_reached") == 1
        assert len(world.rows()) == 1  # nothing signed above the cap


async def test_the_market_of_a_node_behind_is_asked_again_and_never_used() -> None:
    with Anvil() as node, ScriptedNode(node.rpc_url) as scripted:
        async with RpcClient([scripted.url]) as rpc:
            for _ in range(3):
                await rpc.call("evm_mine", [])
            scripted.latest_lag = MARKET_ATTEMPTS - 1  # behind, then a fresh backend
            assert (await fetch_market(rpc, at_least=3)).block == 3
            assert scripted.lagged_answers == MARKET_ATTEMPTS - 1
            scripted.latest_lag = MARKET_ATTEMPTS  # behind every time
            with pytest.raises(StaleNodeError):
                await fetch_market(rpc, at_least=3)
            assert (await fetch_market(rpc)).block == 3  # no floor: any answer does
