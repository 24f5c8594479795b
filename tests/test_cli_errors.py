"""Every refusal the runbook promises, through the real command line: exit code 2, one line on
stderr that names the problem, never a traceback. Each case is a `python -m shared.cli`
subprocess with its own environment and working directory."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.db import check_identity, connect
from shared.migrations import SCHEMA_MIGRATIONS_DDL, core_set, split_statements
from tests.conftest import make_request
from workers.oracle import store

ROOT = Path(__file__).resolve().parent.parent
PROVIDER = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
# An RPC URL nothing listens on: the commands below must refuse before they use it.
DEAD_RPC = "http://127.0.0.1:9"
# Seconds a refusing command may take; one that keeps running has not refused.
REFUSAL_TIMEOUT_S = 30.0


def hodlai(
    cwd: Path, *args: str, prefix: tuple[str, ...] = (), **env: str
) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LOG_LEVEL": "WARNING"}
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "shared.cli", *args],
        env=base | env, cwd=cwd, capture_output=True, text=True, check=False,
        timeout=REFUSAL_TIMEOUT_S,
    )  # fmt: skip
    return proc


def refused(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Assert exit 2 with exactly one line on stderr containing every needle; return it."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def worker_env(db: Path, **extra: str) -> dict[str, str]:
    return {
        "HODLAI_DB_PATH": str(db),
        "HODLAI_RPC_URLS": DEAD_RPC,
        "HODLAI_PROVIDER_ADDRESS": PROVIDER,
        **extra,
    }


def key_file(directory: Path) -> Path:
    """A throwaway oracle key file, mode 0600 as the fulfiller demands."""
    key = directory / "oracle-key.json"
    key.write_text('{"private_key": "0x' + "11" * 32 + '"}')
    key.chmod(0o600)
    return key


def populated(path: Path) -> Path:
    conn = connect(path)
    check_identity(conn, chain_id=31337, provider_address=PROVIDER)
    store.insert_request(conn, make_request(7), actor="indexer")
    conn.close()
    return path


# --- the database path ----------------------------------------------------------------------


@pytest.mark.parametrize("command", [("status",), ("requests",), ("migrate",), ("indexer",)])
def test_a_directory_as_the_database_is_named(tmp_path: Path, command: tuple[str, ...]) -> None:
    (tmp_path / "data").mkdir()
    proc = hodlai(tmp_path, *command, **worker_env(tmp_path / "data"))
    refused(proc, "HODLAI_DB_PATH", "is a directory")


@pytest.mark.parametrize("command", [("status",), ("migrate",), ("indexer",)])
def test_a_database_in_a_missing_directory_is_named(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    proc = hodlai(tmp_path, *command, **worker_env(tmp_path / "nowhere" / "node.db"))
    line = refused(proc, "HODLAI_DB_PATH")
    assert "does not exist" in line or "no database at" in line


@pytest.mark.parametrize("command", [("status",), ("show", "7"), ("migrate",), ("indexer",)])
def test_a_file_that_is_not_sqlite_is_named(tmp_path: Path, command: tuple[str, ...]) -> None:
    db = tmp_path / "node.db"
    db.write_text("HODLAI_RPC_URLS=http://oops-this-is-an-env-file\n" * 200)
    refused(hodlai(tmp_path, *command, **worker_env(db)), "HODLAI_DB_PATH", "not an SQLite")
    assert db.read_text().startswith("HODLAI_RPC_URLS=")  # untouched


@pytest.mark.parametrize("command", [("status",), ("show", "7"), ("migrate",), ("indexer",)])
def test_a_schema_loaded_by_hand_is_refused_not_migrated(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    db = tmp_path / "node.db"
    conn = sqlite3.connect(db)
    for statement in split_statements((ROOT / "schema.sql").read_text(encoding="utf-8")):
        conn.execute(statement)
    conn.close()
    refused(hodlai(tmp_path, *command, **worker_env(db)), "no migration recorded")


def test_inspection_of_an_empty_database_says_how_to_create_the_schema(tmp_path: Path) -> None:
    db = tmp_path / "node.db"
    sqlite3.connect(db).close()  # an empty file
    refused(hodlai(tmp_path, "status", HODLAI_DB_PATH=str(db)), "hodlai migrate")
    assert db.stat().st_size == 0  # inspection created nothing


def test_a_database_from_a_newer_hodlai_is_refused_with_the_versions(tmp_path: Path) -> None:
    db = populated(tmp_path / "node.db")
    conn = sqlite3.connect(db)
    conn.execute(
        "INSERT INTO schema_migrations (set_name, version, name, applied_at) "
        "VALUES ('core', 99, 'from_the_future', 0)"
    )
    conn.commit()
    conn.close()
    for command in (("status",), ("show", "7"), ("retry", "7"), ("migrate",), ("indexer",)):
        refused(hodlai(tmp_path, *command, **worker_env(db)), "schema version 99", "newer")
    inference = hodlai(
        tmp_path, "inference", **worker_env(db), HODLAI_CHAIN_ID="31337",
    )  # fmt: skip
    refused(inference, "schema version 99")
    fulfiller = hodlai(
        tmp_path, "fulfiller", **worker_env(db), HODLAI_KEY_FILE=str(key_file(tmp_path))
    )
    refused(fulfiller, "schema version 99")


def _read_only_prefix(directory: Path) -> tuple[str, ...]:
    """Run a command with ``directory`` read-only: as root (who may write anywhere) in a
    private mount namespace with a read-only bind mount; otherwise by its mode."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        return ()
    if shutil.which("unshare") is None:
        pytest.skip("running as root without unshare: cannot make a directory read-only")
    script = f'mount --bind -o ro "{directory}" "{directory}" && exec "$@"'
    return ("unshare", "--mount", "sh", "-c", script, "sh")


