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
- ``final_at`` is set once per settlement, by :func:`mark_final` in the database transaction
  that tells the purpose FINAL, and only while the row is still settled in the block the
  finality was judged on; a reorg that reopens the row clears it (a new settlement, a new
  FINAL). So FINAL is told exactly once per settlement, across restarts.
- Rows are never deleted: the table is the audit trail of everything the key signed.
- Every row carries the chain it was signed for (``chain_id``, core migration 15), and every
  query of a sender's rows names the chain too: one key may send on several chains, each
  with its own nonce sequence, open rows, gaps and finality, which never see each other.
- Every status change goes through the core's transition function on :data:`TX_MACHINE`
  (shared/state), so each one has an audit row in ``transitions`` (machine ``core.tx``, the
  row id) with the reason: ``state.history(conn, TX_MACHINE, str(tx_id))`` is the life of a
  transaction, creation included. Columns that are not the status (errors of a broadcast,
  the block a re-included transaction moved to, a hold) are updated in place.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Final

from eth_utils.address import to_checksum_address

from shared import state
from shared.db import atomic
from shared.errors import TransitionConflict
from shared.state import Machine
from shared.tx.fees import Fees
from shared.tx.signer import Call, SignedTx

if TYPE_CHECKING:
    from shared.tx.senders import SenderClaim


class TxStatus(StrEnum):
    SIGNED = "SIGNED"
    BROADCAST = "BROADCAST"
    MINED = "MINED"
    REVERTED = "REVERTED"
    REPLACED = "REPLACED"
    DROPPED = "DROPPED"
    CANCELLED = "CANCELLED"


OPEN_STATUSES: Final = (TxStatus.SIGNED, TxStatus.BROADCAST)
#: superseded at its nonce, but a node may still mine it (or it may be needed again)
SUPERSEDED_STATUSES: Final = (TxStatus.REPLACED, TxStatus.CANCELLED, TxStatus.DROPPED)
SETTLED_STATUSES: Final = (TxStatus.MINED, TxStatus.REVERTED)
CANCEL_PURPOSE: Final = "cancel"
#: the actor of the ledger's audit rows
ACTOR: Final = "tx"


def _tx_moves() -> frozenset[tuple[str, str]]:
    moves = {(TxStatus.SIGNED.value, TxStatus.BROADCAST.value)}
    # an open row is superseded at its nonce: by a replacement, a cancel, or a foreign tx
    moves |= {(o.value, s.value) for o in OPEN_STATUSES for s in SUPERSEDED_STATUSES}
    # a superseded row fills its nonce's gap again (revive)
    moves |= {(s.value, TxStatus.SIGNED.value) for s in SUPERSEDED_STATUSES}
    # whichever row of a nonce the chain includes settles, superseded ones too (a replaced
    # transaction a node had kept can still be mined), and a reorg can change the verdict
    moves |= {(t.value, s.value) for t in TxStatus for s in SETTLED_STATUSES if t != s}
    # a reorg took a mined (or reverted) row out: open again (held)
    moves.add((TxStatus.MINED.value, TxStatus.BROADCAST.value))
    moves.add((TxStatus.REVERTED.value, TxStatus.BROADCAST.value))
    return frozenset(moves)


#: The ``txs`` table as a state machine: not claimable (one sender owns its rows, see
#: shared/tx/senders.py), never finished (a reorg can reopen a mined row).
TX_MACHINE: Final = Machine(
    name="core.tx",
    table="txs",
    key="id",
    statuses=TxStatus,
    moves=_tx_moves(),
    settable=frozenset(
        {
            "error",
            "mined_block",
            "mined_block_hash",
            "gas_used",
            "held_at_head",
            "broadcast_at",
            "final_at",
            "final_head",
        }
    ),
    claimable=False,
)


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
    #: when its purpose was told FINAL (None: not yet, or not settled)
    final_at: float | None = None
    #: the chain it was signed for (None: recorded before migration 15 on a database that
    #: named no chain, until a manager of its sender adopts it: :func:`adopt_unchained`)
    chain_id: int | None = None

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
    "mined_block_hash, held_at_head, simulated_block, idempotency_key, final_at, chain_id"
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
        final_at=row["final_at"],
        chain_id=row["chain_id"],
    )


