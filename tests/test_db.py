"""Connection factory, migrations and database identity on real files."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from shared.db import AsyncDatabase, atomic, check_identity, connect, open_readonly, stored_identity
from shared.errors import DatabaseMismatchError, SchemaVersionError, StoreBusyError
from shared.migrations import all_sets
from tests.conftest import make_request
from workers.oracle import store
from workers.oracle.store import Status

PROVIDER = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


def test_connection_uses_wal_foreign_keys_and_busy_timeout(db_path: Path) -> None:
    conn = connect(db_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert connect(db_path, durable=True).execute("PRAGMA synchronous").fetchone()[0] == 2


def test_migrations_are_recorded_once(db_path: Path) -> None:
    connect(db_path).close()
    conn = connect(db_path)  # second open applies nothing again
    rows = conn.execute("SELECT set_name, version FROM schema_migrations ORDER BY 1, 2").fetchall()
    expected = sorted((s.name, m.version) for s in all_sets() for m in s.migrations)
    assert [tuple(r) for r in rows] == expected


def test_identity_is_recorded_then_enforced(db_path: Path) -> None:
    conn = connect(db_path)
    assert stored_identity(conn) is None
    check_identity(conn, chain_id=31337, provider_address=PROVIDER)
    check_identity(conn, chain_id=31337, provider_address=PROVIDER.lower())
    assert stored_identity(conn) == (31337, PROVIDER)
    with pytest.raises(DatabaseMismatchError, match="created for chain 31337"):
        check_identity(conn, chain_id=56, provider_address=PROVIDER)
    with pytest.raises(DatabaseMismatchError, match="another HODLAI_DB_PATH"):
        check_identity(conn, chain_id=31337, provider_address="0x" + "12" * 20)


def test_atomic_rolls_back_on_error(db_path: Path) -> None:
    conn = connect(db_path)
    with pytest.raises(RuntimeError), atomic(conn):
        conn.execute("INSERT INTO meta (key, value) VALUES ('x', '1')")
        raise RuntimeError("boom")
    assert conn.execute("SELECT COUNT(*) FROM meta WHERE key = 'x'").fetchone()[0] == 0


def test_nested_atomic_is_a_savepoint(db_path: Path) -> None:
    conn = connect(db_path)
    with atomic(conn):
        conn.execute("INSERT INTO meta (key, value) VALUES ('outer', '1')")
        with pytest.raises(RuntimeError), atomic(conn):
            conn.execute("INSERT INTO meta (key, value) VALUES ('inner', '1')")
            raise RuntimeError("inner fails")
    keys = {r[0] for r in conn.execute("SELECT key FROM meta")}
    assert "outer" in keys and "inner" not in keys


def test_lock_held_past_busy_timeout_is_a_retryable_store_error(db_path: Path) -> None:
    holder = connect(db_path)
    holder.execute("BEGIN IMMEDIATE")
    waiter = sqlite3.connect(str(db_path), timeout=0.05, isolation_level=None)
    waiter.execute("PRAGMA busy_timeout = 50")
    with pytest.raises(StoreBusyError, match="locked"), atomic(waiter):
        pass
    holder.execute("ROLLBACK")


# --- faults: a full disk, a schema hodlai did not make, a file deleted under a process -------


def _fill_up(conn: sqlite3.Connection) -> None:
    """Make the database 'full' for SQLite (SQLITE_FULL), as a full disk would."""
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + 2}")


def test_a_full_database_reports_disk_full_not_a_failed_rollback(db_path: Path) -> None:
    conn = connect(db_path)
    _fill_up(conn)
    with pytest.raises(sqlite3.OperationalError, match="database or disk is full"), atomic(conn):
        for i in range(100):
            conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (f"k{i}", "x" * 4000))
    assert not conn.in_transaction
    # The same inside a savepoint (a nested atomic()).
    full = pytest.raises(sqlite3.OperationalError, match="database or disk is full")
    with full, atomic(conn), atomic(conn):
        for i in range(100):
            conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (f"j{i}", "x" * 4000))
    assert conn.execute("SELECT COUNT(*) FROM meta WHERE key LIKE 'k%'").fetchone()[0] == 0


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare to mount a tiny filesystem",
)
def test_the_cli_reports_a_full_disk_as_one_line(tmp_path: Path) -> None:
    source = tmp_path / "source.db"
    conn = connect(source)
    check_identity(conn, chain_id=31337, provider_address=PROVIDER)
    store.insert_request(conn, make_request(5), actor="indexer")
    store.transition(conn, 5, Status.PENDING, Status.FAILED, actor="test",
                     set_columns={"fail_reason": "x"})  # fmt: skip
    conn.close()
    disk = tmp_path / "disk"
    disk.mkdir()
    # A tmpfs in a private mount namespace (the database's size plus 512 KiB: every
    # executor's schema is in it), filled up but for 40 KiB: room for the -shm index
    # (32 KiB), not for the WAL frames of retry's write transaction.
    size_kib = source.stat().st_size // 1024 + 512
    script = (
        f'mount -t tmpfs -o size={size_kib}k tmpfs "{disk}" && cp "{source}" "{disk}/node.db" && '
        f'(dd if=/dev/zero of="{disk}/fill" bs=4k 2>/dev/null; true) && '
        f'truncate -s -40k "{disk}/fill" && exec "$@"'
    )
    proc = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, "sh",
         sys.executable, "-m", "shared.cli", "retry", "5"],
        env={"HODLAI_DB_PATH": str(disk / "node.db"), "PATH": os.environ["PATH"]},
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == "hodlai: database error: database or disk is full"


def test_tables_without_a_migration_record_are_refused_not_migrated(db_path: Path) -> None:
    raw = sqlite3.connect(db_path)
    raw.execute("CREATE TABLE requests (request_id TEXT PRIMARY KEY)")
    raw.close()
    with pytest.raises(SchemaVersionError, match=r"tables \(requests\) but no migration"):
        connect(db_path)
    check = sqlite3.connect(db_path)
    tables = {r[0] for r in check.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"requests"}  # nothing was added


def test_inspection_opens_read_only_and_never_migrates_or_switches_journal_mode(
    db_path: Path,
) -> None:
    raw = sqlite3.connect(db_path)
    raw.execute("CREATE TABLE t (x)")  # a database in rollback-journal mode, not ours
    raw.close()
    with pytest.raises(SchemaVersionError):
        open_readonly(db_path)
    sqlite3.connect(db_path).execute("DROP TABLE t").connection.close()
    with pytest.raises(SchemaVersionError, match="hodlai migrate"):
        open_readonly(db_path)
    check = sqlite3.connect(db_path)
    assert check.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert check.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
    check.close()
    connect(db_path).close()
    conn = open_readonly(db_path)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        conn.execute("INSERT INTO meta (key, value) VALUES ('x', 'y')")


def test_a_missing_database_beside_a_live_wal_is_not_recreated(db_path: Path) -> None:
    holder = connect(db_path)  # a process that still has the database open
    check_identity(holder, chain_id=31337, provider_address=PROVIDER)
    db_path.unlink()
    with pytest.raises(DatabaseMismatchError, match=r"does not exist but .*-wal does"):
        connect(db_path)
    assert not db_path.exists()
    holder.close()


@pytest.mark.parametrize("fault", ["deleted", "replaced"])
async def test_a_worker_stops_when_its_database_file_is_deleted_or_replaced(
    tmp_path: Path, fault: str
) -> None:
    path = tmp_path / "node.db"
    adb = AsyncDatabase(connect(path), check_every_s=0.0)
    await adb.run(check_identity, chain_id=31337, provider_address=PROVIDER)
    await adb.run(store.insert_request, make_request(11), actor="indexer")
    await adb.check_file()  # still the same file: nothing happens
    if fault == "deleted":
        path.unlink()
    else:
        other = tmp_path / "restored.db"
        connect(other).close()
        os.replace(other, path)
    with pytest.raises(DatabaseMismatchError, match=r"was deleted|now names another file") as info:
        await adb.run(store.status_counts)
    with pytest.raises(DatabaseMismatchError):  # every later call too, without a second copy
        await adb.check_file()
    rescued = _rescued_copies(tmp_path)
    assert len(rescued) == 1 and str(rescued[0]) in str(info.value)
    assert _request_ids(rescued[0]) == ["11"]
    adb.close()


def _rescued_copies(directory: Path) -> list[Path]:
    return sorted(directory.glob("node.db.rescued-*"))


def _request_ids(path: Path) -> list[str]:
    copy = sqlite3.connect(path)
    try:
        return [row[0] for row in copy.execute("SELECT request_id FROM requests")]
    finally:
        copy.close()
