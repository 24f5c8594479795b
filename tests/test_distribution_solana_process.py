"""``hodlai distributor`` paying a Solana task over JSON-RPC, SIGKILLed mid-run (once; three
times under ``make chaos``): afterwards every recipient holds exactly its amount, counted on
the SVM behind the RPC server, and no transfer was paid by two transactions."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from shared.db import connect
from workers.distribution import service
from workers.distribution.networks import Network
from workers.distribution.settings import DistSettings
from workers.distribution.solana.cluster import RpcCluster
from workers.distribution.solana.keyfile import write_keypair
from workers.distribution.solana.localchain import balance
from workers.distribution.solana.network import SolanaNetwork

from .solana_fixtures import Chain, make_chain
from .solana_rpc_server import SvmRpc

RECIPIENTS = 60  # 6 transactions


class SlowRpc(SvmRpc):
    """Each sendTransaction takes a moment (a real RPC round trip), so a kill lands mid-run."""

    delay_s = 0.15

    def rpc_sendTransaction(self, encoded: str, config: object = None) -> object:
        self.lock.release()
        try:
            time.sleep(self.delay_s)
        finally:
            self.lock.acquire()
        return super().rpc_sendTransaction(encoded, config)


@pytest.fixture
def chain() -> Chain:
    return make_chain()


@pytest.fixture
def rpc(chain: Chain) -> Iterator[SvmRpc]:
    server = SlowRpc(chain.cluster).start()
    yield server
    server.stop()


async def _create_and_execute(
    conn: sqlite3.Connection, body: dict[str, Any], url: str, source: str
) -> dict[str, Any]:
    """What `hodlai dist create` + `execute` do (the frame's service), in this process."""
    network = SolanaNetwork("devnet", RpcCluster(url, name="devnet test"), source=source)
    networks: dict[str, Network] = {"devnet": network}
    settings = DistSettings(dist_networks=[])
    try:
        await service.create(conn, body, networks, settings, actor="test")
        return await service.execute(conn, "airdrop-sol", networks, settings, actor="test")
    finally:
        await network.aclose()


def _count(conn: sqlite3.Connection, sql: str) -> int:
    return int(conn.execute(sql).fetchone()[0])


@pytest.mark.parametrize(
    "kills", [1, pytest.param(3, marks=pytest.mark.slow)], ids=["once", "three-times"]
)
def test_a_distributor_killed_mid_run_pays_every_recipient_exactly_once(
    chain: Chain, rpc: SvmRpc, tmp_path: Path, kills: int
) -> None:
    key_file = tmp_path / "solana-source.json"
    write_keypair(key_file, chain.source)
    db = tmp_path / "node.db"
    conn = connect(db)
    env = {
        "PATH": "/usr/bin:/bin", "HODLAI_DB_PATH": str(db), "HODLAI_DIST_NETWORKS": "",
        "HODLAI_DIST_SOLANA_NETWORK": "devnet", "HODLAI_DIST_SOLANA_RPC_URL": rpc.url,
        "HODLAI_DIST_SOLANA_KEY_FILE": str(key_file), "HODLAI_DIST_TICK_S": "0.1",
        "HODLAI_DIST_LEASE_S": "1.5", "HODLAI_DIST_SOLANA_RESEND_S": "0.5",
    }  # fmt: skip
    people = [str(Keypair().pubkey()) for _ in range(RECIPIENTS)]
    task = {
        "network": "devnet",
        "tokenMint": str(chain.mint.address),
        "task": {
            "id": "airdrop-sol", "name": "airdrop", "type": "manual",
            "distribution": {
                "recipients": [
                    {"address": p, "amount": f"{i + 1}.5"} for i, p in enumerate(people)
                ],
                "usePercentage": False,
            },
            "enabled": True, "runCount": 0,
        },
    }  # fmt: skip
    run = asyncio.run(_create_and_execute(conn, task, rpc.url, str(chain.source.pubkey())))
    assert run["source"] == str(chain.source.pubkey())

    log_path = tmp_path / "distributor.log"
    killed = 0
    with log_path.open("a") as log_file:
        for round_ in range(kills + 1):
            process = subprocess.Popen(
                [sys.executable, "-m", "shared.cli", "distributor"], env=env, stdout=log_file,
                stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            try:
                seen = _count(conn, "SELECT COUNT(*) FROM distribution_solana_sends")
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    assert process.poll() is None, log_path.read_text()[-3000:]
                    sends = _count(conn, "SELECT COUNT(*) FROM distribution_solana_sends")
                    if round_ < kills and sends > seen:  # it sent something new: kill it now
                        break
                    status = conn.execute(
                        "SELECT status FROM distribution_runs WHERE run_id = ?", (run["id"],)
                    ).fetchone()[0]
                    if status == "completed":
                        break
                    time.sleep(0.02)
                else:
                    pytest.fail(f"no progress in round {round_}: {log_path.read_text()[-3000:]}")
            finally:
                if round_ < kills:
                    process.kill()  # SIGKILL: no handler, no clean-up
                    killed += 1
                else:
                    process.send_signal(signal.SIGTERM)
                process.wait(timeout=20)
    assert killed == kills

    final = conn.execute(
        "SELECT status FROM distribution_runs WHERE run_id = ?", (run["id"],)
    ).fetchone()[0]
    assert final == "completed", log_path.read_text()[-3000:]
    decimals = 10**6
    for i, person in enumerate(people):
        got = balance(chain.cluster, Pubkey.from_string(person), chain.mint)
        assert got == (i + 1) * decimals + decimals // 2, person
    landed = conn.execute(
        "SELECT signature, recipients FROM distribution_solana_sends WHERE status = 'landed'"
    ).fetchall()
    assert sum(row["recipients"] for row in landed) == RECIPIENTS
    paid_by = conn.execute(
        "SELECT COUNT(DISTINCT tx_hash) FROM distribution_transfers WHERE status = 'paid'"
    ).fetchone()[0]
    assert paid_by == len(landed)
    conn.close()