def insert(
    conn: sqlite3.Connection,
    signed: SignedTx,
    purpose: Purpose,
    *,
    sender: str,
    chain_id: int,
    now: float,
    replaces: TxRecord | None = None,
    replaced_reason: str | None = None,
    simulated_block: int | None = None,
    idempotency_key: str,
    fence: SenderClaim | None = None,
) -> int:
    """Record ``signed``, signed by ``sender`` for ``chain_id``, as SIGNED (call inside
    ``atomic``). With ``replaces``, that row must
    still be the open current transaction of the same nonce; it becomes REPLACED (CANCELLED
    when ``signed`` is a cancel) with ``replaced_reason``. With ``fence`` (the sender claim
    that signed it), raises SenderTakenOverError unless the key's ``senders`` row is still
    that claim's, checked in this transaction.

    Already recorded (same hash): nothing changes, and the existing row's id is returned."""
    if fence is not None:
        fence.check(conn)
    existing = conn.execute("SELECT id FROM txs WHERE tx_hash = ?", (signed.tx_hash,)).fetchone()
    if existing is not None:
        return int(existing[0])
    if replaces is not None:
        if replaces.nonce != signed.nonce or replaces.chain_id != chain_id:
            raise ValueError(
                "a replacement must use the nonce and chain of the transaction it replaces"
            )
        superseded = TxStatus.CANCELLED if purpose.kind == CANCEL_PURPOSE else TxStatus.REPLACED
        if not _move(
            conn, replaces.id, superseded, now=now, note=replaced_reason or f"replaced by "
            f"{signed.tx_hash}", error=replaced_reason, only_from=OPEN_STATUSES,
        ):  # fmt: skip
            raise TransitionConflict(f"tx {replaces.tx_hash} is no longer open; not replacing it")
    fees = signed.fees
    cursor = conn.execute(
        "INSERT INTO txs (purpose, subject, version, fingerprint, sender, nonce, tx_hash,"
        " raw_tx, to_address, value_wei, calldata, gas_limit, max_fee_per_gas,"
        " max_priority_fee_per_gas, gas_price, status, replaces_tx_id, created_at, updated_at,"
        " simulated_block, idempotency_key, chain_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'SIGNED', ?, ?, ?, ?, ?, ?)",
        (
            purpose.kind, purpose.subject, purpose.version, purpose.fingerprint,
            sender, signed.nonce, signed.tx_hash, signed.raw, signed.call.to,
            str(signed.call.value), "0x" + signed.call.data.hex(), signed.call.gas_limit,
            _wei(fees.max_fee_per_gas), _wei(fees.max_priority_fee_per_gas),
            _wei(fees.gas_price), replaces.id if replaces else None, now, now,
            simulated_block, idempotency_key, chain_id,
        ),
    )  # fmt: skip
    assert cursor.lastrowid is not None
    what = f"{purpose.kind} {purpose.subject}" if purpose.subject is not None else purpose.kind
    note = f"signed {signed.tx_hash} at nonce {signed.nonce} for {what}"
    if replaces is not None:
        note += f", replacing tx {replaces.id}"
    state.audit(
        conn, TX_MACHINE, str(cursor.lastrowid), None, TxStatus.SIGNED.value, actor=ACTOR,
        note=note, at=now,
    )  # fmt: skip
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
    with atomic(conn):
        held = conn.execute(
            "SELECT 1 FROM txs t JOIN txs o ON o.sender = t.sender AND o.chain_id IS t.chain_id"
            " AND o.nonce = t.nonce WHERE t.id = ? AND o.status IN ('SIGNED', 'BROADCAST')",
            (tx_id,),
        ).fetchone()
        if held is not None:
            return False
        return _move(
            conn, tx_id, TxStatus.SIGNED, now=now, note=reason, error=reason,
            only_from=SUPERSEDED_STATUSES, keep_error=False,
        )  # fmt: skip


