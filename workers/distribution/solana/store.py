"""The Solana payer's reads and writes: runs claimed under a lease, send rows, transfer moves.

Guarantees:

- Every write that acts on a run checks, in its own write transaction, that this payer
  still holds the run's lease (:class:`~shared.errors.LeaseLostError` otherwise), so a payer
  whose lease ran out and was taken over cannot move that run's transfers any more.
- :func:`record_batch` writes the send row (signature, last valid block height, signed
  bytes) and moves its transfers ``pending → sent`` in ONE transaction, before the caller
  hands the bytes to the cluster: after a crash every signature that may be on the wire is
  known.
- :func:`settle_landed`, :func:`settle_failed` and :func:`settle_expired` each move the send
  row and all of its transfers in one transaction; only ``settle_expired`` (the signature
  can no longer land) and ``settle_failed`` (it landed and did nothing) put transfers back to
  ``pending``.
- Every status change goes through shared.state with its audit row.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping, Sequence
from typing import Final

from shared.db import atomic
from shared.errors import LeaseLostError
from shared.state import LEASE_OWNER, LEASE_UNTIL, insert, transition
from workers.distribution.machine import RUNS, TRANSFERS, RunStatus, TransferStatus
from workers.distribution.solana.machine import SENDS, SendStatus

R, T, S = RunStatus, TransferStatus, SendStatus
#: the statuses of a run a payer works on
RUN_OPEN: Final = (R.PENDING, R.RUNNING, R.PAUSED)


def _now(now: float | None) -> float:
    return time.time() if now is None else now


def claim_runs(
    conn: sqlite3.Connection,
    *,
    network: str,
    owner: str,
    lease_seconds: float,
    limit: int,
    now: float | None = None,
) -> list[sqlite3.Row]:
    """Lease up to ``limit`` in-flight runs of the Solana ``network`` that are free, whose
    lease expired, or that ``owner`` holds already (its lease is extended). A Solana run is
    told from an EVM run of a same-named network by its token: an SPL mint is base58, never
    ``0x…``."""
    at = _now(now)
    marks = ",".join("?" * len(RUN_OPEN))
    with atomic(conn):
        keys = [
            row[0]
            for row in conn.execute(
                f"SELECT run_id FROM distribution_runs WHERE network = ? AND status IN ({marks})"
                " AND token NOT LIKE '0x%'"
                f" AND ({LEASE_OWNER} IS NULL OR {LEASE_UNTIL} < ? OR {LEASE_OWNER} = ?)"
                " ORDER BY created_at, run_id LIMIT ?",
                (network, *RUN_OPEN, at, owner, limit),
            )
        ]
        if not keys:
            return []
        rows = conn.execute(
            f"UPDATE distribution_runs SET {LEASE_OWNER} = ?, {LEASE_UNTIL} = ?"
            f" WHERE run_id IN ({','.join('?' * len(keys))}) RETURNING *",
            (owner, at + lease_seconds, *keys),
        ).fetchall()
    rows.sort(key=lambda r: (r["created_at"], r["run_id"]))
    return rows


def release_runs(conn: sqlite3.Connection, *, owner: str) -> None:
    with atomic(conn):
        conn.execute(
            f"UPDATE distribution_runs SET {LEASE_OWNER} = NULL, {LEASE_UNTIL} = NULL"
            f" WHERE {LEASE_OWNER} = ?",
            (owner,),
        )


def _hold(
    conn: sqlite3.Connection, run_id: str, owner: str, now: float, extend: float | None = None
) -> None:
    """Raise LeaseLostError unless ``owner`` holds the run's lease now; with ``extend``, push
    the lease out to ``now + extend`` (a long pass over many batches keeps its run)."""
    row = conn.execute(
        f"SELECT {LEASE_OWNER}, {LEASE_UNTIL} FROM distribution_runs WHERE run_id = ?", (run_id,)
    ).fetchone()
    if row is None or row[0] != owner or row[1] is None or row[1] < now:
        holder = None if row is None else row[0]
        raise LeaseLostError(f"run {run_id} lease is held by {holder!r}, not {owner!r}")
    if extend is not None:
        conn.execute(
            f"UPDATE distribution_runs SET {LEASE_UNTIL} = ? WHERE run_id = ?",
            (now + extend, run_id),
        )


def transfers(conn: sqlite3.Connection, run_id: str) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT * FROM distribution_transfers WHERE run_id = ? ORDER BY position", (run_id,)
    ).fetchall()


def open_sends(conn: sqlite3.Connection, run_id: str) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT * FROM distribution_solana_sends WHERE run_id = ? AND status = ?"
        " ORDER BY created_at, signature",
        (run_id, S.SENT),
    ).fetchall()


def sends_of(conn: sqlite3.Connection, run_id: str) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT * FROM distribution_solana_sends WHERE run_id = ? ORDER BY created_at, signature",
        (run_id,),
    ).fetchall()


# --- runs -----------------------------------------------------------------------------------


def move_run(
    conn: sqlite3.Connection,
    run_id: str,
    frm: str,
    to: str,
    *,
    owner: str,
    lease_seconds: float,
    reason: str | None = None,
    columns: Mapping[str, object] | None = None,
    now: float | None = None,
) -> None:
    """Move the run, keeping this payer's lease unless the run becomes final."""
    at = _now(now)
    final = to in (R.COMPLETED, R.FAILED)
    values: dict[str, object] = {"reason": reason, **(columns or {})}
    values[LEASE_OWNER] = None if final else owner
    values[LEASE_UNTIL] = None if final else at + lease_seconds
    with atomic(conn):
        _hold(conn, run_id, owner, at)
        transition(
            conn, RUNS, run_id, frm, to, actor=owner, note=reason, lease_owner=owner,
            set_columns=values, now=at,
        )  # fmt: skip


