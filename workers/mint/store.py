"""The mint executor's rows: agent wallets, tasks, payments (one x402 purchase of one mint),
transfers (funding and refund authorizations the relayer submits), chat turns, and each
task's money account.

Guarantees:

- Every status change goes through shared.state (:data:`~workers.mint.machine.TASKS`,
  :data:`~workers.mint.machine.PAYMENTS`, :data:`~workers.mint.machine.TRANSFERS`), each
  with its audit row.
- One agent wallet per user address (``ai_agent_wallets.user_address`` is UNIQUE; the key is
  the core vault's derived wallet of label :data:`AGENT_LABEL` and that owner).
- At most one live (prepared or signed) or minted payment per (task, unit): a partial UNIQUE
  index in the database itself, so no unit is bought twice whatever the code does.
- The money account of a task (:func:`account`) always adds up: ``funded = spentOnMints +
  held + refunded``, where spent is what the task's mint authorizations moved or still could
  move (the ledger's SIGNED + USED of purpose ``mint``, subject the task) and refunded what
  its refund authorizations did; held is what remains in the agent wallet for the task.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from dataclasses import dataclass
from typing import Any, Final

from eth_utils.address import to_checksum_address

from shared import state
from shared.db import atomic, read_transaction
from shared.errors import NotFoundError
from shared.tx import authorizations as ledger
from workers.mint.machine import (
    PAYMENTS,
    TASK_TERMINAL,
    TASKS,
    TRANSFERS,
    PaymentStatus,
    TaskStatus,
    TransferStatus,
)

#: the core vault label of the agent wallets (owner: the user's checksummed address)
AGENT_LABEL: Final = "mint-agent"
#: the authorization ledger's purposes: a mint payment, a refund to the user
MINT_PURPOSE: Final = "mint"
REFUND_PURPOSE: Final = "mint-refund"
ACTOR: Final = "mint-executor"
TASK_COLUMNS: Final = (
    "id, user_address, agent_wallet_id, agent_address, token_address, quantity,"
    " price_per_mint, total_cost, status, mints_completed, mints_failed, funding_tx_hash,"
    " error_message, created_at, started_at, completed_at, chain_id, usdc_address,"
    " server_url, pay_to, payment_deadline, funded_amount, retry_round, updated_at"
)


@dataclass(frozen=True)
class Task:
    id: str
    user_address: str
    agent_wallet_id: str
    agent_address: str
    token_address: str
    quantity: int
    price_per_mint: int
    total_cost: int
    status: TaskStatus
    mints_completed: int
    mints_failed: int
    funding_tx_hash: str | None
    error_message: str | None
    created_at: float
    started_at: float | None
    completed_at: float | None
    chain_id: int
    usdc_address: str
    server_url: str
    pay_to: str
    payment_deadline: int
    funded_amount: int
    retry_round: int
    updated_at: float

    @property
    def terminal(self) -> bool:
        return self.status in TASK_TERMINAL


def _task(row: sqlite3.Row | tuple[Any, ...]) -> Task:
    v = list(tuple(row))
    v[6], v[7], v[8], v[21] = int(v[6]), int(v[7]), TaskStatus(v[8]), int(v[21])
    return Task(*v)


@dataclass(frozen=True)
class Account:
    """A task's money, in USDC base units: funded = spent_on_mints + held + refunded."""

    funded: int
    spent_on_mints: int
    held: int
    refunded: int

    def public(self) -> dict[str, str]:
        return {
            "funded": str(self.funded),
            "spentOnMints": str(self.spent_on_mints),
            "held": str(self.held),
            "refunded": str(self.refunded),
        }


# --- wallets --------------------------------------------------------------------------------