@pytest.fixture
def read_only_database(tmp_path: Path) -> Iterator[tuple[Path, tuple[str, ...]]]:
    directory = tmp_path / "ro"
    directory.mkdir()
    db = populated(directory / "node.db")  # closed: no -wal or -shm left beside it
    assert sorted(p.name for p in directory.iterdir()) == ["node.db"]
    prefix = _read_only_prefix(directory)
    if not prefix:
        probe = directory / "probe"
        try:
            probe.touch()
        except OSError:
            pass
        else:
            probe.unlink()
            pytest.skip("this user can write a 0555 directory")
    yield db, prefix
    directory.chmod(0o755)


def test_status_and_show_read_a_database_in_a_read_only_directory(
    read_only_database: tuple[Path, tuple[str, ...]],
) -> None:
    db, prefix = read_only_database
    status = hodlai(db.parent.parent, "status", "--json", prefix=prefix, HODLAI_DB_PATH=str(db))
    assert status.returncode == 0, status.stderr
    assert '"PENDING": 1' in status.stdout
    show = hodlai(db.parent.parent, "show", "7", prefix=prefix, HODLAI_DB_PATH=str(db))
    assert show.returncode == 0, show.stderr
    assert "PENDING" in show.stdout


def test_a_worker_on_a_read_only_directory_is_refused_naming_the_path(
    read_only_database: tuple[Path, tuple[str, ...]],
) -> None:
    db, prefix = read_only_database
    proc = hodlai(db.parent.parent, "migrate", prefix=prefix, HODLAI_DB_PATH=str(db))
    refused(proc, "HODLAI_DB_PATH", "for writing")


# --- settings -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [str(2**63), str(2**64 + 5)])
def test_a_start_block_beyond_sqlite_integers_is_a_setting_error(
    tmp_path: Path, value: str
) -> None:
    db = populated(tmp_path / "node.db")
    refused(hodlai(tmp_path, "status", HODLAI_DB_PATH=str(db), HODLAI_START_BLOCK=value),
            "HODLAI_START_BLOCK")  # fmt: skip
    refused(hodlai(tmp_path, "indexer", **worker_env(db), HODLAI_START_BLOCK=value),
            "HODLAI_START_BLOCK")  # fmt: skip


def test_a_dotenv_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    (tmp_path / ".env").write_bytes(b"HODLAI_START_BLOCK=1\nHODLAI_LLM_API_KEY=caf\xe9\n")
    refused(hodlai(tmp_path, "status"), ".env", "not UTF-8")


def test_a_log_level_error_names_the_variable_that_was_set(tmp_path: Path) -> None:
    line = refused(hodlai(tmp_path, "status", LOG_LEVEL="LOUD"), "LOG_LEVEL")
    assert "HODLAI_LOG_LEVEL" not in line


def test_a_metrics_port_in_use_is_named(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        proc = hodlai(
            tmp_path, "indexer", **worker_env(tmp_path / "node.db"),
            HODLAI_METRICS_PORT=str(port),
        )  # fmt: skip
    refused(proc, "HODLAI_METRICS_PORT", str(port), "in use")


def test_a_shard_metrics_port_past_65535_is_a_setting_error(tmp_path: Path) -> None:
    proc = hodlai(
        tmp_path, "inference", "--worker-id", "3", "--worker-count", "4",
        **worker_env(populated(tmp_path / "node.db")),
        HODLAI_CHAIN_ID="31337", HODLAI_METRICS_PORT="65534",
    )  # fmt: skip
    refused(proc, "HODLAI_METRICS_PORT", "HODLAI_WORKER_ID", "65537")


@pytest.mark.parametrize("value", ["-1", "0", str(10**30), "lots"])
def test_requests_limit_out_of_range_is_a_usage_error(tmp_path: Path, value: str) -> None:
    db = populated(tmp_path / "node.db")
    refused(hodlai(tmp_path, "requests", "--limit", value, HODLAI_DB_PATH=str(db)), "--limit")


@pytest.mark.parametrize("value", ["1e30", "10001", "Infinity", "NaN"])
def test_an_absurd_fee_cap_is_refused_naming_it(tmp_path: Path, value: str) -> None:
    proc = hodlai(
        tmp_path, "fulfiller", **worker_env(tmp_path / "node.db"),
        HODLAI_KEY_FILE=str(key_file(tmp_path)), HODLAI_FULFILLER_MAX_FEE_GWEI=value,
    )  # fmt: skip
    refused(proc, "HODLAI_FULFILLER_MAX_FEE_GWEI")


def test_inspection_of_an_older_schema_says_to_migrate_and_leaves_it_alone(
    tmp_path: Path,
) -> None:
    core = core_set()
    if core.latest < 2:
        pytest.skip("needs a second core migration to build an older database")
    db = tmp_path / "node.db"
    conn = sqlite3.connect(db)
    conn.execute(SCHEMA_MIGRATIONS_DDL)
    for statement in core.migrations[0].statements():
        conn.execute(statement)
    conn.execute("INSERT INTO schema_migrations VALUES ('core', 1, 'initial', 0)")
    conn.commit()
    conn.close()
    refused(hodlai(tmp_path, "status", HODLAI_DB_PATH=str(db)), f"core at 1 of {core.latest}",
            "hodlai migrate")  # fmt: skip
    check = sqlite3.connect(db)
    assert check.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0] == 1
    check.close()
