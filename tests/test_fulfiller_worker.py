"""The fulfiller in-process against a real anvil with the contracts deployed: simulation,
failure reasons, pipelining, already-fulfilled requests, pausing on a low balance."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from shared import halt
from shared.db import connect
from shared.tx.simulation import GasRule
from tests.chain_fixtures import DeployedStack
from tests.test_fulfiller_support import (
    Chain,
    answer,
    fail_reason,
    make_fulfiller,
    statuses,
    tx_rows,
)


async def test_answered_requests_are_fulfilled_once_each_with_consecutive_nonces(
    deployed: DeployedStack, db_path: Path
) -> None:
    chain = Chain(deployed)
    ids = chain.ask(40)
    conn = connect(db_path)
    answer(conn, ids, requester=chain.vault.address)
    fulfiller = make_fulfiller(deployed, db_path, batch=16)
    start_nonce = chain.nonce(fulfiller.oracle)
    try:
        await fulfiller.run_until(lambda: len(chain.fulfilled_counts()) == len(ids))
        await fulfiller.run_until(lambda: fulfiller.manager.in_flight == 0)
    finally:
        await fulfiller.close()
    counts = chain.fulfilled_counts()
    assert all(counts[i] == 1 for i in ids)
    assert all(chain.deliveries(i) == 1 for i in ids)
    assert set(statuses(conn, ids).values()) == {"PROCESSED"}  # FULFILLED is the indexer's job
    rows = tx_rows(conn)
    assert sorted(r["nonce"] for r in rows) == list(range(start_nonce, start_nonce + len(ids)))
    assert {r["status"] for r in rows} == {"MINED"}
    assert chain.nonce(fulfiller.oracle) == start_nonce + len(ids)


@pytest.mark.parametrize(
    ("vault_name", "expected"),
    [
        (
            "RevertingVault",
            'CallbackReverted(requestId={id}, reason=Error("RevertingVault: answer refused"))',
        ),
        (
            "CustomErrorVault",
            "CallbackReverted(requestId={id}, "
            'reason=DecisionRejected(requestId={id}, action="BUY"))',
        ),
        ("GasBurningVault", "CallbackOutOfGas(requestId={id}, gasCap=1000000)"),
    ],
)  # fmt: skip
async def test_a_vault_whose_callback_fails_ends_failed_with_the_decoded_reason_and_no_gas_spent(
    deployed: DeployedStack, db_path: Path, vault_name: str, expected: str
) -> None:
    chain = Chain(deployed)
    vault = chain.deploy_vault(vault_name)
    ids = chain.ask(2, vault=vault)
    conn = connect(db_path)
    answer(conn, ids, requester=vault.address)
    fulfiller = make_fulfiller(deployed, db_path)
    balance, nonce = chain.balance(fulfiller.oracle), chain.nonce(fulfiller.oracle)
    try:
        await fulfiller.run_until(lambda: set(statuses(conn, ids).values()) == {"FAILED"})
    finally:
        await fulfiller.close()
    for request_id in ids:
        assert fail_reason(conn, request_id) == "simulation reverted: " + expected.format(
            id=request_id
        )
    assert chain.balance(fulfiller.oracle) == balance
    assert chain.nonce(fulfiller.oracle) == nonce
    assert tx_rows(conn) == []
    assert chain.fulfilled_counts() == {}


async def test_a_fulfilment_needing_more_gas_than_the_cap_fails_without_being_sent(
    deployed: DeployedStack, db_path: Path
) -> None:
    chain = Chain(deployed)
    (request_id,) = chain.ask(1)
    conn = connect(db_path)
    answer(conn, [request_id], requester=chain.vault.address)
    fulfiller = make_fulfiller(deployed, db_path, gas=GasRule(margin_percent=25, cap=500_000))
    nonce = chain.nonce(fulfiller.oracle)
    try:
        await fulfiller.run_until(lambda: statuses(conn, [request_id])[request_id] == "FAILED")
    finally:
        await fulfiller.close()
    assert "above the cap HODLAI_FULFILLER_GAS_CAP=500000" in fail_reason(conn, request_id)
    assert chain.nonce(fulfiller.oracle) == nonce
    assert tx_rows(conn) == []


async def test_an_answer_outside_the_action_set_fails_without_being_sent(
    deployed: DeployedStack, db_path: Path
) -> None:
    chain = Chain(deployed)
    (request_id,) = chain.ask(1)
    conn = connect(db_path)
    answer(conn, [request_id], requester=chain.vault.address, action="SHORT")
    fulfiller = make_fulfiller(deployed, db_path)
    try:
        await fulfiller.run_until(lambda: statuses(conn, [request_id])[request_id] == "FAILED")
    finally:
        await fulfiller.close()
    assert "'SHORT' is not in the request's action set" in fail_reason(conn, request_id)
    assert tx_rows(conn) == []


async def test_a_request_already_fulfilled_by_another_oracle_is_not_sent(
    deployed: DeployedStack, db_path: Path
) -> None:
    chain = Chain(deployed)
    ids = chain.ask(2)
    other_oracle = deployed.anvil.accounts[3].address
    chain.grant_oracle(other_oracle)
    tx = chain.provider.functions.fulfillNodeReasoning(ids[0], "SELL", "other").transact(
        {"from": other_oracle}
    )
    chain.w3.eth.wait_for_transaction_receipt(tx)
    conn = connect(db_path)
    answer(conn, ids, requester=chain.vault.address)
    fulfiller = make_fulfiller(deployed, db_path)
    nonce = chain.nonce(fulfiller.oracle)
    try:
        await fulfiller.run_until(lambda: chain.fulfilled_counts()[ids[1]] == 1)
        for _ in range(5):  # the already-fulfilled row must stay unsent however often we step
            await fulfiller.step()
    finally:
        await fulfiller.close()
    assert chain.fulfilled_counts() == {ids[0]: 1, ids[1]: 1}
    assert chain.nonce(fulfiller.oracle) == nonce + 1
    assert [r["request_id"] for r in tx_rows(conn)] == [str(ids[1])]
    row = conn.execute(
        "SELECT status, lease_owner FROM requests WHERE request_id = ?", (str(ids[0]),)
    ).fetchone()
    assert (row["status"], row["lease_owner"]) == ("ANSWERED", "fulfiller")  # held for the indexer


async def test_sending_pauses_below_the_balance_threshold_and_resumes_once_funded(
    deployed: DeployedStack, db_path: Path
) -> None:
    chain = Chain(deployed)
    ids = chain.ask(3)
    conn = connect(db_path)
    answer(conn, ids, requester=chain.vault.address)
    fulfiller = make_fulfiller(deployed, db_path, min_balance_wei=10**18)
    chain.set_balance(fulfiller.oracle, 10**17)  # 0.1 ether, below the 1 ether threshold
    try:
        with capture_logs() as logs:
            for _ in range(5):
                await fulfiller.step()
        assert fulfiller.worker.paused is not None and "below" in fulfiller.worker.paused
        assert any(e["event"] == "fulfiller_paused" for e in logs)
        assert tx_rows(conn) == [] and chain.nonce(fulfiller.oracle) == 0
        chain.set_balance(fulfiller.oracle, 10 * 10**18)
        with capture_logs() as logs:
            await fulfiller.run_until(lambda: len(chain.fulfilled_counts()) == 3)
        assert any(e["event"] == "fulfiller_resumed" for e in logs)
    finally:
        await fulfiller.close()
    assert fulfiller.worker.paused is None


async def test_a_node_refusing_for_insufficient_funds_pauses_sending_until_funded(
    deployed: DeployedStack, db_path: Path
) -> None:
    chain = Chain(deployed)
    ids = chain.ask(2)
    conn = connect(db_path)
    answer(conn, ids, requester=chain.vault.address)
    # The threshold is met, but the balance cannot pay for gas_limit * max_fee of one tx.
    fulfiller = make_fulfiller(deployed, db_path, min_balance_wei=1)
    chain.set_balance(fulfiller.oracle, 10**9)
    try:
        with capture_logs() as logs:
            for _ in range(6):
                await fulfiller.step()
        assert fulfiller.manager.funds_short
        events = [e["event"] for e in logs]
        # Paused once and stays paused: no resume/refuse flapping while nobody funds it.
        assert events.count("fulfiller_paused") == 1 and "fulfiller_resumed" not in events
        assert {r["status"] for r in tx_rows(conn)} == {"SIGNED"}  # recorded, refused
        chain.set_balance(fulfiller.oracle, 10 * 10**18)
        await fulfiller.run_until(lambda: len(chain.fulfilled_counts()) == 2)
    finally:
        await fulfiller.close()
    assert not fulfiller.manager.funds_short
    assert all(n == 1 for n in chain.fulfilled_counts().values())


async def test_nothing_new_is_signed_while_the_indexer_is_halted(
    deployed: DeployedStack, db_path: Path
) -> None:
    chain = Chain(deployed)
    ids = chain.ask(2)
    conn = connect(db_path)
    answer(conn, ids, requester=chain.vault.address)
    assert halt.halt(
        conn, "the RPC reports chain 56, this database is for 31337", worker=halt.INDEXER
    )
    fulfiller = make_fulfiller(deployed, db_path)
    try:
        for _ in range(10):
            await fulfiller.step()
        assert tx_rows(conn) == []  # the halt holds every new fulfilment back
        assert statuses(conn, ids) == {i: "ANSWERED" for i in ids}
        halt.resume(conn, by="operator", worker=halt.INDEXER)
        await fulfiller.run_until(lambda: chain.fulfilled_counts() == {i: 1 for i in ids})
    finally:
        await fulfiller.close()