def ensure_agent_wallet(
    conn: sqlite3.Connection, vault_ensure: Any, user: str, *, now: float
) -> tuple[str, str]:
    """(wallet id, agent address) of ``user``'s agent wallet, created on first use.
    ``vault_ensure`` is :meth:`shared.keys.vault.Vault.ensure_wallet` of the agent vault."""
    user = str(to_checksum_address(user))
    row = conn.execute(
        "SELECT id, agent_address FROM ai_agent_wallets WHERE user_address = ?", (user,)
    ).fetchone()
    if row is not None:
        return str(row[0]), str(row[1])
    address = str(vault_ensure(label=AGENT_LABEL, owner=user, now=now))
    with atomic(conn):
        conn.execute(
            "INSERT INTO ai_agent_wallets (id, user_address, agent_address,"
            " encrypted_private_key, created_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (user_address) DO NOTHING",
            (str(uuid.uuid4()), user, address, f"vault:{address}", now),
        )
        row = conn.execute(
            "SELECT id, agent_address FROM ai_agent_wallets WHERE user_address = ?", (user,)
        ).fetchone()
    return str(row[0]), str(row[1])


def record_balance(conn: sqlite3.Connection, agent: str, balance: int, *, now: float) -> None:
    with atomic(conn):
        conn.execute(
            "UPDATE ai_agent_wallets SET usdc_balance = ?, last_balance_check = ?"
            " WHERE agent_address = ?",
            (str(balance), now, agent),
        )


# --- tasks ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewTask:
    user_address: str
    token_address: str
    quantity: int
    price_per_mint: int
    chain_id: int
    usdc_address: str
    server_url: str
    pay_to: str


def create_task(
    conn: sqlite3.Connection,
    new: NewTask,
    *,
    wallet_id: str,
    agent_address: str,
    timeout_s: int,
    now: float,
) -> Task:
    """Insert a pending_payment task; created_at is a whole second, so the payment deadline
    (created_at + timeout) is exact in every representation."""
    created = float(int(now))
    task_id = str(uuid.uuid4())
    row = {
        "id": task_id,
        "user_address": str(to_checksum_address(new.user_address)),
        "agent_wallet_id": wallet_id,
        "agent_address": agent_address,
        "token_address": str(to_checksum_address(new.token_address)),
        "quantity": new.quantity,
        "price_per_mint": str(new.price_per_mint),
        "total_cost": str(new.price_per_mint * new.quantity),
        "chain_id": new.chain_id,
        "usdc_address": str(to_checksum_address(new.usdc_address)),
        "server_url": new.server_url,
        "pay_to": str(to_checksum_address(new.pay_to)),
        "payment_deadline": int(created) + timeout_s,
    }
    with atomic(conn):
        state.insert(
            conn,
            TASKS,
            row,
            status=TaskStatus.PENDING_PAYMENT.value,
            actor=ACTOR,
            note=f"{new.quantity} mints of {row['token_address']}",
            now=created,
        )
    return get_task(conn, task_id)


def get_task(conn: sqlite3.Connection, task_id: str) -> Task:
    row = conn.execute(
        f"SELECT {TASK_COLUMNS} FROM ai_agent_tasks WHERE id = ?", (task_id,)
    ).fetchone()
    if row is None:
        raise NotFoundError(f"no task {task_id}")
    return _task(row)


def find_task(conn: sqlite3.Connection, task_id: str) -> Task | None:
    try:
        return get_task(conn, task_id)
    except NotFoundError:
        return None


def tasks_of(conn: sqlite3.Connection, user: str, *, limit: int = 100) -> list[Task]:
    rows = conn.execute(
        f"SELECT {TASK_COLUMNS} FROM ai_agent_tasks WHERE user_address = ?"
        " ORDER BY created_at DESC, id LIMIT ?",
        (str(to_checksum_address(user)), limit),
    )
    return [_task(r) for r in rows]


def tasks_in(conn: sqlite3.Connection, *statuses: TaskStatus) -> list[Task]:
    marks = ", ".join("?" * len(statuses))
    rows = conn.execute(
        f"SELECT {TASK_COLUMNS} FROM ai_agent_tasks WHERE status IN ({marks})"
        " ORDER BY created_at, id",
        [s.value for s in statuses],
    )
    return [_task(r) for r in rows]


def move_task(
    conn: sqlite3.Connection,
    task: Task,
    to: TaskStatus,
    *,
    actor: str = ACTOR,
    note: str | None = None,
    now: float,
    **columns: object,
) -> None:
    state.transition(
        conn,
        TASKS,
        task.id,
        task.status.value,
        to.value,
        actor=actor,
        note=note,
        set_columns=columns,
        now=now,
    )


