"""The Solana rail behind the distribution frame: the seed's body on ``mainnet-beta``-named
SVM (percentages of 1000 whole tokens), preview with the unsigned messages, execute, the payer,
and the run in issue 21 §8's shape — every balance counted on the SVM."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from shared.db import AsyncDatabase
from workers.distribution import service, store
from workers.distribution.networks import Network
from workers.distribution.settings import DistSettings
from workers.distribution.solana.localchain import balance
from workers.distribution.solana.network import SolanaNetwork
from workers.distribution.solana.payer import SolanaPayer

from .solana_fixtures import drive, make_chain, open_db


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[AsyncDatabase]:
    database = AsyncDatabase(open_db(tmp_path / "node.db"))
    yield database
    database.close()


async def test_the_seeds_task_on_solana_is_previewed_executed_and_paid(
    db: AsyncDatabase, tmp_path: Path
) -> None:
    chain = make_chain(tokens=10**12)  # 1,000,000 whole tokens of 6 decimals
    network = SolanaNetwork("mainnet-beta", chain.cluster, source=str(chain.source.pubkey()))
    networks: dict[str, Network] = {"mainnet-beta": network}
    settings = DistSettings(dist_networks=[])
    recipients = [str(Keypair().pubkey()) for _ in range(3)]
    body = {
        "network": "mainnet-beta",
        "tokenMint": str(chain.mint.address),
        "task": {
            "id": "staking-reward-001",
            "name": "质押奖励每日分发",
            "type": "manual",
            "distribution": {
                "recipients": [
                    {"address": recipients[0], "percentage": 50},
                    {"address": recipients[1], "percentage": "33.3333"},
                    {"address": recipients[2], "percentage": "16.6667"},
                ],
                "totalAmount": 1000,
                "usePercentage": True,
            },
            "enabled": True,
            "runCount": 0,
        },
    }
    conn = open_db(tmp_path / "node.db")
    try:
        preview = await service.preview(body, networks, settings)
        assert preview["totalAmount"] == str(1000 * 10**6)
        assert preview["transaction"]["feePayer"] == str(chain.source.pubkey())
        assert len(preview["transaction"]["messages"]) == 1

        await service.create(conn, body, networks, settings, actor="test")
        run = await service.execute(conn, "staking-reward-001", networks, settings, actor="test")
        assert run["status"] == "pending" and run["source"] == str(chain.source.pubkey())

        payer = SolanaPayer(db=db, network=network, keypair=chain.source)
        assert await drive(payer, db, run["id"]) == "completed"
        answer = store.run_answer(conn, run["id"])
    finally:
        conn.close()

    assert answer["manifestHash"] == preview["manifestHash"]
    paid = {t["address"]: t for t in answer["transfers"]}
    for item in preview["manifest"]:
        assert paid[item["address"]]["status"] == "paid"
        assert paid[item["address"]]["txHash"]
        got = balance(chain.cluster, Pubkey.from_string(item["address"]), chain.mint)
        assert got == int(item["amount"])
    assert sum(int(item["amount"]) for item in preview["manifest"]) == 1000 * 10**6
