"""The indexer halts for an operator instead of rolling back what cannot be an ordinary reorg
(issue 10 item 1): the chain behind the URL turning into another chain or a much shorter one,
or a reorg deeper than HODLAI_MAX_REORG_DEPTH. Nothing is removed; the halt is in the
database for the fulfiller (shared.halt.halted); ``hodlai indexer-resume`` clears it."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from eth_account import Account
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from shared import halt
from shared.chain.health import ProgressHealth
from shared.db import connect
from shared.errors import DatabaseMismatchError
from shared.keys import load_private_key
from tests.chain_fixtures import DeployedStack
from tests.rpc_proxy import RpcProxy
from tests.test_indexer_support import (
    ChainDriver,
    caught_up_to,
    indexer_settings,
    run_indexer,
    stored_requests,
)
from workers.devnet.anvil import Anvil
from workers.devnet.deploy import deploy_stack


@pytest.fixture
def driver(deployed: DeployedStack) -> Iterator[ChainDriver]:
    chain = ChainDriver(
        deployed.rpc_url, deployed.deployment, deployed.anvil.accounts[2].private_key
    )
    yield chain
    chain.close()


def _state(conn: sqlite3.Connection) -> tuple[object, ...]:
    """Everything a rollback would touch."""
    return (
        [tuple(r) for r in conn.execute("SELECT * FROM requests ORDER BY request_id")],
        [tuple(r) for r in conn.execute("SELECT * FROM fulfillments ORDER BY request_id")],
        conn.execute("SELECT block_number FROM cursors").fetchall(),
        conn.execute("SELECT COUNT(*) FROM transitions").fetchone()[0],
    )


def _removed(conn: sqlite3.Connection) -> int:
    sql = "SELECT COUNT(*) FROM transitions WHERE to_status = 'REMOVED'"
    return int(conn.execute(sql).fetchone()[0])


def _resume(db_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", ""), "HODLAI_DB_PATH": str(db_path)}
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", "indexer-resume", *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("other_chain_id", [56, 31337], ids=["another_chain", "shorter_chain"])
async def test_rpc_switching_to_another_or_much_shorter_chain_halts_and_removes_nothing(
    deployed: DeployedStack, driver: ChainDriver, db_path: Path, other_chain_id: int
) -> None:
    oracle = load_private_key(deployed.oracle_key_file)
    for i in range(4):
        driver.wait(driver.ask(f"on our chain {i}"))
    driver.wait(driver.fulfill(oracle, 1, "BUY"))
    driver.mine(30)
    with (
        RpcProxy(deployed.rpc_url) as proxy,
        Anvil(chain_id=other_chain_id) as other,
    ):
        # The chains may share their first blocks (same transactions in the same second);
        # then the other one is a fork 30+ blocks deep: deeper than this limit.
        settings = indexer_settings(db_path, [proxy.url], deployed.deployment,
                                    max_reorg_depth=20)  # fmt: skip
        with capture_logs() as logs:
            running = asyncio.create_task(
                run_indexer(settings, until=lambda ix: ix.halt_reason is not None, limit_s=60)
            )
            await _until(db_path, lambda c: _cursor(c) >= driver.head())
            conn = connect(db_path)
            before = _state(conn)
            assert len(stored_requests(conn)) == 4

            # The other chain has the same contracts at the same addresses (same deployer and
            # nonces) and requests with the same ids but other content, and a head far below.
            theirs = deploy_stack(other.rpc_url, other.accounts[0].private_key,
                                  oracle_address=Account.from_key(oracle).address,
                                  treasury=other.accounts[1].address)  # fmt: skip
            assert theirs.provider_address == deployed.deployment.provider_address
            other_driver = ChainDriver(other.rpc_url, theirs, other.accounts[2].private_key)
            for i in range(3):
                await asyncio.to_thread(other_driver.wait, other_driver.ask(f"THEIR chain {i}"))
            other_driver.close()
            proxy.upstream = other.rpc_url  # the URL now serves the other chain
            indexer = await asyncio.wait_for(running, 30)

        assert _state(conn) == before, "the indexer changed stored data on another chain"
        assert _removed(conn) == 0
        reason = halt.halted(conn, halt.INDEXER)
        assert reason is not None and "nothing was rolled back" in reason
        if other_chain_id == 56:
            assert "chain 56, not 31337" in reason
        else:
            assert "no stored block hash" in reason or "HODLAI_MAX_REORG_DEPTH=20" in reason
        halted = [e for e in logs if e["event"] == "indexer_halted"]
        assert halted and halted[0]["log_level"] == "error"
        assert not any(e["event"] == "reorg_rolled_back" for e in logs)
        assert REGISTRY.get_sample_value("hodlai_indexer_halted") == 1
        problem = indexer.progress_problem()
        assert problem is not None and problem.startswith("halted: ")

        # Restarted on the wrong chain it refuses to start (another chain id) or stays
        # halted (the same id), and still changes nothing.
        if other_chain_id == 56:
            with pytest.raises(DatabaseMismatchError):
                await run_indexer(settings)
        else:
            await run_indexer(settings, until=lambda ix: ix.polls_without_progress >= 3)
        assert _state(conn) == before

        # The operator fixes the URL and resumes: the indexer carries on where it was.
        proxy.upstream = deployed.rpc_url
        driver.wait(driver.ask("after the fix"))
        done = _resume(db_path)
        assert done.returncode == 0, done.stderr
        assert "indexer resumed (resume); it had halted: " in done.stdout
        assert halt.halted(conn, halt.INDEXER) is None
        await run_indexer(settings, until=caught_up_to(driver.head()))
    assert set(stored_requests(conn)) == driver.requested_ids()
    assert _removed(conn) == 0
    assert REGISTRY.get_sample_value("hodlai_indexer_halted") == 0
    assert "not halted" in _resume(db_path).stdout


async def test_reorg_deeper_than_the_limit_halts_until_the_operator_allows_the_rollback(
    deployed: DeployedStack, driver: ChainDriver, db_path: Path
) -> None:
    settings = indexer_settings(db_path, [deployed.rpc_url], deployed.deployment,
                                max_reorg_depth=3)  # fmt: skip
    stop = asyncio.Event()
    indexer_task = asyncio.create_task(
        run_indexer(settings, until=lambda ix: stop.is_set() and ix.caught_up, limit_s=60)
    )

    def build() -> int:
        for i in range(6):
            driver.wait(driver.ask(f"block {i}"))
        return driver.head()

    head = await asyncio.to_thread(build)
    await _until(db_path, lambda conn: _cursor(conn) >= head)
    conn = connect(db_path)
    before = _state(conn)
    # Replace the last 5 blocks (their requests vanish): deeper than the limit of 3.
    await asyncio.to_thread(driver.reorg, 5)
    await _until(db_path, lambda c: halt.halted(c, halt.INDEXER) is not None)
    reason = halt.halted(conn, halt.INDEXER)
    assert reason is not None and "HODLAI_MAX_REORG_DEPTH=3" in reason
    await asyncio.sleep(0.3)  # halted polls change nothing
    assert _state(conn) == before and _removed(conn) == 0

    done = _resume(db_path, "--allow-rollback", "--json")
    assert done.returncode == 0, done.stderr
    assert '"resolution": "allow_rollback"' in done.stdout
    await _until(db_path, lambda c: _removed(c) > 0 and halt.halted(c, halt.INDEXER) is None)
    stop.set()
    await asyncio.wait_for(indexer_task, 30)
    assert set(stored_requests(conn)) == driver.requested_ids()
    assert len(driver.requested_ids()) == 1


def test_progress_health_reports_a_halted_indexer_as_unhealthy() -> None:
    class Halted:
        def progress_problem(self) -> str | None:
            return "halted: test"

    health = ProgressHealth(stale_after_s=60)
    health.beat()
    assert health.check()[0] is True
    health.watch(Halted())
    assert health.check() == (False, "halted: test")


def _cursor(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT block_number FROM cursors").fetchone()
    return -1 if row is None else int(row[0])


async def _until(
    db_path: Path, done: Callable[[sqlite3.Connection], bool], limit_s: float = 30.0
) -> None:
    conn = connect(db_path)
    try:
        async with asyncio.timeout(limit_s):
            while True:
                if done(conn):
                    return
                await asyncio.sleep(0.05)
    finally:
        conn.close()
