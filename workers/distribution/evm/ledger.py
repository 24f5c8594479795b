"""The EVM payer's reads and writes of the distribution tables (synchronous, on the database
thread). Every status change goes through shared.state with its audit row.

Guarantees:

- :func:`mark_sent` is the bind of a batch's transaction: it moves every transfer of the
  batch ``pending → sent`` (batch id, transaction hash) in the database transaction that
  records the transaction, before any node sees it. A transfer that is no longer pending
  raises TransitionConflict, which skips the whole batch: nothing is signed for it, and no
  recipient is ever in two batches at once.
- :func:`settle_final` pays a recipient only from a FINAL receipt's ``Transfer`` log of the
  run's token, from the multisend the batch called, to that recipient, of exactly its
  amount. A successful receipt without that log fails the transfer (an unknown outcome is
  never paid again); a
  reverted one sends the batch's transfers back to ``pending`` to be simulated again (after
  MAX_ATTEMPTS reverted batches, ``failed``).
- :func:`return_orphans` sends back to ``pending`` only the transfers of a batch none of whose
  transactions can still mine: every row of it was replaced, cancelled or dropped and the
  transaction that won each of its nonces is FINAL.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import structlog
from eth_utils.address import to_checksum_address

from shared import state
from shared.db import atomic
from shared.errors import LeaseLostError, TransitionConflict
from shared.tx.receipts import Receipt
from workers.distribution.evm.contracts import paid_transfers
from workers.distribution.machine import RUNS, TRANSFERS, RunStatus, TransferStatus

log = structlog.get_logger(__name__)

ACTOR: Final = "distributor"
BATCH_PURPOSE: Final = "distribution_batch"
APPROVE_PURPOSE: Final = "distribution_approve"
#: Batches of one transfer that reverted on chain before it is failed.
MAX_ATTEMPTS: Final = 3
T = TransferStatus


@dataclass(frozen=True)
class Item:
    """One recipient of a batch."""

    transfer_id: str
    address: str
    amount: int
    attempts: int


@dataclass(frozen=True)
class RunRow:
    run_id: str
    task_id: str
    network: str
    token: str
    status: str
    reason: str | None
    source: str | None


@dataclass(frozen=True)
class Totals:
    """A run's transfers by status: counts and base units."""

    counts: dict[str, int]
    amounts: dict[str, int]

    @property
    def open(self) -> int:
        return self.counts.get(T.PENDING, 0) + self.counts.get(T.SENT, 0)


def run_row(conn: sqlite3.Connection, run_id: str) -> RunRow | None:
    row = conn.execute(
        "SELECT run_id, task_id, network, token, status, reason, source FROM distribution_runs"
        " WHERE run_id = ?",
        (run_id,),
    ).fetchone()
    if row is None:
        return None
    return RunRow(*tuple(row))


def totals(conn: sqlite3.Connection, run_id: str) -> Totals:
    counts: dict[str, int] = {}
    amounts: dict[str, int] = {}
    for status, amount in conn.execute(
        "SELECT status, amount FROM distribution_transfers WHERE run_id = ?", (run_id,)
    ):
        counts[status] = counts.get(status, 0) + 1
        amounts[status] = amounts.get(status, 0) + int(amount)
    return Totals(counts, amounts)


def unmined_sent(conn: sqlite3.Connection, run_ids: Sequence[str]) -> int:
    """Base units of ``sent`` transfers of these runs whose batch has no mined transaction
    yet: committed, not yet taken from the source's balance or allowance."""
    total = 0
    for run_id in run_ids:
        for (amount,) in conn.execute(
            "SELECT t.amount FROM distribution_transfers t WHERE t.run_id = ? AND t.status = 'sent'"
            " AND NOT EXISTS (SELECT 1 FROM txs x WHERE x.subject = t.batch_id AND x.purpose = ?"
            " AND x.status IN ('MINED', 'REVERTED'))",
            (run_id, BATCH_PURPOSE),
        ):
            total += int(amount)
    return total


