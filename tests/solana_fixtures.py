"""An in-process Solana chain with a funded source and a mint, a database with runs the way
the distribution frame records them (a run ``pending`` with one ``pending`` transfer per
recipient, in one transaction), and a payer driven until the run is final."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from solders.keypair import Keypair
from solders.pubkey import Pubkey
from spl.token.constants import TOKEN_PROGRAM_ID

from shared.db import AsyncDatabase, atomic, connect
from shared.state import insert, insert_many
from workers.distribution.machine import RUNS, TRANSFERS, RunStatus, TransferStatus
from workers.distribution.solana.cluster import SvmCluster
from workers.distribution.solana.localchain import (
    LAMPORTS_PER_SOL,
    airdrop,
    create_mint,
    mint_to,
)
from workers.distribution.solana.network import SolanaNetwork
from workers.distribution.solana.payer import SolanaPayer
from workers.distribution.solana.spl import Mint

NETWORK = "devnet"
DECIMALS = 6


@dataclass
class Chain:
    cluster: SvmCluster
    source: Keypair
    authority: Keypair
    mint: Mint
    recipients: list[Pubkey] = field(default_factory=list)


def make_chain(
    *,
    tokens: int = 10**12,
    sol: int = 100,
    program: Pubkey = TOKEN_PROGRAM_ID,
    cluster: SvmCluster | None = None,
) -> Chain:
    cluster = cluster if cluster is not None else SvmCluster()
    source, authority = Keypair(), Keypair()
    airdrop(cluster, authority.pubkey(), 10 * LAMPORTS_PER_SOL)
    if sol:
        airdrop(cluster, source.pubkey(), sol * LAMPORTS_PER_SOL)
    mint = create_mint(
        cluster, authority, decimals=DECIMALS, program=program, freeze_authority=authority.pubkey()
    )
    if tokens:
        mint_to(cluster, authority, mint, source.pubkey(), tokens)
    return Chain(cluster, source, authority, mint)


def open_db(path: Path) -> sqlite3.Connection:
    return connect(path, durable=True)


def record_run(
    conn: sqlite3.Connection,
    *,
    run_id: str,
    token: str,
    manifest: Sequence[tuple[str, int]],
    decimals: int = DECIMALS,
    network: str = NETWORK,
    source: str | None = None,
) -> None:
    """What the frame writes for a run: the run and its transfers, in one transaction."""
    now = time.time()
    body = [{"address": a, "amount": str(v)} for a, v in manifest]
    with atomic(conn):
        insert(
            conn, RUNS,
            {
                "run_id": run_id, "task_id": f"task-{run_id}", "network": network,
                "token": token, "slot": f"2026-12-07T00:00:00.{len(run_id):03d}Z",
                "trigger": "manual", "total_amount": str(sum(v for _, v in manifest)),
                "decimals": decimals, "manifest": json.dumps(body),
                "manifest_hash": "0x" + "00" * 32, "source": source,
            },
            status=RunStatus.PENDING, actor="test", now=now,
        )  # fmt: skip
        insert_many(
            conn, TRANSFERS,
            [
                {"transfer_id": f"{run_id}:{i}", "run_id": run_id, "position": i,
                 "address": address, "amount": str(amount)}
                for i, (address, amount) in enumerate(manifest)
            ],
            status=TransferStatus.PENDING, actor="test", now=now,
        )  # fmt: skip


def make_payer(
    db: AsyncDatabase,
    chain: Chain,
    *,
    cluster: SvmCluster | None = None,
    lease_seconds: float = 60.0,
    resend_s: float = 0.0,
    batch_max: int = 10,
    owner: str | None = None,
) -> SolanaPayer:
    network = SolanaNetwork(NETWORK, cluster or chain.cluster, batch_max=batch_max)
    return SolanaPayer(
        db=db, network=network, keypair=chain.source, lease_seconds=lease_seconds,
        resend_s=resend_s, owner=owner,
    )  # fmt: skip


async def drive(payer: SolanaPayer, db: AsyncDatabase, run_id: str, *, ticks: int = 60) -> str:
    """Tick until the run is final (or ``ticks`` ran out); returns its status."""
    status = ""
    for _ in range(ticks):
        await payer.tick()
        status = await db.run(run_status, run_id)
        if status in (RunStatus.COMPLETED, RunStatus.FAILED):
            return status
    return status


def run_status(conn: sqlite3.Connection, run_id: str) -> str:
    row = conn.execute("SELECT status FROM distribution_runs WHERE run_id = ?", (run_id,))
    return str(row.fetchone()[0])


def transfer_rows(conn: sqlite3.Connection, run_id: str) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT * FROM distribution_transfers WHERE run_id = ? ORDER BY position", (run_id,)
    ).fetchall()


def send_rows(conn: sqlite3.Connection, run_id: str) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT * FROM distribution_solana_sends WHERE run_id = ? ORDER BY created_at", (run_id,)
    ).fetchall()
