"""The ``txs`` table: every signed transaction, recorded before any node sees it.

Guarantees:

- :func:`insert` runs inside the caller's transaction, so a purpose's own state change (e.g.
  a request ANSWERED -> PROCESSED) commits together with the signed bytes, or neither does.
  A process killed after that commit still holds everything needed to broadcast again.
- A nonce is *open* while one of its rows is SIGNED or BROADCAST; that row is its *current*
  transaction. Recording a replacement supersedes the current row (REPLACED, or CANCELLED
  when the replacement is a cancel) in the same transaction, so a nonce never has two
  current rows.
- Recording a signed transaction that is already recorded (the same bytes, so the same hash)
  changes nothing and returns the existing row: signing the same call with the same nonce and
  fees twice is one transaction, never an error that wedges the caller.
- A transaction a reorg took out is *held* (``held_at_head``): open, since a node may still
  mine it, but not broadcast again until its purpose is confirmed (shared/tx/manager.py).
- Rows are never deleted: the table is the audit trail of everything the key signed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from eth_utils.address import to_checksum_address

from shared.errors import TransitionConflict
from shared.tx.fees import Fees
from shared.tx.signer import Call, SignedTx


class TxStatus(StrEnum):
    SIGNED = "SIGNED"
    BROADCAST = "BROADCAST"
    MINED = "MINED"
    REVERTED = "REVERTED"
    REPLACED = "REPLACED"
    DROPPED = "DROPPED"
    CANCELLED = "CANCELLED"


OPEN_STATUSES: Final = (TxStatus.SIGNED, TxStatus.BROADCAST)
CANCEL_PURPOSE: Final = "cancel"


@dataclass(frozen=True)
class Purpose:
    """Why a transaction exists. ``kind`` selects the handler that judges it; ``subject`` is
    what it serves (a request id, a task, a distribution run), ``version`` the version of the
    subject it was made for (a request's generation) and ``fingerprint`` the content it was
    made from (a content hash): a handler compares them with the subject as it stands now."""

    kind: str
    subject: str | None = None
    version: int | None = None
    fingerprint: str | None = None


CANCEL: Final = Purpose(CANCEL_PURPOSE)


@dataclass(frozen=True)
class TxRecord:
    """One row of ``txs``."""

    id: int
    purpose: Purpose
    sender: str
    nonce: int
    tx_hash: str
    raw: str
    call: Call
    fees: Fees
    status: TxStatus
    replaces_tx_id: int | None
    error: str | None
    created_at: float
    broadcast_at: float | None
    mined_block: int | None
    mined_block_hash: str | None = None
    #: set while a reorg-out transaction waits for its purpose to be confirmed
    held_at_head: int | None = None
    simulated_block: int | None = None
    #: names the intended transaction; unique (a replacement's key derives from it)
    idempotency_key: str | None = None

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def held(self) -> bool:
        return self.held_at_head is not None and self.is_open


_COLUMNS: Final = (
    "id, purpose, subject, version, fingerprint, sender, nonce, tx_hash, raw_tx, "
    "to_address, value_wei, calldata, gas_limit, max_fee_per_gas, max_priority_fee_per_gas, "
    "gas_price, status, replaces_tx_id, error, created_at, broadcast_at, mined_block, "
    "mined_block_hash, held_at_head, simulated_block, idempotency_key"
)


def _fees(row: sqlite3.Row) -> Fees:
    if row["gas_price"] is not None:
        return Fees(gas_price=int(row["gas_price"]))
    return Fees(
        max_fee_per_gas=int(row["max_fee_per_gas"]),
        max_priority_fee_per_gas=int(row["max_priority_fee_per_gas"]),
    )


def _record(row: sqlite3.Row) -> TxRecord:
    return TxRecord(
        id=row["id"],
        purpose=Purpose(
            kind=row["purpose"],
            subject=row["subject"],
            version=row["version"],
            fingerprint=row["fingerprint"],
        ),
        sender=row["sender"],
        nonce=row["nonce"],
        tx_hash=row["tx_hash"],
        raw=row["raw_tx"],
        call=Call(
            to=to_checksum_address(row["to_address"]),
            data=bytes.fromhex(row["calldata"].removeprefix("0x")),
            value=int(row["value_wei"]),
            gas_limit=row["gas_limit"],
        ),
        fees=_fees(row),
        status=TxStatus(row["status"]),
        replaces_tx_id=row["replaces_tx_id"],
        error=row["error"],
        created_at=row["created_at"],
        broadcast_at=row["broadcast_at"],
        mined_block=row["mined_block"],
        mined_block_hash=row["mined_block_hash"],
        held_at_head=row["held_at_head"],
        simulated_block=row["simulated_block"],
        idempotency_key=row["idempotency_key"],
    )


def insert(
    conn: sqlite3.Connection,
    signed: SignedTx,
    purpose: Purpose,
    *,
    sender: str,
    now: float,
    replaces: TxRecord | None = None,
    replaced_reason: str | None = None,
    simulated_block: int | None = None,
    idempotency_key: str,
) -> int:
    """Record ``signed`` as SIGNED (call inside ``atomic``). With ``replaces``, that row must
    still be the open current transaction of the same nonce; it becomes REPLACED (CANCELLED
    when ``signed`` is a cancel) with ``replaced_reason``.

    Already recorded (same hash): nothing changes, and the existing row's id is returned."""
    existing = conn.execute("SELECT id FROM txs WHERE tx_hash = ?", (signed.tx_hash,)).fetchone()
    if existing is not None:
        return int(existing[0])
    if replaces is not None:
        if replaces.nonce != signed.nonce:
            raise ValueError("a replacement must use the nonce of the transaction it replaces")
        superseded = TxStatus.CANCELLED if purpose.kind == CANCEL_PURPOSE else TxStatus.REPLACED
        cursor = conn.execute(
            "UPDATE txs SET status = ?, error = COALESCE(?, error), updated_at = ? "
            "WHERE id = ? AND status IN ('SIGNED', 'BROADCAST')",
            (superseded.value, replaced_reason, now, replaces.id),
        )
        if cursor.rowcount != 1:
            raise TransitionConflict(f"tx {replaces.tx_hash} is no longer open; not replacing it")
    fees = signed.fees
    cursor = conn.execute(
        "INSERT INTO txs (purpose, subject, version, fingerprint, sender, nonce, tx_hash,"
        " raw_tx, to_address, value_wei, calldata, gas_limit, max_fee_per_gas,"
        " max_priority_fee_per_gas, gas_price, status, replaces_tx_id, created_at, updated_at,"
        " simulated_block, idempotency_key)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'SIGNED', ?, ?, ?, ?, ?)",
        (
            purpose.kind, purpose.subject, purpose.version, purpose.fingerprint,
            sender, signed.nonce, signed.tx_hash, signed.raw, signed.call.to,
            str(signed.call.value), "0x" + signed.call.data.hex(), signed.call.gas_limit,
            _wei(fees.max_fee_per_gas), _wei(fees.max_priority_fee_per_gas),
            _wei(fees.gas_price), replaces.id if replaces else None, now, now,
            simulated_block, idempotency_key,
        ),
    )  # fmt: skip
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def recorded_keys(conn: sqlite3.Connection, keys: Iterable[str]) -> dict[str, int]:
    """Of these idempotency keys, those already recorded: key -> row id."""
    wanted = sorted(set(keys))
    out: dict[str, int] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        marks = ",".join("?" * len(chunk))
        out.update(
            conn.execute(
                f"SELECT idempotency_key, id FROM txs WHERE idempotency_key IN ({marks})", chunk
            ).fetchall()
        )
    return out


def replacement_key(old: TxRecord) -> str:
    """The idempotency key of the transaction that replaces ``old``: the intent's key plus
    the replaced row (a row is replaced at most once, so the key is unique)."""
    root = (old.idempotency_key or f"legacy:{old.id}").split("#", 1)[0]
    return f"{root}#r{old.id}"


def free_key(conn: sqlite3.Connection, base: str) -> str:
    """``base``, or ``base#2``, ``base#3``... whichever is not recorded yet."""
    candidate, n = base, 1
    while conn.execute("SELECT 1 FROM txs WHERE idempotency_key = ?", (candidate,)).fetchone():
        n += 1
        candidate = f"{base}#{n}"
    return candidate


def recorded_id(conn: sqlite3.Connection, tx_hash: str) -> int | None:
    """The row of an already recorded transaction, by hash."""
    row = conn.execute("SELECT id FROM txs WHERE tx_hash = ?", (tx_hash,)).fetchone()
    return None if row is None else int(row[0])


def revive(conn: sqlite3.Connection, tx_id: int, *, now: float, reason: str) -> bool:
    """Make a superseded row current again (SIGNED) when its nonce has no open row: a gap is
    filled with exactly this transaction once more. False when the row is open, mined, or
    its nonce is held by another row."""
    cursor = conn.execute(
        "UPDATE txs SET status = 'SIGNED', error = ?, updated_at = ? "
        "WHERE id = ? AND status IN ('REPLACED', 'CANCELLED', 'DROPPED') "
        "AND NOT EXISTS (SELECT 1 FROM txs o WHERE o.sender = txs.sender AND o.nonce = txs.nonce"
        " AND o.status IN ('SIGNED', 'BROADCAST'))",
        (reason, now, tx_id),
    )
    return cursor.rowcount == 1


def _wei(value: int | None) -> str | None:
    return None if value is None else str(value)


def open_txs(conn: sqlite3.Connection, sender: str) -> list[TxRecord]:
    """The current transaction of every open nonce, lowest nonce first."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM txs WHERE status IN ('SIGNED', 'BROADCAST') AND sender = ? "
        "ORDER BY nonce, id",
        (sender,),
    ).fetchall()
    return [_record(r) for r in rows]


def at_nonces(conn: sqlite3.Connection, sender: str, nonces: Iterable[int]) -> list[TxRecord]:
    """Every row (current and superseded) at the given nonces."""
    wanted = sorted(set(nonces))
    out: list[TxRecord] = []
    # Chunked: SQLite limits the number of bound parameters per statement.
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        marks = ",".join("?" * len(chunk))
        out += [
            _record(r)
            for r in conn.execute(
                f"SELECT {_COLUMNS} FROM txs WHERE sender = ? AND nonce IN ({marks}) "
                "ORDER BY nonce, id",
                (sender, *chunk),
            )
        ]
    return out


def recent_mined(conn: sqlite3.Connection, sender: str, from_block: int) -> list[TxRecord]:
    """MINED rows in blocks ``from_block`` and above, highest block first: the ones a reorg
    could still take out."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM txs WHERE sender = ? AND status = 'MINED' AND mined_block >= ? "
        "ORDER BY mined_block DESC, nonce",
        (sender, from_block),
    ).fetchall()
    return [_record(r) for r in rows]