# --- sends ----------------------------------------------------------------------------------


def record_batch(
    conn: sqlite3.Connection,
    *,
    run_id: str,
    owner: str,
    network: str,
    source: str,
    signature: str,
    blockhash: str,
    last_valid_block_height: int,
    blockhash_slot: int,
    signed_tx: str,
    transfer_ids: Sequence[str],
    lease_seconds: float | None = None,
    now: float | None = None,
) -> bool:
    """False (nothing written) when this signature is recorded already: the same batch under
    the same blockhash, after its first try failed; it must wait for a new blockhash."""
    at = _now(now)
    with atomic(conn):
        _hold(conn, run_id, owner, at, lease_seconds)
        known = conn.execute(
            "SELECT 1 FROM distribution_solana_sends WHERE signature = ?", (signature,)
        ).fetchone()
        if known is not None:
            return False
        insert(
            conn, SENDS,
            {
                "signature": signature, "run_id": run_id, "network": network, "source": source,
                "blockhash": blockhash, "last_valid_block_height": last_valid_block_height,
                "blockhash_slot": blockhash_slot,
                "signed_tx": signed_tx, "recipients": len(transfer_ids), "broadcasts": 0,
                "last_broadcast_at": None,
            },
            status=S.SENT, actor=owner, note=f"{len(transfer_ids)} recipients", now=at,
        )  # fmt: skip
        for transfer_id in transfer_ids:
            attempts = conn.execute(
                "SELECT attempts FROM distribution_transfers WHERE transfer_id = ?", (transfer_id,)
            ).fetchone()[0]
            transition(
                conn, TRANSFERS, transfer_id, T.PENDING, T.SENT, actor=owner, note=signature,
                set_columns={
                    "tx_hash": signature, "batch_id": signature, "sent_at": at,
                    "attempts": attempts + 1, "reason": None,
                },
                now=at,
            )  # fmt: skip
    return True


def mark_broadcast(conn: sqlite3.Connection, signature: str, *, now: float | None = None) -> None:
    """Count one more hand-over of the same bytes (bookkeeping, no status change)."""
    with atomic(conn):
        conn.execute(
            "UPDATE distribution_solana_sends SET broadcasts = broadcasts + 1,"
            " last_broadcast_at = ?, updated_at = ? WHERE signature = ?",
            (_now(now), _now(now), signature),
        )


def _sent_transfers(conn: sqlite3.Connection, signature: str) -> list[str]:
    return [
        row[0]
        for row in conn.execute(
            "SELECT transfer_id FROM distribution_transfers WHERE tx_hash = ? AND status = ?"
            " ORDER BY position",
            (signature, T.SENT),
        )
    ]


