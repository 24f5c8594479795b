"""Migration sets: each owner of tables (the core, each executor) has an ordered set of
numbered SQL files, recorded per set in ``schema_migrations (set_name, version)``.

Guarantees:

- A migration is applied in one transaction together with its row in ``schema_migrations``,
  so a crash never leaves a half-applied schema, and two processes starting at once apply
  it once (the second finds the row after waiting for the write lock).
- A migration file, once released, is never edited: databases recorded it as applied.
  A change to the schema is a new file *and* an edit of ``schema.sql`` at the top of the
  repository, which stays the readable picture of the whole current schema
  (tests/test_migrations.py checks that migrating an empty database produces exactly it).
- A database that has applied a version this code does not know (written by a newer hodlai)
  is refused with the version numbers, never silently used: :func:`check_versions`.

The SQL files are package data (``shared/migrations/<set>/NNNN_name.sql``), so a wheel
install carries them.

Baselines. A set may carry a baseline (``baseline_NNNN.sql`` beside its migrations): the
schema its migrations 1..NNNN leave, created in one transaction on a database that has none
of the set's versions recorded, and recorded as those versions (each named "<name>
(baseline)"). The core set has one (``baseline_0014.sql``) because its released migrations
1..14 created the oracle's tables, from before executors had sets of their own, and a
released migration is never edited: a new database gets the core's shared tables only, and
the oracle's set creates its own; an existing database keeps the migrations it ran, its
oracle tables and their rows, and the oracle's first migration adopts them (CREATE ... IF NOT
EXISTS). Later migrations apply on top of either, so both end in the same schema:
tests/test_migration_of_old_database.py builds a database the old way, with rows, and
compares. A baseline is frozen like a released migration. The other way to keep migration 1
frozen, letting a new database run it and then dropping the oracle's tables from the core,
would make the core create tables it does not own, and any node without the oracle would
carry them.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from importlib.metadata import entry_points
from typing import Final

from shared.errors import SchemaVersionError

_FILE_NAME: Final = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_BASELINE_NAME: Final = re.compile(r"^baseline_(\d{4})\.sql$")

SCHEMA_MIGRATIONS_DDL: Final = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " set_name TEXT NOT NULL, version INTEGER NOT NULL, name TEXT NOT NULL,"
    " applied_at REAL NOT NULL, PRIMARY KEY (set_name, version)) STRICT"
)


@dataclass(frozen=True)
class Migration:
    set_name: str
    version: int
    name: str
    sql: str

    def statements(self) -> list[str]:
        return split_statements(self.sql)


@dataclass(frozen=True)
class MigrationSet:
    """The ordered migrations of one owner of tables."""

    name: str
    migrations: tuple[Migration, ...]
    #: for a database without any of this set's versions: one script standing for migrations
    #: 1..baseline.version (see the module docstring); None: run the migrations themselves
    baseline: Migration | None = None

    @property
    def latest(self) -> int:
        return max((m.version for m in self.migrations), default=0)

    def replaced_by_baseline(self) -> tuple[Migration, ...]:
        """The migrations the baseline stands for (none without a baseline)."""
        if self.baseline is None:
            return ()
        return tuple(m for m in self.migrations if m.version <= self.baseline.version)


def split_statements(script: str) -> list[str]:
    """Split a script into complete statements (sqlite3.complete_statement decides where a
    statement ends, so semicolons inside strings or trigger bodies are handled)."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        if not buffer and (not line.strip() or line.lstrip().startswith("--")):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements


def load_set(name: str, package: str) -> MigrationSet:
    """The set ``name`` from the ``NNNN_name.sql`` files of ``package`` (a folder that is a
    package, or a namespace package, of SQL files). Numbers must run 1, 2, 3... without gaps."""
    found: list[Migration] = []
    baseline: Migration | None = None
    for entry in resources.files(package).iterdir():
        base = _BASELINE_NAME.match(entry.name)
        if base is not None:
            text = entry.read_text(encoding="utf-8")
            baseline = Migration(name, int(base.group(1)), "baseline", text)
            continue
        match = _FILE_NAME.match(entry.name)
        if match is None:
            continue
        found.append(
            Migration(name, int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8"))
        )
    found.sort(key=lambda m: m.version)
    expected = list(range(1, len(found) + 1))
    if [m.version for m in found] != expected:
        raise ValueError(
            f"migration set {name!r} in {package} is not numbered 1..{len(found)}: "
            f"{[m.version for m in found]}"
        )
    if baseline is not None and not 1 <= baseline.version <= len(found):
        raise ValueError(
            f"migration set {name!r} in {package}: baseline {baseline.version} is not one of "
            f"its migrations 1..{len(found)}"
        )
    return MigrationSet(name, tuple(found), baseline)


@cache
def core_set() -> MigrationSet:
    return load_set("core", "shared.migrations.core")


#: Entry point group through which an executor declares its migration set: the value is a
#: package of ``NNNN_name.sql`` files (the entry point's name is the set's name), or
#: ``module:attribute`` naming a MigrationSet.
MIGRATIONS_GROUP: Final = "hodlai.migrations"


@cache
def executor_sets() -> tuple[MigrationSet, ...]:
    """The sets the installed executors declare (entry points ``hodlai.migrations``)."""
    found = sorted(entry_points(group=MIGRATIONS_GROUP), key=lambda ep: ep.name)
    sets: list[MigrationSet] = []
    for ep in found:
        if ep.name == "core":
            continue
        loaded = ep.load() if ":" in ep.value else load_set(ep.name, ep.value)
        if not isinstance(loaded, MigrationSet):
            raise TypeError(f"entry point {ep.name} in {MIGRATIONS_GROUP} is not a MigrationSet")
        sets.append(loaded)
    return tuple(sets)


def all_sets() -> tuple[MigrationSet, ...]:
    """Every set this installation knows, core first (an executor's tables may refer to the
    core's, never the other way round)."""
    return (core_set(), *executor_sets())


def applied(conn: sqlite3.Connection) -> dict[str, set[int]]:
    """Versions recorded per set (empty when the table does not exist yet)."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    ).fetchone()
    if exists is None:
        return {}
    columns = [row[1] for row in conn.execute("PRAGMA table_info(schema_migrations)")]
    if "set_name" not in columns:
        return {"core": {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}}
    out: dict[str, set[int]] = {}
    for set_name, version in conn.execute("SELECT set_name, version FROM schema_migrations"):
        out.setdefault(set_name, set()).add(version)
    return out


def check_versions(
    recorded: dict[str, set[int]], sets: Sequence[MigrationSet], *, where: str
) -> list[str]:
    """Refuse a database written by a newer hodlai (a version or a set this code does not
    know); return the names of the sets with migrations still to apply."""
    known = {s.name: s for s in sets}
    for set_name, versions in sorted(recorded.items()):
        known_set = known.get(set_name)
        if known_set is None:
            raise SchemaVersionError(
                f"{where} has migration set {set_name!r} (versions up to {max(versions)}), "
                "which this hodlai does not know: it was written by a newer or another "
                "installation; upgrade hodlai or use another database"
            )
        if max(versions) > known_set.latest:
            raise SchemaVersionError(
                f"{where} is at schema version {max(versions)} of set {set_name!r}, newer than "
                f"this hodlai's {known_set.latest}; upgrade hodlai before using this database"
            )
    return [
        s.name for s in sets if recorded.get(s.name, set()) != {m.version for m in s.migrations}
    ]
