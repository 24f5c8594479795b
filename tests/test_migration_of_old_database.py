"""Each executor owns its tables (issue 19): a database made by hodlai before the oracle had a
migration set of its own is upgraded in place, every row kept; a new database's core set
creates no oracle table; transitions name their machine, with no executor default."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path

import pytest

from shared.db import connect
from shared.migrations import SCHEMA_MIGRATIONS_DDL, MigrationSet, core_set, load_set
from tests.test_migrations import _schema
from workers.oracle import request_id as rid
from workers.oracle import store
from workers.oracle.store import Status

ROOT = Path(__file__).resolve().parent.parent

# The core migrations and the dispatcher's as they were released before issue 19 (main at
# e8a6a04): the database below is built from exactly these files, as that hodlai built it.
# A change of any of them is an edit of a released migration, which the runbook forbids.
RELEASED_CORE = 14
RELEASED_DISPATCH = 2
RELEASED_SHA256 = "e941f09a389248e39c8fb8ea56e37ee26d3fc8e3c38e9ce8fa7ba2e647941116"

BIG_ID = 2**200 + 5  # a uint256 request id far beyond SQLite's INTEGER
OLD_COLUMNS: dict[str, list[str]] = {}


def _released_files() -> list[Path]:
    core = sorted((ROOT / "shared/migrations/core").glob("00*.sql"))[:RELEASED_CORE]
    dispatch = sorted((ROOT / "workers/dispatch/migrations").glob("00*.sql"))[:RELEASED_DISPATCH]
    return [*core, *dispatch]


def _released_digest() -> str:
    digest = hashlib.sha256()
    for path in _released_files():
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _dispatch_set() -> MigrationSet:
    return load_set("dispatch", "workers.dispatch.migrations")


def _apply(conn: sqlite3.Connection, migration_set: MigrationSet, upto: int) -> None:
    for migration in migration_set.migrations[:upto]:
        conn.execute("BEGIN IMMEDIATE")
        for statement in migration.statements():
            conn.execute(statement)
        conn.execute(
            "INSERT INTO schema_migrations (set_name, version, name, applied_at) VALUES (?,?,?,?)",
            (migration_set.name, migration.version, migration.name, time.time()),
        )
        conn.execute("COMMIT")


def _request_row(request_id: int, status: str, block: int) -> dict[str, object]:
    return {
        "request_id": rid.encode(request_id), "shard_key": rid.shard_key(request_id),
        "status": status, "requester": "0x" + "ab" * 20, "model": "hodlai-local",
        "system_prompt": "You manage a vault.", "state_string": "price=1.00",
        "action_set": '["BUY","SELL","HOLD"]', "content_hash": "0x" + "cd" * 32,
        "block_number": block, "block_hash": "0x" + f"{block:064x}", "tx_hash": "0x" + "ee" * 32,
        "log_index": 0, "created_at": 1.5, "updated_at": 2.5,
    }  # fmt: skip


def _insert(conn: sqlite3.Connection, table: str, row: dict[str, object]) -> None:
    columns = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    conn.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", tuple(row.values()))


def _main_database(path: Path) -> None:
    """A database as hodlai before issue 19 made it (core 1..14, dispatch 1..2), with rows
    of the oracle (requests in two statuses, a fulfilment, their transitions, a fulfilment
    transaction) and a transition that relies on migration 4's default machine."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(SCHEMA_MIGRATIONS_DDL)
    _apply(conn, core_set(), RELEASED_CORE)
    _apply(conn, _dispatch_set(), RELEASED_DISPATCH)
    conn.execute("INSERT INTO meta (key, value) VALUES ('chain_id', '31337')")
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('provider_address', ?)", ("0x" + "12" * 20,)
    )
    fulfilled = _request_row(7, "FULFILLED", 10)
    fulfilled.update(
        answer_action="HOLD", answer_cid="bafy", fulfilled_block=12,
        fulfilled_action="HOLD", fulfilled_cid="bafy", fulfilled_tx_hash="0x01",
    )  # fmt: skip
    _insert(conn, "requests", fulfilled)
    _insert(conn, "requests", _request_row(BIG_ID, "PENDING", 11))
    _insert(conn, "fulfillments", {
        "request_id": "7", "requester": "0x" + "ab" * 20, "result_action": "HOLD",
        "reasoning_cid": "bafy", "block_number": 12, "block_hash": "0x" + "0c" * 32,
        "tx_hash": "0x01", "log_index": 1, "prior_status": "PROCESSED", "seen_at": 3.0,
    })  # fmt: skip
    for entity, to_status, machine in (
        ("7", "PENDING", "oracle.request"),
        ("7", "FULFILLED", "oracle.request"),
        (str(BIG_ID), "PENDING", None),  # written before its writer named the machine
        ("job-1", "OPEN", "dispatch.job"),
    ):
        row: dict[str, object] = {"entity_id": entity, "to_status": to_status,
                                  "actor": "indexer", "at": 4.0}  # fmt: skip
        if machine is not None:
            row["machine"] = machine
        _insert(conn, "transitions", row)
    # Ids up to 40 were handed out (rows deleted before migration 13 made the trail
    # append-only): AUTOINCREMENT promises they are never handed out again.
    conn.execute("UPDATE sqlite_sequence SET seq = 40 WHERE name = 'transitions'")
    _insert(conn, "txs", {
        "purpose": "fulfil", "subject": "7", "version": 1, "fingerprint": "0x" + "cd" * 32,
        "sender": "0x" + "34" * 20, "nonce": 0, "tx_hash": "0x01", "raw_tx": "0x02",
        "to_address": "0x" + "12" * 20, "value_wei": "0", "calldata": "0x", "gas_limit": 90000,
        "status": "MINED", "created_at": 3.0, "updated_at": 3.5, "mined_block": 12,
    })  # fmt: skip
    for table in ("requests", "fulfillments", "transitions", "txs", "state_counts", "meta"):
        OLD_COLUMNS[table] = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
    conn.close()


