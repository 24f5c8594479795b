"""The real ``hodlai fulfiller`` process: killed with SIGKILL right after recording and right
after broadcasting, then restarted, each answered request is fulfilled exactly once on chain;
it refuses to run without ORACLE_ROLE, with a key file others can read, or beside another
fulfiller on the same database."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from shared.db import connect
from shared.keys import generate_keystore_file, load_private_key
from tests.chain_fixtures import DeployedStack
from tests.rpc_proxy import RpcProxy
from tests.test_fulfiller_support import (
    WAIT_S,
    Chain,
    answer,
    fulfiller_env,
    start_fulfiller,
    statuses,
    tx_rows,
)

PASSPHRASE = "fulfiller test passphrase"
# Seconds a started fulfiller gets to exit by itself (a refusal or an injected fault).
EXIT_TIMEOUT_S = 30.0


def wait_until(condition: object, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():  # type: ignore[operator]
        if proc.poll() is not None:
            pytest.fail(f"fulfiller exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"condition not reached; fulfiller log:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=EXIT_TIMEOUT_S)


@pytest.mark.parametrize("fault_point", ["after_record", "after_broadcast"])
def test_killed_at_a_fault_point_and_restarted_fulfils_each_request_exactly_once(
    deployed: DeployedStack, db_path: Path, tmp_path: Path, fault_point: str
) -> None:
    chain = Chain(deployed)
    ids = chain.ask(20)
    conn = connect(db_path)
    answer(conn, ids, requester=chain.vault.address)
    log = tmp_path / "fulfiller.log"

    crashed = start_fulfiller(fulfiller_env(deployed, db_path, HODLAI_FAULT_POINT=fault_point), log)
    assert crashed.wait(timeout=EXIT_TIMEOUT_S) == -signal.SIGKILL
    recorded = {r["request_id"]: r["tx_hash"] for r in tx_rows(conn)}
    assert sorted(recorded) == sorted(str(i) for i in ids)  # all recorded before the kill
    expected_state = "SIGNED" if fault_point == "after_record" else "BROADCAST"
    assert {r["status"] for r in tx_rows(conn)} == {expected_state}
    if fault_point == "after_record":
        assert chain.fulfilled_counts() == {}  # nothing reached the chain

    restarted = start_fulfiller(fulfiller_env(deployed, db_path), log)
    wait_until(lambda: len(chain.fulfilled_counts()) == len(ids), restarted, log)
    wait_until(lambda: {r["status"] for r in tx_rows(conn)} == {"MINED"}, restarted, log)
    assert stop(restarted) == 0

    counts = chain.fulfilled_counts()
    assert all(counts[i] == 1 for i in ids), counts
    assert all(chain.deliveries(i) == 1 for i in ids)
    # The restart sent the very transactions recorded before the kill, and no others.
    assert {r["request_id"]: r["tx_hash"] for r in tx_rows(conn)} == recorded
    assert set(statuses(conn, ids).values()) == {"PROCESSED"}


def test_the_fulfiller_refuses_to_run_without_oracle_role(
    deployed: DeployedStack, db_path: Path, tmp_path: Path
) -> None:
    chain = Chain(deployed)
    oracle = json.loads(deployed.oracle_key_file.read_text())["address"]
    chain.revoke_oracle(oracle)
    log = tmp_path / "fulfiller.log"
    env = fulfiller_env(deployed, db_path, HODLAI_FULFILLER_STARTUP_WAIT_S="1")
    proc = start_fulfiller(env, log)
    assert proc.wait(timeout=EXIT_TIMEOUT_S) == 2
    output = log.read_text()
    assert "fulfiller_waiting_for_role" in output  # asked again before giving up
    assert f"{oracle} (from HODLAI_KEY_FILE) does not hold ORACLE_ROLE" in output
    assert "grantRole(ORACLE_ROLE" in output


def test_the_fulfiller_refuses_a_key_file_others_can_read_without_showing_the_key(
    deployed: DeployedStack, db_path: Path, tmp_path: Path
) -> None:
    deployed.oracle_key_file.chmod(0o644)
    log = tmp_path / "fulfiller.log"
    proc = start_fulfiller(fulfiller_env(deployed, db_path), log)
    assert proc.wait(timeout=EXIT_TIMEOUT_S) == 1
    output = log.read_text()
    assert "mode 0644: group/others may read" in output
    secret = json.loads(deployed.oracle_key_file.read_text())["private_key"]
    assert secret.removeprefix("0x") not in output


def test_a_second_fulfiller_on_the_same_database_is_refused(
    deployed: DeployedStack, db_path: Path, tmp_path: Path
) -> None:
    log = tmp_path / "fulfiller.log"
    first = start_fulfiller(fulfiller_env(deployed, db_path), log)
    try:
        wait_until(lambda: "fulfiller_started" in log.read_text(), first, log)
        second = start_fulfiller(fulfiller_env(deployed, db_path), tmp_path / "second.log")
        assert second.wait(timeout=EXIT_TIMEOUT_S) == 2
        assert "another fulfiller holds" in (tmp_path / "second.log").read_text()
    finally:
        assert stop(first) == 0


def test_an_encrypted_keystore_with_a_passphrase_file_runs_the_fulfiller(
    deployed: DeployedStack, db_path: Path, tmp_path: Path
) -> None:
    chain = Chain(deployed)
    ids = chain.ask(3)
    conn = connect(db_path)
    answer(conn, ids, requester=chain.vault.address)
    key = load_private_key(deployed.oracle_key_file)
    keystore = tmp_path / "oracle.keystore.json"
    generate_keystore_file(keystore, PASSPHRASE, private_key=key, kdf="pbkdf2", iterations=2)
    passphrase_file = tmp_path / "passphrase"
    passphrase_file.write_text(PASSPHRASE + "\n")
    passphrase_file.chmod(0o600)
    log = tmp_path / "fulfiller.log"
    env = fulfiller_env(
        deployed,
        db_path,
        HODLAI_KEY_FILE=str(keystore),
        HODLAI_KEY_PASSPHRASE_FILE=str(passphrase_file),
    )
    proc = start_fulfiller(env, log)
    wait_until(lambda: len(chain.fulfilled_counts()) == len(ids), proc, log)
    assert stop(proc) == 0
    output = log.read_text()
    assert PASSPHRASE not in output and key.hex() not in output


def test_a_start_up_against_a_lagging_view_waits_and_then_runs(
    deployed: DeployedStack, db_path: Path, tmp_path: Path
) -> None:
    # Just after deployment a load-balanced RPC may answer from a backend that has no
    # provider yet (no code, no role): the fulfiller waits instead of exiting.
    chain = Chain(deployed)
    (request_id,) = chain.ask(1)
    conn = connect(db_path)
    answer(conn, [request_id], requester=chain.vault.address)
    log = tmp_path / "fulfiller.log"
    with RpcProxy(deployed.rpc_url, lag=1_000, stale_fraction=1.0) as proxy:
        env = fulfiller_env(deployed, db_path, HODLAI_RPC_URLS=proxy.url)
        proc = start_fulfiller(env, log)
        try:
            wait_until(lambda: "fulfiller_start_check_failed" in log.read_text(), proc, log)
            proxy.stale_fraction = 0.0  # the backends catch up
            wait_until(lambda: chain.fulfilled_counts().get(request_id) == 1, proc, log)
        finally:
            assert stop(proc) == 0
    assert chain.fulfilled_counts() == {request_id: 1}