def refresh_counts(conn: sqlite3.Connection, task_id: str, *, now: float) -> None:
    """Keep mints_completed / mints_failed equal to the payment rows (no status change)."""
    with atomic(conn):
        conn.execute(
            "UPDATE ai_agent_tasks SET mints_completed = (SELECT COUNT(*) FROM mint_payments"
            " WHERE task_id = ?1 AND status = 'minted'), mints_failed = (SELECT COUNT(*) FROM"
            " mint_payments WHERE task_id = ?1 AND status = 'failed'), updated_at = ?2"
            " WHERE id = ?1",
            (task_id, now),
        )


# --- payments -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Payment:
    id: str
    task_id: str
    unit: int
    attempt: int
    retry_round: int
    value: int
    server_url: str
    status: PaymentStatus
    authorization_id: int | None
    accepted: dict[str, Any] | None
    resource: dict[str, Any] | None
    extensions: dict[str, Any] | None
    mint_tx_hash: str | None
    settle_tx_hash: str | None
    error: str | None
    created_at: float


_PAYMENT_COLUMNS: Final = (
    "id, task_id, unit, attempt, retry_round, value, server_url, status, authorization_id,"
    " accepted, resource, extensions, mint_tx_hash, settle_tx_hash, error, created_at"
)


def _payment(row: sqlite3.Row | tuple[Any, ...]) -> Payment:
    v = list(tuple(row))
    v[5], v[7] = int(v[5]), PaymentStatus(v[7])
    for i in (9, 10, 11):
        v[i] = None if v[i] is None else json.loads(v[i])
    return Payment(*v)


def payments(conn: sqlite3.Connection, task_id: str) -> list[Payment]:
    rows = conn.execute(
        f"SELECT {_PAYMENT_COLUMNS} FROM mint_payments WHERE task_id = ? ORDER BY unit, attempt",
        (task_id,),
    )
    return [_payment(r) for r in rows]


def get_payment(conn: sqlite3.Connection, payment_id: str) -> Payment:
    row = conn.execute(
        f"SELECT {_PAYMENT_COLUMNS} FROM mint_payments WHERE id = ?", (payment_id,)
    ).fetchone()
    if row is None:
        raise NotFoundError(f"no payment {payment_id}")
    return _payment(row)


def open_payments(conn: sqlite3.Connection, task_id: str | None = None) -> list[Payment]:
    sql = f"SELECT {_PAYMENT_COLUMNS} FROM mint_payments WHERE status IN ('prepared', 'signed')"
    params: tuple[object, ...] = ()
    if task_id is not None:
        sql += " AND task_id = ?"
        params = (task_id,)
    return [_payment(r) for r in conn.execute(sql + " ORDER BY created_at, id", params)]


def next_units(conn: sqlite3.Connection, task: Task, limit: int, *, max_retries: int) -> list[int]:
    """Units to buy next: neither minted nor live, and not out of attempts this round."""
    rows = conn.execute(
        "SELECT unit, status, retry_round FROM mint_payments WHERE task_id = ?", (task.id,)
    ).fetchall()
    taken: set[int] = set()
    failures: dict[int, int] = {}
    for unit, status, round_ in rows:
        if status != PaymentStatus.FAILED.value:
            taken.add(int(unit))
        elif int(round_) == task.retry_round:
            failures[int(unit)] = failures.get(int(unit), 0) + 1
    out: list[int] = []
    for unit in range(task.quantity):
        if unit in taken or failures.get(unit, 0) > max_retries:
            continue
        out.append(unit)
        if len(out) == limit:
            break
    return out


def exhausted_unit(conn: sqlite3.Connection, task: Task, *, max_retries: int) -> int | None:
    """A unit of this round that failed more than ``max_retries`` + 1 times, if any."""
    row = conn.execute(
        "SELECT unit FROM mint_payments p WHERE task_id = ? AND status = 'failed'"
        " AND retry_round = ? AND NOT EXISTS (SELECT 1 FROM mint_payments q WHERE"
        " q.task_id = p.task_id AND q.unit = p.unit AND q.status <> 'failed')"
        " GROUP BY unit HAVING COUNT(*) > ? ORDER BY unit LIMIT 1",
        (task.id, task.retry_round, max_retries),
    ).fetchone()
    return None if row is None else int(row[0])


