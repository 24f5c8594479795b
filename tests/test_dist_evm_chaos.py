"""The EVM payer under the worst a node meets (issue 21 §4, tests): 1,000 recipients with
1-second blocks; the distributor SIGKILLed three times during a run; a reorg before FINAL.
Afterwards nobody is paid twice and nobody is missed, counted on chain: every balance and
every Transfer log."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from shared.db import connect
from tests.dist_fixtures import (
    CONFIRMATIONS,
    WHOLE,
    DistChain,
    create_run,
    dist_chain,
    open_db,
    pay_until,
    recipients,
    run_status,
    transfers,
)
from workers.devnet.anvil import Anvil
from workers.distribution.evm.payer import build

ROOT = Path(__file__).resolve().parent.parent


def assert_paid_exactly_once(chain: DistChain, manifest: list[tuple[str, int]]) -> None:
    logs = chain.transfer_logs()
    assert chain.balances([a for a, _ in manifest]) == [v for _, v in manifest]
    for address, amount in manifest:
        assert logs[(address, amount)] == 1, address
    assert sum(logs.values()) == len(manifest)


@pytest.mark.asyncio
async def test_1000_recipients_with_1_second_blocks_every_delta_is_the_manifest(
    tmp_path: Path,
) -> None:
    with Anvil(block_time=1) as anvil:
        chain = dist_chain(anvil, tmp_path)
        manifest = [(a, 10**15 * (i % 97 + 1) + i) for i, a in enumerate(recipients(1000))]
        total = sum(a for _, a in manifest)
        before = chain.balance(chain.source)
        db = open_db(chain.db_path)
        create_run(db.conn, "k", chain.token, manifest)
        payer = build(chain.settings(), "devnet", db=db)
        started = time.monotonic()
        try:
            assert await pay_until(payer, chain.db_path, "k", within=120) == "completed"
        finally:
            await payer.aclose()
        took = time.monotonic() - started
        rows = transfers(chain.db_path, "k")
        assert {r["status"] for r in rows} == {"paid"}
        assert len({r["batch_id"] for r in rows}) == 5  # 200 per transaction
        deltas = chain.balances([a for a, _ in manifest])
        assert deltas == [a for _, a in manifest]
        assert sum(deltas) == total == before - chain.balance(chain.source)
        assert_paid_exactly_once(chain, manifest)
        assert took < 60, took


def start(chain: DistChain, log: Path, **extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "distributor"],
        cwd=ROOT, env=chain.env(HODLAI_DIST_MAX_BATCH="10", HODLAI_DIST_WINDOW="2",
                                HODLAI_DIST_TICK_S="0.2", **extra),
        stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip


def counts(db_path: Path, run_id: str) -> dict[str, int]:
    conn = connect(db_path)
    try:
        return {
            r[0]: r[1]
            for r in conn.execute(
                "SELECT status, COUNT(*) FROM distribution_transfers WHERE run_id = ?"
                " GROUP BY status",
                (run_id,),
            )
        }
    finally:
        conn.close()


def wait_for(check: object, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_distributor_killed_three_times_pays_nobody_twice_and_misses_nobody(
    tmp_path: Path,
) -> None:
    with Anvil(block_time=1) as anvil:
        chain = dist_chain(anvil, tmp_path)
        manifest = [(a, WHOLE + i) for i, a in enumerate(recipients(150))]
        conn = connect(chain.db_path, durable=True)
        create_run(conn, "kill", chain.token, manifest)
        conn.close()
        log = tmp_path / "payer.log"
        # 1: killed right after recording a batch, before any node saw it.
        proc = start(chain, log, HODLAI_DIST_FAULT_POINT="after_record")
        assert proc.wait(timeout=60) == -signal.SIGKILL
        # 2: killed right after broadcasting one.
        proc = start(chain, log, HODLAI_DIST_FAULT_POINT="after_broadcast")
        assert proc.wait(timeout=60) == -signal.SIGKILL
        assert counts(chain.db_path, "kill").get("sent", 0) > 0
        # 3: killed mid-run, some paid and some not.
        proc = start(chain, log)
        wait_for(lambda: counts(chain.db_path, "kill").get("paid", 0) >= 20, 90, "paid")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        left = counts(chain.db_path, "kill")
        assert left.get("pending", 0) + left.get("sent", 0) > 0, left
        # Then it runs to the end.
        proc = start(chain, log)
        try:
            wait_for(lambda: run_status(chain.db_path, "kill")[0] == "completed", 120, "completed")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        assert counts(chain.db_path, "kill") == {"paid": 150}
        assert_paid_exactly_once(chain, manifest)
        killed = log.read_text().count("fault_injected")
        assert killed == 2


def rpc(anvil: Anvil, method: str, params: list[object]) -> object:
    answer = httpx.post(
        anvil.rpc_url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    ).json()
    assert "error" not in answer, answer
    return answer["result"]


@pytest.mark.asyncio
async def test_a_batch_reorged_out_before_final_is_sent_again_same_bytes_and_pays_once(
    tmp_path: Path,
) -> None:
    with Anvil(no_mining=True) as anvil:
        chain_ready = asyncio.to_thread(_chain_with_mining, anvil, tmp_path)
        chain = await chain_ready
        manifest = [(a, WHOLE + i) for i, a in enumerate(recipients(12))]
        db = open_db(chain.db_path)
        create_run(db.conn, "rg", chain.token, manifest)
        payer = build(chain.settings(), "devnet", db=db)
        try:
            for _ in range(50):  # the approval, then the batch
                await payer.tick()
                rpc(anvil, "evm_mine", [])
                if {r["status"] for r in transfers(chain.db_path, "rg")} == {"sent"}:
                    break
            (tx_hash,) = {r["tx_hash"] for r in transfers(chain.db_path, "rg")}
            # The batch is mined in the head block (0 deep).
            for _ in range(3):
                await payer.tick()
            assert rpc(anvil, "eth_getTransactionReceipt", [tx_hash]) is not None
            assert all(r["status"] == "sent" for r in transfers(chain.db_path, "rg"))
            rpc(anvil, "anvil_reorg", [1, []])  # its block is replaced; anvil drops it
            assert rpc(anvil, "eth_getTransactionByHash", [tx_hash]) is None
            assert chain.balance(manifest[0][0]) == 0
            deadline = time.monotonic() + 30
            while rpc(anvil, "eth_getTransactionByHash", [tx_hash]) is None:
                assert time.monotonic() < deadline, "the batch was not sent again"
                await payer.tick()
                await asyncio.sleep(0.3)
            for _ in range(CONFIRMATIONS + 3):
                rpc(anvil, "evm_mine", [])
                await payer.tick()
            assert await pay_until(payer, chain.db_path, "rg", within=30) == "completed"
        finally:
            await payer.aclose()
        conn = connect(chain.db_path)
        batches = conn.execute(
            "SELECT tx_hash FROM txs WHERE purpose = 'distribution_batch'"
        ).fetchall()
        conn.close()
        assert [r[0] for r in batches] == [tx_hash]  # never rebuilt: the same signed bytes
        assert {r["tx_hash"] for r in transfers(chain.db_path, "rg")} == {tx_hash}
        assert_paid_exactly_once(chain, manifest)


def _chain_with_mining(anvil: Anvil, tmp_path: Path) -> DistChain:
    """dist_chain on an anvil that mines only when told: mine while the deployer waits."""
    import threading

    done = threading.Event()

    def miner() -> None:
        while not done.is_set():
            rpc(anvil, "evm_mine", [])
            time.sleep(0.05)

    thread = threading.Thread(target=miner, daemon=True)
    thread.start()
    try:
        return dist_chain(anvil, tmp_path)
    finally:
        done.set()
        thread.join()


@pytest.mark.asyncio
async def test_a_batch_that_reverts_on_chain_is_simulated_again_and_isolates_the_recipient(
    tmp_path: Path,
) -> None:
    """The chain changed between simulation and inclusion: a recipient was blacklisted by a
    transaction mined first. The batch reverts on chain; at FINAL its transfers go back to
    pending, are simulated again, and the blacklisted one is isolated; the rest paid once."""
    with Anvil(no_mining=True) as anvil:
        chain = await asyncio.to_thread(_chain_with_mining, anvil, tmp_path)
        token = await asyncio.to_thread(_blacklist_token, anvil, chain)
        people = recipients(6)
        manifest = [(a, WHOLE + i) for i, a in enumerate(people)]
        db = open_db(chain.db_path)
        create_run(db.conn, "rv", token, manifest)
        payer = build(chain.settings(dist_tokens=[token]), "devnet", db=db)
        try:
            for _ in range(50):  # the approval, then the batch (in the pool, not mined)
                await payer.tick()
                if {r["status"] for r in transfers(chain.db_path, "rv")} == {"sent"}:
                    break
                rpc(anvil, "evm_mine", [])
            (first,) = {r["tx_hash"] for r in transfers(chain.db_path, "rv")}
            admin = anvil.accounts[0].address
            data = "0x" + _set_blacklisted(people[2]).hex()
            fees = {"maxPriorityFeePerGas": hex(100 * 10**9), "maxFeePerGas": hex(200 * 10**9)}
            rpc(anvil, "eth_sendTransaction", [{"from": admin, "to": token, "data": data, **fees}])
            rpc(anvil, "evm_mine", [])  # the blacklisting goes first (its tip), the batch reverts
            receipt = rpc(anvil, "eth_getTransactionReceipt", [first])
            assert isinstance(receipt, dict) and receipt["status"] == "0x0"
            deadline = time.monotonic() + 60
            while run_status(chain.db_path, "rv")[0] != "completed":
                assert time.monotonic() < deadline, transfers(chain.db_path, "rv")
                await payer.tick()
                rpc(anvil, "evm_mine", [])
        finally:
            await payer.aclose()
        rows = {r["address"]: r for r in transfers(chain.db_path, "rv")}
        assert rows[people[2]]["status"] == "failed"
        assert f"Blacklisted(account={people[2]})" in rows[people[2]]["reason"]
        assert all(rows[a]["status"] == "paid" and rows[a]["tx_hash"] != first
                   for a in people if a != people[2])  # fmt: skip
        conn = connect(chain.db_path)
        statuses = [r[0] for r in conn.execute(
            "SELECT status FROM txs WHERE purpose = 'distribution_batch' ORDER BY id")]  # fmt: skip
        conn.close()
        assert statuses[0] == "REVERTED" and set(statuses[1:]) == {"MINED"}, statuses
        logs = chain.transfer_logs(token)
        for address, amount in manifest:
            expected = 0 if address == people[2] else 1
            assert logs[(address, amount)] == expected
        assert chain.balances(people, token) == [0 if a == people[2] else v for a, v in manifest]


def _set_blacklisted(account: str) -> bytes:
    from eth_abi.abi import encode as abi_encode
    from eth_utils.crypto import keccak

    return keccak(text="setBlacklisted(address,bool)")[:4] + abi_encode(
        ["address", "bool"], [account, True]
    )


def _blacklist_token(anvil: Anvil, chain: DistChain) -> str:
    import threading

    from workers.distribution.evm.contracts import BLACKLIST_TOKEN_CONTRACT

    done = threading.Event()

    def miner() -> None:
        while not done.is_set():
            rpc(anvil, "evm_mine", [])
            time.sleep(0.05)

    thread = threading.Thread(target=miner, daemon=True)
    thread.start()
    try:
        token = chain.admin.deploy_token(BLACKLIST_TOKEN_CONTRACT)
        chain.admin.mint(token, [(chain.source, 1_000 * WHOLE)])
        return token
    finally:
        done.set()
        thread.join()
