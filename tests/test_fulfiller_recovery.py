"""The fulfiller when the chain misbehaves: dropped, stuck and reverted transactions, content
replaced by a reorg while a fulfilment is pending, a nonce used by someone else, and a mined
fulfilment reorged out. Each ends with exactly one fulfilment per request on chain."""

from __future__ import annotations

from pathlib import Path

from shared.db import connect
from tests.chain_fixtures import DeployedStack
from tests.test_fulfiller_support import (
    GWEI,
    Chain,
    ManualClock,
    answer,
    fail_reason,
    make_fulfiller,
    statuses,
    tx_rows,
)
from workers.oracle import store
from workers.oracle.store import Status


def open_fulfilments(conn: object) -> list[dict[str, object]]:
    return [
        r
        for r in tx_rows(conn)
        if r["status"] in ("SIGNED", "BROADCAST") and r["purpose"] == "fulfil"
    ]


async def test_a_dropped_transaction_is_broadcast_again(
    deployed: DeployedStack, db_path: Path
) -> None:
    chain = Chain(deployed)
    (request_id,) = chain.ask(1)
    conn = connect(db_path)
    answer(conn, [request_id], requester=chain.vault.address)
    clock = ManualClock()
    fulfiller = make_fulfiller(deployed, db_path, clock=clock)
    chain.automine(False)
    try:
        await fulfiller.run_until(lambda: len(open_fulfilments(conn)) == 1)
        (tx,) = open_fulfilments(conn)
        chain.rpc("anvil_dropTransaction", [tx["tx_hash"]])
        assert chain.rpc("eth_getTransactionByHash", [tx["tx_hash"]]) is None
        clock.advance(fulfiller.manager.policy.rebroadcast_after_s + 1)
        report = await fulfiller.manager.poll()
        assert report.counts["rebroadcast"] == 1
        assert chain.rpc("eth_getTransactionByHash", [tx["tx_hash"]]) is not None
        chain.mine()
        await fulfiller.run_until(lambda: [r["status"] for r in tx_rows(conn)] == ["MINED"])
    finally:
        chain.automine(True)
        await fulfiller.close()
    assert chain.fulfilled_counts() == {request_id: 1}
    assert len(tx_rows(conn)) == 1  # the same signed bytes, not a second transaction


async def test_a_stuck_transaction_is_replaced_on_its_nonce_with_bumped_fees(
    deployed: DeployedStack, db_path: Path
) -> None:
    chain = Chain(deployed)
    (request_id,) = chain.ask(1)
    conn = connect(db_path)
    answer(conn, [request_id], requester=chain.vault.address)
    clock = ManualClock()
    fulfiller = make_fulfiller(deployed, db_path, clock=clock)
    chain.automine(False)
    try:
        await fulfiller.run_until(lambda: len(open_fulfilments(conn)) == 1)
        (first,) = open_fulfilments(conn)
        # The base fee jumps above what the transaction offers: it cannot be included.
        chain.rpc("anvil_setNextBlockBaseFeePerGas", [hex(80 * GWEI)])
        chain.mine()
        assert int(first["max_fee_per_gas"]) < 70 * GWEI
        assert chain.rpc("eth_getTransactionReceipt", [first["tx_hash"]]) is None
        await fulfiller.step()
        assert len(tx_rows(conn)) == 1  # not stuck yet: younger than stuck_after_s
        clock.advance(fulfiller.manager.policy.stuck_after_s + 1)
        report = await fulfiller.manager.poll()
        assert report.counts["replaced"] == 1
        chain.mine()
        await fulfiller.run_until(lambda: any(r["status"] == "MINED" for r in tx_rows(conn)))
    finally:
        chain.automine(True)
        await fulfiller.close()
    old, new = tx_rows(conn)
    assert (old["status"], new["status"]) == ("REPLACED", "MINED")
    assert new["nonce"] == old["nonce"] and new["replaces_tx_id"] == old["id"]
    assert int(new["max_fee_per_gas"]) >= int(old["max_fee_per_gas"]) * 1125 // 1000 + 1
    assert (
        int(new["max_priority_fee_per_gas"]) >= int(old["max_priority_fee_per_gas"]) * 1125 // 1000
    )
    assert int(new["max_fee_per_gas"]) <= 100 * GWEI  # the cap
    assert chain.fulfilled_counts() == {request_id: 1}
    assert chain.deliveries(request_id) == 1


