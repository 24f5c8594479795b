"""The mint executor's answers: a task as the API and ``hodlai mint show`` give it (camelCase,
amounts as decimal strings in USDC base units, times ISO 8601 UTC)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from typing import Any

from shared.db import read_transaction
from workers.mint import store
from workers.mint.store import Task


def iso(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


def task_public(conn: sqlite3.Connection, task: Task) -> dict[str, Any]:
    """The task as docs/API.md describes it (never a key, never the wallet's row)."""
    with read_transaction(conn):
        account = store.account(conn, task)
    return {
        "id": task.id,
        "userAddress": task.user_address,
        "agentAddress": task.agent_address,
        "tokenAddress": task.token_address,
        "quantity": task.quantity,
        "pricePerMint": str(task.price_per_mint),
        "totalCost": str(task.total_cost),
        "status": task.status.value,
        "mintsCompleted": task.mints_completed,
        "mintsFailed": task.mints_failed,
        "fundingTxHash": task.funding_tx_hash,
        "errorMessage": task.error_message,
        "createdAt": iso(task.created_at),
        "startedAt": iso(task.started_at),
        "completedAt": iso(task.completed_at),
        "paymentDeadline": iso(float(task.payment_deadline)),
        "account": account.public(),
    }


def task_detail(conn: sqlite3.Connection, task_id: str) -> dict[str, Any]:
    """The task, its payments (one per x402 purchase) and its transfers: ``mint show``."""
    with read_transaction(conn):
        task = store.get_task(conn, task_id)
        out = task_public(conn, task)
        out["payments"] = [
            {
                "id": p.id,
                "unit": p.unit,
                "attempt": p.attempt,
                "status": p.status.value,
                "authorizationId": p.authorization_id,
                "mintTxHash": p.mint_tx_hash,
                "settleTxHash": p.settle_tx_hash,
                "error": p.error,
            }
            for p in store.payments(conn, task.id)
        ]
        out["transfers"] = [
            {
                "id": t.id,
                "kind": t.kind,
                "from": t.from_address,
                "to": t.to_address,
                "value": str(t.value),
                "status": t.status.value,
                "txHash": t.tx_hash,
                "error": t.error,
            }
            for t in store.transfers(conn, task_id=task.id)
        ]
    return out