def runs_of_token(conn: sqlite3.Connection, run_ids: Sequence[str], token: str) -> list[str]:
    """Of ``run_ids``, those paying ``token`` (in flight)."""
    return [
        r
        for r in run_ids
        if (row := conn.execute(
            "SELECT token FROM distribution_runs WHERE run_id = ? AND status IN"
            " ('pending', 'running', 'paused')", (r,)).fetchone()) is not None
        and to_checksum_address(row[0]) == to_checksum_address(token)
    ]  # fmt: skip


def pending_total(conn: sqlite3.Connection, run_ids: Sequence[str]) -> int:
    """Base units of the ``pending`` transfers of these runs."""
    return sum(
        int(amount)
        for run_id in run_ids
        for (amount,) in conn.execute(
            "SELECT amount FROM distribution_transfers WHERE run_id = ? AND status = 'pending'",
            (run_id,),
        )
    )


def pending_items(conn: sqlite3.Connection, run_id: str, limit: int) -> list[Item]:
    return [
        Item(r["transfer_id"], to_checksum_address(r["address"]), int(r["amount"]), r["attempts"])
        for r in conn.execute(
            "SELECT transfer_id, address, amount, attempts FROM distribution_transfers"
            " WHERE run_id = ? AND status = 'pending' ORDER BY position LIMIT ?",
            (run_id, limit),
        )
    ]


def approve_in_flight(conn: sqlite3.Connection, subject: str) -> bool:
    """An approval of ``subject`` (token, spender) was signed and has not settled."""
    return (
        conn.execute(
            "SELECT 1 FROM txs WHERE purpose = ? AND subject = ? AND status IN ('SIGNED',"
            " 'BROADCAST') LIMIT 1",
            (APPROVE_PURPOSE, subject),
        ).fetchone()
        is not None
    )


def mark_sent(
    conn: sqlite3.Connection, items: Sequence[Item], *, batch_id: str, tx_hash: str, now: float
) -> None:
    """The bind of a batch (see the module docstring)."""
    for item in items:
        state.transition(
            conn, TRANSFERS, item.transfer_id, T.PENDING, T.SENT, actor=ACTOR,
            note=f"batch {batch_id} tx {tx_hash}",
            set_columns={"batch_id": batch_id, "tx_hash": tx_hash, "sent_at": now,
                         "attempts": item.attempts + 1},
            now=now,
        )  # fmt: skip


def fail(conn: sqlite3.Connection, transfer_id: str, frm: str, reason: str, *, now: float) -> bool:
    try:
        with atomic(conn):
            state.transition(
                conn, TRANSFERS, transfer_id, frm, T.FAILED, actor=ACTOR, note=reason,
                set_columns={"reason": reason}, now=now,
            )  # fmt: skip
    except TransitionConflict as exc:
        log.info("dist_fail_skipped", transfer_id=transfer_id, why=str(exc))
        return False
    log.warning("dist_transfer_failed", transfer_id=transfer_id, reason=reason)
    return True


def _batch_rows(conn: sqlite3.Connection, batch_id: str) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT t.transfer_id, t.address, t.amount, t.attempts, r.token"
        " FROM distribution_transfers t JOIN distribution_runs r ON r.run_id = t.run_id"
        " WHERE t.batch_id = ? AND t.status = 'sent'",
        (batch_id,),
    ).fetchall()


def waiting_batches(conn: sqlite3.Connection, batch_ids: Sequence[str]) -> set[str]:
    """Of these batches, those with a transfer still ``sent`` under them."""
    return {
        b
        for b in batch_ids
        if conn.execute(
            "SELECT 1 FROM distribution_transfers WHERE batch_id = ? AND status = 'sent' LIMIT 1",
            (b,),
        ).fetchone()
        is not None
    }