async def test_a_transaction_reverted_on_chain_is_resimulated_once_then_failed(
    deployed: DeployedStack, db_path: Path
) -> None:
    chain = Chain(deployed)
    vault = chain.deploy_vault("RevertingVault")
    vault.functions.setRefusing(False).transact({"from": chain.admin})
    (request_id,) = chain.ask(1, vault=vault)
    conn = connect(db_path)
    answer(conn, [request_id], requester=vault.address)
    fulfiller = make_fulfiller(deployed, db_path)
    chain.automine(False)
    try:
        await fulfiller.run_until(lambda: len(open_fulfilments(conn)) == 1)
        # The vault starts refusing after the simulation passed, ahead of our transaction in
        # the block (a higher tip): the mined fulfilment reverts.
        vault.functions.setRefusing(True).transact(
            {"from": chain.admin, "maxPriorityFeePerGas": 50 * GWEI, "maxFeePerGas": 100 * GWEI}
        )
        chain.mine()
        await fulfiller.run_until(lambda: statuses(conn, [request_id])[request_id] == "FAILED")
    finally:
        chain.automine(True)
        await fulfiller.close()
    assert [r["status"] for r in tx_rows(conn)] == ["REVERTED"]
    assert fail_reason(conn, request_id) == (
        f"simulation reverted: CallbackReverted(requestId={request_id}, "
        f'reason=Error("RevertingVault: answer refused"))'
    )
    moves = [(h["from_status"], h["to_status"]) for h in store.history(conn, request_id)]
    assert moves[-3:] == [
        ("ANSWERED", "PROCESSED"),
        ("PROCESSED", "ANSWERED"),
        ("ANSWERED", "FAILED"),
    ]
    assert chain.fulfilled_counts() == {}


async def test_a_pending_fulfilment_for_content_replaced_by_a_reorg_is_cancelled_on_its_nonce(
    deployed: DeployedStack, db_path: Path
) -> None:
    chain = Chain(deployed)
    (request_id,) = chain.ask(1)
    conn = connect(db_path)
    answer(conn, [request_id], requester=chain.vault.address)
    fulfiller = make_fulfiller(deployed, db_path)
    chain.automine(False)
    try:
        await fulfiller.run_until(lambda: len(open_fulfilments(conn)) == 1)
        nonce = chain.nonce(fulfiller.oracle)
        # What the indexer does when a reorg brings the id back with other content.
        store.transition(
            conn, request_id, Status.PROCESSED, Status.PENDING, actor="indexer",
            set_columns={"generation": 2, "content_hash": "0x" + "77" * 32,
                         "answer_action": None, "answer_cid": None},
        )  # fmt: skip
        report = await fulfiller.manager.poll()
        assert report.counts["cancelled"] == 1
        chain.mine()
        await fulfiller.run_until(lambda: fulfiller.manager.in_flight == 0)
    finally:
        chain.automine(True)
        await fulfiller.close()
    fulfil, cancel = tx_rows(conn)
    assert (fulfil["purpose"], fulfil["status"]) == ("fulfil", "CANCELLED")
    assert (cancel["purpose"], cancel["status"]) == ("cancel", "MINED")
    assert cancel["nonce"] == fulfil["nonce"] == nonce
    assert "content was replaced" in fulfil["error"]
    assert chain.fulfilled_counts() == {}
    assert chain.nonce(fulfiller.oracle) == nonce + 1
    assert statuses(conn, [request_id])[request_id] == "PENDING"  # the new content starts over


