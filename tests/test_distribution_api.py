"""The distribution API in a real ``hodlai api`` process on a real anvil with a real ERC-20
(issue 21 §6, §8): the seed's body and answers, roles, a 400 with the reason for each invalid
task, 409s for a used id and for an execute or delete while a run is in flight, runs with
every recipient; the EVM reads at the confirmed block; ``hodlai distributor`` as a process."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from shared.chain.rpc import RpcClient
from shared.db import connect
from tests.eip3009_fixtures import deploy_token, mine
from tests.test_api import TOKEN_A, _start, _tokens_file
from workers.devnet.anvil import Anvil
from workers.distribution.evm.network import DISPERSE_TOKEN, EvmNetwork, normalize_evm_address

PATH = "/api/execution/kmt-automation"
MULTISEND = normalize_evm_address("0x" + "3d" * 20) or ""
RECIPIENTS = [normalize_evm_address(f"0x{n:040x}") or "" for n in (0xA1, 0xA2, 0xA3)]


def _seed_body(token: str, **task: Any) -> dict[str, Any]:
    return {
        "network": "devnet",
        "tokenMint": token,
        "task": {
            "id": "staking-reward-001",
            "name": "质押奖励每日分发",
            "type": "scheduled",
            "schedule": {"cron": "0 0 * * *"},
            "distribution": {
                "recipients": [
                    {"address": RECIPIENTS[0], "percentage": 50},
                    {"address": RECIPIENTS[1], "percentage": "50"},
                ],
                "totalAmount": 1000,
                "usePercentage": True,
            },
            "enabled": True,
            "runCount": 0,
            **task,
        },
    }


def test_the_seeds_api_creates_lists_previews_and_executes_tasks(
    anvil: Anvil, tmp_path: Path
) -> None:
    token = deploy_token(anvil)  # 6 decimals
    source = anvil.accounts[1].address
    db = tmp_path / "node.db"
    connect(db).close()
    api = _start(
        db, HODLAI_API_TOKENS_FILE=str(_tokens_file(tmp_path)), HODLAI_RPC_URLS=anvil.rpc_url,
        HODLAI_CONFIRMATIONS="0", HODLAI_DIST_SOURCE_ADDRESS=source,
        HODLAI_DIST_MULTISEND_ADDRESS=MULTISEND,
    )  # fmt: skip
    admin = {"Authorization": f"Bearer {TOKEN_A}"}
    try:
        with api.client() as client:
            body = _seed_body(token.address)
            refused = client.post(PATH, json=body)  # a read token
            assert refused.status_code == 403
            created = client.post(PATH, json=body, headers=admin)
            assert created.status_code == 201, created.text
            task = created.json()["task"]
            assert (task["id"], task["runCount"], task["lastRunAt"]) == (
                "staking-reward-001", 0, None)  # fmt: skip
            assert task["nextRunAt"].endswith("T00:00:00.000Z")
            again = client.post(PATH, json=body, headers=admin)
            assert again.status_code == 409 and "used already" in again.json()["message"]

            for change, reason in (
                ({"distribution": {**body["task"]["distribution"], "recipients": [
                    {"address": RECIPIENTS[0], "percentage": 50},
                    {"address": RECIPIENTS[1], "percentage": 49}]}}, "sum to 99, not 100"),
                ({"schedule": {"cron": "every day"}}, "schedule.cron"),
                ({"distribution": {"recipients": [{"address": RECIPIENTS[0],
                                                   "amount": "0.0000001"}]}},
                 "beyond the token's 6 decimals"),
                ({"distribution": {"recipients": [{"address": "0xnope", "amount": 1}]}},
                 "not a valid address"),
            ):  # fmt: skip
                bad = _seed_body(token.address, id="other", **change)
                answer = client.post(PATH, json=bad, headers=admin)
                assert answer.status_code == 400, answer.text
                assert answer.json()["error"] == "invalid_task"
                assert reason in answer.json()["message"], answer.json()
            not_a_token = client.post(
                PATH, json={**_seed_body(RECIPIENTS[2]), "network": "devnet"}, headers=admin
            )
            assert not_a_token.status_code == 400 and RECIPIENTS[2] in not_a_token.text

            listed = client.get(PATH, params={"network": "devnet", "tokenMint": token.address})
            assert [t["id"] for t in listed.json()["tasks"]] == ["staking-reward-001"]
            other = client.get(PATH, params={"network": "devnet", "tokenMint": RECIPIENTS[2]})
            assert other.json() == {"tasks": []}

            preview = client.post(f"{PATH}/preview", json=body).json()
            assert preview["totalAmount"] == str(1000 * 10**6)
            assert preview["manifest"] == [
                {"address": RECIPIENTS[0], "amount": str(500 * 10**6)},
                {"address": RECIPIENTS[1], "amount": str(500 * 10**6)},
            ]
            canonical = json.dumps(
                sorted(({"address": m["address"].lower(), "amount": m["amount"]}
                        for m in preview["manifest"]), key=lambda m: m["address"]),
                separators=(",", ":"),
            )  # fmt: skip
            assert preview["manifestHash"] == "0x" + hashlib.sha256(canonical.encode()).hexdigest()
            unsigned = preview["transaction"]  # the seed's buildTokenDistributionTransaction
            assert (unsigned["from"], unsigned["to"], unsigned["chainId"]) == (
                source, MULTISEND, anvil.chain_id)  # fmt: skip
            assert unsigned["data"].startswith(DISPERSE_TOKEN)

            act = {"network": "devnet", "tokenMint": token.address, "taskId": "staking-reward-001"}
            run = client.patch(PATH, json={**act, "action": "execute"}, headers=admin)
            assert run.status_code == 200, run.text
            run_body = run.json()["run"]
            assert (run_body["taskId"], run_body["status"], run_body["reason"]) == (
                "staking-reward-001", "pending", None)  # fmt: skip
            assert run_body["manifestHash"] == preview["manifestHash"]
            assert run_body["totalAmount"] == str(1000 * 10**6)
            assert len(run_body["slot"]) == len("2026-01-01T00:00:00.000Z")
            assert [(t["address"], t["amount"], t["status"], t["txHash"])
                    for t in run_body["transfers"]] == [
                (RECIPIENTS[0], str(500 * 10**6), "pending", None),
                (RECIPIENTS[1], str(500 * 10**6), "pending", None)]  # fmt: skip
            twice = client.patch(PATH, json={**act, "action": "execute"}, headers=admin)
            assert twice.status_code == 409 and "in flight" in twice.json()["message"]
            gone = client.patch(PATH, json={**act, "action": "delete"}, headers=admin)
            assert gone.status_code == 409

            runs = client.get(f"{PATH}/runs", params={"taskId": "staking-reward-001"}).json()
            assert [r["id"] for r in runs["runs"]] == [run_body["id"]]
            one = client.get(f"{PATH}/runs/{run_body['id']}").json()["run"]
            assert one == run_body
            assert client.get(f"{PATH}/runs/nope").status_code == 404
            assert client.get(f"{PATH}/runs", params={"taskId": "nope"}).status_code == 404

            off = client.patch(PATH, json={**act, "action": "disable"}, headers=admin)
            assert off.json()["task"]["enabled"] is False
            on = client.patch(PATH, json={**act, "action": "enable"}, headers=admin)
            assert on.json()["task"]["enabled"] is True and on.json()["task"]["runCount"] == 1
            wrong = client.patch(PATH, json={**act, "action": "pause"}, headers=admin)
            assert wrong.status_code == 400
            templates = client.get(f"{PATH}/templates").json()["templates"]
            assert {t["template"] for t in templates} == {
                "staking-reward", "trading-fee-reward", "governance-reward", "airdrop"}  # fmt: skip
    finally:
        api.stop()


def test_balances_are_read_at_the_confirmed_block(anvil: Anvil) -> None:
    token = deploy_token(anvil)
    holder = anvil.accounts[2].address
    mine(anvil, 2)  # the token's code is confirmed

    async def main() -> tuple[int, int, int, int]:
        network = EvmNetwork("devnet", RpcClient([anvil.rpc_url]), confirmations=2,
                             chain_id=anvil.chain_id)  # fmt: skip
        try:
            decimals = await network.decimals(token.address)
            token.mint(holder, 7 * 10**6)
            before = await network.token_balance(token.address, holder)
            mine(anvil, 2)
            after = await network.token_balance(token.address, holder)
            native = await network.native_balance(holder)
            return decimals, before, after, native
        finally:
            await network.aclose()

    decimals, before, after, native = asyncio.run(main())
    assert (decimals, before, after) == (6, 0, 7 * 10**6)  # the mint counts 2 blocks later
    assert native > 0
    assert normalize_evm_address(holder.lower()) == holder
    assert normalize_evm_address(holder[:-1] + ("a" if holder[-1] != "a" else "b")) in (
        None, normalize_evm_address((holder[:-1] + "a").lower()))  # fmt: skip
    assert normalize_evm_address("0x" + "00" * 20) is None


def _hodlai(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args], env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip


def test_a_scheduling_distributor_process_records_a_fired_condition_and_stops_cleanly(
    anvil: Anvil, tmp_path: Path
) -> None:
    token = deploy_token(anvil)
    source = anvil.accounts[1].address
    db = tmp_path / "node.db"
    conn = connect(db)
    env = {"PATH": "/usr/bin:/bin", "HODLAI_DB_PATH": str(db), "HODLAI_RPC_URLS": anvil.rpc_url,
           "HODLAI_CONFIRMATIONS": "0", "HODLAI_DIST_SOURCE_ADDRESS": source,
           "HODLAI_DIST_TICK_S": "0.2", "HODLAI_DIST_CHECK_INTERVAL_S": "0.2",
           "HODLAI_DIST_PAY": "false"}  # fmt: skip
    condition = {"kind": "native_balance", "threshold": "1", "checks": 2}
    task = _seed_body(token.address, id="gas-rich", type="conditional", schedule=None,
                      condition=condition)  # fmt: skip
    (tmp_path / "task.json").write_text(json.dumps(task))
    created = _hodlai(env, "dist", "create", str(tmp_path / "task.json"))
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["task"]["condition"]["checks"] == 2
    preview = _hodlai(env, "dist", "preview", "gas-rich")
    assert preview.returncode == 0, preview.stderr
    assert json.loads(preview.stdout)["totalAmount"] == str(1000 * 10**6)
    refused = _hodlai(env, "dist", "create", str(tmp_path / "task.json"))
    assert refused.returncode == 1 and "used already" in refused.stderr
    listed = json.loads(_hodlai(env, "dist", "list", "--json").stdout)["tasks"]
    assert [t["id"] for t in listed] == ["gas-rich"]
    log_path = tmp_path / "distributor.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "distributor"], env=env, stdout=log_file,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if conn.execute("SELECT COUNT(*) FROM distribution_runs").fetchone()[0]:
                break
            assert process.poll() is None, log_path.read_text()
            time.sleep(0.1)
        (run,) = conn.execute("SELECT * FROM distribution_runs").fetchall()
        assert (run["trigger"], run["source"], run["status"]) == ("conditional", source, "pending")
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=20)
    assert code == 0, log_path.read_text()
    text = log_path.read_text()
    assert "distribution_condition_fired" in text and "process_stopped" in text
    shown = _hodlai(env, "dist", "runs", "gas-rich", "--json")
    assert json.loads(shown.stdout)["runs"][0]["id"] == run["run_id"]
    off = _hodlai({**env, "HODLAI_DIST_ENABLED": "false"}, "distributor")
    assert off.returncode == 0 and "executor_disabled" in off.stdout + off.stderr


def test_two_distributor_processes_on_one_database_record_each_due_slot_once(
    anvil: Anvil, tmp_path: Path
) -> None:
    from tests.distribution_fixtures import dist_settings
    from workers.distribution import service

    token = deploy_token(anvil)
    mine(anvil, 1)
    db = tmp_path / "node.db"
    conn = connect(db)
    settings = dist_settings(rpc_urls=[anvil.rpc_url], confirmations=0)
    tasks = 20

    async def create() -> None:
        network = EvmNetwork("devnet", RpcClient([anvil.rpc_url]), confirmations=0,
                             chain_id=anvil.chain_id)  # fmt: skip
        try:
            for i in range(tasks):
                body = _seed_body(token.address, id=f"t{i}", schedule={"cron": "0 0 1 1 *"})
                await service.create(conn, body, {"devnet": network}, settings, actor="test")
        finally:
            await network.aclose()

    asyncio.run(create())
    slot = time.time() - 5  # a slot due now for every task; the next one is months away
    with conn:
        conn.execute("UPDATE distribution_tasks SET next_run_at = ?", (slot,))
    env = {"PATH": "/usr/bin:/bin", "HODLAI_DB_PATH": str(db), "HODLAI_RPC_URLS": anvil.rpc_url,
           "HODLAI_CONFIRMATIONS": "0", "HODLAI_DIST_TICK_S": "0.05",
           "HODLAI_DIST_PAY": "false"}  # fmt: skip
    logs = [tmp_path / f"distributor-{i}.log" for i in range(2)]
    processes = []
    for path in logs:
        with path.open("w") as log_file:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "shared.cli", "distributor"], env=env, stdout=log_file,
                stderr=subprocess.STDOUT, text=True,
            ))  # fmt: skip
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            runs = conn.execute("SELECT COUNT(*) FROM distribution_runs").fetchone()[0]
            if runs >= tasks:
                break
            time.sleep(0.1)
        time.sleep(1.0)  # both keep passing: nothing more may be recorded
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=20) for p in processes]
    assert codes == [0, 0], [p.read_text() for p in logs]
    per_task = dict(conn.execute("SELECT task_id, COUNT(*) FROM distribution_runs GROUP BY 1"))
    assert per_task == {f"t{i}": 1 for i in range(tasks)}
    assert conn.execute("SELECT COUNT(*) FROM distribution_transfers").fetchone()[0] == 2 * tasks
    recorded_by = [path.read_text().count("distribution_slot_run") for path in logs]
    assert sum(recorded_by) == tasks, recorded_by


def test_an_oracle_fees_condition_reads_the_providers_treasury_on_chain(
    deployed: Any, tmp_path: Path
) -> None:
    from tests.distribution_fixtures import dist_settings
    from tests.eip3009_fixtures import rpc, wait_receipt
    from workers.distribution import service
    from workers.distribution.scheduler import Scheduler

    anvil = deployed.anvil
    token = deploy_token(anvil)
    conn = connect(tmp_path / "node.db")
    settings = dist_settings(rpc_urls=[anvil.rpc_url], confirmations=0,
                             dist_check_interval_s=1e-6)  # fmt: skip
    condition = {"kind": "oracle_fees", "threshold": "0.5", "checks": 1, "cooldownS": 0,
                 "provider": deployed.deployment.provider_address}  # fmt: skip
    body = _seed_body(token.address, id="oracle-income", type="conditional", schedule=None,
                      condition=condition)  # fmt: skip

    def pay_treasury(wei: int) -> None:
        tx = {"from": anvil.accounts[3].address, "to": deployed.deployment.treasury,
              "value": hex(wei)}  # fmt: skip
        wait_receipt(anvil, rpc(anvil, "eth_sendTransaction", [tx]))

    async def main() -> list[bool]:
        network = EvmNetwork("devnet", RpcClient([anvil.rpc_url]), confirmations=0,
                             chain_id=anvil.chain_id)  # fmt: skip
        networks = {"devnet": network}
        try:
            await service.create(conn, body, networks, settings, actor="test")
            scheduler = Scheduler(conn, settings, networks, owner="s")
            fired = [await scheduler.tick()]  # the baseline: the treasury's balance now
            pay_treasury(4 * 10**17)
            fired.append(await scheduler.tick())  # 0.4 accrued
            pay_treasury(10**17)
            fired.append(await scheduler.tick())  # 0.5 accrued: fires
            fired.append(await scheduler.tick())  # counted from the run on
            return fired
        finally:
            await network.aclose()

    assert asyncio.run(main()) == [False, False, True, False]
    state = json.loads(conn.execute("SELECT condition_state FROM distribution_tasks").fetchone()[0])
    assert state["treasury"].lower() == deployed.deployment.treasury.lower()