def _wei(value: int | None) -> str | None:
    return None if value is None else str(value)


def adopt_unchained(conn: sqlite3.Connection, sender: str, *, chain_id: int) -> int:
    """Give ``sender``'s rows that name no chain (recorded before migration 15 on a database
    that recorded no chain id) the chain of the manager that now sends with the key; returns
    how many. Once set, a row's chain never changes (trigger ``trg_txs_chain_frozen``)."""
    with atomic(conn):
        return conn.execute(
            "UPDATE txs SET chain_id = ? WHERE sender = ? AND chain_id IS NULL",
            (chain_id, sender),
        ).rowcount


def open_txs(conn: sqlite3.Connection, sender: str, *, chain_id: int | None) -> list[TxRecord]:
    """The current transaction of every open nonce of ``sender`` on ``chain_id``, lowest
    nonce first."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM txs WHERE status IN ('SIGNED', 'BROADCAST') AND sender = ? "
        "AND chain_id IS ? ORDER BY nonce, id",
        (sender, chain_id),
    ).fetchall()
    return [_record(r) for r in rows]


def at_nonces(
    conn: sqlite3.Connection, sender: str, nonces: Iterable[int], *, chain_id: int | None
) -> list[TxRecord]:
    """Every row (current and superseded) at the given nonces of ``sender`` on ``chain_id``."""
    wanted = sorted(set(nonces))
    out: list[TxRecord] = []
    # Chunked: SQLite limits the number of bound parameters per statement.
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        marks = ",".join("?" * len(chunk))
        out += [
            _record(r)
            for r in conn.execute(
                f"SELECT {_COLUMNS} FROM txs WHERE sender = ? AND chain_id IS ? "
                f"AND nonce IN ({marks}) ORDER BY nonce, id",
                (sender, chain_id, *chunk),
            )
        ]
    return out


def recent_mined(
    conn: sqlite3.Connection, sender: str, from_block: int, *, chain_id: int | None
) -> list[TxRecord]:
    """MINED and REVERTED rows in blocks ``from_block`` and above, highest block first: the
    ones a reorg could still take out (a revert is an outcome a purpose was told, too)."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM txs WHERE sender = ? AND chain_id IS ? "
        "AND status IN ('MINED', 'REVERTED') AND mined_block >= ? "
        "ORDER BY mined_block DESC, nonce",
        (sender, chain_id, from_block),
    ).fetchall()
    return [_record(r) for r in rows]


def settled_floor(conn: sqlite3.Connection, sender: str, *, chain_id: int | None) -> int:
    """One above the highest nonce at which a transaction of ours is MINED or REVERTED: the
    chain has consumed every nonce below it, whatever a lagging node says (0 when none)."""
    row = conn.execute(
        "SELECT MAX(nonce) FROM txs WHERE sender = ? AND chain_id IS ? "
        "AND status IN ('MINED', 'REVERTED')",
        (sender, chain_id),
    ).fetchone()
    return 0 if row[0] is None else int(row[0]) + 1


def settled_nonces(
    conn: sqlite3.Connection, sender: str, nonces: Iterable[int], *, chain_id: int | None
) -> set[int]:
    """Of ``nonces``, those at which a transaction of ours is MINED or REVERTED."""
    wanted = sorted(set(nonces))
    out: set[int] = set()
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        marks = ",".join("?" * len(chunk))
        out |= {
            r[0]
            for r in conn.execute(
                f"SELECT DISTINCT nonce FROM txs WHERE sender = ? AND chain_id IS ? "
                f"AND nonce IN ({marks}) AND status IN ('MINED', 'REVERTED')",
                (sender, chain_id, *chunk),
            )
        }
    return out


