"""The Procfile and the systemd units are well-formed and say what the runbook says."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from honcho.environ import parse_procfile

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "deploy" / "systemd"
SERVICES = (
    "hodlai-indexer.service", "hodlai-inference@.service", "hodlai-fulfiller.service",
    "hodlai-dispatcher.service", "hodlai-api.service", "hodlai-distributor.service",
    "hodlai-mint-server.service", "hodlai-mint-executor.service",
)  # fmt: skip
# systemd-analyze security's exposure score (0 safest, 10 worst) each unit must stay within:
# the oracle's units scored 1.3 when the dispatcher's and the API's joined them.
MAX_EXPOSURE = 1.3
# The long-running commands of every executor, as the Procfile and the units start them.
EXECUTOR_PROCESSES = {
    "indexer": "indexer", "inference0": "inference", "inference1": "inference",
    "fulfiller": "fulfiller", "dispatcher": "dispatcher", "distributor": "distributor",
    "mint-server": "mint-server", "mint-executor": "mint-executor",
}  # fmt: skip
HARDENING = (
    "CapabilityBoundingSet=\n", "SystemCallFilter=@system-service", "ProtectClock=yes",
    "ProtectKernelLogs=yes", "ProtectProc=invisible", "RestrictSUIDSGID=yes",
    "MemoryDenyWriteExecute=yes", "NoNewPrivileges=yes", "PrivateUsers=yes",
)  # fmt: skip


def _units_in(tmp_path: Path) -> Path:
    """Copies of the units whose ExecStart names this checkout's console script (verify
    checks that it exists)."""
    hodlai = shutil.which("hodlai") or str(Path(ROOT / ".venv" / "bin" / "hodlai"))
    for unit in UNITS.iterdir():
        text = unit.read_text().replace("/opt/hodlai/.venv/bin/hodlai", hodlai)
        (tmp_path / unit.name).write_text(text)
    return tmp_path


def test_procfile_runs_every_process_through_exec() -> None:
    procfile = parse_procfile((ROOT / "Procfile").read_text())
    names = set(procfile.processes)
    assert {*EXECUTOR_PROCESSES, "api", "mockllm"} <= names
    for name, command in procfile.processes.items():
        assert command.startswith("exec "), f"{name}: no exec, SIGTERM would hit a shell"
    assert "--worker-count 2" in procfile.processes["inference1"]


def test_procfile_starts_every_executor_and_the_api_and_disabled_ones_wait_for_honcho() -> None:
    # honcho stops every process when one exits, even with 0: a switched-off executor's
    # process must wait for SIGTERM there, or one Procfile could not serve every operator.
    procfile = parse_procfile((ROOT / "Procfile").read_text())
    for name, command in EXECUTOR_PROCESSES.items():
        assert f"hodlai --wait-if-disabled {command}" in procfile.processes[name], name
    assert procfile.processes["api"] == "exec hodlai api"


def test_the_target_wants_every_unit_and_units_exit_at_once_when_disabled() -> None:
    target = (UNITS / "hodlai.target").read_text()
    wanted = {w for line in re.findall(r"^Wants=(.*)$", target, re.M) for w in line.split()}
    assert {n.replace("@.", "@0.") for n in SERVICES} <= wanted
    for name in SERVICES:  # under systemd a disabled executor exits 0: the unit goes inactive
        assert "--wait-if-disabled" not in (UNITS / name).read_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not here")
def test_systemd_units_verify_cleanly(tmp_path: Path) -> None:
    names = ["hodlai-indexer.service", "hodlai-inference@0.service", "hodlai-fulfiller.service",
             "hodlai-dispatcher.service", "hodlai-api.service", "hodlai-distributor.service",
             "hodlai-mint-server.service", "hodlai-mint-executor.service",
             "hodlai.target"]  # fmt: skip
    proc = subprocess.run(
        ["systemd-analyze", "verify", *names], cwd=_units_in(tmp_path), capture_output=True,
        text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not here")
@pytest.mark.parametrize("name", SERVICES)
def test_every_unit_scores_at_most_1_3_in_systemd_analyze_security(
    tmp_path: Path, name: str
) -> None:
    unit = name.replace("@.", "@0.")
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", unit],
        cwd=_units_in(tmp_path), capture_output=True, text=True, check=False,
    )  # fmt: skip
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert found is not None, proc.stdout + proc.stderr
    exposure = float(found.group(1))
    assert exposure <= MAX_EXPOSURE, proc.stdout


def test_units_restart_on_failure_but_not_after_a_refusal() -> None:
    for name in SERVICES:
        text = (UNITS / name).read_text()
        assert "Restart=on-failure" in text and "RestartPreventExitStatus=2" in text
        assert "EnvironmentFile=/etc/hodlai/hodlai.env" in text
        for directive in HARDENING:
            assert directive in text, (name, directive)
    assert "--worker-id %i" in (UNITS / "hodlai-inference@.service").read_text()


def test_only_the_signer_sees_the_key_only_inference_the_llm_key_only_dispatch_the_queue() -> None:
    users = {}
    for name in SERVICES:
        text = (UNITS / name).read_text()
        (user,) = re.findall(r"^User=(\S+)$", text, re.M)
        users[name] = user
        assert "Group=hodlai\n" in text
        assert "ReadOnlyPaths=" not in text  # a fixed key path there broke keystore set-ups
        if name == "hodlai-fulfiller.service":
            assert "LoadCredential=oracle-key:/etc/hodlai/oracle-key.json" in text
            assert "Environment=HODLAI_KEY_FILE=%d/oracle-key" in text
        elif name in ("hodlai-mint-server.service", "hodlai-mint-executor.service"):
            assert re.findall(r"^LoadCredential=(\S+)$", text, re.M) == [
                "mint-key:/etc/hodlai/mint-private.key"
            ]
            assert "Environment=HODLAI_MINT_KEY_FILE=%d/mint-key" in text
            assert "oracle-key" not in text
        elif name == "hodlai-api.service":  # the operator tokens and the mint key (the chat)
            assert re.findall(r"^LoadCredential=(\S+)$", text, re.M) == [
                "api-tokens:/etc/hodlai/api-tokens",
                "mint-key:/etc/hodlai/mint-private.key",
            ]
            assert "oracle-key" not in text
        elif name == "hodlai-distributor.service":  # the distribution source key only
            assert re.findall(r"^LoadCredential=(\S+)$", text, re.M) == [
                "dist-key:/etc/hodlai/dist-key.json"
            ]
            assert "Environment=HODLAI_DIST_KEY_FILE=%d/dist-key" in text
            assert "oracle-key" not in text
        else:
            assert "oracle-key" not in text and "LoadCredential" not in text
        has_llm_env = "EnvironmentFile=-/etc/hodlai/inference.env" in text
        assert has_llm_env == (name == "hodlai-inference@.service")
        has_queue_env = "EnvironmentFile=-/etc/hodlai/dispatch.env" in text
        assert has_queue_env == (name == "hodlai-dispatcher.service")
    assert len(set(users.values())) == len(SERVICES), users  # one user per kind of process
