"""HODLAI_<EXECUTOR>_ENABLED: one Procfile and one set of units serve every operator. A
switched-off executor's long-running command stands down before it reads its own settings
(one log line, exit 0, nothing opened), at once or, for honcho, after SIGTERM; an enabled
one missing a required setting says how to switch it off; the other executors are untouched."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# Seconds a standing-down process is watched to be still there (it must not exit at once).
STILL_WAITING_S = 1.0


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"HODLAI_DB_PATH": str(tmp_path / "node.db"), "PATH": "/usr/bin:/bin", **extra}


def _hodlai(tmp_path: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args], env=_env(tmp_path, **extra),
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def _only_line(stderr: str) -> dict[str, object]:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    event: dict[str, object] = json.loads(lines[0])
    return event


@pytest.mark.parametrize(
    ("command", "executor"),
    [(("dispatcher",), "dispatch"), (("indexer",), "oracle"), (("fulfiller",), "oracle"),
     (("inference", "--worker-id", "0"), "oracle")],
)  # fmt: skip
def test_a_switched_off_executor_exits_0_at_once_with_one_line_and_opens_nothing(
    tmp_path: Path, command: tuple[str, ...], executor: str
) -> None:
    # No queue URL, no RPC URL, no key: the process's own settings are never read.
    setting = f"HODLAI_{executor.upper()}_ENABLED"
    done = _hodlai(tmp_path, *command, **{setting: "false"})
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    event = _only_line(done.stderr)
    assert event["event"] == "executor_disabled"
    assert (event["executor"], event["process"]) == (executor, command[0])
    assert event["setting"] == f"{setting}=false"
    assert not (tmp_path / "node.db").exists()  # no database created, no lock taken


def test_the_switch_is_read_from_dot_env_like_every_setting(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("HODLAI_DISPATCH_ENABLED=0\n")
    done = _hodlai(tmp_path, "dispatcher")
    assert done.returncode == 0, done.stderr
    assert _only_line(done.stderr)["event"] == "executor_disabled"


def test_an_enabled_executor_missing_a_setting_names_the_switch(tmp_path: Path) -> None:
    done = _hodlai(tmp_path, "dispatcher")  # enabled by default, no queue configured
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "HODLAI_DISPATCH_QUEUE_URL" in line
    assert "does not run the dispatch executor sets HODLAI_DISPATCH_ENABLED=false" in line


def test_switching_one_executor_off_leaves_the_others_running(tmp_path: Path) -> None:
    # The oracle's indexer still runs (and refuses for its own missing settings).
    done = _hodlai(tmp_path, "indexer", HODLAI_DISPATCH_ENABLED="false")
    assert done.returncode == 2
    assert "HODLAI_RPC_URLS" in done.stderr and "HODLAI_ORACLE_ENABLED=false" in done.stderr
    assert "executor_disabled" not in done.stderr


def test_a_value_that_is_no_boolean_is_refused_naming_the_setting(tmp_path: Path) -> None:
    done = _hodlai(tmp_path, "dispatcher", HODLAI_DISPATCH_ENABLED="maybe")
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "HODLAI_DISPATCH_ENABLED" in line and "'maybe'" in line
    assert "Traceback" not in done.stderr


def test_inspection_commands_run_whatever_the_switch(tmp_path: Path) -> None:
    assert _hodlai(tmp_path, "migrate").returncode == 0
    listed = _hodlai(tmp_path, "agents", "list", "--json", HODLAI_DISPATCH_ENABLED="false")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []


def test_wait_if_disabled_stands_down_until_sigterm_then_exits_0(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "--wait-if-disabled", "dispatcher"],
        env=_env(tmp_path, HODLAI_DISPATCH_ENABLED="false"), cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        ready, _, _ = select.select([proc.stderr], [], [], 30)
        assert ready, "no log line"
        event = json.loads(proc.stderr.readline())
        assert event["event"] == "executor_disabled" and event["waits_for_sigterm"] is True
        time.sleep(STILL_WAITING_S)
        assert proc.poll() is None, "a standing-down process under honcho must not exit"
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert rest.strip() == ""  # one line in all
    assert not (tmp_path / "node.db").exists()


def test_honcho_keeps_the_node_up_beside_a_switched_off_executor(tmp_path: Path) -> None:
    # honcho stops every process as soon as one exits, even with 0: the Procfile's
    # --wait-if-disabled is what lets a disabled dispatcher sit beside the other processes.
    hodlai = BIN / "hodlai"
    (tmp_path / "Procfile").write_text(
        f"dispatcher: exec {hodlai} --wait-if-disabled dispatcher\nother: exec sleep 60\n"
    )
    env = {**os.environ, **_env(tmp_path, HODLAI_DISPATCH_ENABLED="false")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    honcho = subprocess.Popen(
        [sys.executable, "-m", "honcho", "start", "-d", str(tmp_path),
         "-f", str(tmp_path / "Procfile")],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        seen = ""
        assert honcho.stdout is not None
        while "executor_disabled" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([honcho.stdout], [], [], 1)
            if ready:
                seen += honcho.stdout.readline()
        assert "executor_disabled" in seen, seen
        time.sleep(STILL_WAITING_S)
        assert honcho.poll() is None, "honcho stopped the node"
        assert "stopped" not in seen
        os.killpg(honcho.pid, signal.SIGTERM)
        out, _ = honcho.communicate(timeout=30)
    finally:
        if honcho.poll() is None:
            os.killpg(honcho.pid, signal.SIGKILL)
            honcho.wait()
    assert "dispatcher.1 stopped (rc=0)" in seen + out
