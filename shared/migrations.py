"""Numbered schema migrations. Each is applied in one transaction together with its row in
``schema_migrations`` (shared/db.py), so a crash never leaves a half-applied schema.

Migration 1 is ``schema.sql`` as a whole (idempotent DDL). A later change to the schema is a
new entry here (e.g. an ``ALTER TABLE``) *and* an edit of schema.sql, which stays the
readable picture of the current schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schema.sql"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str | None = None  # None: the whole of schema.sql

    def statements(self) -> list[str]:
        text = self.sql if self.sql is not None else SCHEMA_PATH.read_text(encoding="utf-8")
        return split_statements(text)


def split_statements(script: str) -> list[str]:
    """Split a script into complete statements (sqlite3.complete_statement decides where a
    statement ends, so semicolons inside strings or CASE bodies are handled)."""
    import sqlite3

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


MIGRATIONS: tuple[Migration, ...] = (Migration(1, "initial schema"),)
