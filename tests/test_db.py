"""Connection factory, migrations and database identity on real files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from shared.db import atomic, check_identity, connect, stored_identity
from shared.errors import DatabaseMismatchError, StoreBusyError
from shared.migrations import all_sets

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
