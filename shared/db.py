"""SQLite access: the connection factory, the one write-transaction helper, migrations and
the database's identity (chain id + provider).

Guarantees:
- Every connection runs in WAL mode with a busy timeout and foreign keys on.
- Every write goes through :func:`atomic`, which opens ``BEGIN IMMEDIATE``. A deferred
  ``BEGIN`` that reads and then writes is upgraded to a write lock *without* waiting on the
  busy timeout and fails at once with 'database is locked' under contention (FACTS.md:
  127,837 such errors in one 4-process run); IMMEDIATE takes the write lock up front, where
  the busy timeout does apply.
- 'database is locked' that survives the busy timeout surfaces as StoreBusyError
  (retryable), never as a raw sqlite3 error.
- A database records the chain id and provider address it was created for; opening it for
  another one raises DatabaseMismatchError.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import ParamSpec, TypeVar

import structlog

from shared import migrations
from shared.errors import DatabaseMismatchError, StoreBusyError

log = structlog.get_logger(__name__)

# Milliseconds a writer waits for the lock before StoreBusyError. Claims and transitions hold
# the lock for well under a millisecond; 10 s only runs out if a process is wedged.
BUSY_TIMEOUT_MS = 10_000

P = ParamSpec("P")
T = TypeVar("T")


def connect(path: Path | str, *, durable: bool = False) -> sqlite3.Connection:
    """Open the database (creating it), apply pending migrations, return the connection.

    ``synchronous``: in WAL mode NORMAL never corrupts the database and a committed
    transaction survives the *process* being killed (SIGKILL); only an OS crash or power
    loss can roll back the last commits. For the indexer and inference workers that costs a
    re-scan or a re-answer, so NORMAL's cheaper commits win. The fulfiller records a signed
    transaction before broadcasting it and must not forget it even on power loss, so it opens
    with ``durable=True`` (FULL: fsync the WAL on every commit).
    """
    conn = sqlite3.connect(
        str(path),
        timeout=BUSY_TIMEOUT_MS / 1000,
        isolation_level=None,  # autocommit: transactions are opened explicitly by atomic()
        check_same_thread=False,  # AsyncDatabase hands the connection to one worker thread
    )
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal" and str(path) != ":memory:":
        raise StoreBusyError(f"could not switch {path} to WAL mode (got {mode})")
    conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
    conn.execute("PRAGMA foreign_keys = ON")
    migrate(conn)
    return conn


@contextmanager
def atomic(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction (``BEGIN IMMEDIATE``); nested calls become savepoints."""
    if conn.in_transaction:
        name = f"sp_{id(conn)}_{time.perf_counter_ns()}"
        conn.execute(f"SAVEPOINT {name}")
        try:
            yield conn
        except BaseException:
            if _in_transaction(conn):
                conn.execute(f"ROLLBACK TO {name}")
                conn.execute(f"RELEASE {name}")
            raise
        conn.execute(f"RELEASE {name}")
        return
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        raise _translate(exc) from exc
    try:
        yield conn
    except BaseException:
        # A failed statement may already have ended the transaction (SQLITE_FULL does):
        # a second ROLLBACK would raise "no transaction is active" and hide the real error.
        if _in_transaction(conn):
            conn.execute("ROLLBACK")
        raise
    try:
        conn.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        if _in_transaction(conn):
            conn.execute("ROLLBACK")
        raise _translate(exc) from exc