def next_unused_nonce(conn: sqlite3.Connection, sender: str, *, chain_id: int | None) -> int:
    """One above the highest nonce ever recorded for ``sender`` on ``chain_id`` (0 when none)."""
    row = conn.execute(
        "SELECT MAX(nonce) FROM txs WHERE sender = ? AND chain_id IS ?", (sender, chain_id)
    ).fetchone()
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
    only_from: Iterable[TxStatus] | None = None,
) -> bool:
    """Move one row to ``status`` (call inside ``atomic`` when it must go with other writes).
    A row that settles is no longer held. With ``only_from``, a row in another status is
    left as it is (False): the caller's view of it was stale."""
    return _move(
        conn, tx_id, status, now=now, note=error, error=error,
        columns={
            "mined_block": mined_block, "mined_block_hash": mined_block_hash,
            "gas_used": gas_used, "held_at_head": None,
        },
        only_from=only_from,
    )  # fmt: skip


def _move(
    conn: sqlite3.Connection,
    tx_id: int,
    to: TxStatus,
    *,
    now: float,
    note: str | None,
    error: str | None = None,
    keep_error: bool = True,
    columns: dict[str, object] | None = None,
    only_from: Iterable[TxStatus] | None = None,
) -> bool:
    """Move row ``tx_id`` to ``to`` through the state machine (audit row with ``note``),
    setting ``columns`` and ``error`` (``keep_error``: a None ``error`` keeps the row's).
    False, changing nothing, when the row is not in one of ``only_from``. A row already in
    ``to`` gets the columns and no audit row: it did not change state."""
    with atomic(conn):
        row = conn.execute("SELECT status FROM txs WHERE id = ?", (tx_id,)).fetchone()
        if row is None:
            raise TransitionConflict(f"tx {tx_id} does not exist")
        current = TxStatus(row[0])
        if only_from is not None and current not in set(only_from):
            return False
        values = dict(columns or {})
        if error is not None or not keep_error:
            values["error"] = error
        if current == to:
            if values:
                assignments = ", ".join(f"{column} = ?" for column in values)
                TX_MACHINE.check_columns(values)
                conn.execute(
                    f"UPDATE txs SET {assignments}, updated_at = ? WHERE id = ?",
                    (*values.values(), now, tx_id),
                )
            return True
        state.transition(
            conn, TX_MACHINE, str(tx_id), current.value, to.value, actor=ACTOR, note=note,
            set_columns=values, now=now,
        )  # fmt: skip
        return True


def move_mined(
    conn: sqlite3.Connection, tx_id: int, *, block: int, block_hash: str, now: float
) -> None:
    """A settled transaction is in another block now (a reorg re-included it): its finality
    clock restarts from the new block, unless FINAL was told already (once per settlement)."""
    conn.execute(
        "UPDATE txs SET mined_block = ?, mined_block_hash = ?, updated_at = ? "
        "WHERE id = ? AND status IN ('MINED', 'REVERTED')",
        (block, block_hash, now, tx_id),
    )


def get(conn: sqlite3.Connection, tx_id: int) -> TxRecord | None:
    """One row by id, as it stands now."""
    row = conn.execute(f"SELECT {_COLUMNS} FROM txs WHERE id = ?", (tx_id,)).fetchone()
    return None if row is None else _record(row)