def settle_landed(
    conn: sqlite3.Connection,
    *,
    run_id: str,
    owner: str,
    signature: str,
    slot: int,
    lease_seconds: float | None = None,
    now: float | None = None,
) -> int:
    """The transaction is finalized without error: its transfers are paid. Returns how many."""
    at = _now(now)
    with atomic(conn):
        _hold(conn, run_id, owner, at, lease_seconds)
        transition(
            conn, SENDS, signature, S.SENT, S.LANDED, actor=owner, note=f"slot {slot}",
            set_columns={"slot": slot, "resolved_at": at}, now=at,
        )  # fmt: skip
        paid = _sent_transfers(conn, signature)
        for transfer_id in paid:
            transition(
                conn, TRANSFERS, transfer_id, T.SENT, T.PAID, actor=owner, note=signature,
                set_columns={"paid_at": at}, now=at,
            )  # fmt: skip
    return len(paid)


def settle_failed(
    conn: sqlite3.Connection,
    *,
    run_id: str,
    owner: str,
    signature: str,
    slot: int,
    error: str,
    failed: Mapping[str, str],
    lease_seconds: float | None = None,
    now: float | None = None,
) -> None:
    """The transaction is finalized with ``error``: nothing of it happened. Transfers in
    ``failed`` (transfer id -> reason) end failed; the others go back to pending."""
    at = _now(now)
    with atomic(conn):
        _hold(conn, run_id, owner, at, lease_seconds)
        transition(
            conn, SENDS, signature, S.SENT, S.FAILED, actor=owner, note=error,
            set_columns={"error": error, "slot": slot, "resolved_at": at}, now=at,
        )  # fmt: skip
        for transfer_id in _sent_transfers(conn, signature):
            reason = failed.get(transfer_id)
            if reason is not None:
                transition(
                    conn, TRANSFERS, transfer_id, T.SENT, T.FAILED, actor=owner, note=reason,
                    set_columns={"reason": reason}, now=at,
                )  # fmt: skip
            else:
                transition(
                    conn, TRANSFERS, transfer_id, T.SENT, T.PENDING, actor=owner,
                    note=f"{signature} failed, nothing paid: {error}",
                    set_columns={"reason": None}, now=at,
                )  # fmt: skip


def settle_expired(
    conn: sqlite3.Connection,
    *,
    run_id: str,
    owner: str,
    signature: str,
    height: int,
    lease_seconds: float | None = None,
    now: float | None = None,
) -> None:
    """The signature was not found and the finalized height passed its last valid height:
    it can never land. Its transfers go back to pending, to be sent under a new blockhash."""
    at = _now(now)
    with atomic(conn):
        _hold(conn, run_id, owner, at, lease_seconds)
        row = conn.execute(
            "SELECT last_valid_block_height FROM distribution_solana_sends WHERE signature = ?",
            (signature,),
        ).fetchone()
        note = f"not found at finalized height {height} > last valid height {row[0]}"
        transition(
            conn, SENDS, signature, S.SENT, S.EXPIRED, actor=owner, note=note,
            set_columns={"error": note, "resolved_at": at}, now=at,
        )  # fmt: skip
        for transfer_id in _sent_transfers(conn, signature):
            transition(
                conn, TRANSFERS, transfer_id, T.SENT, T.PENDING, actor=owner,
                note=f"{signature} expired", now=at,
            )  # fmt: skip


def fail_transfers(
    conn: sqlite3.Connection,
    *,
    run_id: str,
    owner: str,
    reasons: Mapping[str, str],
    lease_seconds: float | None = None,
    now: float | None = None,
) -> None:
    """Pending transfers that can never be paid (an invalid recipient) end failed."""
    at = _now(now)
    with atomic(conn):
        _hold(conn, run_id, owner, at, lease_seconds)
        for transfer_id, reason in reasons.items():
            transition(
                conn, TRANSFERS, transfer_id, T.PENDING, T.FAILED, actor=owner, note=reason,
                set_columns={"reason": reason}, now=at,
            )  # fmt: skip
