"""The EVM payer on a real anvil (issue 21 §4): every balance delta equals the manifest and
their sum the total; a recipient whose transfer reverts is isolated and fails with the
decoded reason; a shortfall pauses the run and funding resumes it; counted on chain."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dist_fixtures import (
    WHOLE,
    DistChain,
    create_run,
    dist_chain,
    open_db,
    pay_until,
    recipients,
    run_status,
    transfers,
)
from workers.devnet.anvil import Anvil
from workers.distribution.evm.contracts import BLACKLIST_TOKEN_CONTRACT
from workers.distribution.evm.payer import build

pytestmark = pytest.mark.asyncio


@pytest.fixture
def fast_anvil() -> Anvil:
    with Anvil(block_time=0.25) as node:
        yield node  # type: ignore[misc]


@pytest.fixture
def chain(fast_anvil: Anvil, tmp_path: Path) -> DistChain:
    return dist_chain(fast_anvil, tmp_path)


async def test_a_run_pays_every_recipient_its_amount_once_and_completes(chain: DistChain) -> None:
    manifest = [(a, (i + 1) * WHOLE // 3) for i, a in enumerate(recipients(30))]
    db = open_db(chain.db_path)
    create_run(db.conn, "r1", chain.token, manifest)
    payer = build(chain.settings(dist_max_batch=8), "devnet", db=db)
    try:
        assert await pay_until(payer, chain.db_path, "r1") == "completed"
    finally:
        await payer.aclose()
    rows = transfers(chain.db_path, "r1")
    assert {r["status"] for r in rows} == {"paid"}
    assert len({r["tx_hash"] for r in rows}) == 4  # 30 recipients, 8 per batch
    assert chain.balances([a for a, _ in manifest]) == [v for _, v in manifest]
    assert chain.transfer_logs() == {m: 1 for m in manifest}
    assert chain.balance(chain.source) == 10**7 * WHOLE - sum(a for _, a in manifest)


async def test_a_blacklisted_recipient_fails_with_the_reason_and_the_other_99_are_paid(
    chain: DistChain,
) -> None:
    token = chain.admin.deploy_token(BLACKLIST_TOKEN_CONTRACT)
    chain.admin.mint(token, [(chain.source, 1_000 * WHOLE)])
    people = recipients(100)
    banned = people[37]
    chain.admin.invoke(BLACKLIST_TOKEN_CONTRACT, token, "setBlacklisted", [banned, True])
    manifest = [(a, WHOLE + i) for i, a in enumerate(people)]
    db = open_db(chain.db_path)
    create_run(db.conn, "bl", token, manifest)
    payer = build(chain.settings(dist_tokens=[token]), "devnet", db=db)
    try:
        assert await pay_until(payer, chain.db_path, "bl") == "completed"
    finally:
        await payer.aclose()
    rows = {r["address"]: r for r in transfers(chain.db_path, "bl")}
    assert rows[banned]["status"] == "failed"
    assert f"Blacklisted(account={banned})" in rows[banned]["reason"]
    assert rows[banned]["tx_hash"] is None  # never in a transaction
    assert sum(r["status"] == "paid" for r in rows.values()) == 99
    logs = chain.transfer_logs(token)
    for address, amount in manifest:
        expected = 0 if address == banned else amount
        assert chain.balance(address, token) == expected
        assert logs[(address, amount)] == (0 if address == banned else 1)


async def test_an_insufficient_balance_pauses_the_run_and_funding_resumes_it(
    fast_anvil: Anvil, tmp_path: Path
) -> None:
    chain = dist_chain(fast_anvil, tmp_path, tokens=10)
    manifest = [(a, 2 * WHOLE) for a in recipients(20)]  # 40 tokens, the source holds 10
    db = open_db(chain.db_path)
    create_run(db.conn, "p", chain.token, manifest)
    payer = build(chain.settings(), "devnet", db=db)
    try:
        assert await pay_until(payer, chain.db_path, "p", until=["paused"]) == "paused"
        _, reason = run_status(chain.db_path, "p")
        assert reason is not None and "fund it with at least 30000000000000000000" in reason
        for _ in range(5):  # still paused, nothing sent
            await payer.tick()
        assert run_status(chain.db_path, "p")[0] == "paused"
        assert {r["status"] for r in transfers(chain.db_path, "p")} == {"pending"}
        chain.admin.mint(chain.token, [(chain.source, 30 * WHOLE)])
        assert await pay_until(payer, chain.db_path, "p") == "completed"
    finally:
        await payer.aclose()
    assert run_status(chain.db_path, "p") == ("completed", None)
    for address, amount in manifest:
        assert chain.balance(address) == amount
    assert chain.balance(chain.source) == 0