def settle_final(
    conn: sqlite3.Connection, *, batch_id: str, multisend: str, receipt: Receipt, now: float
) -> tuple[int, int, int]:
    """Act on a batch's FINAL receipt (module docstring); returns (paid, failed, returned)."""
    rows = _batch_rows(conn, batch_id)
    paid = failed = returned = 0
    if not rows:
        return 0, 0, 0
    tx = receipt.tx_hash
    if receipt.ok:
        # The multisend pays: each recipient's log is Transfer(multisend, recipient, amount).
        logs = paid_transfers(receipt.logs, token=rows[0]["token"], source=multisend)
        for row in rows:
            key = (to_checksum_address(row["address"]), int(row["amount"]))
            if logs[key] > 0:
                logs[key] -= 1
                state.transition(
                    conn, TRANSFERS, row["transfer_id"], T.SENT, T.PAID, actor=ACTOR,
                    note=f"final: tx {tx} block {receipt.block_number}",
                    set_columns={"tx_hash": tx, "paid_at": now}, now=now,
                )  # fmt: skip
                paid += 1
            else:
                reason = (
                    f"tx {tx} succeeded but its receipt holds no Transfer of {row['amount']} to "
                    f"{row['address']}; not sent again (check the chain)"
                )
                state.transition(
                    conn, TRANSFERS, row["transfer_id"], T.SENT, T.FAILED, actor=ACTOR,
                    note=reason, set_columns={"reason": reason, "tx_hash": tx}, now=now,
                )  # fmt: skip
                failed += 1
                log.error("dist_transfer_log_missing", transfer_id=row["transfer_id"], tx_hash=tx)
        return paid, failed, returned
    for row in rows:
        if row["attempts"] >= MAX_ATTEMPTS:
            reason = f"its batch reverted on chain {row['attempts']} times (last: tx {tx})"
            state.transition(
                conn, TRANSFERS, row["transfer_id"], T.SENT, T.FAILED, actor=ACTOR,
                note=reason, set_columns={"reason": reason}, now=now,
            )  # fmt: skip
            failed += 1
        else:
            state.transition(
                conn, TRANSFERS, row["transfer_id"], T.SENT, T.PENDING, actor=ACTOR,
                note=f"batch tx {tx} reverted on chain in block {receipt.block_number}; "
                "simulated again",
                set_columns={"batch_id": None, "tx_hash": None}, now=now,
            )  # fmt: skip
            returned += 1
    return paid, failed, returned


def return_orphans(conn: sqlite3.Connection, *, network: str, now: float) -> int:
    """Sent transfers (of ``network``'s runs) of batches none of whose transactions can still
    mine go back to pending (module docstring)."""
    batches = [
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT t.batch_id FROM distribution_transfers t JOIN distribution_runs r"
            " ON r.run_id = t.run_id WHERE t.status = 'sent' AND r.network = ?"
            " AND NOT EXISTS (SELECT 1 FROM txs x WHERE x.subject = t.batch_id AND x.purpose = ?"
            " AND (x.status IN ('SIGNED', 'BROADCAST', 'MINED') OR (x.status = 'REVERTED'"
            " AND x.final_at IS NULL)))"
            " AND NOT EXISTS (SELECT 1 FROM txs x WHERE x.subject = t.batch_id AND x.purpose = ?"
            " AND NOT EXISTS (SELECT 1 FROM txs w WHERE w.sender = x.sender"
            " AND w.chain_id IS x.chain_id AND w.nonce = x.nonce AND w.final_at IS NOT NULL))",
            (network, BATCH_PURPOSE, BATCH_PURPOSE),
        )
    ]
    moved = 0
    for batch_id in batches:
        with atomic(conn):
            for row in _batch_rows(conn, batch_id):
                state.transition(
                    conn, TRANSFERS, row["transfer_id"], T.SENT, T.PENDING, actor=ACTOR,
                    note=f"no transaction of batch {batch_id} can mine any more; sent again",
                    set_columns={"batch_id": None, "tx_hash": None}, now=now,
                )  # fmt: skip
                moved += 1
        log.info("dist_batch_orphan_returned", batch_id=batch_id)
    return moved


def move_run(
    conn: sqlite3.Connection,
    run_id: str,
    frm: str,
    to: str,
    *,
    owner: str,
    note: str,
    columns: dict[str, object] | None = None,
    now: float,
) -> None:
    """Move a run this payer holds; the lease stays with it unless the run is final."""
    final = to in (RunStatus.COMPLETED, RunStatus.FAILED)
    with atomic(conn):
        holder = conn.execute(
            "SELECT lease_owner FROM distribution_runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        if holder is None or holder[0] != owner:
            raise LeaseLostError(f"run {run_id} is not held by {owner}")
        state.transition(
            conn, RUNS, run_id, frm, to, actor=ACTOR, note=note,
            lease_owner=owner if final else None, set_columns=columns, now=now,
        )  # fmt: skip