def prepare_payment(conn: sqlite3.Connection, task: Task, unit: int, *, now: float) -> Payment:
    """Record the next attempt of ``unit`` (prepared: nothing signed); its id is the x402
    payment identifier the purchase will carry."""
    payment_id = "mint_" + uuid.uuid4().hex
    with atomic(conn):
        (attempt,) = conn.execute(
            "SELECT COUNT(*) FROM mint_payments WHERE task_id = ? AND unit = ?", (task.id, unit)
        ).fetchone()
        state.insert(
            conn,
            PAYMENTS,
            {
                "id": payment_id,
                "task_id": task.id,
                "unit": unit,
                "attempt": int(attempt),
                "retry_round": task.retry_round,
                "value": str(task.price_per_mint),
                "server_url": task.server_url,
            },
            status=PaymentStatus.PREPARED.value,
            actor=ACTOR,
            now=now,
        )
    return get_payment(conn, payment_id)


def set_requirements(
    conn: sqlite3.Connection,
    payment_id: str,
    *,
    accepted: dict[str, Any],
    resource: dict[str, Any] | None,
    extensions: dict[str, Any] | None,
    now: float,
) -> None:
    """Store what the server asked (before anything is signed): the payment can then be sent
    again, byte for byte, after a crash."""
    with atomic(conn):
        conn.execute(
            "UPDATE mint_payments SET accepted = ?, resource = ?, extensions = ?, updated_at = ?"
            " WHERE id = ? AND status = 'prepared'",
            (
                json.dumps(accepted, sort_keys=True),
                None if resource is None else json.dumps(resource, sort_keys=True),
                None if extensions is None else json.dumps(extensions, sort_keys=True),
                now,
                payment_id,
            ),
        )


def move_payment(
    conn: sqlite3.Connection,
    payment: Payment,
    to: PaymentStatus,
    *,
    note: str | None = None,
    now: float,
    **columns: object,
) -> None:
    with atomic(conn):
        state.transition(
            conn,
            PAYMENTS,
            payment.id,
            payment.status.value,
            to.value,
            actor=ACTOR,
            note=note,
            set_columns=columns,
            now=now,
        )
        refresh_counts(conn, payment.task_id, now=now)


# --- transfers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transfer:
    id: str
    kind: str
    task_id: str
    token: str
    chain_id: int
    from_address: str
    to_address: str
    value: int
    valid_after: int
    valid_before: int
    nonce: str
    signature: str
    authorization_id: int | None
    status: TransferStatus
    tx_hash: str | None
    answer: dict[str, Any] | None
    error: str | None
    created_at: float


_TRANSFER_COLUMNS: Final = (
    "id, kind, task_id, token, chain_id, from_address, to_address, value, valid_after,"
    " valid_before, nonce, signature, authorization_id, status, tx_hash, answer, error,"
    " created_at"
)


def _transfer(row: sqlite3.Row | tuple[Any, ...]) -> Transfer:
    v = list(tuple(row))
    v[7], v[13] = int(v[7]), TransferStatus(v[13])
    v[15] = None if v[15] is None else json.loads(v[15])
    return Transfer(*v)


def transfer_key(token: str, from_address: str, nonce: str) -> str:
    """The idempotency key of an EIP-3009 transfer: (token, from, nonce) names it on chain."""
    return f"{token.lower()}:{from_address.lower()}:{nonce.lower()}"


def find_transfer(conn: sqlite3.Connection, transfer_id: str) -> Transfer | None:
    row = conn.execute(
        f"SELECT {_TRANSFER_COLUMNS} FROM mint_transfers WHERE id = ?", (transfer_id,)
    ).fetchone()
    return None if row is None else _transfer(row)


