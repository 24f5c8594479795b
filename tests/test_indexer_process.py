"""The real ``hodlai indexer`` process killed with SIGKILL in the middle of a backfill, twice,
then restarted: every request of the chain is stored, none twice."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from shared.db import connect
from tests.chain_fixtures import DeployedStack
from tests.test_indexer_support import ChainDriver, creations_per_id, stored_requests

BLOCKS = 120
REQUESTS_PER_BLOCK = 20
# Seconds to wait for the cursor to reach a kill point, or for --once to finish.
PROCESS_LIMIT_S = 60.0


def _env(deployed: DeployedStack, db_path: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "HODLAI_DB_PATH": str(db_path),
        "HODLAI_RPC_URLS": deployed.rpc_url,
        "HODLAI_PROVIDER_ADDRESS": deployed.deployment.provider_address,
        "HODLAI_START_BLOCK": str(deployed.deployment.deploy_block),
        "HODLAI_CONFIRMATIONS": "0",
        "HODLAI_INDEXER_MAX_RANGE": "1",  # one block per poll: a long backfill to kill
        "LOG_LEVEL": "WARNING",
    }


def _cursor(db_path: Path) -> int:
    if not db_path.exists():
        return -1
    try:
        conn = sqlite3.connect(db_path, timeout=1)
        try:
            row = conn.execute("SELECT block_number FROM cursors").fetchone()
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return -1  # the schema is not there yet
    return -1 if row is None else int(row[0])


def _kill_when_cursor_passes(process: subprocess.Popen[bytes], db_path: Path, block: int) -> int:
    deadline = time.monotonic() + PROCESS_LIMIT_S
    while _cursor(db_path) < block:
        assert process.poll() is None, "the indexer exited before it could be killed"
        assert time.monotonic() < deadline, "the indexer made no progress"
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return _cursor(db_path)


def test_sigkill_during_backfill_then_restart_loses_and_duplicates_nothing(
    deployed: DeployedStack, db_path: Path
) -> None:
    driver = ChainDriver(
        deployed.rpc_url, deployed.deployment, deployed.anvil.accounts[2].private_key
    )
    try:
        for i in range(BLOCKS):
            tx = driver.ask_batch(REQUESTS_PER_BLOCK, f"block {i}")
        driver.wait(tx)
        truth = driver.requested_ids()
        head = driver.head()
    finally:
        driver.close()
    assert len(truth) == BLOCKS * REQUESTS_PER_BLOCK
    command = [sys.executable, "-m", "shared.cli", "indexer"]
    env = _env(deployed, db_path)

    killed_at = []
    for fraction in (0.3, 0.6):
        process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
        killed_at.append(_kill_when_cursor_passes(process, db_path, int(head * fraction)))
    assert killed_at[0] < killed_at[1] < head, killed_at
    print("killed at", killed_at, "head", head)

    done = subprocess.run(
        [*command, "--once"], env=env, capture_output=True, timeout=PROCESS_LIMIT_S, check=False
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]

    conn = connect(db_path)
    assert set(stored_requests(conn)) == truth
    creations = creations_per_id(conn)
    assert set(creations) == truth and set(creations.values()) == {1}
    assert _cursor(db_path) == head
    statuses = {row["status"] for row in stored_requests(conn).values()}
    assert statuses == {"PENDING"}


def test_sigterm_stops_the_indexer_cleanly_with_the_cursor_committed(
    deployed: DeployedStack, db_path: Path
) -> None:
    driver = ChainDriver(
        deployed.rpc_url, deployed.deployment, deployed.anvil.accounts[2].private_key
    )
    try:
        driver.wait(driver.ask_batch(10, "before the stop"))
        head = driver.head()
    finally:
        driver.close()
    env = _env(deployed, db_path) | {"LOG_LEVEL": "INFO"}
    process = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "indexer"], env=env, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + PROCESS_LIMIT_S
    while _cursor(db_path) < head:
        assert time.monotonic() < deadline, "the indexer made no progress"
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=PROCESS_LIMIT_S)
    assert process.returncode == 0
    events = [line for line in stderr.decode().splitlines() if line.startswith("{")]
    assert any('"stop_requested"' in line for line in events)
    assert any('"indexer_stopped"' in line for line in events)
    assert len(stored_requests(connect(db_path))) == 10
