"""Migration sets: schema.sql is exactly what migrating an empty database produces; old and
newer databases are handled as the runbook says."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

import pytest

from shared import migrations
from shared.db import connect, migrate
from shared.errors import SchemaVersionError
from shared.migrations import core_set, split_statements

ROOT = Path(__file__).resolve().parent.parent


def _normalise(sql: str | None) -> str:
    """SQL text without comments and with canonical spacing: ALTER TABLE ADD COLUMN appends
    its text to the stored CREATE TABLE, which then reads like a hand-written one."""
    text = re.sub(r"--[^\n]*", " ", sql or "")
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s*([(),;])\s*", r"\1", text)
    return text.replace("IF NOT EXISTS ", "").strip().lower()


def _schema(conn: sqlite3.Connection) -> dict[tuple[str, str], object]:
    out: dict[tuple[str, str], object] = {}
    for kind, name, table, sql in conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
    ):
        out[(kind, name)] = (table, _normalise(sql))
        if kind == "table":
            out[("columns", name)] = [tuple(r) for r in conn.execute(f"PRAGMA table_xinfo({name})")]
    return out


def test_migrating_an_empty_database_gives_exactly_schema_sql(tmp_path: Path) -> None:
    migrated = connect(tmp_path / "migrated.db")
    described = sqlite3.connect(tmp_path / "described.db")
    for statement in split_statements((ROOT / "schema.sql").read_text(encoding="utf-8")):
        described.execute(statement)
    assert _schema(migrated) == _schema(described)


def test_migration_one_is_frozen() -> None:
    # Databases created before migrations were numbered files recorded version 1 as applied;
    # its text must never change (a change is a new migration).
    first = core_set().migrations[0]
    assert first.version == 1
    assert "CREATE TABLE IF NOT EXISTS requests" in first.sql
    assert "CREATE TABLE IF NOT EXISTS schema_migrations" not in first.sql


def test_a_database_of_hodlai_0_1_0_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path, isolation_level=None)
    old.execute(
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
        " applied_at REAL NOT NULL) STRICT"
    )
    for statement in core_set().migrations[0].statements():
        old.execute(statement)
    old.execute("INSERT INTO schema_migrations VALUES (1, 'initial schema', ?)", (time.time(),))
    old.execute("INSERT INTO meta (key, value) VALUES ('chain_id', '31337')")
    old.close()
    conn = connect(path)
    rows = conn.execute(
        "SELECT set_name, version FROM schema_migrations WHERE set_name = 'core' ORDER BY 2"
    ).fetchall()
    assert [tuple(r) for r in rows] == [("core", m.version) for m in core_set().migrations]
    assert conn.execute("SELECT value FROM meta WHERE key = 'chain_id'").fetchone()[0] == "31337"
    fresh = connect(tmp_path / "fresh.db")
    assert _schema(conn) == _schema(fresh)


def test_a_newer_schema_is_refused_with_the_versions(tmp_path: Path) -> None:
    path = tmp_path / "newer.db"
    connect(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    latest = core_set().latest
    conn.execute(
        "INSERT INTO schema_migrations VALUES ('core', ?, 'from the future', 0)", (latest + 1,)
    )
    conn.close()
    with pytest.raises(SchemaVersionError, match=f"version {latest + 1} .* this hodlai's {latest}"):
        connect(path)


def test_an_unknown_migration_set_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    connect(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("INSERT INTO schema_migrations VALUES ('telepathy', 1, 'x', 0)")
    conn.close()
    with pytest.raises(SchemaVersionError, match="'telepathy'"):
        connect(path)


def test_migrating_twice_applies_nothing(tmp_path: Path) -> None:
    conn = connect(tmp_path / "a.db")
    before = conn.execute("SELECT * FROM schema_migrations").fetchall()
    migrate(conn)
    assert conn.execute("SELECT * FROM schema_migrations").fetchall() == before


def test_migration_files_are_numbered_without_gaps() -> None:
    for migration_set in migrations.all_sets():
        versions = [m.version for m in migration_set.migrations]
        assert versions == list(range(1, len(versions) + 1))
