"""The transaction layer behind a lagging, batch-splitting load balancer (issue: "never a
wrong answer, never a wasted send").

A loopback proxy answers half of the HTTP requests from a view 5 blocks behind and, of the
rest, a share of the batch entries from that view too. Through it run a real indexer process
and the fulfiller, on a chain with 1-second blocks. Every verdict the transaction manager
makes must come from evidence: no transaction of ours marked DROPPED or REPLACED while it
mined, no reverted (duplicate) fulfilment, no request FAILED, and one signed transaction per
fulfilment."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.db import connect
from shared.keys import generate_key_file
from tests.chain_fixtures import ORACLE_FUNDING_WEI, DeployedStack
from tests.rpc_proxy import RpcProxy
from tests.test_fulfiller_support import (
    Chain,
    answer_pending,
    indexer_env,
    make_fulfiller,
    start_indexer,
    step_like_the_loop,
    tx_rows,
)
from workers.devnet.anvil import Anvil
from workers.devnet.deploy import deploy_stack
from workers.oracle import store
from workers.oracle.store import Status

REQUESTS = 100
LAG_BLOCKS = 5
# The indexer accepts requests this deep: above the proxy's lag, as the runbook advises.
CONFIRMATIONS = 6
# Seconds the whole run may take (about 25 s on this machine).
RUN_LIMIT_S = 180.0
# BSC's block gas limit: 100 requests in one askBatch need ~16M gas.
BLOCK_GAS_LIMIT = 140_000_000


@pytest.fixture
def lagging(tmp_path: Path) -> Iterator[tuple[DeployedStack, RpcProxy]]:
    with Anvil(block_time=1, gas_limit=BLOCK_GAS_LIMIT) as node:
        key_file = tmp_path / "oracle-key.json"
        oracle = generate_key_file(key_file)
        deployment = deploy_stack(
            node.rpc_url,
            node.accounts[0].private_key,
            oracle_address=oracle,
            treasury=node.accounts[1].address,
            fund_wei=ORACLE_FUNDING_WEI,
        )
        stack = DeployedStack(anvil=node, deployment=deployment, oracle_key_file=key_file)
        with RpcProxy(
            node.rpc_url, lag=LAG_BLOCKS, stale_fraction=0.5, split_fraction=0.3, seed=7
        ) as proxy:
            yield stack, proxy


async def test_behind_a_lagging_load_balancer_every_verdict_comes_from_evidence(
    lagging: tuple[DeployedStack, RpcProxy], db_path: Path, tmp_path: Path
) -> None:
    stack, proxy = lagging
    chain = Chain(stack)
    ids = chain.ask(REQUESTS)
    env = indexer_env(stack, db_path, rpc_url=proxy.url, confirmations=CONFIRMATIONS)
    conn = connect(db_path)
    log_path = tmp_path / "indexer.log"
    indexer = start_indexer(env, log_path)
    fulfiller = make_fulfiller(stack, db_path, rpc_url=proxy.url)
    try:
        deadline = time.monotonic() + RUN_LIMIT_S
        while store.status_counts(conn)[Status.FULFILLED] < REQUESTS:
            assert time.monotonic() < deadline, f"not done: {store.status_counts(conn)}"
            assert indexer.poll() is None, log_path.read_text()[-2000:]
            answer_pending(conn)
            await step_like_the_loop(fulfiller)
    finally:
        indexer.terminate()
        indexer.wait(timeout=30)
        await fulfiller.close()

    counts = store.status_counts(conn)
    assert counts[Status.FAILED] == 0
    assert chain.fulfilled_counts() == {i: 1 for i in ids}
    rows = tx_rows(conn)
    statuses = [r["status"] for r in rows]
    assert statuses.count("DROPPED") == 0, [r for r in rows if r["status"] == "DROPPED"]
    assert statuses.count("REPLACED") == 0, [
        (r["nonce"], r["purpose"], r["status"], r["error"], r["created_at"], r["updated_at"])
        for r in rows
        if r["status"] != "MINED"
    ]
    assert statuses.count("REVERTED") == 0
    assert statuses.count("MINED") == REQUESTS
    assert len(rows) <= REQUESTS * 1.05  # sends per fulfilment
    assert proxy.stats["stale_answers"] > 50 and proxy.stats["split_entries"] > 50