def _rows(conn: sqlite3.Connection, table: str) -> list[tuple[object, ...]]:
    columns = ", ".join(OLD_COLUMNS[table])
    return [tuple(r) for r in conn.execute(f"SELECT {columns} FROM {table} ORDER BY 1, 2")]


def test_the_released_migrations_the_old_database_is_built_from_are_unchanged() -> None:
    assert [p.name[:4] for p in _released_files()] == [
        *(f"{n:04d}" for n in range(1, RELEASED_CORE + 1)),
        *(f"{n:04d}" for n in range(1, RELEASED_DISPATCH + 1)),
    ]
    assert _released_digest() == RELEASED_SHA256


def test_a_database_made_before_issue_19_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "main.db"
    _main_database(path)
    before = sqlite3.connect(path)
    rows = {t: _rows(before, t) for t in OLD_COLUMNS}
    max_id = before.execute("SELECT MAX(id) FROM transitions").fetchone()[0]
    before.close()

    conn = connect(path)

    # Every row is kept as it was, in every table the oracle and the core share.
    for table in ("requests", "fulfillments", "txs", "meta"):
        assert _rows(conn, table) == rows[table], table
    # Every count kept; the machines of executor sets newer than the database start at zero.
    counts = set(_rows(conn, "state_counts"))
    assert set(rows["state_counts"]) <= counts
    assert {r[-1] for r in counts - set(rows["state_counts"])} <= {0}
    # The transitions too; the row that read migration 4's default now stores it.
    after = _rows(conn, "transitions")
    machine = OLD_COLUMNS["transitions"].index("machine")
    assert after == rows["transitions"]
    assert [r[machine] for r in after].count("oracle.request") == 3
    assert conn.execute("SELECT MAX(id) FROM transitions").fetchone()[0] == max_id
    # The oracle's set has adopted its tables; the counts kept by their triggers still agree.
    recorded = conn.execute(
        "SELECT set_name, MAX(version) FROM schema_migrations GROUP BY set_name"
    ).fetchall()
    assert dict(recorded).items() >= {"core": core_set().latest, "dispatch": 2, "oracle": 1}.items()
    assert store.status_counts(conn)[Status.PENDING] == 1
    assert store.status_counts(conn)[Status.FULFILLED] == 1
    # ... and the oracle's code works on them: the old PENDING request can be claimed.
    claimed = store.claim(conn, owner="inference-0", limit=5, now=time.time())
    assert [c.request_id for c in claimed] == [BIG_ID]
    assert store.status_counts(conn)[Status.PENDING] == 1  # a lease is not a status
    # The upgraded schema is exactly a new database's.
    assert _schema(conn) == _schema(connect(tmp_path / "new.db"))