async def test_a_reanswered_request_gets_no_second_fulfilment_while_the_first_could_mine(
    deployed: DeployedStack, db_path: Path
) -> None:
    chain = Chain(deployed)
    (request_id,) = chain.ask(1)
    conn = connect(db_path)
    answer(conn, [request_id], requester=chain.vault.address)
    clock = ManualClock()
    fulfiller = make_fulfiller(deployed, db_path, clock=clock)
    chain.automine(False)
    try:
        await fulfiller.run_until(lambda: len(open_fulfilments(conn)) == 1)
        # A reorg replaced the content and inference answered the new generation at once.
        store.transition(
            conn, request_id, Status.PROCESSED, Status.ANSWERED, actor="test",
            set_columns={"generation": 2, "content_hash": "0x" + "77" * 32},
        )  # fmt: skip
        for _ in range(3):
            await fulfiller.step()
        fulfils = [r for r in tx_rows(conn) if r["purpose"] == "fulfil"]
        assert len(fulfils) == 1, "a second fulfilment was signed while the first could mine"
        chain.mine()  # the cancel mines; the first fulfilment can no longer
        clock.advance(11)  # past the deferral of the re-answered row
        await fulfiller.run_until(lambda: len(open_fulfilments(conn)) == 1)
        chain.mine()
        await fulfiller.run_until(lambda: fulfiller.manager.in_flight == 0)
    finally:
        chain.automine(True)
        await fulfiller.close()
    first, cancel, second = tx_rows(conn)
    assert (first["status"], cancel["purpose"], second["generation"]) == ("CANCELLED", "cancel", 2)
    assert chain.fulfilled_counts() == {request_id: 1}


async def test_a_nonce_used_by_another_signer_of_the_key_is_reconciled_and_the_request_resent(
    deployed: DeployedStack, db_path: Path
) -> None:
    chain = Chain(deployed)
    (request_id,) = chain.ask(1)
    conn = connect(db_path)
    answer(conn, [request_id], requester=chain.vault.address)
    fulfiller = make_fulfiller(deployed, db_path)
    chain.automine(False)
    try:
        await fulfiller.run_until(lambda: len(open_fulfilments(conn)) == 1)
        (ours,) = open_fulfilments(conn)
        # Someone else with the same key replaces it on the same nonce (a higher fee).
        from eth_account import Account

        from shared.keys import load_private_key

        account = Account.from_key(load_private_key(deployed.oracle_key_file))
        foreign = account.sign_transaction(
            {"type": 2, "chainId": deployed.deployment.chain_id, "nonce": ours["nonce"],
             "to": chain.admin, "value": 1, "gas": 21_000,
             "maxFeePerGas": 100 * GWEI, "maxPriorityFeePerGas": 50 * GWEI}
        )  # fmt: skip
        chain.rpc("eth_sendRawTransaction", ["0x" + bytes(foreign.raw_transaction).hex()])
        chain.mine()
        await fulfiller.run_until(lambda: len(tx_rows(conn)) == 2)
        chain.mine()
        await fulfiller.run_until(lambda: chain.fulfilled_counts().get(request_id) == 1)
    finally:
        chain.automine(True)
        await fulfiller.close()
    dropped, resent = tx_rows(conn)
    assert dropped["status"] == "DROPPED" and "did not sign" in dropped["error"]
    assert resent["nonce"] == dropped["nonce"] + 1
    assert chain.fulfilled_counts() == {request_id: 1}


async def test_a_mined_fulfilment_reorged_out_is_held_until_its_request_is_confirmed_then_sent(
    deployed: DeployedStack, db_path: Path
) -> None:
    chain = Chain(deployed)
    (request_id,) = chain.ask(1)
    conn = connect(db_path)
    answer(conn, [request_id], requester=chain.vault.address, chain=chain)
    fulfiller = make_fulfiller(deployed, db_path)
    try:
        await fulfiller.run_until(lambda: [r["status"] for r in tx_rows(conn)] == ["MINED"])
        (mined,) = tx_rows(conn)
        nonce = chain.nonce(fulfiller.oracle)
        chain.rpc("anvil_reorg", [1, []])  # the block with our transaction is replaced
        assert chain.fulfilled_counts() == {}
        assert chain.nonce(fulfiller.oracle) == nonce - 1
        # Judged out of the chain only on evidence seen twice, then held, not re-sent: the
        # request's block is 1 deep, below the 3 confirmations it must have first.
        await fulfiller.run_until(lambda: tx_rows(conn)[0]["held_at_head"] is not None)
        for _ in range(5):
            await fulfiller.step()
        assert chain.rpc("eth_getTransactionByHash", [mined["tx_hash"]]) is None
        assert chain.fulfilled_counts() == {}
        chain.mine(3)
        await fulfiller.run_until(lambda: chain.fulfilled_counts().get(request_id) == 1)
        await fulfiller.run_until(lambda: [r["status"] for r in tx_rows(conn)] == ["MINED"])
    finally:
        await fulfiller.close()
    assert len(tx_rows(conn)) == 1
    assert chain.fulfilled_counts() == {request_id: 1}
