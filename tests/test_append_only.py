"""Append-only history (core migration 13): rows of txs, transitions and tx_spends are never
deleted, and the columns that say what was signed never change; the ledger's own in-place
updates (status, errors, blocks, holds) still work."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from shared import state
from shared.db import atomic, connect
from shared.tx import ledger
from shared.tx.fees import GWEI, Fees
from shared.tx.ledger import Purpose, TxStatus
from shared.tx.policy import record_spends
from shared.tx.signer import Call, LocalSigner

KEY = bytes.fromhex("ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcab7cbed5f02ff80a")
TO = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
FEES = Fees(max_fee_per_gas=3 * GWEI, max_priority_fee_per_gas=GWEI)
FROZEN_TXS_COLUMNS = (
    ("calldata", "'0xdeadbeef'"),
    ("to_address", "'0x000000000000000000000000000000000000dEaD'"),
    ("value_wei", "'999'"),
    ("tx_hash", "'0x" + "11" * 32 + "'"),
    ("nonce", "7"),
    ("raw_tx", "'0x00'"),
    ("sender", "'0x000000000000000000000000000000000000dEaD'"),
    ("gas_limit", "1"),
    ("max_fee_per_gas", "'1'"),
    ("purpose", "'other'"),
    ("subject", "'other'"),
    ("idempotency_key", "'other'"),
)


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    return connect(tmp_path / "node.db")


def _record(conn: sqlite3.Connection) -> int:
    signer = LocalSigner(KEY, chain_id=31337)
    call = Call(to=signer.address, data=bytes.fromhex("a9059cbb") + b"\0" * 64, value=5,
                gas_limit=60_000)  # fmt: skip
    signed = signer.sign(call, nonce=0, fees=FEES)
    with atomic(conn):
        tx_id = ledger.insert(
            conn, signed, Purpose("pay", subject="task-1"), sender=signer.address,
            chain_id=signer.chain_id, now=1.0, idempotency_key="pay:task-1",
        )  # fmt: skip
        record_spends(conn, tx_id, sender=signer.address, moved={"native": 5}, now=1.0)
    return tx_id


@pytest.mark.parametrize(("column", "value"), FROZEN_TXS_COLUMNS)
def test_a_signed_transactions_history_columns_cannot_be_updated(
    conn: sqlite3.Connection, column: str, value: str
) -> None:
    tx_id = _record(conn)
    before = tuple(conn.execute("SELECT * FROM txs WHERE id = ?", (tx_id,)).fetchone())
    with pytest.raises(sqlite3.IntegrityError, match="txs history columns never change"):
        conn.execute(f"UPDATE txs SET {column} = {value} WHERE id = ?", (tx_id,))
    assert tuple(conn.execute("SELECT * FROM txs WHERE id = ?", (tx_id,)).fetchone()) == before


def test_rewriting_a_history_column_with_its_own_value_is_harmless(
    conn: sqlite3.Connection,
) -> None:
    tx_id = _record(conn)
    conn.execute("UPDATE txs SET calldata = calldata, nonce = nonce WHERE id = ?", (tx_id,))


def test_no_signed_transaction_can_be_deleted(conn: sqlite3.Connection) -> None:
    tx_id = _record(conn)
    with pytest.raises(sqlite3.IntegrityError, match="txs is append-only"):
        conn.execute("DELETE FROM txs WHERE id = ?", (tx_id,))
    assert conn.execute("SELECT COUNT(*) FROM txs").fetchone()[0] == 1


def test_no_audit_row_can_be_deleted_or_changed(conn: sqlite3.Connection) -> None:
    tx_id = _record(conn)
    assert conn.execute("SELECT COUNT(*) FROM transitions").fetchone()[0] == 1
    with pytest.raises(sqlite3.IntegrityError, match="transitions is append-only"):
        conn.execute("DELETE FROM transitions")
    for column, value in (("note", "'x'"), ("to_status", "'MINED'"), ("at", "0"),
                          ("actor", "'someone'"), ("entity_id", "'9'")):  # fmt: skip
        with pytest.raises(sqlite3.IntegrityError, match="transitions is append-only"):
            conn.execute(f"UPDATE transitions SET {column} = {value}")
    history = state.history(conn, ledger.TX_MACHINE, str(tx_id))
    assert [h["to_status"] for h in history] == ["SIGNED"]


def test_recorded_spends_cannot_be_deleted_or_changed(conn: sqlite3.Connection) -> None:
    _record(conn)
    with pytest.raises(sqlite3.IntegrityError, match="would lift the daily cap"):
        conn.execute("DELETE FROM tx_spends")
    with pytest.raises(sqlite3.IntegrityError, match="tx_spends is append-only"):
        conn.execute("UPDATE tx_spends SET amount = '1'")
    assert conn.execute("SELECT amount FROM tx_spends").fetchone()[0] == "5"


def test_the_ledgers_own_updates_still_work(conn: sqlite3.Connection) -> None:
    tx_id = _record(conn)
    ledger.mark_accepted(conn, [tx_id], now=2.0)
    ledger.note_error(conn, tx_id, "refused once", now=3.0)
    with atomic(conn):
        ledger.set_status(
            conn, tx_id, TxStatus.MINED, now=4.0, mined_block=10, mined_block_hash="0xab",
            gas_used=21_000,
        )  # fmt: skip
    ledger.move_mined(conn, tx_id, block=11, block_hash="0xcd", now=5.0)
    ledger.reopen(conn, tx_id, now=6.0, reason="reorged", head=12)
    ledger.release_hold(conn, tx_id, now=7.0, note="confirmed")
    row = conn.execute("SELECT status, held_at_head FROM txs WHERE id = ?", (tx_id,)).fetchone()
    assert tuple(row) == ("BROADCAST", None)
    changes = [h["to_status"] for h in state.history(conn, ledger.TX_MACHINE, str(tx_id))]
    assert changes == ["SIGNED", "BROADCAST", "MINED", "BROADCAST"]