@contextmanager
def read_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Several reads that see one snapshot of the database (a deferred ``BEGIN`` that never
    writes, so it never needs the write lock; inside a write transaction it just reads)."""
    if conn.in_transaction:
        yield conn
        return
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        if _in_transaction(conn):
            conn.execute("COMMIT")


def _in_transaction(conn: sqlite3.Connection) -> bool:
    # A function, not the attribute inline: the attribute changes under a statement, and
    # mypy would narrow it from the test at the top of atomic().
    return conn.in_transaction


def _translate(exc: sqlite3.OperationalError) -> Exception:
    if "locked" in str(exc) or "busy" in str(exc):
        return StoreBusyError(f"database stayed locked for {BUSY_TIMEOUT_MS} ms: {exc}")
    return exc


def migrate(conn: sqlite3.Connection, *, where: str = "the database") -> dict[str, int]:
    """Apply every migration of every known set not yet recorded (shared/migrations); each
    one commits with its record. Refuses a database written by a newer hodlai. Returns the
    schema version per set."""
    _ensure_migrations_table(conn)
    sets = migrations.all_sets()
    migrations.check_versions(migrations.applied(conn), sets, where=where)
    done_sql = "SELECT 1 FROM schema_migrations WHERE set_name = ? AND version = ?"
    for migration_set in sets:
        for migration in migration_set.migrations:
            key = (migration.set_name, migration.version)
            if conn.execute(done_sql, key).fetchone():
                continue
            with atomic(conn):
                # Another process may have applied it while we waited for the write lock.
                if conn.execute(done_sql, key).fetchone():
                    continue
                for statement in migration.statements():
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (set_name, version, name, applied_at) "
                    "VALUES (?, ?, ?, ?)",
                    (*key, migration.name, time.time()),
                )
            log.info(
                "schema_migrated",
                set=migration.set_name,
                version=migration.version,
                name=migration.name,
            )
    return {s.name: s.latest for s in sets}


def _ensure_migrations_table(conn: sqlite3.Connection) -> None:
    """Create ``schema_migrations``, or bring hodlai 0.1.0's single-set table (one
    ``version`` column) to the per-set form, in one transaction."""
    columns = [row[1] for row in conn.execute("PRAGMA table_info(schema_migrations)")]
    if not columns:
        conn.execute(migrations.SCHEMA_MIGRATIONS_DDL)
        return
    if "set_name" in columns:
        return
    with atomic(conn):
        columns = [row[1] for row in conn.execute("PRAGMA table_info(schema_migrations)")]
        if "set_name" in columns:  # another process converted it while we waited
            return
        conn.execute("ALTER TABLE schema_migrations RENAME TO schema_migrations_v0")
        conn.execute(migrations.SCHEMA_MIGRATIONS_DDL)
        conn.execute(
            "INSERT INTO schema_migrations (set_name, version, name, applied_at) "
            "SELECT 'core', version, name, applied_at FROM schema_migrations_v0"
        )
        conn.execute("DROP TABLE schema_migrations_v0")
    log.info("schema_migrations_converted", to="per-set")


def check_identity(conn: sqlite3.Connection, *, chain_id: int, provider_address: str) -> None:
    """Record the chain id and provider on first use; refuse any other one afterwards."""
    with atomic(conn):
        stored = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if "chain_id" not in stored:
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [
                    ("chain_id", str(chain_id)),
                    ("provider_address", provider_address),
                    ("created_at", repr(time.time())),
                ],
            )
            log.info("database_identity_recorded", chain_id=chain_id, provider=provider_address)
            return
    if stored["chain_id"] != str(chain_id) or (
        stored["provider_address"].lower() != provider_address.lower()
    ):
        raise DatabaseMismatchError(
            f"this database was created for chain {stored['chain_id']} and provider "
            f"{stored['provider_address']}, but this process is configured for chain "
            f"{chain_id} and provider {provider_address}; use another HODLAI_DB_PATH"
        )


def stored_identity(conn: sqlite3.Connection) -> tuple[int, str] | None:
    """(chain_id, provider_address) the database was created for, if recorded yet."""
    stored = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    if "chain_id" not in stored:
        return None
    return int(stored["chain_id"]), stored["provider_address"]


class AsyncDatabase:
    """Runs store functions for an asyncio worker on one dedicated thread.

    The store is written once, synchronously, against ``sqlite3`` (the CLI, tests and the
    workers share it). aiosqlite would do the same thread hand-off but would need every query
    written a second time in async form, so we hand whole store calls to a single thread
    that owns the connection: the event loop never blocks on a busy wait, and there is one
    SQL implementation.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")

    async def run(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, lambda: fn(self.conn, *args, **kwargs))

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self.conn.close()
