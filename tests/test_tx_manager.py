"""The generic transaction manager on a real anvil, with a test purpose instead of the
fulfiller: gaps are filled, a restart re-sends what a node may or may not have, a transaction
no node accepts is cancelled and its purpose told, the fee cap bounds replacements, and the
window bounds what is in flight."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio
from structlog.testing import capture_logs

from shared import state
from shared.chain.rpc import RpcClient
from shared.db import AsyncDatabase, atomic, connect
from shared.tx import ledger
from shared.tx.chainview import ChainView
from shared.tx.fees import GWEI, FeePolicy, Fees
from shared.tx.ledger import Purpose, TxRecord
from shared.tx.manager import Submission, TxManager, TxPolicy
from shared.tx.receipts import Receipt
from shared.tx.senders import claim_sender
from shared.tx.settlement import Settlement, SubjectAnchor
from shared.tx.signer import Call, LocalSigner, SignedTx
from tests.test_fulfiller_support import ManualClock
from workers.devnet.anvil import Anvil

POLICY = TxPolicy(
    fees=FeePolicy(max_fee_per_gas=100 * GWEI, max_priority_fee_per_gas=5 * GWEI),
    window=4,
    stuck_after_s=30.0,
    rebroadcast_after_s=5.0,
)
FAIR = Fees(max_fee_per_gas=3 * GWEI, max_priority_fee_per_gas=GWEI)
NOTE = "note"
_keys = itertools.count(1)


def _key() -> str:
    """A fresh idempotency key: each test submission is its own intended transaction."""
    return f"{NOTE}:{next(_keys)}"


@dataclass
class NotePurpose:
    """A purpose that remembers what it was told and declares chosen transactions invalid."""

    invalid_ids: set[int] = field(default_factory=set)
    told: list[tuple[str, Settlement]] = field(default_factory=list)
    undone: list[tuple[str, Settlement]] = field(default_factory=list)  # told reorged

    def invalid(
        self, conn: sqlite3.Connection, txs: Sequence[TxRecord], *, now: float, chain: ChainView
    ) -> dict[int, str]:
        return {tx.id: "test says so" for tx in txs if tx.id in self.invalid_ids}

    def anchors(
        self, conn: sqlite3.Connection, txs: Sequence[TxRecord]
    ) -> dict[int, SubjectAnchor | None]:
        return {}  # an off-chain subject: the invalid() check is the whole confirmation

    def settled(
        self,
        conn: sqlite3.Connection,
        tx: TxRecord,
        outcome: Settlement,
        *,
        detail: str,
        now: float,
        receipt: Receipt | None,
    ) -> None:
        assert conn.in_transaction  # told inside the transaction that records the outcome
        self.told.append((tx.tx_hash, outcome))

    def reorged(
        self, conn: sqlite3.Connection, tx: TxRecord, *, undone: Settlement, detail: str,
        now: float,
    ) -> None:  # fmt: skip
        self.undone.append((tx.tx_hash, undone))


@dataclass
class Setup:
    node: Anvil
    manager: TxManager
    signer: LocalSigner
    conn: sqlite3.Connection
    purpose: NotePurpose
    clock: ManualClock

    def rpc(self, method: str, params: list[object]) -> object:
        import httpx

        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        return httpx.post(self.node.rpc_url, json=body).json().get("result")

    def rows(self) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT * FROM txs ORDER BY id").fetchall()

    def record_directly(self, call: Call, nonce: int, fees: Fees = FAIR) -> SignedTx:
        signed = self.signer.sign(call, nonce=nonce, fees=fees)
        with atomic(self.conn):
            ledger.insert(
                self.conn, signed, Purpose(NOTE), sender=self.signer.address,
                chain_id=self.signer.chain_id, now=self.clock(), idempotency_key=_key(),
            )  # fmt: skip
        return signed


@pytest_asyncio.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    with Anvil(no_mining=True) as node:
        signer = LocalSigner(bytes.fromhex(node.accounts[4].private_key[2:]), chain_id=31337)
        purpose = NotePurpose()
        clock = ManualClock()
        db = AsyncDatabase(connect(tmp_path / "tx.db", durable=True))
        manager = TxManager(
            db=db,
            rpc=RpcClient([node.rpc_url]),
            signer=signer,
            policy=POLICY,
            handlers={NOTE: purpose},
            claim=claim_sender(
                tmp_path / "tx.db",
                db.conn,
                signer.address,
                owner="test",
                chain_id=signer.chain_id,
            ),
            clock=clock,
        )
        yield Setup(node, manager, signer, connect(tmp_path / "tx.db"), purpose, clock)
        await manager.close()
        db.close()


def transfer(setup: Setup, gas: int = 21_000) -> Call:
    return Call(to=setup.node.accounts[5].address, data=b"", value=1, gas_limit=gas)


async def test_a_gap_below_an_open_nonce_is_filled_with_a_cancel_so_later_nonces_mine(
    setup: Setup,
) -> None:
    setup.record_directly(transfer(setup), nonce=1)  # nonce 0 was never recorded
    report = await setup.manager.start()
    assert report.counts["gap_filled"] == 1
    setup.rpc("evm_mine", [])
    await setup.manager.poll()
    rows = setup.rows()
    assert [(r["nonce"], r["purpose"], r["status"]) for r in rows] == [
        (1, NOTE, "MINED"),
        (0, "cancel", "MINED"),
    ]
    assert setup.manager.in_flight == 0


async def test_a_restart_resends_a_recorded_transaction_whatever_the_node_already_holds(
    setup: Setup,
) -> None:
    known = setup.record_directly(transfer(setup), nonce=0)
    unknown = setup.record_directly(transfer(setup), nonce=1)
    # Killed after the node took the first but before the ledger said so.
    assert setup.rpc("eth_sendRawTransaction", [known.raw]) == known.tx_hash
    await setup.manager.start()
    assert [r["status"] for r in setup.rows()] == ["BROADCAST", "BROADCAST"]
    assert setup.rpc("eth_getTransactionByHash", [unknown.tx_hash]) is not None
    setup.rpc("evm_mine", [])
    await setup.manager.poll()
    assert [r["status"] for r in setup.rows()] == ["MINED", "MINED"]
    assert setup.purpose.told == [
        (known.tx_hash, Settlement.MINED),
        (unknown.tx_hash, Settlement.MINED),
    ]


async def test_a_transaction_no_node_accepts_is_cancelled_and_its_purpose_told_at_settlement(
    setup: Setup,
) -> None:
    await setup.manager.start()
    too_big = Submission(
        transfer(setup, gas=40_000_000), Purpose(NOTE), lambda conn, tx: None, key=_key()
    )
    recorded = await setup.manager.record([too_big], FAIR)
    (result,) = await setup.manager.broadcast(recorded)
    assert result.outcome.value == "rejected"
    report = await setup.manager.poll()
    assert report.counts["cancelled"] == 1
    assert setup.purpose.told == []  # one node's refusal is not an outcome
    setup.rpc("evm_mine", [])
    await setup.manager.poll()
    assert setup.purpose.told == [(recorded[0].signed.tx_hash, Settlement.SUPERSEDED)]  # type: ignore[union-attr]
    assert [(r["purpose"], r["status"]) for r in setup.rows()] == [
        (NOTE, "CANCELLED"),
        ("cancel", "MINED"),
    ]


async def cancel_an_invalid_purpose(setup: Setup) -> SignedTx:
    """Send one transaction, have its purpose declare it invalid, and mine the cancel that
    replaces it on its nonce; returns the cancelled transaction."""
    await setup.manager.start()
    sub = Submission(transfer(setup), Purpose(NOTE), lambda conn, tx: None, key=_key())
    recorded = await setup.manager.record([sub], FAIR)
    await setup.manager.broadcast(recorded)
    assert recorded[0].tx_id is not None and recorded[0].signed is not None
    setup.purpose.invalid_ids.add(recorded[0].tx_id)
    await setup.manager.poll()
    setup.rpc("evm_mine", [])
    await setup.manager.poll()
    return recorded[0].signed


async def test_an_invalid_purpose_is_cancelled_and_superseded_when_the_cancel_mines(
    setup: Setup,
) -> None:
    cancelled = await cancel_an_invalid_purpose(setup)
    assert setup.purpose.told == [(cancelled.tx_hash, Settlement.SUPERSEDED)]
    assert setup.rpc("eth_getTransactionCount", [setup.signer.address, "latest"]) == "0x1"


async def test_every_status_change_of_a_transaction_has_an_audit_row(setup: Setup) -> None:
    """The ledger moves txs rows through the core's state machine: the invalid purpose's
    transaction and the cancel that superseded it each have their whole life, with reasons,
    in ``transitions`` (machine core.tx)."""
    await cancel_an_invalid_purpose(setup)
    original, cancel = setup.rows()

    def life(row: sqlite3.Row) -> list[tuple[str | None, str, str]]:
        history = state.history(setup.conn, ledger.TX_MACHINE, str(row["id"]))
        assert {h["machine"] for h in history} == {"core.tx"}
        assert {h["actor"] for h in history} == {ledger.ACTOR}
        return [(h["from_status"], h["to_status"], h["note"] or "") for h in history]

    first = life(original)
    assert [(f, t) for f, t, _ in first] == [
        (None, "SIGNED"), ("SIGNED", "BROADCAST"), ("BROADCAST", "CANCELLED"),
    ]  # fmt: skip
    assert original["tx_hash"] in first[0][2] and "test says so" in first[2][2]
    second = life(cancel)
    assert [(f, t) for f, t, _ in second] == [
        (None, "SIGNED"), ("SIGNED", "BROADCAST"), ("BROADCAST", "MINED"),
    ]  # fmt: skip
    assert f"replacing tx {original['id']}" in second[0][2]
    # and the chain agrees with the trail: one nonce used, by the cancel, not the original
    assert setup.rpc("eth_getTransactionCount", [setup.signer.address, "latest"]) == "0x1"
    assert setup.rpc("eth_getTransactionReceipt", [original["tx_hash"]]) is None
    receipt = setup.rpc("eth_getTransactionReceipt", [cancel["tx_hash"]])
    assert isinstance(receipt, dict) and receipt["status"] == "0x1"


def test_a_reorged_out_transaction_reopens_through_the_machine_and_a_gap_revives(
    tmp_path: Path,
) -> None:
    """Reopening after a reorg and reviving a superseded row are audited moves too; a row
    another transaction holds the nonce of is not revived, and leaves no audit row."""
    conn = connect(tmp_path / "tx.db")
    signer = LocalSigner(bytes.fromhex("11" * 32), chain_id=31337)
    call = Call(to=signer.address, data=b"", value=0, gas_limit=21_000)
    first = signer.sign(call, nonce=0, fees=FAIR)
    with atomic(conn):
        tx_id = ledger.insert(
            conn,
            first,
            Purpose(NOTE),
            sender=signer.address,
            chain_id=31337,
            now=1.0,
            idempotency_key=_key(),
        )
    ledger.mark_accepted(conn, [tx_id], now=2.0)
    ledger.set_status(
        conn, tx_id, ledger.TxStatus.MINED, now=3.0, mined_block=7, mined_block_hash="0xab"
    )
    # a caller whose view is stale (it thinks the row is open) changes nothing
    assert not ledger.set_status(
        conn, tx_id, ledger.TxStatus.DROPPED, now=3.5, only_from=ledger.OPEN_STATUSES
    )
    ledger.reopen(conn, tx_id, now=4.0, reason="block 7 was reorged away", head=9)
    row = conn.execute("SELECT * FROM txs WHERE id = ?", (tx_id,)).fetchone()
    assert (row["status"], row["mined_block"], row["held_at_head"]) == ("BROADCAST", None, 9)
    bumped = signer.sign(call, nonce=0, fees=Fees(max_fee_per_gas=6 * GWEI,
                                                  max_priority_fee_per_gas=2 * GWEI))  # fmt: skip
    old = ledger.open_txs(conn, signer.address, chain_id=31337)[0]
    with atomic(conn):
        new_id = ledger.insert(
            conn, bumped, Purpose(NOTE), sender=signer.address, chain_id=31337, now=5.0,
            replaces=old,
            replaced_reason="stuck", idempotency_key=ledger.replacement_key(old),
        )  # fmt: skip
    assert not ledger.revive(conn, tx_id, now=6.0, reason="gap")  # the nonce is held
    ledger.set_status(conn, new_id, ledger.TxStatus.DROPPED, now=7.0, error="foreign tx")
    assert ledger.revive(conn, tx_id, now=8.0, reason="gap at nonce 0")
    moves = [
        (h["from_status"], h["to_status"], h["note"], h["at"])
        for h in state.history(conn, ledger.TX_MACHINE, str(tx_id))
    ]
    assert moves[1:] == [
        ("SIGNED", "BROADCAST", "accepted by a node", 2.0),
        ("BROADCAST", "MINED", None, 3.0),
        ("MINED", "BROADCAST", "block 7 was reorged away", 4.0),
        ("BROADCAST", "REPLACED", "stuck", 5.0),
        ("REPLACED", "SIGNED", "gap at nonce 0", 8.0),
    ]


async def test_a_stuck_transaction_at_the_fee_cap_is_left_alone_with_a_warning(
    setup: Setup,
) -> None:
    await setup.manager.start()
    near_cap = Fees(max_fee_per_gas=95 * GWEI, max_priority_fee_per_gas=GWEI)
    recorded = await setup.manager.record(
        [Submission(transfer(setup), Purpose(NOTE), lambda conn, tx: None, key=_key())], near_cap
    )
    await setup.manager.broadcast(recorded)
    setup.clock.advance(POLICY.stuck_after_s + 1)
    with capture_logs() as logs:
        report = await setup.manager.poll()
    assert report.counts.get("replaced", 0) == 0
    assert any(e["event"] == "tx_fee_cap_reached" for e in logs)
    assert len(setup.rows()) == 1


async def test_the_window_bounds_the_transactions_in_flight(setup: Setup) -> None:
    await setup.manager.start()
    subs = [
        Submission(transfer(setup), Purpose(NOTE), lambda conn, tx: None, key=_key())
        for _ in range(4)
    ]
    recorded = await setup.manager.record(subs, FAIR)
    assert [r.signed.nonce for r in recorded if r.signed] == [0, 1, 2, 3]
    assert setup.manager.room == 0
    with pytest.raises(ValueError, match="window"):
        await setup.manager.record(subs[:1], FAIR)
    await setup.manager.broadcast(recorded)
    setup.rpc("evm_mine", [])
    await setup.manager.poll()
    assert setup.manager.room == POLICY.window


async def test_a_refused_bind_leaves_no_row_and_no_nonce_gap(setup: Setup) -> None:
    await setup.manager.start()

    def refuse(conn: sqlite3.Connection, tx: SignedTx) -> None:
        from shared.errors import TransitionConflict

        raise TransitionConflict("the purpose moved on")

    def ok() -> Submission:
        return Submission(transfer(setup), Purpose(NOTE), lambda conn, tx: None, key=_key())

    recorded = await setup.manager.record(
        [ok(), Submission(transfer(setup), Purpose(NOTE), refuse, key=_key()), ok()], FAIR
    )
    assert [r.signed.nonce if r.signed else None for r in recorded] == [0, None, 1]
    assert [r["nonce"] for r in setup.rows()] == [0, 1]


async def test_recording_an_already_recorded_transaction_returns_its_row(setup: Setup) -> None:
    signed = setup.signer.sign(transfer(setup), nonce=0, fees=FAIR)
    with atomic(setup.conn):
        first = ledger.insert(
            setup.conn, signed, Purpose(NOTE), sender=setup.signer.address,
            chain_id=setup.signer.chain_id, now=1,
            idempotency_key="note:1",
        )  # fmt: skip
    with atomic(setup.conn):
        again = ledger.insert(
            setup.conn, signed, Purpose(NOTE), sender=setup.signer.address,
            chain_id=setup.signer.chain_id, now=2,
            idempotency_key="note:1",
        )  # fmt: skip
    assert first == again
    assert len(setup.rows()) == 1


async def test_a_gap_whose_identical_cancel_was_recorded_before_is_filled_and_later_nonces_mine(
    setup: Setup,
) -> None:
    # The cancel the manager will sign for the gap at nonce 0 (same call, nonce and market
    # fees) is already in the ledger, superseded: signing it again gives the same hash.
    from shared.tx.fees import fetch_market, price
    from shared.tx.replacements import cancel_call

    async with RpcClient([setup.node.rpc_url]) as rpc:
        fees = price(await fetch_market(rpc), POLICY.fees)
    cancel = setup.record_directly(cancel_call(setup.signer.address), nonce=0, fees=fees)
    setup.conn.execute("UPDATE txs SET status = 'REPLACED' WHERE tx_hash = ?", (cancel.tx_hash,))
    later = setup.record_directly(transfer(setup), nonce=1)
    await setup.manager.start()  # before the fix: IntegrityError on txs.tx_hash, every poll
    setup.rpc("evm_mine", [])
    await setup.manager.poll()
    rows = {r["tx_hash"]: r["status"] for r in setup.rows()}
    assert rows == {cancel.tx_hash: "MINED", later.tx_hash: "MINED"}
    assert setup.rpc("eth_getTransactionCount", [setup.signer.address, "latest"]) == "0x2"


async def test_an_intended_transaction_is_recorded_once_whatever_the_caller_retries(
    setup: Setup,
) -> None:
    await setup.manager.start()
    sub = Submission(transfer(setup), Purpose(NOTE), lambda conn, tx: None, key="pay:order-7")
    first = await setup.manager.record([sub], FAIR)
    again = await setup.manager.record([sub, sub], FAIR)  # a retry after a lost answer
    assert first[0].tx_id is not None
    assert [r.existing_id for r in again] == [first[0].tx_id, first[0].tx_id]
    assert all(r.signed is None for r in again)  # nothing signed, no nonce used
    assert len(setup.rows()) == 1 and setup.manager.in_flight == 1