def settled_floor(conn: sqlite3.Connection, sender: str) -> int:
    """One above the highest nonce at which a transaction of ours is MINED or REVERTED: the
    chain has consumed every nonce below it, whatever a lagging node says (0 when none)."""
    row = conn.execute(
        "SELECT MAX(nonce) FROM txs WHERE sender = ? AND status IN ('MINED', 'REVERTED')",
        (sender,),
    ).fetchone()
    return 0 if row[0] is None else int(row[0]) + 1


def settled_nonces(conn: sqlite3.Connection, sender: str, nonces: Iterable[int]) -> set[int]:
    """Of ``nonces``, those at which a transaction of ours is MINED or REVERTED."""
    wanted = sorted(set(nonces))
    out: set[int] = set()
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        marks = ",".join("?" * len(chunk))
        out |= {
            r[0]
            for r in conn.execute(
                f"SELECT DISTINCT nonce FROM txs WHERE sender = ? AND nonce IN ({marks}) "
                "AND status IN ('MINED', 'REVERTED')",
                (sender, *chunk),
            )
        }
    return out


def next_unused_nonce(conn: sqlite3.Connection, sender: str) -> int:
    """One above the highest nonce ever recorded for ``sender`` (0 when none)."""
    row = conn.execute("SELECT MAX(nonce) FROM txs WHERE sender = ?", (sender,)).fetchone()
    return 0 if row[0] is None else int(row[0]) + 1


