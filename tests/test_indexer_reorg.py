"""Reorgs on a real anvil: what orphaned blocks brought is undone, a request id that comes
back with other content starts again as a new generation, and an answer prepared for the old
content is dropped."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from shared.db import connect
from shared.keys import load_private_key
from tests.chain_fixtures import DeployedStack
from tests.test_indexer_support import (
    ChainDriver,
    indexer_settings,
    run_indexer,
    stored_requests,
)
from workers.oracle import store
from workers.oracle.indexer.logs_decode import decode_logs
from workers.oracle.inspect import collect_status
from workers.oracle.store import Status


@pytest.fixture
def driver(deployed: DeployedStack) -> Iterator[ChainDriver]:
    chain = ChainDriver(
        deployed.rpc_url, deployed.deployment, deployed.anvil.accounts[2].private_key
    )
    yield chain
    chain.close()


def _answer(conn: object, request_id: int) -> None:
    """What an inference worker leaves behind: the row ANSWERED with an action and a CID."""
    import sqlite3

    assert isinstance(conn, sqlite3.Connection)
    store.transition(
        conn, request_id, Status.PENDING, Status.ANSWERED, actor="inference-test",
        set_columns={"answer_action": "BUY", "answer_cid": "bafy-old", "answered_at": 1.0,
                     "attempts": 1},
    )  # fmt: skip


async def test_anvil_reorg_replaces_content_and_undoes_an_orphaned_fulfilment(
    deployed: DeployedStack, driver: ChainDriver, db_path: Path
) -> None:
    oracle = load_private_key(deployed.oracle_key_file)
    first = driver.wait(driver.ask("request one"))
    driver.wait(driver.ask("request two, old content"))
    driver.wait(driver.fulfill(oracle, 1, "BUY"))
    settings = indexer_settings(db_path, [deployed.rpc_url], deployed.deployment)
    await run_indexer(settings)
    conn = connect(db_path)
    rows = stored_requests(conn)
    assert rows[1]["status"] == "FULFILLED" and rows[2]["status"] == "PENDING"
    _answer(conn, 2)
    old_hash = rows[2]["content_hash"]

    # Replace the last two blocks: request two's transaction is swapped for one with other
    # content (it gets the same id, 2), and the fulfilment of request one disappears.
    replacement = driver.signed_ask(
        "request two, NEW content", nonce=driver.nonce_at(int(first["blockNumber"], 16))
    )
    driver.reorg(2, [(replacement, 0)])

    with capture_logs() as logs:
        await run_indexer(settings)

    rows = stored_requests(conn)
    one, two = rows[1], rows[2]
    assert one["status"] == "PENDING"
    assert one["fulfilled_tx_hash"] is None and one["fulfilled_action"] is None
    assert conn.execute("SELECT COUNT(*) FROM fulfillments").fetchone()[0] == 0
    assert two["state_string"] == "request two, NEW content"
    assert two["content_hash"] != old_hash
    assert two["generation"] == 2
    assert two["status"] == "PENDING"
    assert (two["answer_action"], two["answer_cid"], two["attempts"]) == (None, None, 0)
    moves = [(h["from_status"], h["to_status"]) for h in store.history(conn, 2)]
    assert moves == [(None, "PENDING"), ("PENDING", "ANSWERED"), ("ANSWERED", "REMOVED"),
                     (None, "PENDING")]  # fmt: skip
    reorg = conn.execute("SELECT * FROM reorgs").fetchone()
    assert reorg["deeper_than_confirmations"] == 1 and reorg["depth"] >= 2
    assert collect_status(conn, None, time.time())["deep_reorgs"] == 1
    rolled = [e for e in logs if e["event"] == "reorg_rolled_back"]
    assert rolled and rolled[0]["log_level"] == "error"
    assert rolled[0]["requests_removed"] == 1 and rolled[0]["fulfilments_undone"] == 1


async def test_snapshot_revert_gives_the_same_id_new_content_and_resets_the_answer(
    deployed: DeployedStack, driver: ChainDriver, db_path: Path
) -> None:
    driver.wait(driver.ask("before the fork"))
    snapshot = driver.snapshot()
    driver.wait(driver.ask("X: old content", actions=("A", "B")))
    driver.mine(2)
    settings = indexer_settings(db_path, [deployed.rpc_url], deployed.deployment)
    await run_indexer(settings)
    conn = connect(db_path)
    _answer(conn, 2)

    driver.revert(snapshot)
    # A node whose head went below the cursor but whose blocks below it still match is only
    # behind: nothing is rolled back while it shows no other hash.
    with capture_logs() as logs:
        indexer = await run_indexer(settings, until=lambda ix: ix.stale_streak >= 2)
    assert indexer.anchor.number >= driver.head()
    assert stored_requests(conn)[2]["status"] == "ANSWERED"
    assert any(e["event"] == "rpc_answer_stale" for e in logs)

    driver.wait(driver.ask("Y: new content", actions=("C", "D", "E")))
    driver.mine(3)
    await run_indexer(settings)

    two = stored_requests(conn)[2]
    assert two["state_string"] == "Y: new content"
    assert json.loads(two["action_set"]) == ["C", "D", "E"]
    assert two["generation"] == 2
    assert two["status"] == "PENDING"
    assert two["answer_action"] is None and two["reasoning"] is None
    truth = {e.request_id: e for e in driver.logs() if e.kind == "requested"}
    assert set(stored_requests(conn)) == set(truth)
    assert two["content_hash"] == decode_logs([truth[2].raw]).requests[0].content_hash
    assert two["block_hash"] == truth[2].block_hash


async def test_reorg_that_reincludes_the_same_request_keeps_its_content(
    deployed: DeployedStack, driver: ChainDriver, db_path: Path
) -> None:
    first = driver.wait(driver.ask("stays the same"))
    driver.wait(driver.ask("also the same"))
    settings = indexer_settings(db_path, [deployed.rpc_url], deployed.deployment)
    await run_indexer(settings)
    conn = connect(db_path)
    before = stored_requests(conn)[2]
    again = driver.signed_ask("also the same", nonce=driver.nonce_at(int(first["blockNumber"], 16)))
    driver.reorg(1, [(again, 0)])
    await run_indexer(settings)
    after = stored_requests(conn)[2]
    assert after["content_hash"] == before["content_hash"]
    assert after["block_hash"] != before["block_hash"]
    assert after["status"] == "PENDING"
