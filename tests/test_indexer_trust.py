"""The indexer against answers it must not trust, through a real anvil and a lying loopback
proxy (tests/indexer_fakes.py): other log data under a good block hash is refused and the URL
distrusted (issue 10 item 5); /healthz turns unhealthy when no poll makes progress (issue 10
item 11); HODLAI_START_BLOCK above the head waits instead of moving the cursor (item 10)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from eth_abi.abi import encode as abi_encode
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from shared.db import connect
from shared.keys import load_private_key
from tests.chain_fixtures import DeployedStack
from tests.indexer_fakes import LyingProxy
from tests.test_indexer_support import (
    ASK_GAS,
    ASK_SELECTOR,
    ChainDriver,
    caught_up_to,
    indexer_settings,
    run_indexer,
    stored_requests,
)
from workers.oracle.indexer.main import Indexer

# Seconds a test waits for /healthz to change.
HEALTH_LIMIT_S = 30.0


@pytest.fixture
def driver(deployed: DeployedStack) -> Iterator[ChainDriver]:
    chain = ChainDriver(
        deployed.rpc_url, deployed.deployment, deployed.anvil.accounts[2].private_key
    )
    yield chain
    chain.close()


def _after_steps(count: int) -> Callable[[Indexer], bool]:
    """``until`` for run_indexer: true after ``count`` steps."""
    steps = [0]

    def done(_: Indexer) -> bool:
        steps[0] += 1
        return steps[0] >= count

    return done


def _rows(conn: sqlite3.Connection) -> list[tuple[object, ...]]:
    return [
        tuple(r)
        for r in conn.execute(
            "SELECT request_id, status, generation, content_hash, state_string, action_set, "
            "fail_reason, fulfilled_action FROM requests ORDER BY request_id"
        )
    ]


async def test_other_log_data_under_an_unchanged_hash_is_refused_and_the_url_distrusted(
    deployed: DeployedStack, driver: ChainDriver, db_path: Path
) -> None:
    oracle = load_private_key(deployed.oracle_key_file)
    for i in range(5):
        driver.wait(driver.ask(f"good {i}"))
    driver.wait(driver.fulfill(oracle, 2, "BUY"))
    direct = indexer_settings(db_path, [deployed.rpc_url], deployed.deployment)
    await run_indexer(direct, until=caught_up_to(driver.head()))
    conn = connect(db_path)
    before = _rows(conn)
    assert [r[1] for r in before] == ["PENDING", "FULFILLED", "PENDING", "PENDING", "PENDING"]
    conflicts = REGISTRY.get_sample_value("hodlai_indexer_log_conflicts_total") or 0.0

    with LyingProxy(deployed.rpc_url) as liar:
        liar.alter_logs = True
        # The lying URL first, the honest node as failover; a backup re-scan every poll.
        settings = indexer_settings(db_path, [liar.url, deployed.rpc_url], deployed.deployment,
                                    indexer_rescan_every=1)  # fmt: skip
        with capture_logs() as logs:
            await run_indexer(settings, until=_after_steps(12))
        assert liar.stats["altered_logs"] > 0

    assert _rows(conn) == before, "rows were rewritten from altered log data"
    assert (
        conn.execute("SELECT COUNT(*) FROM transitions WHERE note LIKE '%replaced%'").fetchone()[0]
        == 0
    )
    refused = [e for e in logs if e["event"] == "log_data_conflict"]
    assert refused and refused[0]["log_level"] == "error"
    assert "same block hash" in refused[0]["error"]
    assert any(
        e["event"] == "rpc_failover" and e["reason"] == "log data differs under an unchanged hash"
        for e in logs
    )
    assert not any(e["event"] == "request_content_replaced" for e in logs)
    assert (REGISTRY.get_sample_value("hodlai_indexer_log_conflicts_total") or 0) > conflicts


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _health(port: int) -> tuple[int, str]:
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2.0)
    except httpx.HTTPError:
        return 0, ""
    return answer.status_code, answer.text


async def _wait_health(port: int, code: int) -> str:
    deadline = time.monotonic() + HEALTH_LIMIT_S
    seen = (0, "")
    while time.monotonic() < deadline:
        seen = await asyncio.to_thread(_health, port)
        if seen[0] == code:
            return seen[1]
        await asyncio.sleep(0.1)
    raise AssertionError(f"/healthz stayed {seen} instead of {code}")


async def test_healthz_turns_unhealthy_when_no_poll_makes_progress(
    deployed: DeployedStack, driver: ChainDriver, db_path: Path
) -> None:
    driver.wait(driver.ask("one"))
    port = _free_port()
    with LyingProxy(deployed.rpc_url) as proxy:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HODLAI_DB_PATH": str(db_path),
            "HODLAI_RPC_URLS": proxy.url,
            "HODLAI_PROVIDER_ADDRESS": deployed.deployment.provider_address,
            "HODLAI_START_BLOCK": str(deployed.deployment.deploy_block),
            "HODLAI_CONFIRMATIONS": "0",
            "HODLAI_METRICS_PORT": str(port),
            "HODLAI_INDEXER_POLL_INTERVAL_S": "0.05",
            "HODLAI_INDEXER_UNHEALTHY_AFTER_POLLS": "5",
            "LOG_LEVEL": "WARNING",
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shared.cli", "indexer", env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            assert '"ok": true' in await _wait_health(port, 200)
            # The node keeps reporting a head but serves no headers: every poll is
            # inconsistent, the loop itself never fails.
            proxy.null_headers = True
            await asyncio.to_thread(driver.wait, driver.ask("two"))
            detail = await _wait_health(port, 503)
            assert "no progress for" in detail and "polls" in detail
            proxy.null_headers = False
            await _wait_health(port, 200)
        finally:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 30)
    assert len(stored_requests(connect(db_path))) == 2


async def test_start_block_above_the_head_waits_and_leaves_the_cursor(
    deployed: DeployedStack, driver: ChainDriver, db_path: Path
) -> None:
    for i in range(2):
        driver.wait(driver.ask(f"before {i}"))
    settings = indexer_settings(db_path, [deployed.rpc_url], deployed.deployment)
    await run_indexer(settings, until=caught_up_to(driver.head()))
    conn = connect(db_path)
    cursor = conn.execute("SELECT block_number FROM cursors").fetchone()[0]
    typo = settings.model_copy(
        update={"start_block": driver.head() + 1000, "indexer_unhealthy_after_polls": 3}
    )
    with capture_logs() as logs:
        waiting = await run_indexer(typo, until=_after_steps(6))
    assert conn.execute("SELECT block_number FROM cursors").fetchone()[0] == cursor
    warned = [e for e in logs if e["event"] == "start_block_above_head"]
    assert warned and warned[0]["log_level"] == "warning"
    assert warned[0]["start_block"] == driver.head() + 1000
    problem = waiting.progress_problem()
    assert problem is not None and "HODLAI_START_BLOCK" in problem
    # The operator corrects the setting: nothing was skipped.
    driver.wait(driver.ask("after"))
    await run_indexer(settings, until=caught_up_to(driver.head()))
    assert set(stored_requests(conn)) == driver.requested_ids()


def test_retry_of_a_request_whose_text_is_not_utf8_is_refused(
    deployed: DeployedStack, driver: ChainDriver, db_path: Path
) -> None:
    # The vault sends a prompt that is not UTF-8 (string and bytes share one ABI encoding).
    data = ASK_SELECTOR + abi_encode(
        ["string", "bytes", "string", "string[]"],
        [driver.model, b"sell \xff\xfe now", "state", ["BUY", "SELL"]],
    )
    raw = driver._sign(driver.account.key, deployed.deployment.vault_address, data,
                       driver.fee(driver.model), ASK_GAS)  # fmt: skip
    driver.wait(driver.send_raw(raw))
    settings = indexer_settings(db_path, [deployed.rpc_url], deployed.deployment)
    asyncio.run(run_indexer(settings, until=caught_up_to(driver.head())))
    conn = connect(db_path)
    (row,) = stored_requests(conn).values()
    assert row["status"] == "FAILED" and "not valid UTF-8" in row["fail_reason"]
    env = {"PATH": os.environ.get("PATH", ""), "HODLAI_DB_PATH": str(db_path)}
    done = subprocess.run(
        [sys.executable, "-m", "shared.cli", "retry", str(row["request_id"])],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "cannot be retried: its text is not what the vault sent" in done.stderr
    assert "Traceback" not in done.stderr
    assert stored_requests(conn)[1]["status"] == "FAILED"
