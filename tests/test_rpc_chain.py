"""Issue 10's incident on real chains: HODLAI_RPC_URLS held a proxy to the right chain (31337)
and a second URL on chain 56 with the provider deployed at the same address. The proxy began
answering HTML; the client failed over and the indexer read chain 56 into the chain-31337
database. Here two real anvils sit behind tests/bad_rpc.py servers, which record what was
asked of them."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from shared.chain.rpc import RpcCall, RpcClient, hex_int
from shared.db import connect
from shared.errors import RetryableError
from tests.bad_rpc import BadRpc, Mode
from tests.chain_fixtures import DeployedStack
from tests.test_indexer_support import ChainDriver, indexer_settings, run_indexer
from workers.devnet.anvil import Anvil
from workers.devnet.deploy import Deployment, deploy_stack

OTHER_CHAIN_ID = 56


@dataclass(frozen=True)
class OtherChain:
    anvil: Anvil
    deployment: Deployment
    driver: ChainDriver


@pytest.fixture
def other_chain(deployed: DeployedStack) -> Iterator[OtherChain]:
    """Chain 56 with the same stack deployed by the same admin: the same provider address."""
    with Anvil(chain_id=OTHER_CHAIN_ID) as node:
        deployment = deploy_stack(
            node.rpc_url,
            node.accounts[0].private_key,
            oracle_address=node.accounts[3].address,
            treasury=node.accounts[1].address,
        )
        assert deployment.provider_address == deployed.deployment.provider_address
        driver = ChainDriver(node.rpc_url, deployment, node.accounts[2].private_key)
        try:
            yield OtherChain(node, deployment, driver)
        finally:
            driver.close()


@pytest.fixture
def driver(deployed: DeployedStack) -> Iterator[ChainDriver]:
    chain = ChainDriver(
        deployed.rpc_url, deployed.deployment, deployed.anvil.accounts[2].private_key
    )
    yield chain
    chain.close()


def _code(url: str, address: str) -> str:
    body = {"jsonrpc": "2.0", "id": 1, "method": "eth_getCode", "params": [address, "latest"]}
    return str(httpx.post(url, json=body).json()["result"])


async def test_a_failover_url_on_another_chain_never_answers_the_caller(
    deployed: DeployedStack, other_chain: OtherChain
) -> None:
    provider = deployed.deployment.provider_address
    assert _code(deployed.rpc_url, provider) == _code(other_chain.anvil.rpc_url, provider) != "0x"
    other_chain.driver.mine(50)  # chain 56 is ahead: its answers would be easy to take
    with BadRpc(deployed.rpc_url) as right, BadRpc(other_chain.anvil.rpc_url) as other:
        async with RpcClient([right.url, other.url], timeout=5) as client:
            assert hex_int(await client.call("eth_chainId")) == deployed.anvil.chain_id
            right.mode = Mode.HTML
            answers: list[int] = []
            for _ in range(6):
                try:
                    chain, _ = await client.batch(
                        [RpcCall("eth_chainId", []), RpcCall("eth_blockNumber", [])]
                    )
                    answers.append(hex_int(chain))
                except RetryableError:
                    continue
            assert answers == []  # unfixed: chain 56 answered five of these
            assert other.methods_seen() == ["eth_chainId"]  # asked its chain once, no more
            assert client.quarantined == [other.url]
            right.mode = Mode.FORWARD
            assert hex_int(await client.call("eth_chainId")) == deployed.anvil.chain_id


def _rows(db_path: Path) -> list[tuple[int, str, str]]:
    conn = connect(db_path)
    try:
        return [
            (int(row[0]), str(row[1]), str(row[2]))
            for row in conn.execute(
                "SELECT request_id, state_string, block_hash FROM requests ORDER BY request_id"
            )
        ]
    finally:
        conn.close()


def _reorgs(db_path: Path) -> int:
    conn = sqlite3.connect(db_path)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM reorgs").fetchone()[0])
    finally:
        conn.close()


async def test_the_indexer_keeps_its_database_when_the_failover_url_serves_another_chain(
    deployed: DeployedStack, other_chain: OtherChain, driver: ChainDriver, tmp_path: Path
) -> None:
    for i in range(3):
        driver.wait(driver.ask(f"chain31337 {i}"))
    for i in range(5):
        other_chain.driver.wait(other_chain.driver.ask(f"chain56 {i}"))
    other_chain.driver.mine(20)
    db_path = tmp_path / "hodlai.db"
    target = [driver.head()]
    with BadRpc(deployed.rpc_url) as right, BadRpc(other_chain.anvil.rpc_url) as other:
        settings = indexer_settings(db_path, [right.url, other.url], deployed.deployment)
        during: list[tuple[int, str, str]] = []

        async def incident() -> None:
            for _ in range(600):  # 30 s at most for the first 3 requests to be stored
                if len(await asyncio.to_thread(_rows, db_path)) >= 3:
                    break
                await asyncio.sleep(0.05)
            before = await asyncio.to_thread(_rows, db_path)
            right.mode = Mode.HTML
            await asyncio.sleep(2.5)
            during.extend(await asyncio.to_thread(_rows, db_path))
            assert during == before
            right.mode = Mode.FORWARD
            for i in range(3, 5):
                await asyncio.to_thread(lambda i=i: driver.wait(driver.ask(f"chain31337 {i}")))
            target[0] = await asyncio.to_thread(driver.head)

        task = asyncio.create_task(incident())
        await run_indexer(
            settings,
            until=lambda ix: task.done() and ix.caught_up and ix.anchor.number >= target[0],
            limit_s=60,
        )
        await task
        asked_of_other = other.methods_seen()
    rows = _rows(db_path)
    assert [state for _, state, _ in rows] == [f"chain31337 {i}" for i in range(5)]
    assert len(during) == 3 and _reorgs(db_path) == 0  # unfixed: chain 56 "reorged" it away
    assert set(asked_of_other) == {"eth_chainId"}
