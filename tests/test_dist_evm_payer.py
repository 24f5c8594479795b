"""The EVM payer on a real anvil (issue 21 §4): every balance delta equals the manifest and
their sum the total; a recipient whose transfer reverts is isolated and fails with the
decoded reason; a shortfall pauses the run and funding resumes it; counted on chain."""

from __future__ import annotations

from pathlib import Path

import pytest
from eth_utils.address import to_checksum_address

from shared.db import connect
from shared.errors import SpendPolicyError
from shared.keys import load_private_key
from shared.tx.signer import Call
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
from workers.distribution.evm import network as evm_network
from workers.distribution.evm.contracts import (
    BLACKLIST_TOKEN_CONTRACT,
    FEE_TOKEN_CONTRACT,
    approve_calldata,
    disperse_calldata,
)
from workers.distribution.evm.deploy import Deployer
from workers.distribution.evm.payer import build, spend_policy


@pytest.fixture
def fast_anvil() -> Anvil:
    with Anvil(block_time=0.25) as node:
        yield node  # type: ignore[misc]


@pytest.fixture
def chain(fast_anvil: Anvil, tmp_path: Path) -> DistChain:
    return dist_chain(fast_anvil, tmp_path)


@pytest.mark.asyncio
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


@pytest.mark.asyncio
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


@pytest.mark.asyncio
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


@pytest.mark.asyncio
async def test_a_fee_on_transfer_token_pays_nobody_short_and_fails_the_run(
    chain: DistChain,
) -> None:
    token = chain.admin.deploy_token(FEE_TOKEN_CONTRACT)
    chain.admin.mint(token, [(chain.source, 1_000 * WHOLE)])
    manifest = [(a, 10 * WHOLE) for a in recipients(4)]
    db = open_db(chain.db_path)
    create_run(db.conn, "fee", token, manifest)
    payer = build(chain.settings(dist_tokens=[token]), "devnet", db=db)
    try:
        assert await pay_until(payer, chain.db_path, "fee") == "failed"
    finally:
        await payer.aclose()
    rows = transfers(chain.db_path, "fee")
    assert {r["status"] for r in rows} == {"failed"}
    assert all("PullShort(total=10000000000000000000" in r["reason"] for r in rows)
    assert run_status(chain.db_path, "fee") == ("failed", "no transfer could be paid (4 failed)")
    assert chain.balances([a for a, _ in manifest], token) == [0, 0, 0, 0]


@pytest.mark.asyncio
async def test_a_token_outside_the_spend_policy_is_refused_before_anything_is_signed(
    chain: DistChain,
) -> None:
    other = chain.admin.deploy_token()
    chain.admin.mint(other, [(chain.source, 1_000 * WHOLE)])
    manifest = [(a, WHOLE) for a in recipients(3)]
    db = open_db(chain.db_path)
    create_run(db.conn, "pol", other, manifest)
    payer = build(chain.settings(), "devnet", db=db)  # only the devnet token is configured
    try:
        assert await pay_until(payer, chain.db_path, "pol") == "failed"
    finally:
        await payer.aclose()
    rows = transfers(chain.db_path, "pol")
    assert {r["status"] for r in rows} == {"failed"}
    assert all("contract_not_allowed" in r["reason"] for r in rows)
    conn = connect(chain.db_path)
    assert conn.execute("SELECT COUNT(*) FROM txs").fetchone()[0] == 0
    conn.close()
    assert int(chain.rpc("eth_getTransactionCount", [chain.source, "latest"]), 16) == 0


def test_the_source_key_may_call_only_the_multisend_and_approve_on_configured_tokens() -> None:
    multisend, token, other = (f"0x{i:040x}" for i in (0xA1, 0xB2, 0xC3))
    policy = spend_policy(multisend, [token])
    conn = connect(":memory:")
    sender = "0x" + "11" * 20

    def check(to: str, data: bytes, value: int = 0) -> str | None:
        call = Call(to=to_checksum_address(to), data=data, value=value, gas_limit=100_000)
        try:
            policy.check(conn, call, sender=to_checksum_address(sender), now=0.0)
        except SpendPolicyError as exc:
            return exc.rule
        return None

    pay = [(to_checksum_address("0x" + "22" * 20), 5)]
    assert check(multisend, disperse_calldata(token, pay)) is None
    assert check(token, approve_calldata(multisend, 10)) is None
    assert check(multisend, disperse_calldata(other, pay)) == "value_not_allowed"
    assert check(other, approve_calldata(multisend, 10)) == "contract_not_allowed"
    transfer = bytes.fromhex("a9059cbb") + bytes(12) + bytes.fromhex("22" * 20) + bytes(32)
    assert check(token, transfer) == "selector_not_allowed"
    assert check(other, disperse_calldata(token, pay)) == "contract_not_allowed"
    assert check(multisend, disperse_calldata(token, pay), value=1) == "value_not_allowed"


@pytest.mark.asyncio
async def test_the_unsigned_transaction_of_a_preview_signed_by_the_source_pays_the_manifest(
    chain: DistChain,
) -> None:
    """The seed's buildTokenDistributionTransaction on EVM, signed as a wallet would (after
    one approve), pays exactly the manifest through the multisend."""
    manifest = [(a, WHOLE * (i + 1)) for i, a in enumerate(recipients(5))]
    network = evm_network.build(chain.settings(), "devnet")
    try:
        unsigned = await network.build_unsigned(chain.token, chain.source, manifest)
    finally:
        await network.aclose()
    assert unsigned["to"] == chain.multisend and unsigned["chainId"] == chain.anvil.chain_id
    wallet = Deployer(chain.anvil.rpc_url, load_private_key(chain.key_file))
    wallet.approve(chain.token, chain.multisend, sum(v for _, v in manifest))
    wallet.wait([wallet.transact(unsigned["to"], bytes.fromhex(unsigned["data"][2:]),
                                 what="unsigned")])  # fmt: skip
    assert chain.balances([a for a, _ in manifest]) == [v for _, v in manifest]
    assert chain.transfer_logs() == {m: 1 for m in manifest}


@pytest.mark.asyncio
async def test_two_payers_on_one_database_one_signs_the_other_waits_then_takes_over(
    chain: DistChain,
) -> None:
    first_db, second_db = open_db(chain.db_path), open_db(chain.db_path)
    create_run(first_db.conn, "a", chain.token, [(a, WHOLE) for a in recipients(5, salt=1)])
    first = build(chain.settings(), "devnet", db=first_db)
    second = build(chain.settings(), "devnet", db=second_db)
    try:
        assert await pay_until(first, chain.db_path, "a") == "completed"
        assert await second.tick() is False  # the key is the first's: nothing leased
        assert second.service is None
        create_run(first_db.conn, "b", chain.token, [(a, WHOLE) for a in recipients(5, salt=2)])
        await first.aclose()  # gives the key back
        assert await pay_until(second, chain.db_path, "b", within=30) == "completed"
    finally:
        await second.aclose()
    assert chain.transfer_logs() == {(a, WHOLE): 1 for s in (1, 2) for a in recipients(5, salt=s)}