def unfinal(
    conn: sqlite3.Connection, sender: str, *, chain_id: int | None, up_to_block: int, limit: int
) -> list[TxRecord]:
    """Settled rows (MINED / REVERTED) in blocks at or below ``up_to_block`` whose purpose was
    not told FINAL yet, oldest block first, at most ``limit``."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM txs WHERE sender = ? AND chain_id IS ? AND final_at IS NULL "
        "AND status IN ('MINED', 'REVERTED') AND mined_block <= ? "
        "ORDER BY mined_block, nonce LIMIT ?",
        (sender, chain_id, up_to_block, limit),
    ).fetchall()
    return [_record(r) for r in rows]


def mark_final(conn: sqlite3.Connection, tx: TxRecord, *, head: int, now: float, note: str) -> bool:
    """Record that ``tx``'s purpose is told FINAL (call inside ``atomic``, with the telling).
    False, changing nothing, when it was told already or the row is no longer settled in the
    block the caller judged (``tx.mined_block_hash``): then nobody may tell it now."""
    changed = conn.execute(
        "UPDATE txs SET final_at = ?, final_head = ?, updated_at = ? WHERE id = ? "
        "AND final_at IS NULL AND status = ? AND mined_block_hash = ?",
        (now, head, now, tx.id, tx.status.value, tx.mined_block_hash),
    ).rowcount
    if changed:
        # Not a status change: an audit row from the status to itself, so the transaction's
        # life in ``transitions`` shows when its outcome became final and why.
        state.audit(
            conn, TX_MACHINE, str(tx.id), tx.status.value, tx.status.value, actor=ACTOR,
            note=note, at=now,
        )  # fmt: skip
    return bool(changed)


def resettle(
    conn: sqlite3.Connection,
    tx_id: int,
    status: TxStatus,
    *,
    block: int,
    block_hash: str,
    gas_used: int,
    now: float,
    reason: str,
) -> bool:
    """A settled row re-included by a reorg with the other result (mined <-> reverted): a new
    settlement, so its FINAL is told again later."""
    return _move(
        conn, tx_id, status, now=now, note=reason,
        error=None if status is TxStatus.MINED else reason, keep_error=False,
        columns={
            "mined_block": block, "mined_block_hash": block_hash, "gas_used": gas_used,
            "final_at": None, "final_head": None,
        },
        only_from=SETTLED_STATUSES,
    )  # fmt: skip


def mark_accepted(conn: sqlite3.Connection, tx_ids: Sequence[int], *, now: float) -> None:
    """A node holds these transactions: SIGNED -> BROADCAST (first acceptance time kept)."""
    wanted = sorted(set(tx_ids))
    with atomic(conn):
        rows: list[sqlite3.Row] = []
        for start in range(0, len(wanted), 500):  # SQLite's bound-parameter limit
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows += conn.execute(
                f"SELECT id, status, broadcast_at FROM txs WHERE id IN ({marks})", chunk
            ).fetchall()
        for row in rows:
            if row["status"] == TxStatus.SIGNED:
                first = now if row["broadcast_at"] is None else row["broadcast_at"]
                state.transition(
                    conn, TX_MACHINE, str(row["id"]), TxStatus.SIGNED.value,
                    TxStatus.BROADCAST.value, actor=ACTOR, note="accepted by a node",
                    set_columns={"broadcast_at": first}, now=now,
                )  # fmt: skip
        conn.executemany(
            "UPDATE txs SET broadcast_at = COALESCE(broadcast_at, ?), updated_at = ? WHERE id = ?",
            [(now, now, row["id"]) for row in rows if row["status"] != TxStatus.SIGNED],
        )


def note_error(conn: sqlite3.Connection, tx_id: int, error: str, *, now: float) -> None:
    """Remember why the last broadcast of this row failed (status unchanged)."""
    conn.execute("UPDATE txs SET error = ?, updated_at = ? WHERE id = ?", (error, now, tx_id))


def reopen(conn: sqlite3.Connection, tx_id: int, *, now: float, reason: str, head: int) -> None:
    """A MINED (or REVERTED) transaction is no longer on the chain (reorg): it is current and
    open again, and held: not broadcast again until its purpose is confirmed (``head``: the
    chain head when this was seen). Its FINAL, if told, is undone with it."""
    _move(
        conn, tx_id, TxStatus.BROADCAST, now=now, note=reason, error=reason,
        columns={
            "mined_block": None, "mined_block_hash": None, "gas_used": None,
            "held_at_head": head, "final_at": None, "final_head": None,
        },
        only_from=SETTLED_STATUSES,
    )  # fmt: skip


def release_hold(conn: sqlite3.Connection, tx_id: int, *, now: float, note: str) -> None:
    """The purpose of a held transaction is confirmed: it may be broadcast again."""
    conn.execute(
        "UPDATE txs SET held_at_head = NULL, error = ?, updated_at = ? WHERE id = ?",
        (note, now, tx_id),
    )
