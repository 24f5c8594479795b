"""Two chains in one database (issue 19 item 3): the oracle's indexer on one anvil, and a
test executor's poller and sender on a second anvil with another chain id, all in one SQLite
file. One key sends on both chains, each with its own nonce sequence. A reorg on the second
chain rolls back its poller and its transaction, and leaves the first chain's history, the
oracle's rows and the first chain's transactions exactly as they were.

The block numbers of the two chains overlap on purpose (both deploy the same stack from
block 0): before migration 15 the two pollers' hashes shared one ``blocks`` row per number.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.chain.poller import LogPoller
from shared.chain.rpc import RpcClient
from shared.db import (
    AsyncDatabase,
    check_executor_identity,
    check_identity,
    connect,
    executor_identities,
)
from shared.errors import DatabaseMismatchError
from shared.keys import generate_key_file
from shared.tx import ledger
from shared.tx.ledger import Purpose
from shared.tx.manager import Submission, TxManager
from shared.tx.senders import claim_sender
from shared.tx.signer import Call, LocalSigner
from tests.chain_fixtures import ORACLE_FUNDING_WEI, DeployedStack
from tests.test_chain_poller import (
    OWN_METRICS,
    SINK_TABLE,
    RecordingSink,
    _own_config,
    _run_own,
    chain_logs,
    cursor,
    fee_filter,
    recorded,
    set_fee,
)
from tests.test_indexer_support import (
    ChainDriver,
    caught_up_to,
    indexer_settings,
    run_indexer,
    stored_requests,
)
from tests.test_many_chains import refusal
from tests.test_tx_manager import FAIR, NOTE, POLICY, NotePurpose
from workers.devnet.anvil import Anvil
from workers.devnet.deploy import deploy_stack

OTHER_CHAIN_ID = 8453  # Base's id, served by the second anvil
SAMPLE = "sample"  # the test executor's name in ``identities``
SAMPLE_POLLER = "sample-base"
# Seconds a test waits for a transaction to be told an outcome.
LIMIT_S = 30.0
SENDER_KEY = bytes.fromhex("5a" * 32)
# The txs columns that say what was sent and what became of it.
TX_OUTCOME = "id, chain_id, nonce, tx_hash, status, mined_block, mined_block_hash, final_at"


@pytest.fixture
def second(tmp_path: Path) -> Iterator[DeployedStack]:
    """A second anvil, on chain OTHER_CHAIN_ID, with the same stack deployed (by the same
    deployer at the same nonces: its contracts have the first chain's addresses)."""
    with Anvil(chain_id=OTHER_CHAIN_ID) as node:
        key_file = tmp_path / "second-oracle-key.json"
        oracle = generate_key_file(key_file)
        deployment = deploy_stack(
            node.rpc_url, node.accounts[0].private_key, oracle_address=oracle,
            treasury=node.accounts[1].address, fund_wei=ORACLE_FUNDING_WEI,
        )  # fmt: skip
        yield DeployedStack(anvil=node, deployment=deployment, oracle_key_file=key_file)


def _rpc(url: str, method: str, params: list[Any]) -> Any:
    answer = httpx.post(
        url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    ).json()
    assert "error" not in answer, answer
    return answer["result"]


def _fund(node: Anvil, address: str) -> None:
    payment = {"from": node.accounts[0].address, "to": address, "value": hex(10**18)}
    tx = _rpc(node.rpc_url, "eth_sendTransaction", [payment])
    deadline = time.monotonic() + 10
    while _rpc(node.rpc_url, "eth_getTransactionReceipt", [tx]) is None:
        assert time.monotonic() < deadline, "funding was not mined"
        time.sleep(0.05)


def _rows(conn: sqlite3.Connection, sql: str, *args: object) -> list[tuple[object, ...]]:
    return [tuple(r) for r in conn.execute(sql, args)]


async def _send_note(
    db_path: Path, node: Anvil, purpose: NotePurpose, key: str
) -> tuple[TxManager, AsyncDatabase]:
    """A manager for SENDER_KEY on ``node``'s chain that has recorded and broadcast one note
    and polled until the purpose was told its outcome. The caller closes both."""
    signer = LocalSigner(SENDER_KEY, chain_id=node.chain_id)
    db = AsyncDatabase(connect(db_path, durable=True))
    manager = TxManager(
        db=db, rpc=RpcClient([node.rpc_url]), signer=signer, policy=POLICY,
        handlers={NOTE: purpose},
        claim=claim_sender(db_path, db.conn, signer.address, owner="test",
                           chain_id=node.chain_id),
    )  # fmt: skip
    await manager.start()
    call = Call(to=node.accounts[1].address, data=b"", value=7, gas_limit=21_000)
    recorded_txs = await manager.record(
        [Submission(call, Purpose(NOTE, key), lambda conn, tx: None, key=key)], FAIR
    )
    await manager.broadcast(recorded_txs)
    await _poll_until(manager, lambda: bool(purpose.told))
    return manager, db


async def _poll_until(manager: TxManager, done: Any) -> None:
    deadline = time.monotonic() + LIMIT_S
    while not done():
        assert time.monotonic() < deadline, "the manager never got there"
        await manager.poll()
        await asyncio.sleep(0.05)


async def _run_sample_poller(
    db_path: Path, stack: DeployedStack, start: int, sink: RecordingSink, head: int
) -> None:
    """The test executor's poller on the second chain, until caught up to ``head``."""
    db = AsyncDatabase(connect(db_path))
    rpc = RpcClient([stack.rpc_url], timeout=5.0)
    poller = LogPoller(_own_config(SAMPLE_POLLER), rpc=rpc, db=db, metrics=OWN_METRICS)
    poller.register(fee_filter(stack, start), sink)
    try:
        chain_id, _ = await poller.verify_chain()
        await db.run(
            check_executor_identity, executor=SAMPLE, chain_id=chain_id,
            anchor=stack.deployment.provider_address,
        )  # fmt: skip
        await _run_own(poller, lambda p: p.caught_up and p.anchor.number >= head)
    finally:
        await poller.close()
        await rpc.aclose()
        db.close()


def _first_side(conn: sqlite3.Connection, db_path: Path, chain_id: int) -> tuple[object, ...]:
    """Everything of the first chain in the database: the oracle's history, its rows, its
    cursor and reorgs, and the transactions sent there."""
    return (
        _rows(conn, "SELECT * FROM blocks WHERE poller = 'indexer' ORDER BY number"),
        _rows(conn, "SELECT * FROM requests ORDER BY request_id"),
        _rows(conn, "SELECT * FROM reorgs WHERE poller = 'indexer'"),
        _rows(conn, f"SELECT {TX_OUTCOME} FROM txs WHERE chain_id = ? ORDER BY id", chain_id),
        cursor(db_path, "indexer"),
    )


async def test_two_chains_in_one_database_and_a_reorg_on_one_leaves_the_other_untouched(
    deployed: DeployedStack, second: DeployedStack, db_path: Path
) -> None:
    first_chain, other_chain = deployed.anvil, second.anvil
    assert first_chain.chain_id != other_chain.chain_id
    conn = connect(db_path)
    conn.execute(SINK_TABLE)
    driver = ChainDriver(deployed.rpc_url, deployed.deployment, first_chain.accounts[2].private_key)
    other = ChainDriver(second.rpc_url, second.deployment, other_chain.accounts[2].private_key)
    signer_address = LocalSigner(SENDER_KEY, chain_id=1).address
    _fund(first_chain, signer_address)
    _fund(other_chain, signer_address)
    try:
        # The oracle on the first chain.
        for i in range(3):
            driver.wait(driver.ask(f"request {i}"))
        settings = indexer_settings(db_path, [deployed.rpc_url], deployed.deployment)
        await run_indexer(settings, until=caught_up_to(driver.head()))
        # The test executor's poller on the second chain, from block 1 on (the numbers of
        # the first chain's stored blocks are among them).
        start = other.head() + 1
        for i in range(4):
            set_fee(other, second, f"model-{i}", i + 1)
        fees = RecordingSink("fees")
        await _run_sample_poller(db_path, second, start, fees, other.head())
        assert recorded(db_path, "fees") == chain_logs(other, fee_filter(second, start))
        assert len(recorded(db_path, "fees")) == 4

        # One key, two chains, a nonce sequence each: both first notes use nonce 0.
        told_first, told_other = NotePurpose(), NotePurpose()
        manager_first, db_first = await _send_note(db_path, first_chain, told_first, "note:a")
        manager_other, db_other = await _send_note(db_path, other_chain, told_other, "note:b")
        try:
            txs = _rows(conn, "SELECT chain_id, nonce, status FROM txs ORDER BY id")
            assert txs == [
                (first_chain.chain_id, 0, "MINED"),
                (other_chain.chain_id, 0, "MINED"),
            ]
            senders = _rows(conn, "SELECT chain_id FROM senders WHERE address = ? "
                            "ORDER BY chain_id", signer_address)  # fmt: skip
            assert senders == sorted([(first_chain.chain_id,), (other_chain.chain_id,)])
            for chain_id in (first_chain.chain_id, other_chain.chain_id):
                assert ledger.next_unused_nonce(conn, signer_address, chain_id=chain_id) == 1

            # The blocks both pollers stored overlap in number, each under its own name.
            indexer_blocks = {r[0] for r in conn.execute(
                "SELECT number FROM blocks WHERE poller = 'indexer'")}  # fmt: skip
            sample_blocks = {r[0] for r in conn.execute(
                "SELECT number FROM blocks WHERE poller = ?", (SAMPLE_POLLER,))}  # fmt: skip
            assert indexer_blocks and sample_blocks and indexer_blocks & sample_blocks

            # The oracle catches up with the first chain (the note mined a block there).
            await run_indexer(settings, until=caught_up_to(driver.head()))
            first_side = _first_side(conn, db_path, first_chain.chain_id)
            other_blocks_before = _rows(
                conn, "SELECT * FROM blocks WHERE poller = ? ORDER BY number", SAMPLE_POLLER
            )

            # A reorg on the second chain: its last three blocks, with the note and the
            # last fee, are replaced by empty ones.
            (other_id,) = conn.execute(
                "SELECT id FROM txs WHERE chain_id = ?", (other_chain.chain_id,)
            ).fetchone()
            other_tx = ledger.get(conn, other_id)
            assert other_tx is not None and other_tx.mined_block == other.head()
            other.reorg(3)
            await _poll_until(manager_other, lambda: bool(told_other.undone))
            await _run_sample_poller(db_path, second, start, fees, other.head())
            # The first chain's side carries on: its sender polls, its indexer reads.
            await manager_first.poll()
            await run_indexer(settings, until=caught_up_to(driver.head()))
        finally:
            await manager_first.close()
            await manager_other.close()
            db_first.close()
            db_other.close()

        assert _first_side(conn, db_path, first_chain.chain_id) == first_side
        assert told_first.undone == []
        assert _rows(conn, "SELECT poller FROM reorgs") == [(SAMPLE_POLLER,)]
        assert set(stored_requests(conn)) == driver.requested_ids() == {1, 2, 3}
        # The second chain's side followed its reorg: history, sink and transaction.
        assert other_blocks_before != _rows(
            conn, "SELECT * FROM blocks WHERE poller = ? ORDER BY number", SAMPLE_POLLER
        )
        assert recorded(db_path, "fees") == chain_logs(other, fee_filter(second, start))
        assert len(recorded(db_path, "fees")) < 4
        reopened = ledger.get(conn, other_tx.id)
        assert reopened is not None and reopened.mined_block_hash != other_tx.mined_block_hash

        # Identities: one row per (executor, chain); each executor is refused only against
        # its own rows.
        assert executor_identities(conn, "oracle") == {
            first_chain.chain_id: deployed.deployment.provider_address
        }
        assert executor_identities(conn, SAMPLE) == {
            other_chain.chain_id: second.deployment.provider_address
        }
        with pytest.raises(DatabaseMismatchError, match=refusal(31337, "oracle")):
            check_identity(conn, chain_id=other_chain.chain_id,
                           provider_address=second.deployment.provider_address)  # fmt: skip
        with pytest.raises(DatabaseMismatchError, match=refusal(OTHER_CHAIN_ID, SAMPLE)):
            check_executor_identity(conn, executor=SAMPLE, chain_id=other_chain.chain_id,
                                    anchor="0x" + "99" * 20)  # fmt: skip
        # Another executor on the oracle's chain, and the test executor on it too, are fine.
        check_executor_identity(conn, executor="mint", chain_id=first_chain.chain_id,
                                anchor="0x" + "99" * 20)  # fmt: skip
    finally:
        driver.close()
        other.close()
        conn.close()