def test_the_rebuilt_audit_trail_stays_append_only_and_never_reuses_an_id(
    tmp_path: Path,
) -> None:
    path = tmp_path / "main.db"
    _main_database(path)
    conn = connect(path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM transitions WHERE entity_id = '7'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE transitions SET actor = 'someone else'")
    conn.execute(
        "INSERT INTO transitions (entity_id, to_status, actor, at, machine)"
        " VALUES ('7', 'FAILED', 'operator', 5.0, 'oracle.request')"
    )
    assert conn.execute("SELECT MAX(id) FROM transitions").fetchone()[0] == 41


def test_a_transition_must_name_its_machine(tmp_path: Path) -> None:
    conn = connect(tmp_path / "new.db")
    columns = {r[1]: r for r in conn.execute("PRAGMA table_info(transitions)")}
    assert columns["machine"][4] is None  # no default value
    with pytest.raises(sqlite3.IntegrityError, match=r"NOT NULL .*transitions\.machine"):
        conn.execute(
            "INSERT INTO transitions (entity_id, to_status, actor, at) VALUES ('x', 'A', 'me', 1)"
        )


ORACLE_OBJECTS = {
    ("table", "requests"),
    ("table", "fulfillments"),
    ("view", "v_stuck"),
    ("view", "v_status_counts"),
    ("trigger", "trg_oracle_request_count_insert"),
    ("index", "idx_fulfillments_block"),
}


def test_a_new_database_gets_the_oracle_tables_from_the_oracle_set_only(tmp_path: Path) -> None:
    core = core_set()
    assert core.baseline is not None
    conn = sqlite3.connect(tmp_path / "core-only.db", isolation_level=None)
    conn.execute(SCHEMA_MIGRATIONS_DDL)
    for statement in core.baseline.statements():
        conn.execute(statement)
    for migration in core.migrations[core.baseline.version :]:
        for statement in migration.statements():
            conn.execute(statement)
    objects = set(conn.execute("SELECT type, name FROM sqlite_master"))
    assert {("table", "transitions"), ("table", "txs"), ("table", "state_counts")} <= objects
    assert not ORACLE_OBJECTS & objects, "the core set creates the oracle's objects"
    assert (
        conn.execute("SELECT COUNT(*) FROM state_counts WHERE machine LIKE 'oracle.%'").fetchone()[
            0
        ]
        == 0
    )

    node = connect(tmp_path / "node.db")  # with the oracle installed, its set creates them
    made = {tuple(r) for r in node.execute("SELECT type, name FROM sqlite_master")}
    assert made >= ORACLE_OBJECTS
    recorded = node.execute("SELECT version, name FROM schema_migrations WHERE set_name = 'core'")
    assert [v for v, _ in recorded] == [m.version for m in core.migrations]


def test_the_baseline_stands_for_the_migrations_it_replaces(tmp_path: Path) -> None:
    # Its tables, less the oracle's, are what migrations 1..14 build.
    core = core_set()
    assert core.baseline is not None and core.baseline.version == RELEASED_CORE
    old = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    old.execute(SCHEMA_MIGRATIONS_DDL)
    _apply(old, core, RELEASED_CORE)
    new = sqlite3.connect(tmp_path / "new.db", isolation_level=None)
    new.execute(SCHEMA_MIGRATIONS_DDL)
    for statement in core.baseline.statements():
        new.execute(statement)
    oracle_names = {name for _, name in ORACLE_OBJECTS} | {
        name
        for (name,) in old.execute(
            "SELECT name FROM sqlite_master WHERE tbl_name IN ('requests', 'fulfillments')"
        )
    }
    old_schema = {k: v for k, v in _schema(old).items() if k[1] not in oracle_names}
    assert old_schema == _schema(new)
    core_counts = "SELECT machine, status, n FROM state_counts WHERE machine NOT LIKE 'oracle.%'"
    assert sorted(old.execute(core_counts)) == sorted(new.execute(core_counts))
