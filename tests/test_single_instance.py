"""One indexer and one fulfiller per database, whatever name reaches it: real processes, the
second one started on the same path, on a symlink and on a hard link, and killed holders
that leave no stale lock behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.instance import hold_role
from tests.chain_fixtures import DeployedStack
from tests.test_fulfiller_support import fulfiller_env, start_fulfiller

PROVIDER = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
# Nothing listens here: an indexer keeps retrying the RPC and so keeps holding its lock.
DEAD_RPC = "http://127.0.0.1:9"
# Seconds to wait for a process to take its lock, or for a refused one to exit.
WAIT_S = 30.0


def indexer_env(db: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HODLAI_DB_PATH": str(db),
        "HODLAI_RPC_URLS": DEAD_RPC,
        "HODLAI_PROVIDER_ADDRESS": PROVIDER,
        "LOG_LEVEL": "WARNING",
    }


def holder_pid(db: Path, role: str) -> int | None:
    try:
        return int(json.loads(os.getxattr(db, f"user.hodlai.{role}"))["pid"])
    except OSError:
        return None


def wait_for_holder(db: Path, role: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + WAIT_S
    while holder_pid(db, role) != proc.pid:
        assert proc.poll() is None, f"the {role} exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"the {role} never took its lock"
        time.sleep(0.05)


def other_names(db: Path) -> dict[str, Path]:
    """The same database file under other names: a symlink, and a hard link in another
    directory (so no name built from the path can match)."""
    link = db.with_name("link.db")
    link.symlink_to(db)
    elsewhere = db.parent / "elsewhere"
    elsewhere.mkdir()
    hard = elsewhere / "hard.db"
    os.link(db, hard)
    return {"same path": db, "symlink": link, "hard link": hard}


def refused_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return lines[0]


def test_a_second_indexer_is_refused_on_any_name_of_the_database(tmp_path: Path) -> None:
    db = tmp_path / "node.db"
    command = [sys.executable, "-m", "shared.cli", "indexer"]
    first = subprocess.Popen(command, env=indexer_env(db), stderr=subprocess.DEVNULL)
    try:
        wait_for_holder(db, "indexer", first)
        for how, name in other_names(db).items():
            second = subprocess.run(
                command, env=indexer_env(name), capture_output=True, text=True,
                timeout=WAIT_S, check=False,
            )  # fmt: skip
            line = refused_line(second)
            assert "another indexer holds this database" in line, (how, line)
            assert f"pid {first.pid}" in line and f"opened as {db};" in line, (how, line)
            assert f"given {name})" in line, (how, line)
        # The refused ones never opened the database: no WAL under another name.
        assert not (tmp_path / "elsewhere" / "hard.db-wal").exists()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # SIGKILL left no stale lock: the next indexer takes it at once.
    (tmp_path / "elsewhere" / "hard.db").unlink()
    third = subprocess.Popen(command, env=indexer_env(db), stderr=subprocess.DEVNULL)
    try:
        wait_for_holder(db, "indexer", third)
    finally:
        third.send_signal(signal.SIGTERM)
        assert third.wait(timeout=WAIT_S) == 0


def test_the_role_lock_lets_other_roles_and_sqlite_share_the_file(tmp_path: Path) -> None:
    db = tmp_path / "node.db"
    indexer = hold_role(db, "indexer")
    fulfiller = hold_role(db, "fulfiller")  # another role: its own byte
    with pytest.raises(ConfigError, match="another indexer holds"):
        hold_role(tmp_path / "." / "node.db", "indexer")
    indexer.release()
    hold_role(db, "indexer").release()  # released: free again
    fulfiller.release()


def test_a_second_fulfiller_is_refused_on_any_name_of_the_database(
    deployed: DeployedStack, tmp_path: Path
) -> None:
    db = tmp_path / "node.db"
    log = tmp_path / "fulfiller.log"
    first = start_fulfiller(fulfiller_env(deployed, db), log)
    try:
        wait_for_holder(db, "fulfiller", first)
        # The contenders read their key as systemd's LoadCredential= hands it over.
        credentials = tmp_path / "credentials"
        credentials.mkdir(mode=0o700)
        key = credentials / "oracle-key"
        key.write_bytes(deployed.oracle_key_file.read_bytes())
        key.chmod(0o400)
        for how, name in other_names(db).items():
            env = fulfiller_env(
                deployed, name, CREDENTIALS_DIRECTORY=str(credentials),
                HODLAI_KEY_FILE="$CREDENTIALS_DIRECTORY/oracle-key", LOG_LEVEL="WARNING",
            )  # fmt: skip
            second = subprocess.run(
                [sys.executable, "-m", "shared.cli", "fulfiller"], env=env, cwd=tmp_path,
                capture_output=True, text=True, timeout=WAIT_S, check=False,
            )  # fmt: skip
            line = refused_line(second)
            assert "another fulfiller holds this database" in line, (how, line)
            assert f"pid {first.pid}" in line and f"opened as {db};" in line, (how, line)
        assert first.poll() is None  # the holder carries on
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=WAIT_S) == 0, log.read_text()[-3000:]
