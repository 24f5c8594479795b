"""The spend policy per sending key (shared/tx/policy.py): a call to an unlisted contract, a
value over the cap and the 24-hour cap (across a restart) are refused with the rule named,
and nothing is signed for them: no txs row, no spend, no nonce used."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from eth_abi.abi import encode as abi_encode
from eth_utils.address import to_checksum_address

from shared.chain.rpc import RpcClient
from shared.db import AsyncDatabase, atomic, connect
from shared.errors import ConfigError, SpendPolicyError
from shared.tx import ledger
from shared.tx.fees import GWEI, FeePolicy, Fees
from shared.tx.ledger import Purpose
from shared.tx.manager import Recorded, Submission, TxManager, TxPolicy
from shared.tx.policy import (
    DAY_S,
    NATIVE,
    Limit,
    SpendPolicy,
    load_policies,
    movements,
    record_spends,
    selector_of,
    selectors,
    spent_since,
)
from shared.tx.senders import claim_sender
from shared.tx.signer import Call, LocalSigner
from tests.test_fulfiller_support import ManualClock
from tests.tx_world import PAY as PAY_KIND
from tests.tx_world import PayPurpose
from workers.devnet.anvil import Anvil

TOKEN = to_checksum_address("0x" + "12" * 20)
OTHER_TOKEN = to_checksum_address("0x" + "34" * 20)
DISPERSE = to_checksum_address("0x" + "56" * 20)
RECIPIENT = to_checksum_address("0x" + "78" * 20)
STRANGER = to_checksum_address("0x" + "9a" * 20)
# Anvil's first development key (public): signs rows that are never sent.
DEV_KEY = bytes.fromhex("ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcab7cbed5f02ff80a")
FAIR = Fees(max_fee_per_gas=3 * GWEI, max_priority_fee_per_gas=GWEI)
TX_POLICY = TxPolicy(
    fees=FeePolicy(max_fee_per_gas=100 * GWEI, max_priority_fee_per_gas=5 * GWEI), window=8
)
#: a distribution-like key: pays TOKEN by transfer and by disperseToken, no native value
PAYER = SpendPolicy(
    contracts={
        TOKEN: selectors("transfer(address,uint256)"),
        DISPERSE: selectors("disperseToken(address,address[],uint256[])"),
    },
    limits={TOKEN: Limit(per_tx=500, per_day=1_000)},
)


def transfer(amount: int, token: str = TOKEN) -> Call:
    data = selector_of("transfer(address,uint256)") + abi_encode(
        ["address", "uint256"], [RECIPIENT, amount]
    )
    return Call(to=to_checksum_address(token), data=data, value=0, gas_limit=60_000)


def disperse(token: str, amounts: list[int]) -> Call:
    data = selector_of("disperseToken(address,address[],uint256[])") + abi_encode(
        ["address", "address[]", "uint256[]"], [token, [RECIPIENT] * len(amounts), amounts]
    )
    return Call(to=DISPERSE, data=data, value=0, gas_limit=200_000)


# --- what a call moves ----------------------------------------------------------------------


def test_the_known_token_calls_are_decoded_into_amounts() -> None:
    def call(signature: str, types: list[str], args: list[object]) -> Call:
        data = selector_of(signature) + abi_encode(types, args)
        return Call(to=TOKEN, data=data, value=0, gas_limit=60_000)

    assert movements(transfer(5)) == {TOKEN: 5}
    assert movements(
        call("transferFrom(address,address,uint256)", ["address", "address", "uint256"],
             [STRANGER, RECIPIENT, 7])
    ) == {TOKEN: 7}  # fmt: skip
    assert movements(call("approve(address,uint256)", ["address", "uint256"], [STRANGER, 9])) == {
        TOKEN: 9
    }
    # the multisend names its token; its amounts are summed, whatever contract it is
    assert movements(disperse(OTHER_TOKEN, [1, 2, 3])) == {OTHER_TOKEN: 6}
    paid = Call(to=TOKEN, data=transfer(4).data, value=10, gas_limit=60_000)
    assert movements(paid) == {NATIVE: 10, TOKEN: 4}
    unknown = Call(to=TOKEN, data=selector_of("mint(uint256)") + b"\0" * 32, value=0,
                   gas_limit=60_000)  # fmt: skip
    assert movements(unknown) == {}
    assert movements(transfer(0)) == {}  # nothing moved, nothing counted


def test_a_known_selector_whose_arguments_do_not_decode_is_refused() -> None:
    broken = Call(to=TOKEN, data=selector_of("transfer(address,uint256)") + b"\x01", value=0,
                  gas_limit=60_000)  # fmt: skip
    with pytest.raises(SpendPolicyError, match="calldata_malformed") as caught:
        movements(broken)
    assert caught.value.rule == "calldata_malformed"
    assert movements(broken, strict=False) == {}  # a key without a policy records nothing


# --- the rules, on a real database ----------------------------------------------------------


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    return connect(tmp_path / "node.db", durable=True)


SENDER = to_checksum_address("0x" + "ab" * 20)


def _rule(policy: SpendPolicy, conn: sqlite3.Connection, call: Call, now: float = 1e9) -> str:
    with pytest.raises(SpendPolicyError) as caught:
        policy.check(conn, call, sender=SENDER, now=now)
    assert str(caught.value).startswith(f"spend policy rule {caught.value.rule}: ")
    return caught.value.rule


def test_each_rule_is_named(conn: sqlite3.Connection) -> None:
    assert _rule(PAYER, conn, transfer(5, token=OTHER_TOKEN)) == "contract_not_allowed"
    approve = Call(to=TOKEN, data=selector_of("approve(address,uint256)") + b"\0" * 64, value=0,
                   gas_limit=60_000)  # fmt: skip
    assert _rule(PAYER, conn, approve) == "selector_not_allowed"
    # an allowed multisend of a token the key has no limits for
    assert _rule(PAYER, conn, disperse(OTHER_TOKEN, [1])) == "value_not_allowed"
    paid = Call(to=TOKEN, data=transfer(4).data, value=1, gas_limit=60_000)
    assert _rule(PAYER, conn, paid) == "value_not_allowed"  # no native limit: no value at all
    assert _rule(PAYER, conn, transfer(501)) == "per_tx_cap"
    assert _rule(PAYER, conn, disperse(TOKEN, [300, 201])) == "per_tx_cap"
    assert PAYER.check(conn, transfer(500), sender=SENDER, now=1e9) == {TOKEN: 500}


def test_the_cancel_is_always_allowed(conn: sqlite3.Connection) -> None:
    nothing = SpendPolicy(contracts={})
    cancel = Call(to=SENDER, data=b"", value=0, gas_limit=21_000)
    assert nothing.check(conn, cancel, sender=SENDER, now=1e9) == {}
    assert _rule(nothing, conn, Call(to=SENDER, data=b"", value=1, gas_limit=21_000)) == (
        "contract_not_allowed"
    )


def _tx_row(conn: sqlite3.Connection, nonce: int) -> int:
    signer = LocalSigner(DEV_KEY, chain_id=31337)
    signed = signer.sign(transfer(1), nonce=nonce, fees=FAIR)
    with atomic(conn):
        return ledger.insert(conn, signed, Purpose("pay"), sender=SENDER, chain_id=31337,
                             now=0.0,
                             idempotency_key=f"pay:{nonce}")  # fmt: skip


def test_the_window_sum_is_exact_beyond_64_bits_and_survives_a_clock_stepping_back(
    conn: sqlite3.Connection,
) -> None:
    big = 2**255
    for nonce, (amount, at) in enumerate([(big, 100.0), (3, 200.0), (big, 300.0), (5, 250.0)]):
        with atomic(conn):
            record_spends(conn, _tx_row(conn, nonce), sender=SENDER, moved={TOKEN: amount},
                          now=at)  # fmt: skip
    assert spent_since(conn, SENDER, TOKEN, since=0.0) == 2 * big + 8
    assert spent_since(conn, SENDER, TOKEN, since=100.0) == big + 8
    # the last spend was signed at 250 by a clock that stepped back: it keeps 300, and
    # counts as late as the one before it (never as early as its own clock said)
    assert spent_since(conn, SENDER, TOKEN, since=260.0) == big + 5
    assert spent_since(conn, SENDER, TOKEN, since=300.0) == 0
    assert spent_since(conn, SENDER, OTHER_TOKEN, since=0.0) == 0
    assert spent_since(conn, STRANGER, TOKEN, since=0.0) == 0


# --- through the transaction manager, on a real anvil ---------------------------------------


@dataclass
class Setup:
    node: Anvil
    db_path: Path
    signer: LocalSigner
    clock: ManualClock
    conn: sqlite3.Connection
    managers: list[tuple[TxManager, AsyncDatabase]]

    async def manager(self, policy: SpendPolicy | None = PAYER) -> TxManager:
        """A transaction manager for the key on the database, started (a restart when one ran
        before: the earlier one is closed first)."""
        for old, db in self.managers:
            await old.close()
            db.close()
        self.managers.clear()
        db = AsyncDatabase(connect(self.db_path, durable=True))
        manager = TxManager(
            db=db,
            rpc=RpcClient([self.node.rpc_url]),
            signer=self.signer,
            policy=TX_POLICY,
            handlers={PAY_KIND: PayPurpose()},  # record() signs only kinds someone judges
            claim=claim_sender(
                self.db_path,
                db.conn,
                self.signer.address,
                owner="test",
                chain_id=self.signer.chain_id,
            ),
            clock=self.clock,
            spend_policy=policy,
        )
        self.managers.append((manager, db))
        await manager.start()
        return manager

    def count(self, table: str) -> int:
        return int(self.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


@pytest_asyncio.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    with Anvil(no_mining=True) as node:
        signer = LocalSigner(bytes.fromhex(node.accounts[4].private_key[2:]), chain_id=31337)
        db_path = tmp_path / "node.db"
        connect(db_path).close()
        s = Setup(node, db_path, signer, ManualClock(), connect(db_path), [])
        yield s
        for manager, db in s.managers:
            await manager.close()
            db.close()


_keys = iter(range(1_000_000))


def submission(call: Call) -> Submission:
    return Submission(call=call, purpose=Purpose("pay", subject=str(next(_keys))),
                      bind=lambda conn, signed: None, key=f"pay:{next(_keys)}")  # fmt: skip


async def record(manager: TxManager, *calls: Call) -> list[Recorded]:
    return await manager.record([submission(c) for c in calls], FAIR)


def _refused(result: Recorded) -> str:
    assert result.signed is None and result.tx_id is None
    assert isinstance(result.skipped, SpendPolicyError)
    return result.skipped.rule


async def test_a_call_to_an_unlisted_contract_is_refused_and_nothing_is_signed(
    setup: Setup,
) -> None:
    manager = await setup.manager()
    [refused] = await record(manager, transfer(5, token=STRANGER))
    assert _refused(refused) == "contract_not_allowed"
    assert STRANGER in str(refused.skipped)
    assert setup.count("txs") == 0 and setup.count("tx_spends") == 0
    assert manager.in_flight == 0
    [allowed] = await record(manager, transfer(5))
    assert allowed.signed is not None and allowed.signed.nonce == 0  # no nonce was used


async def test_a_value_over_the_per_transaction_cap_is_refused(setup: Setup) -> None:
    manager = await setup.manager()
    over, fine = await record(manager, transfer(501), transfer(500))
    assert _refused(over) == "per_tx_cap"
    assert "over its cap 500" in str(over.skipped)
    assert fine.signed is not None and fine.signed.nonce == 0
    assert setup.count("txs") == 1
    rows = setup.conn.execute("SELECT token, amount FROM tx_spends").fetchall()
    assert [tuple(r) for r in rows] == [(TOKEN, "500")]


async def test_the_daily_cap_holds_across_a_restart(setup: Setup) -> None:
    first = await setup.manager()
    paid = await record(first, transfer(500), disperse(TOKEN, [300, 100]))
    assert [r.signed is not None for r in paid] == [True, True]
    # a new process on the same database: the earlier spends still count
    again = await setup.manager()
    over, within = await record(again, transfer(200), transfer(100))
    assert _refused(over) == "daily_cap"
    assert "200 of token" in str(over.skipped)
    assert "on top of 900 in the last 24 h is over its cap 1000" in str(over.skipped)
    assert within.signed is not None and within.signed.nonce == 2  # the cap itself is allowed
    assert setup.count("txs") == 3
    # a day later they no longer count; within one batch each check sees the earlier ones
    setup.clock.advance(DAY_S + 1)
    later = await setup.manager()
    batch = await record(later, *(transfer(300) for _ in range(4)))
    assert [r.signed.nonce for r in batch[:3] if r.signed is not None] == [3, 4, 5]
    assert _refused(batch[3]) == "daily_cap"
    # the restarts bumped the stuck ones (no block is mined here): bumps add no spend
    originals = "SELECT COUNT(*) FROM txs WHERE replaces_tx_id IS NULL"
    assert setup.conn.execute(originals).fetchone()[0] == 6
    assert setup.count("tx_spends") == 6  # one per signed transaction, none per bump


async def test_without_a_policy_every_call_is_signed_and_its_spends_recorded(
    setup: Setup,
) -> None:
    manager = await setup.manager(policy=None)
    results = await record(manager, transfer(5, token=STRANGER), transfer(10_000))
    assert [r.signed is not None for r in results] == [True, True]
    assert spent_since(setup.conn, setup.signer.address, TOKEN, since=0) == 10_000


# --- configuration --------------------------------------------------------------------------


def test_policies_load_from_json_and_toml(tmp_path: Path) -> None:
    sender = to_checksum_address("0x" + "cd" * 20)
    entry = {
        "contracts": {TOKEN.lower(): ["transfer(address,uint256)", "0x095ea7b3"], DISPERSE: "*"},
        "limits": {TOKEN: {"per_tx": "1000000000000000000000000", "per_day": 5}, "native": {}},
    }
    as_json = tmp_path / "policy.json"
    as_json.write_text(json.dumps({sender.lower(): entry}))
    as_toml = tmp_path / "policy.toml"
    as_toml.write_text(
        f'["{sender}".contracts]\n"{TOKEN}" = ["transfer(address,uint256)", "0x095ea7b3"]\n'
        f'"{DISPERSE}" = "*"\n'
        f'["{sender}".limits."{TOKEN}"]\nper_tx = "1000000000000000000000000"\nper_day = 5\n'
        f'["{sender}".limits.native]\n'
    )
    expected = SpendPolicy(
        contracts={
            TOKEN: frozenset({selector_of("transfer(address,uint256)"), bytes.fromhex("095ea7b3")}),
            DISPERSE: None,
        },
        limits={TOKEN: Limit(per_tx=10**24, per_day=5), NATIVE: Limit()},
    )
    for path in (as_json, as_toml):
        policies = load_policies(path, setting="HODLAI_TEST_SPEND_POLICY_FILE")
        assert policies == {sender: expected}


@pytest.mark.parametrize(
    "content",
    [
        "[1, 2]",
        '{"0xnotanaddress": {}}',
        '{"0x' + "cd" * 20 + '": {"contracts": {"0x12": "*"}}}',
        '{"0x' + "cd" * 20 + '": {"contracts": {"0x' + "12" * 20 + '": ["0x1234"]}}}',
        '{"0x' + "cd" * 20 + '": {"limits": {"native": {"per_tx": -1}}}}',
        '{"0x' + "cd" * 20 + '": {"limit": {}}}',
        "not json",
    ],
)
def test_a_malformed_policy_file_is_refused_naming_the_setting(
    tmp_path: Path, content: str
) -> None:
    path = tmp_path / "policy.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match="HODLAI_TEST_SPEND_POLICY_FILE"):
        load_policies(path, setting="HODLAI_TEST_SPEND_POLICY_FILE")


def test_the_oracle_key_may_only_fulfil_on_its_provider(conn: sqlite3.Connection) -> None:
    from workers.oracle.fulfiller.provider import fulfil_calldata, spend_policy

    policy = spend_policy(TOKEN.lower())  # the provider, in whatever case the setting has it
    fulfil = Call(to=TOKEN, data=fulfil_calldata(2**200, "BUY", "bafy"), value=0,
                  gas_limit=300_000)  # fmt: skip
    assert policy.check(conn, fulfil, sender=SENDER, now=1e9) == {}
    assert _rule(policy, conn, Call(to=DISPERSE, data=fulfil.data, value=0, gas_limit=1)) == (
        "contract_not_allowed"
    )
    assert _rule(policy, conn, transfer(1)) == "selector_not_allowed"
    paid = Call(to=TOKEN, data=fulfil.data, value=1, gas_limit=300_000)
    assert _rule(policy, conn, paid) == "value_not_allowed"
