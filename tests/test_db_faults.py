"""The database file deleted under running processes: each real process notices within
seconds, stops with exit code 2 and a message naming the file, and first saves what it
still sees (the fulfiller's ``txs`` audit trail included) beside it. A process started
while the deleted file's WAL is still in use refuses to create a new database there."""

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
from tests.test_fulfiller_support import Chain, answer, fulfiller_env, start_fulfiller, tx_rows

# Seconds a process may take to notice a deleted database and stop (it checks every second).
NOTICE_S = 15.0
WAIT_S = 30.0


def rescued(directory: Path) -> list[Path]:
    return sorted(directory.glob("node.db.rescued-*"))


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [tuple(r) for r in conn.execute(sql)]
    finally:
        conn.close()


def wait_for(condition: object, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():  # type: ignore[operator]
        assert proc.poll() is None, f"exited with {proc.returncode} before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_fulfiller_whose_database_is_deleted_stops_and_saves_its_txs(
    deployed: DeployedStack, tmp_path: Path
) -> None:
    chain = Chain(deployed)
    ids = chain.ask(5)
    db = tmp_path / "node.db"
    conn = connect(db)
    answer(conn, ids, requester=chain.vault.address)
    log = tmp_path / "fulfiller.log"
    proc = start_fulfiller(fulfiller_env(deployed, db), log)
    try:
        wait_for(lambda: {r["status"] for r in tx_rows(conn)} == {"MINED"}, proc, "mined txs")
        signed = sorted(r["tx_hash"] for r in tx_rows(conn))
        conn.close()
        db.unlink()
        assert proc.wait(timeout=NOTICE_S) == 2, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    output = log.read_text()
    assert "was deleted or moved while this process had it open" in output
    (copy,) = rescued(tmp_path)
    assert str(copy) in output and "Traceback" not in output
    assert sorted(str(r[0]) for r in rows(copy, "SELECT tx_hash FROM txs")) == signed


def test_an_indexer_whose_database_is_deleted_stops_and_no_new_one_starts_beside_its_wal(
    deployed: DeployedStack, tmp_path: Path
) -> None:
    chain = Chain(deployed)
    ids = chain.ask(4)
    db = tmp_path / "node.db"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HODLAI_DB_PATH": str(db),
        "HODLAI_RPC_URLS": deployed.rpc_url,
        "HODLAI_PROVIDER_ADDRESS": deployed.deployment.provider_address,
        "HODLAI_START_BLOCK": str(deployed.deployment.deploy_block),
        "HODLAI_CONFIRMATIONS": "0",
        "LOG_LEVEL": "WARNING",
    }
    # Another process keeps the database open (as an inference shard would) throughout.
    shard = connect(db)
    command = [sys.executable, "-m", "shared.cli", "indexer"]
    indexer = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    try:
        stored = "SELECT COUNT(*) FROM requests"
        wait_for(lambda: shard.execute(stored).fetchone()[0] == len(ids), indexer, "requests")
        db.unlink()
        _, stderr = indexer.communicate(timeout=NOTICE_S)
    finally:
        if indexer.poll() is None:
            indexer.send_signal(signal.SIGKILL)
            indexer.wait()
    assert indexer.returncode == 2, stderr.decode()[-3000:]
    message = stderr.decode().strip().splitlines()[-1]
    assert message.startswith("hodlai: HODLAI_DB_PATH") and "was deleted or moved" in message
    (copy,) = rescued(tmp_path)
    assert rows(copy, stored) == [(len(ids),)]
    # The shard still holds the deleted file and its WAL: a restart must not start afresh.
    restarted = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=WAIT_S, check=False
    )
    assert restarted.returncode == 2, restarted.stderr[-3000:]
    assert "does not exist but" in restarted.stderr and "-wal does" in restarted.stderr
    assert not db.exists()
    shard.close()