def transfers(
    conn: sqlite3.Connection,
    *,
    task_id: str | None = None,
    statuses: tuple[TransferStatus, ...] = (),
) -> list[Transfer]:
    sql = f"SELECT {_TRANSFER_COLUMNS} FROM mint_transfers WHERE 1 = 1"
    params: list[object] = []
    if task_id is not None:
        sql += " AND task_id = ?"
        params.append(task_id)
    if statuses:
        sql += f" AND status IN ({', '.join('?' * len(statuses))})"
        params += [s.value for s in statuses]
    return [_transfer(r) for r in conn.execute(sql + " ORDER BY created_at, id", params)]


def insert_transfer(
    conn: sqlite3.Connection, row: dict[str, Any], *, now: float
) -> tuple[Transfer, bool]:
    """Insert a transfer unless its key is known; (the row, whether it is new)."""
    with atomic(conn):
        found = find_transfer(conn, row["id"])
        if found is not None:
            return found, False
        values = dict(row)
        if isinstance(values.get("answer"), dict):
            values["answer"] = json.dumps(values["answer"], sort_keys=True)
        values["value"] = str(values["value"])
        state.insert(
            conn,
            TRANSFERS,
            values,
            status=TransferStatus.RECORDED.value,
            actor=ACTOR,
            note=f"{row['kind']} {row['value']} to {row['to_address']}",
            now=now,
        )
    found = find_transfer(conn, row["id"])
    assert found is not None
    return found, True


def move_transfer(
    conn: sqlite3.Connection,
    transfer: Transfer,
    to: TransferStatus,
    *,
    note: str | None = None,
    now: float,
    **columns: object,
) -> None:
    state.transition(
        conn,
        TRANSFERS,
        transfer.id,
        transfer.status.value,
        to.value,
        actor=ACTOR,
        note=note,
        set_columns=columns,
        now=now,
    )


# --- the money account ----------------------------------------------------------------------


def account(conn: sqlite3.Connection, task: Task) -> Account:
    """The task's money account (see the module docstring)."""
    with read_transaction(conn):
        spent = ledger.spent(conn, purpose=MINT_PURPOSE, subject=task.id)
        refunded = ledger.spent(conn, purpose=REFUND_PURPOSE, subject=task.id)
    funded = task.funded_amount
    return Account(funded, spent, funded - spent - refunded, refunded)


def held_elsewhere(conn: sqlite3.Connection, task: Task) -> int:
    """What the agent wallet's balance still holds for the user's other funded tasks: their
    funded amounts less what actually left the wallet (USED authorizations). An authorization
    that is signed but not used yet (a mint in flight, a refund not submitted yet) still sits
    in the balance, so it is counted here, not credited to ``task``."""
    total = 0
    for other in conn.execute(
        f"SELECT {TASK_COLUMNS} FROM ai_agent_tasks WHERE agent_address = ? AND id <> ?"
        " AND status <> 'pending_payment'",
        (task.agent_address, task.id),
    ).fetchall():
        row = _task(other)
        left = sum(
            int(r[0])
            for r in conn.execute(
                "SELECT value FROM authorizations WHERE purpose IN (?, ?) AND subject = ?"
                " AND status = 'USED' AND kind <> 'CancelAuthorization'",
                (MINT_PURPOSE, REFUND_PURPOSE, row.id),
            )
        )
        total += max(0, row.funded_amount - left)
    return total


# --- conversations --------------------------------------------------------------------------


def turns(conn: sqlite3.Connection, user: str, *, limit: int = 20) -> list[tuple[str, str]]:
    """The user's last ``limit`` turns, oldest first: (role, content)."""
    rows = conn.execute(
        "SELECT role, content FROM ai_agent_conversations WHERE user_address = ?"
        " ORDER BY id DESC LIMIT ?",
        (str(to_checksum_address(user)), limit),
    ).fetchall()
    return [(str(r[0]), str(r[1])) for r in reversed(rows)]


def add_turns(
    conn: sqlite3.Connection,
    user: str,
    pairs: list[tuple[str, str]],
    *,
    task_id: str | None = None,
    now: float | None = None,
) -> None:
    at = time.time() if now is None else now
    with atomic(conn):
        conn.executemany(
            "INSERT INTO ai_agent_conversations (user_address, role, content, task_id,"
            " created_at) VALUES (?, ?, ?, ?, ?)",
            [(str(to_checksum_address(user)), r, c, task_id, at) for r, c in pairs],
        )
