"""Durable by construction: the transaction manager refuses a NORMAL connection, long-running
processes open FULL unless they opt out, and the database file is owner-only (0600, its
-wal and -shm too) unless HODLAI_DB_GROUP_WRITABLE asks for group write."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from shared.chain.rpc import RpcClient
from shared.db import AsyncDatabase, connect
from shared.errors import NotDurableError
from shared.instance import hold_role
from shared.metrics import Health
from shared.runtime import WorkerSpec, run_worker
from shared.tx.fees import GWEI, FeePolicy
from shared.tx.manager import TxManager, TxPolicy
from shared.tx.senders import claim_sender
from shared.tx.signer import LocalSigner

KEY = bytes.fromhex("ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcab7cbed5f02ff80a")


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 0: whatever mode a file gets is the node's doing, not the umask's."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def test_the_transaction_manager_refuses_a_normal_connection(tmp_path: Path) -> None:
    db = AsyncDatabase(connect(tmp_path / "node.db"))  # NORMAL
    signer = LocalSigner(KEY, chain_id=31337)
    claim = claim_sender(
        tmp_path / "node.db", db.conn, signer.address, owner="test", chain_id=signer.chain_id
    )
    try:
        with pytest.raises(NotDurableError, match=r"the transaction manager needs .*FULL"):
            TxManager(
                db=db,
                rpc=RpcClient(["http://127.0.0.1:9"]),
                signer=signer,
                policy=TxPolicy(
                    fees=FeePolicy(max_fee_per_gas=GWEI, max_priority_fee_per_gas=GWEI)
                ),
                handlers={},
                claim=claim,
            )
    finally:
        claim.release(db.conn)
        db.close()


def _synchronous_of(spec: WorkerSpec) -> int:
    """Run ``spec`` through run_worker with a service that only reads its connection's
    ``synchronous`` and stops."""
    seen: list[int] = []

    class Probe:
        async def start(self, stop: asyncio.Event) -> bool:
            return False

        async def step(self) -> float:
            return 0.0

        async def stop(self) -> None:
            return None

    @asynccontextmanager
    async def build(db: AsyncDatabase, _stop: asyncio.Event) -> AsyncIterator[Probe]:
        seen.append(await db.run(lambda c: int(c.execute("PRAGMA synchronous").fetchone()[0])))
        yield Probe()

    assert run_worker(spec, build, log_level="WARNING") == 0
    return seen[0]


def test_a_long_running_process_opens_full_unless_it_opts_out(tmp_path: Path) -> None:
    spec = WorkerSpec(process="probe", executor="test", db_path=tmp_path / "node.db",
                      health=Health(stale_after_s=60))  # fmt: skip
    assert _synchronous_of(spec) == 2  # FULL: the default is the safe one for a new executor
    opted_out = WorkerSpec(process="probe", executor="test", db_path=tmp_path / "node.db",
                           health=Health(stale_after_s=60), durable=False)  # fmt: skip
    assert _synchronous_of(opted_out) == 1  # NORMAL, as the indexer and inference ask


@pytest.mark.usefixtures("open_umask")
def test_a_new_database_and_its_wal_and_shm_are_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    conn = connect(path, durable=True)
    conn.execute("INSERT INTO meta (key, value) VALUES ('x', '1')")  # the WAL gets written
    for name in ("node.db", "node.db-wal", "node.db-shm"):
        assert _mode(tmp_path / name) == 0o600, name
    conn.close()


@pytest.mark.usefixtures("open_umask")
def test_a_database_created_by_a_role_lock_is_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    lock = hold_role(path, "indexer")  # a role process locks (and creates) the file first
    try:
        assert _mode(path) == 0o600
    finally:
        lock.release()


@pytest.mark.usefixtures("open_umask")
def test_group_write_is_a_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HODLAI_DB_GROUP_WRITABLE", "true")
    conn = connect(tmp_path / "shared.db")
    conn.execute("INSERT INTO meta (key, value) VALUES ('x', '1')")
    for name in ("shared.db", "shared.db-wal", "shared.db-shm"):
        assert _mode(tmp_path / name) == 0o660, name
    conn.close()
    monkeypatch.delenv("HODLAI_DB_GROUP_WRITABLE")
    lock = hold_role(tmp_path / "locked.db", "indexer")
    lock.release()
    assert _mode(tmp_path / "locked.db") == 0o600
    assert _mode(connect(tmp_path / "explicit.db", group_writable=True).opened.path) == 0o660  # type: ignore[union-attr]


def test_group_write_is_exact_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o077)  # would take the group's bits away
    try:
        connect(tmp_path / "node.db", group_writable=True).close()
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "node.db") == 0o660


def test_an_existing_files_mode_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    connect(path).close()
    os.chmod(path, 0o640)  # the operator's choice
    connect(path).close()
    assert _mode(path) == 0o640
