"""`hodlai devnet` / `hodlai deploy`, the anvil wrapper and the key files they rely on."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dotenv import dotenv_values
from eth_account import Account
from web3 import Web3
from web3.contract import Contract

from shared.contracts import PROJECT_ROOT, artifact
from shared.errors import KeyFileError
from shared.keys import generate_key_file, key_file_address, load_private_key
from tests.chain_fixtures import ORACLE_FUNDING_WEI, DeployedStack
from workers.devnet.anvil import ANVIL_BIN_ENV, Anvil, AnvilNotFoundError
from workers.devnet.deploy import load_deployment_json
from workers.oracle.contracts import ORACLE_ROLE
from workers.oracle.settings import OracleSettings

# Seconds a fresh `hodlai devnet` may take to be ready (Python start-up dominates).
READY_TIMEOUT = 60.0


def provider_at(rpc_url: str, address: str) -> tuple[Web3, Contract]:
    w3 = Web3(Web3.HTTPProvider(rpc_url))
    return w3, w3.eth.contract(address=address, abi=artifact("HoldAIProvider").abi)


def wait_for_file(path: Path, proc: subprocess.Popen[str]) -> dict[str, object]:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if path.exists():
            return dict(json.loads(path.read_text()))
        if proc.poll() is not None:
            pytest.fail(f"devnet exited with {proc.returncode}: {proc.communicate()}")
        time.sleep(0.1)
    pytest.fail(f"no ready file after {READY_TIMEOUT}s")


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_devnet_deploys_writes_settings_and_stops_anvil_on_sigterm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    ready = tmp_path / "ready.json"
    stale_db = state / "hodlai.db"
    state.mkdir()
    stale_db.write_text("a database of a previous devnet chain")
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "devnet", "--state-dir", str(state),
         "--ready-file", str(ready), "--log-level", "WARNING"],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        info = wait_for_file(ready, proc)
        rpc_url = str(info["rpc_url"])
        anvil_pid = int(str(info["anvil_pid"]))
        env_file = state / "devnet.env"
        key_file = state / "oracle-key.json"
        deployment = load_deployment_json(state / "deployment.json")

        env = dotenv_values(env_file)
        assert env["HODLAI_RPC_URLS"] == rpc_url
        assert env["HODLAI_CHAIN_ID"] == "31337"
        assert env["HODLAI_PROVIDER_ADDRESS"] == deployment.provider_address
        assert env["HODLAI_VAULT_ADDRESS"] == deployment.vault_address
        assert env["HODLAI_START_BLOCK"] == str(deployment.deploy_block)
        assert env["HODLAI_CONFIRMATIONS"] == "0"
        assert env["HODLAI_KEY_FILE"] == str(key_file.resolve())
        assert env["HODLAI_DB_PATH"] == str(stale_db.resolve())
        assert env["HODLAI_LLM_BACKEND"] == "llama"  # the embedded model the README promises
        assert env["LOG_LEVEL"] == "INFO"
        # `honcho start -e` this file starts the oracle; the dispatcher, which needs a queue
        # of the operator's, stands down until switched on (a refusal would stop honcho).
        assert (env["HODLAI_ORACLE_ENABLED"], env["HODLAI_DISPATCH_ENABLED"]) == ("true", "false")
        assert not stale_db.exists(), "the old chain's database must not survive"
        # The node's own settings loader accepts the file as written.
        for name in list(os.environ):
            if name.startswith("HODLAI_") or name == "LOG_LEVEL":
                monkeypatch.delenv(name)
        settings = OracleSettings(_env_file=env_file)
        assert settings.provider_address == deployment.provider_address
        assert (settings.rpc_urls, settings.confirmations) == ([rpc_url], 0)

        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        oracle = key_file_address(key_file)
        assert oracle == deployment.oracle_address
        w3, provider = provider_at(rpc_url, deployment.provider_address)
        assert provider.functions.hasRole(ORACLE_ROLE, oracle).call() is True
        assert w3.eth.get_balance(oracle) >= 100 * 10**18
        assert pid_exists(anvil_pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    assert rpc_url in stdout
    assert not pid_exists(anvil_pid), "anvil outlived the devnet"
    assert not ready.exists(), "the ready file must go with the chain"


def write_dev_key(path: Path, private_key: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"private_key": private_key}, handle)


def hodlai(*args: str) -> subprocess.CompletedProcess[str]:
    # A subprocess, not shared.cli.main(): the command configures structlog for the whole
    # process, which would leak into other tests' log capture.
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_deploy_command_prices_given_models_and_writes_env_and_deployment_files(
    anvil: Anvil, tmp_path: Path
) -> None:
    admin_key = tmp_path / "admin.json"
    write_dev_key(admin_key, anvil.accounts[0].private_key)
    oracle_key = tmp_path / "oracle.json"
    result = hodlai("deploy", "--rpc-url", anvil.rpc_url, "--admin-key-file", str(admin_key),
                    "--oracle-key-file", str(oracle_key), "--model", "tiny=5",
                    "--model", "big=0x10", "--env-file", str(tmp_path / "node.env"),
                    "--deployment-file", str(tmp_path / "deployment.json"),
                    "--fund-wei", "1000", "--log-level", "WARNING")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "holds ORACLE_ROLE" in result.stdout
    deployment = load_deployment_json(tmp_path / "deployment.json")
    assert dict(deployment.models) == {"tiny": 5, "big": 16}
    assert deployment.treasury == deployment.admin == anvil.accounts[0].address
    oracle = key_file_address(oracle_key)
    w3, provider = provider_at(anvil.rpc_url, deployment.provider_address)
    functions = provider.functions
    assert functions.getModelFee("tiny").call() == 5
    assert functions.isModelOffered("hodlai-local").call() is False
    assert functions.hasRole(ORACLE_ROLE, oracle).call() is True
    assert w3.eth.get_balance(oracle) == 1000
    env = dotenv_values(tmp_path / "node.env")
    assert env["HODLAI_KEY_FILE"] == str(oracle_key.resolve())
    assert env["HODLAI_CONFIRMATIONS"] == "3"


def test_deploy_command_refuses_an_admin_key_file_others_can_read(
    anvil: Anvil, tmp_path: Path
) -> None:
    admin_key = tmp_path / "admin.json"
    write_dev_key(admin_key, anvil.accounts[0].private_key)
    admin_key.chmod(0o644)
    result = hodlai("deploy", "--rpc-url", anvil.rpc_url, "--admin-key-file", str(admin_key),
                    "--oracle-address", anvil.accounts[3].address)  # fmt: skip
    assert result.returncode == 1
    err = result.stderr
    assert "group/others may read" in err and "chmod 600" in err
    assert anvil.accounts[0].private_key[2:] not in err


def test_deployed_fixture_oracle_holds_role_and_funds(deployed: DeployedStack) -> None:
    deployment = deployed.deployment
    assert stat.S_IMODE(deployed.oracle_key_file.stat().st_mode) == 0o600
    w3, provider = provider_at(deployed.rpc_url, deployment.provider_address)
    functions = provider.functions
    assert functions.hasRole(ORACLE_ROLE, deployment.oracle_address).call() is True
    assert w3.eth.get_balance(deployment.oracle_address) == ORACLE_FUNDING_WEI
    assert functions.getModelFee("gpt-4o-mini").call() == 2 * 10**15
    assert functions.treasury().call() == deployed.anvil.accounts[1].address
    assert deployment.deploy_block >= 1


# --- anvil ----------------------------------------------------------------------------------


def test_two_anvils_get_distinct_free_ports_and_stop_leaves_no_process() -> None:
    with Anvil() as first, Anvil(chain_id=97) as second:
        assert first.port != second.port
        assert Web3(Web3.HTTPProvider(second.rpc_url)).eth.chain_id == 97
        pids = (first.pid, second.pid)
    assert not any(pid_exists(pid) for pid in pids)


def test_missing_anvil_binary_says_to_run_make_setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ANVIL_BIN_ENV, str(tmp_path / "no-anvil-here"))
    with pytest.raises(AnvilNotFoundError, match="make setup"):
        Anvil().start()


# --- key files ------------------------------------------------------------------------------


def test_generated_key_file_is_private_and_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "oracle.json"
    address = generate_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["address"] == address
    assert Account.from_key(load_private_key(path)).address == address
    assert [p.name for p in path.parent.iterdir()] == ["oracle.json"], "temp file left behind"


def test_generate_refuses_to_overwrite_an_existing_key_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "oracle.json"
    first = generate_key_file(path)
    with pytest.raises(KeyFileError, match="already exists"):
        generate_key_file(path)
    assert key_file_address(path) == first
    second = generate_key_file(path, overwrite=True)
    assert second != first and key_file_address(path) == second


def test_key_file_readable_by_others_is_refused_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "oracle.json"
    generate_key_file(path)
    path.chmod(0o640)
    with pytest.raises(KeyFileError, match=r"mode 0640: group/others may read") as info:
        load_private_key(path)
    assert json.loads(path.read_text())["private_key"][2:] not in str(info.value)


def test_key_file_whose_address_does_not_match_its_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "oracle.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"address": "0x" + "11" * 20, "private_key": "0x" + "22" * 32}, handle)
    with pytest.raises(KeyFileError, match="does not belong to its private key"):
        load_private_key(path)
