"""SQLite access: the connection factory, the one write-transaction helper, migrations and
the database's identity per executor and chain.

Guarantees:
- Every connection runs in WAL mode with a busy timeout and foreign keys on.
- Every write goes through :func:`atomic`, which opens ``BEGIN IMMEDIATE``. A deferred
  ``BEGIN`` that reads and then writes is upgraded to a write lock *without* waiting on the
  busy timeout and fails at once with 'database is locked' under contention (FACTS.md:
  127,837 such errors in one 4-process run); IMMEDIATE takes the write lock up front, where
  the busy timeout does apply.
- 'database is locked' that survives the busy timeout surfaces as StoreBusyError
  (retryable), never as a raw sqlite3 error.
- One database serves every executor on every chain. Each executor records, per chain it
  uses, what it is bound to there (``identities``: the oracle's provider address); opening
  it for another anchor on that chain, or (for a one-chain executor such as the oracle)
  another chain, raises DatabaseMismatchError. Other executors' rows never refuse it.
- A path that cannot hold a database (a directory, a missing directory, a file that is not
  SQLite, no write access, a schema hodlai did not make) is refused with a ConfigError or a
  SchemaVersionError naming ``HODLAI_DB_PATH``, never with a raw sqlite3 error. A missing
  database whose ``-wal`` is still there is refused too: starting on a new empty file would
  share that WAL with the processes still holding the deleted one.
- A worker's connection remembers which file (device, inode) it opened; :class:`AsyncDatabase`
  checks, at most once a second, that the path still names it, and otherwise stops every
  later call with DatabaseMismatchError after saving the process's view of the data beside
  it (the deleted file lives only as long as its last open descriptor).
- A database file the node creates is owner-only (0600), its -wal and -shm too, unless
  HODLAI_DB_GROUP_WRITABLE asks for 0660 (:func:`create_file`).
- Inspection (:func:`open_readonly`) opens with ``mode=ro``: it never creates, migrates or
  switches the journal mode, and works on a read-only directory.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Concatenate, Final, NoReturn, ParamSpec, TypeVar
from urllib.parse import quote

import structlog

from shared import migrations
from shared.config import CoreSettings, load_settings
from shared.errors import (
    ConfigError,
    DatabaseMismatchError,
    NotDurableError,
    SchemaVersionError,
    StoreBusyError,
)

log = structlog.get_logger(__name__)

# Milliseconds a writer waits for the lock before StoreBusyError. Claims and transitions hold
# the lock for well under a millisecond; 10 s only runs out if a process is wedged.
BUSY_TIMEOUT_MS = 10_000

# Seconds between checks that the database path still names the file a worker opened: one
# stat() each, so cheap; a deleted or replaced file is noticed within about a second.
FILE_CHECK_EVERY_S = 1.0
SETTING: Final = "HODLAI_DB_PATH"
# Modes of a database file the node creates (create_file): owner-only by default; group
# read/write with HODLAI_DB_GROUP_WRITABLE for processes running as users of one group.
DB_FILE_MODE: Final = 0o600
DB_FILE_MODE_GROUP: Final = 0o660

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class OpenedFile:
    """The file a connection opened: the configured path and the inode it named then."""

    path: Path
    device: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> OpenedFile:
        info = os.stat(path)
        return cls(path, info.st_dev, info.st_ino)

    def problem(self) -> str | None:
        """Why the path no longer names the opened file; None while it does."""
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return "was deleted or moved"
        except OSError as exc:
            return f"cannot be checked any more ({exc.strerror})"
        if (info.st_dev, info.st_ino) != (self.device, self.inode):
            return "now names another file (replaced or restored)"
        return None


class Connection(sqlite3.Connection):
    """sqlite3.Connection that knows which file it opened (None for ``:memory:``)."""

    opened: OpenedFile | None = None


def opened_file(conn: sqlite3.Connection) -> OpenedFile | None:
    return conn.opened if isinstance(conn, Connection) else None


def connect(
    path: Path | str,
    *,
    durable: bool = False,
    extra_sets: Sequence[migrations.MigrationSet] = (),
    group_writable: bool | None = None,
) -> Connection:
    """Open the database (creating it: see :func:`create_file` for its mode, which
    ``group_writable`` overrides), apply pending migrations, return the connection.

    ``synchronous``: in WAL mode NORMAL never corrupts the database and a committed
    transaction survives the *process* being killed (SIGKILL); only an OS crash or power
    loss can roll back the last commits. For the indexer and inference workers that costs a
    re-scan or a re-answer, and for the CLI, the API's reads and the dispatcher nothing that
    money depends on, so NORMAL's cheaper commits win and stay the default here. Whatever
    signs or creates wallets opens with ``durable=True`` (FULL: fsync the WAL on every
    commit), and the money components (the transaction manager, the vault, the
    authorizations ledger) refuse anything less (:func:`require_durable`), so a forgotten
    flag fails at start instead of losing a payment record on a power cut. (``synchronous``
    is per connection: NORMAL and FULL connections share one file safely; a FULL commit
    fsyncs the whole WAL, the frames of others included.) A long-running process gets FULL
    unless its :class:`~shared.runtime.WorkerSpec` opts out.
    """
    in_memory = str(path) == ":memory:"
    if not in_memory:
        path = Path(path)
        check_path(path)
        create_file(path, group_writable=group_writable)
        _refuse_hard_links(path)
    conn = sqlite3.connect(
        str(path),
        timeout=BUSY_TIMEOUT_MS / 1000,
        isolation_level=None,  # autocommit: transactions are opened explicitly by atomic()
        check_same_thread=False,  # AsyncDatabase hands the connection to one worker thread
        factory=Connection,
    )
    try:
        conn.row_factory = sqlite3.Row
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal" and not in_memory:
                raise StoreBusyError(f"could not switch {path} to WAL mode (got {mode})")
            conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as exc:
            translated = _open_error(path, exc, writing=True)
            if translated is None:
                raise
            raise translated from exc
        if not in_memory:
            conn.opened = OpenedFile.of(Path(path))
        migrate(conn, where=str(path), extra_sets=extra_sets)
    except BaseException:
        conn.close()
        raise
    return conn


# PRAGMA synchronous values: 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA.
_SYNCHRONOUS_FULL: Final = 2


def require_durable(conn: sqlite3.Connection, *, who: str) -> None:
    """Refuse (NotDurableError, naming ``who``) a connection whose ``synchronous`` is below
    FULL. Whatever records money before it leaves the process (signed transactions, wallets,
    EIP-3009 authorizations) calls this on the connection it is given: with NORMAL a power cut
    after a broadcast can roll back the record and its idempotency key, and a restarted
    process would pay again. An in-memory database has nothing to lose to a power cut, but
    nothing of value lives there either, so it is held to the same rule."""
    level = int(conn.execute("PRAGMA synchronous").fetchone()[0])
    if level < _SYNCHRONOUS_FULL:
        raise NotDurableError(
            f"{who} needs a database connection with synchronous=FULL (got "
            f"{('OFF', 'NORMAL')[level] if level < 2 else level}): open it with "
            "connect(..., durable=True)"
        )


def open_readonly(path: Path | str) -> Connection:
    """Open an existing database for inspection: read-only (``mode=ro``), no migrations, no
    journal-mode switch, so it works on a read-only directory and never changes the file.

    Refuses a schema that is not current (newer, older, or not made by hodlai) with a
    SchemaVersionError saying what to do; queries of an old schema would fail half-way."""
    conn = _open_readonly_file(Path(path))
    try:
        require_current_schema(conn, where=str(path))
    except BaseException:
        conn.close()
        raise
    return conn


def schema_versions(path: Path | str) -> dict[str, int]:
    """The latest applied migration per set, read without changing anything ({} when there
    is no database file yet)."""
    path = Path(path)
    if not path.exists():
        return {}
    conn = _open_readonly_file(path)
    try:
        return {name: max(versions) for name, versions in migrations.applied(conn).items()}
    finally:
        conn.close()


def _open_readonly_file(path: Path) -> Connection:
    if path.is_dir():
        raise ConfigError(f"{SETTING}: {path} is a directory, not a database file")
    if not path.exists():
        raise ConfigError(f"{SETTING}: no database at {path}")
    _refuse_hard_links(path)
    uri = f"file:{quote(str(path.absolute()))}?mode=ro"
    try:
        try:
            conn = _first_read(_open_uri(uri))
        except sqlite3.OperationalError:
            if _journal_files(path):
                raise
            # A WAL database without its -shm in a directory we cannot write: SQLite cannot
            # build the shared index. No -wal means no process has it open (the last one to
            # close removes it), so the file cannot change under us: read it as immutable.
            conn = _first_read(_open_uri(uri + "&immutable=1"))
    except sqlite3.DatabaseError as exc:
        translated = _open_error(path, exc, writing=False)
        if translated is None:
            raise
        raise translated from exc
    conn.opened = OpenedFile.of(path)
    return conn


def _first_read(conn: Connection) -> Connection:
    """Read the schema once: opening is lazy, this is where a bad file shows."""
    try:
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except BaseException:
        conn.close()
        raise
    return conn


def _open_uri(uri: str) -> Connection:
    conn = sqlite3.connect(
        uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, factory=Connection
    )
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


def require_current_schema(conn: sqlite3.Connection, *, where: str) -> None:
    """Refuse a database whose schema is not exactly what this hodlai knows, without changing
    it: newer (SchemaVersionError from check_versions), older, or not made by migrations."""
    _refuse_unmigrated_tables(conn, where=where)
    recorded = migrations.applied(conn)
    if not recorded:
        raise SchemaVersionError(
            f"{where} has no hodlai schema yet: start a worker (the indexer creates it) or "
            "run `hodlai migrate`"
        )
    sets = migrations.all_sets()
    pending = migrations.check_versions(recorded, sets, where=where)
    if pending:
        behind = ", ".join(
            f"{s.name} at {max(recorded.get(s.name, {0}))} of {s.latest}"
            for s in sets
            if s.name in pending
        )
        raise SchemaVersionError(
            f"{where} needs migrating ({behind}): start a worker or run `hodlai migrate` first "
            "(inspection commands only read the database)"
        )


def _user_tables(conn: sqlite3.Connection) -> list[str]:
    return [
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name"
        )
    ]


def _refuse_unmigrated_tables(conn: sqlite3.Connection, *, where: str) -> None:
    """Tables without a recorded migration: schema.sql loaded by hand, or another program's
    database. Migrating it would fail half-way (or silently keep a schema it did not make)."""
    tables = [t for t in _user_tables(conn) if t != "schema_migrations"]
    if not tables or migrations.applied(conn):
        return
    shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
    raise SchemaVersionError(
        f"{where} has tables ({shown}) but no migration recorded in schema_migrations: it was "
        "not made by hodlai's migrations (schema.sql loaded by hand, or another program's "
        "database); use an empty file, or copy its rows into one made by `hodlai migrate`"
    )


def _journal_files(path: Path) -> list[Path]:
    """The -wal/-shm files of ``path`` that exist. SQLite names them after the resolved path,
    so for a symlink they sit beside its target."""
    real = os.path.realpath(path)
    return [Path(real + suffix) for suffix in ("-wal", "-shm") if os.path.exists(real + suffix)]


def check_path(path: Path) -> None:
    """Refuse, naming the setting, a path no worker may open or create a database at."""
    if path.is_dir():
        raise ConfigError(
            f"{SETTING}: {path} is a directory; name a file, e.g. {path / 'hodlai.db'}"
        )
    parent = Path(os.path.realpath(path)).parent
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise ConfigError(f"{SETTING}: the directory {parent} of {path} {what}")
    if path.exists():
        return
    leftovers = _journal_files(path)
    if leftovers:
        raise DatabaseMismatchError(
            f"{SETTING}: {path} does not exist but {leftovers[0]} does: the database was "
            "deleted or moved while processes had it open (or after a crash). A new empty "
            "file would share that WAL with them and lose data: stop every hodlai process, "
            "then restore the database (docs/OPERATIONS.md, 'Database faults')"
        )


def _refuse_hard_links(path: Path) -> None:
    """SQLite names the -wal and -shm after the name it opened (it resolves symlinks, not
    hard links): two names of one file would give it two WALs and corrupt it."""
    links = os.stat(path).st_nlink
    if links > 1:
        raise ConfigError(
            f"{SETTING}: {path} has {links} hard links; SQLite would keep a separate WAL per "
            f"name and corrupt it. Keep one name (find the others: find / -samefile {path})"
        )


def create_file(path: Path, *, group_writable: bool | None = None) -> None:
    """Create an empty database file, owner-only (0600) unless ``group_writable`` (None: the
    setting HODLAI_DB_GROUP_WRITABLE) makes it 0660; an existing file is left as it is.

    Owner-only by default: the file holds signed transactions and encrypted wallets, and
    whoever can write it can rewrite what a later step reads. A deployment whose processes run
    as separate users of one group (docs/OPERATIONS.md: the systemd units) sets
    HODLAI_DB_GROUP_WRITABLE=true. The mode is set exactly (fchmod), whatever the umask; SQLite
    gives the -wal and -shm the database file's mode."""
    if path.exists():  # the common case, without reading the setting
        return
    if group_writable is None:
        group_writable = group_writable_setting()
    mode = DB_FILE_MODE_GROUP if group_writable else DB_FILE_MODE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except FileExistsError:
        return
    except OSError as exc:
        if path.exists():  # e.g. EROFS reported before EEXIST: it is there, SQLite opens it
            return
        raise ConfigError(f"{SETTING}: cannot create {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    log.info("database_file_created", path=str(path), mode=oct(mode))


def group_writable_setting() -> bool:
    """HODLAI_DB_GROUP_WRITABLE (shared.config.CoreSettings), read when a file is created."""
    return load_settings(CoreSettings).db_group_writable


def _open_error(path: Path | str, exc: sqlite3.DatabaseError, *, writing: bool) -> Exception | None:
    """The error to report for an open that failed with ``exc``; None to let it propagate."""
    text = str(exc)
    if "not a database" in text:
        return ConfigError(f"{SETTING}: {path} is not an SQLite database ({text})")
    if "locked" in text or "busy" in text:
        return StoreBusyError(f"{path} stayed locked for {BUSY_TIMEOUT_MS} ms: {text}")
    if writing and ("readonly" in text or "unable to open" in text):
        return ConfigError(
            f"{SETTING}: cannot open {path} for writing ({text}): this user needs write "
            "access to the file and to its directory, where SQLite keeps its -wal and -shm"
        )
    if "unable to open" in text:
        return ConfigError(f"{SETTING}: cannot open {path} ({text})")
    return None


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


def migrate(
    conn: sqlite3.Connection,
    *,
    where: str = "the database",
    extra_sets: Sequence[migrations.MigrationSet] = (),
) -> dict[str, int]:
    """Apply every migration of every known set not yet recorded (shared/migrations), plus
    ``extra_sets`` (an executor that is not installed, as in a test); each one commits with
    its record. Refuses a database written by a newer hodlai, and tables no migration
    recorded. Returns the schema version per set."""
    _refuse_unmigrated_tables(conn, where=where)
    _ensure_migrations_table(conn)
    sets = (*migrations.all_sets(), *extra_sets)
    migrations.check_versions(migrations.applied(conn), sets, where=where)
    done_sql = "SELECT 1 FROM schema_migrations WHERE set_name = ? AND version = ?"
    for migration_set in sets:
        if migration_set.baseline is not None:
            _apply_baseline(conn, migration_set)
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


def _apply_baseline(conn: sqlite3.Connection, migration_set: migrations.MigrationSet) -> None:
    """On a database with none of the set's versions recorded, create the set's baseline and
    record the versions it stands for, in one transaction (shared/migrations: baselines)."""
    baseline = migration_set.baseline
    assert baseline is not None
    any_sql = "SELECT 1 FROM schema_migrations WHERE set_name = ? LIMIT 1"
    if conn.execute(any_sql, (migration_set.name,)).fetchone():
        return
    with atomic(conn):
        # Another process may have migrated it while we waited for the write lock.
        if conn.execute(any_sql, (migration_set.name,)).fetchone():
            return
        for statement in baseline.statements():
            conn.execute(statement)
        now = time.time()
        conn.executemany(
            "INSERT INTO schema_migrations (set_name, version, name, applied_at) "
            "VALUES (?, ?, ?, ?)",
            [
                (m.set_name, m.version, f"{m.name} (baseline)", now)
                for m in migration_set.replaced_by_baseline()
            ],
        )
    log.info("schema_baseline_created", set=migration_set.name, version=baseline.version)


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


def check_executor_identity(
    conn: sqlite3.Connection,
    *,
    executor: str,
    chain_id: int,
    anchor: str,
    one_chain: bool = True,
) -> None:
    """Record what ``executor`` is bound to on ``chain_id`` (its ``anchor``, e.g. a contract
    address; compared without case) on first use; afterwards refuse (DatabaseMismatchError)
    another anchor on that chain and, when ``one_chain`` (an executor whose tables have no
    chain column, as the oracle's), any other chain. Only the executor's own rows count:
    other executors, on this chain or others, never refuse it."""
    with atomic(conn):
        rows = conn.execute(
            "SELECT chain_id, anchor FROM identities WHERE executor = ? ORDER BY created_at",
            (executor,),
        ).fetchall()
        recorded = {int(row[0]): str(row[1]) for row in rows}
        same_chain = recorded.get(chain_id)
        others = [c for c in recorded if c != chain_id]
        if same_chain == "":
            # Migration 15 found a meta chain id without a provider (a database written by
            # hand or by a tool): the first anchor given is recorded.
            conn.execute(
                "UPDATE identities SET anchor = ? WHERE executor = ? AND chain_id = ?",
                (anchor, executor, chain_id),
            )
            same_chain = anchor
        if same_chain is None and not (one_chain and others):
            conn.execute(
                "INSERT INTO identities (executor, chain_id, anchor, created_at) "
                "VALUES (?, ?, ?, ?)",
                (executor, chain_id, anchor, time.time()),
            )
            log.info(
                "database_identity_recorded", executor=executor, chain_id=chain_id, anchor=anchor
            )
            return
    if same_chain is not None and same_chain.lower() == anchor.lower():
        return
    if same_chain is not None:
        was = f"chain {chain_id} and {same_chain}"
    else:
        was = f"chain {others[0]} and {recorded[others[0]]}"
    raise DatabaseMismatchError(
        f"this database was created for {was} as the {executor}'s identity, but this process "
        f"is configured for chain {chain_id} and {anchor}; use another HODLAI_DB_PATH (other "
        "executors and chains in it are not affected)"
    )


def executor_identities(conn: sqlite3.Connection, executor: str) -> dict[int, str]:
    """chain id -> anchor of every chain ``executor`` recorded, oldest first ({} if none)."""
    return {
        int(row[0]): str(row[1])
        for row in conn.execute(
            "SELECT chain_id, anchor FROM identities WHERE executor = ? ORDER BY created_at",
            (executor,),
        )
    }


#: The executor name of :func:`check_identity` and :func:`stored_identity`: the oracle's
#: callers (indexer, inference, fulfiller) keep their signatures; an executor written after
#: migration 15 calls :func:`check_executor_identity` with its own name.
ORACLE_EXECUTOR: Final = "oracle"


def check_identity(conn: sqlite3.Connection, *, chain_id: int, provider_address: str) -> None:
    """The oracle's identity check: one chain, its provider address as the anchor (rows a
    database made before migration 15 kept in ``meta`` were moved into ``identities``)."""
    check_executor_identity(
        conn, executor=ORACLE_EXECUTOR, chain_id=chain_id, anchor=provider_address
    )


def stored_identity(conn: sqlite3.Connection) -> tuple[int, str] | None:
    """(chain_id, provider_address) the oracle was set up for, if recorded yet."""
    recorded = executor_identities(conn, ORACLE_EXECUTOR)
    if not recorded:
        return None
    chain_id, anchor = next(iter(recorded.items()))
    return chain_id, anchor


class AsyncDatabase:
    """Runs store functions for an asyncio worker on one dedicated thread.

    The store is written once, synchronously, against ``sqlite3`` (the CLI, tests and the
    workers share it). aiosqlite would do the same thread hand-off but would need every query
    written a second time in async form, so we hand whole store calls to a single thread
    that owns the connection: the event loop never blocks on a busy wait, and there is one
    SQL implementation.
    """

    def __init__(self, conn: sqlite3.Connection, *, check_every_s: float = FILE_CHECK_EVERY_S):
        self.conn = conn
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._opened = opened_file(conn)
        self._check_every_s = check_every_s
        self._checked_at = time.monotonic()
        self._lost: DatabaseMismatchError | None = None

    async def run(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """``fn(conn, *args, **kwargs)`` on the database thread, with its types checked."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._thread, lambda: self._call(lambda conn: fn(conn, *args, **kwargs))
        )

    async def check_file(self) -> None:
        """Raise DatabaseMismatchError if the path no longer names the opened file. One
        stat() at most every ``check_every_s``, on the caller's thread: a loop can call it
        every step without waiting for the database thread."""
        problem = self._file_problem()
        if problem is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._thread, self._lose, problem)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        problem = self._file_problem()
        if problem is not None:
            self._lose(problem)
        return fn(self.conn)

    def _file_problem(self) -> str | None:
        if self._lost is not None:
            raise self._lost
        now = time.monotonic()
        if self._opened is None or now - self._checked_at < self._check_every_s:
            return None
        self._checked_at = now
        return self._opened.problem()

    def _lose(self, problem: str) -> NoReturn:
        """On the database thread: save what this connection sees, then refuse every call."""
        if self._lost is None:
            assert self._opened is not None
            opened = self._opened
            log.error("database_file_lost", path=str(opened.path), problem=problem)
            self._lost = DatabaseMismatchError(
                f"{SETTING} {opened.path} {problem} while this process had it open (inode "
                f"{opened.inode} on device {opened.device}); stopped writing to it, since no "
                f"new process would see those writes. {self._rescue()} Stop every hodlai "
                "process, then see docs/OPERATIONS.md, 'Database faults'"
            )
        raise self._lost

    def _rescue(self) -> str:
        """Copy what this connection still sees (the deleted file lives on while a descriptor
        holds it) to a new file beside the path, with SQLite's online backup."""
        assert self._opened is not None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self._opened.path.absolute().with_name(
            f"{self._opened.path.name}.rescued-{stamp}-{os.getpid()}"
        )
        try:
            copy = sqlite3.connect(str(target))
            try:
                self.conn.backup(copy)
            finally:
                copy.close()
        except (sqlite3.Error, OSError) as exc:
            return f"Saving this process's copy failed ({exc})."
        log.warning("database_file_rescued", copy=str(target))
        return f"This process's copy of it was saved to {target}."

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self.conn.close()