def set_status(
    conn: sqlite3.Connection,
    tx_id: int,
    status: TxStatus,
    *,
    now: float,
    error: str | None = None,
    mined_block: int | None = None,
    mined_block_hash: str | None = None,
    gas_used: int | None = None,
) -> None:
    """Move one row to ``status`` (call inside ``atomic`` when it must go with other writes).
    A row that settles is no longer held."""
    conn.execute(
        "UPDATE txs SET status = ?, error = COALESCE(?, error), mined_block = ?,"
        " mined_block_hash = ?, gas_used = ?, held_at_head = NULL, updated_at = ? WHERE id = ?",
        (status.value, error, mined_block, mined_block_hash, gas_used, now, tx_id),
    )


def move_mined(
    conn: sqlite3.Connection, tx_id: int, *, block: int, block_hash: str, now: float
) -> None:
    """A MINED transaction is in another block now (a reorg re-included it)."""
    conn.execute(
        "UPDATE txs SET mined_block = ?, mined_block_hash = ?, updated_at = ? "
        "WHERE id = ? AND status = 'MINED'",
        (block, block_hash, now, tx_id),
    )


def mark_accepted(conn: sqlite3.Connection, tx_ids: Sequence[int], *, now: float) -> None:
    """A node holds these transactions: SIGNED -> BROADCAST (first acceptance time kept)."""
    conn.executemany(
        "UPDATE txs SET status = CASE WHEN status = 'SIGNED' THEN 'BROADCAST' ELSE status END,"
        " broadcast_at = COALESCE(broadcast_at, ?), updated_at = ? WHERE id = ?",
        [(now, now, tx_id) for tx_id in tx_ids],
    )


def note_error(conn: sqlite3.Connection, tx_id: int, error: str, *, now: float) -> None:
    """Remember why the last broadcast of this row failed (status unchanged)."""
    conn.execute("UPDATE txs SET error = ?, updated_at = ? WHERE id = ?", (error, now, tx_id))


def reopen(conn: sqlite3.Connection, tx_id: int, *, now: float, reason: str, head: int) -> None:
    """A MINED transaction is no longer on the chain (reorg): it is current and open again,
    and held: not broadcast again until its purpose is confirmed (``head``: the chain head
    when this was seen)."""
    conn.execute(
        "UPDATE txs SET status = 'BROADCAST', mined_block = NULL, mined_block_hash = NULL,"
        " gas_used = NULL, error = ?, held_at_head = ?, updated_at = ?"
        " WHERE id = ? AND status = 'MINED'",
        (reason, head, now, tx_id),
    )


def release_hold(conn: sqlite3.Connection, tx_id: int, *, now: float, note: str) -> None:
    """The purpose of a held transaction is confirmed: it may be broadcast again."""
    conn.execute(
        "UPDATE txs SET held_at_head = NULL, error = ?, updated_at = ? WHERE id = ?",
        (note, now, tx_id),
    )
