"""The Procfile and the systemd units are well-formed and say what the runbook says."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from honcho.environ import parse_procfile

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "deploy" / "systemd"


def test_procfile_runs_every_process_through_exec() -> None:
    procfile = parse_procfile((ROOT / "Procfile").read_text())
    names = set(procfile.processes)
    assert {"indexer", "inference0", "inference1", "fulfiller", "mockllm"} <= names
    for name, command in procfile.processes.items():
        assert command.startswith("exec "), f"{name}: no exec, SIGTERM would hit a shell"
    assert "--worker-count 2" in procfile.processes["inference1"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not here")
def test_systemd_units_verify_cleanly(tmp_path: Path) -> None:
    hodlai = shutil.which("hodlai") or str(Path(ROOT / ".venv" / "bin" / "hodlai"))
    for unit in UNITS.iterdir():
        # verify checks that ExecStart exists: point it at this checkout's console script
        text = unit.read_text().replace("/opt/hodlai/.venv/bin/hodlai", hodlai)
        (tmp_path / unit.name).write_text(text)
    names = ["hodlai-indexer.service", "hodlai-inference@0.service",
             "hodlai-fulfiller.service", "hodlai-api.service", "hodlai.target"]  # fmt: skip
    proc = subprocess.run(
        ["systemd-analyze", "verify", *names], cwd=tmp_path, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr


def test_units_restart_on_failure_with_environment_file_and_dedicated_user() -> None:
    for name in ("hodlai-indexer.service", "hodlai-inference@.service",
                 "hodlai-fulfiller.service", "hodlai-api.service"):  # fmt: skip
        text = (UNITS / name).read_text()
        assert "Restart=on-failure" in text
        assert "EnvironmentFile=/etc/hodlai/hodlai.env" in text
        assert "User=hodlai" in text and "NoNewPrivileges=yes" in text
    assert "--worker-id %i" in (UNITS / "hodlai-inference@.service").read_text()
