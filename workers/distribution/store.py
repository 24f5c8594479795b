"""The distribution tables: tasks, runs and their transfers, read and written for the API,
the CLI and the scheduler.

Guarantees:

- A run is created in ONE transaction (``BEGIN IMMEDIATE``): the run row ``pending`` with
  its manifest and hash, one ``pending`` transfer row per recipient, and the task's
  ``run_count`` / ``last_run_at`` (and the scheduler's bookkeeping) — so a crash leaves either
  all of it or none, and a slot that has a run is never given a second one: the check runs
  under the write lock and ``UNIQUE (task_id, slot)`` backs it across processes.
- An execute while the task has a run in flight (not completed or failed) is refused
  (TransitionConflict → 409), checked in the same transaction that would create the run.
- A task is deleted only while no run of it is in flight (409 otherwise); its row stays,
  ``deleted``, so its id stays used and its runs keep their task.
- Every status change goes through shared.state with its audit row and the actor.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Final

import structlog

from shared import state
from shared.db import atomic, read_transaction
from shared.errors import NotFoundError, TransitionConflict
from workers.distribution import amounts
from workers.distribution.machine import (
    RUN_FINAL,
    RUNS,
    TASKS,
    TRANSFERS,
    RunStatus,
    TaskStatus,
    TransferStatus,
)
from workers.distribution.tasks import TaskSpec, iso

log = structlog.get_logger(__name__)

_IN_FLIGHT_SQL: Final = "status NOT IN ({})".format(",".join(f"'{s}'" for s in sorted(RUN_FINAL)))
MAX_RUNS_LISTED: Final = 1000


def new_task_id() -> str:
    return "task-" + uuid.uuid4().hex[:16]


def create_task(
    conn: sqlite3.Connection,
    spec: TaskSpec,
    *,
    network: str,
    token: str,
    next_run_at: float | None,
    actor: str,
    now: float,
) -> str:
    """Record a validated task; its id is the client's when given and unused (a used id,
    even of a deleted task, is a TransitionConflict), a new one otherwise."""
    task_id = spec.task_id or new_task_id()
    row = {
        "task_id": task_id, "network": network, "token": token, "name": spec.name,
        "type": spec.type, "cron": spec.cron, "timezone": spec.timezone,
        "condition": json.dumps(spec.condition.as_json()) if spec.condition else None,
        "recipients": json.dumps(spec.recipients_json(), separators=(",", ":")),
        "total_amount": amounts.format_decimal(spec.total_amount)
        if spec.total_amount is not None else None,
        "use_percentage": int(spec.use_percentage), "enabled": int(spec.enabled),
        "run_count": 0, "next_run_at": next_run_at, "template": spec.template,
    }  # fmt: skip
    with atomic(conn):
        if conn.execute(
            "SELECT 1 FROM distribution_tasks WHERE task_id = ?", (task_id,)
        ).fetchone():
            raise TransitionConflict(f"task id {task_id} is used already")
        state.insert(conn, TASKS, row, status=TaskStatus.ACTIVE, actor=actor, note="created",
                     now=now)  # fmt: skip
    log.info("distribution_task_created", task_id=task_id, network=network, type=spec.type,
             recipients=len(spec.recipients), actor=actor)  # fmt: skip
    return task_id


def task_row(conn: sqlite3.Connection, task_id: str, *, deleted: bool = False) -> sqlite3.Row:
    """The task (NotFoundError if absent, or deleted unless ``deleted``)."""
    row = conn.execute("SELECT * FROM distribution_tasks WHERE task_id = ?", (task_id,)).fetchone()
    if row is None or (row["status"] == TaskStatus.DELETED and not deleted):
        raise NotFoundError(f"no task {task_id}")
    result: sqlite3.Row = row
    return result


def task_rows(
    conn: sqlite3.Connection, *, network: str | None = None, token: str | None = None
) -> list[sqlite3.Row]:
    """Active tasks, oldest first, of a network and token when given (token compared
    case-insensitively for EVM addresses)."""
    sql = "SELECT * FROM distribution_tasks WHERE status = 'active'"
    params: list[object] = []
    if network:
        sql += " AND network = ?"
        params.append(network)
    if token:
        sql += " AND lower(token) = lower(?)" if token.startswith("0x") else " AND token = ?"
        params.append(token)
    return conn.execute(sql + " ORDER BY created_at, task_id", params).fetchall()


def in_flight_run(conn: sqlite3.Connection, task_id: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        f"SELECT * FROM distribution_runs WHERE task_id = ? AND {_IN_FLIGHT_SQL}"
        " ORDER BY created_at LIMIT 1",
        (task_id,),
    ).fetchone()
    return row


def set_enabled(
    conn: sqlite3.Connection,
    task_id: str,
    enabled: bool,
    *,
    actor: str,
    now: float,
    next_run_at: float | None = None,
) -> None:
    """Enable or disable a task (audited ``active → active``); enabling a scheduled task
    sets its next slot from now (slots passed while it was disabled are not "missed")."""
    with atomic(conn):
        row = task_row(conn, task_id)
        columns: dict[str, object] = {"enabled": int(enabled), "condition_streak": 0}
        if enabled and row["type"] == "scheduled":
            columns["next_run_at"] = next_run_at
        state.transition(
            conn, TASKS, task_id, TaskStatus.ACTIVE, TaskStatus.ACTIVE, actor=actor,
            note="enabled" if enabled else "disabled", set_columns=columns, now=now,
        )  # fmt: skip


def delete_task(conn: sqlite3.Connection, task_id: str, *, actor: str, now: float) -> None:
    """Mark a task deleted; refused (TransitionConflict) while a run of it is in flight."""
    with atomic(conn):
        task_row(conn, task_id)
        running = in_flight_run(conn, task_id)
        if running is not None:
            raise TransitionConflict(
                f"task {task_id} has run {running['run_id']} in flight ({running['status']})"
            )
        state.transition(
            conn, TASKS, task_id, TaskStatus.ACTIVE, TaskStatus.DELETED, actor=actor,
            note="deleted", set_columns={"deleted_at": now, "enabled": 0}, now=now,
        )  # fmt: skip
    log.info("distribution_task_deleted", task_id=task_id, actor=actor)


def record_run(
    conn: sqlite3.Connection,
    task_id: str,
    *,
    slot: str,
    trigger: str,
    decimals: int,
    total: int,
    manifest: Sequence[tuple[str, int]],
    source: str | None,
    actor: str,
    now: float,
    refuse_if_in_flight: bool = False,
    task_columns: Mapping[str, object] | None = None,
) -> str | None:
    """Create the run of ``task_id`` for ``slot`` with its transfers, in one transaction.
    Returns the run id, or None when the slot has its run already (another scheduler made
    it). ``refuse_if_in_flight`` (manual execute): TransitionConflict while another run of
    the task is not final. ``task_columns``: the scheduler's bookkeeping, written with it."""
    run_id = uuid.uuid4().hex
    with atomic(conn):
        task = task_row(conn, task_id)
        if conn.execute(
            "SELECT 1 FROM distribution_runs WHERE task_id = ? AND slot = ?", (task_id, slot)
        ).fetchone():
            return None
        if refuse_if_in_flight:
            running = in_flight_run(conn, task_id)
            if running is not None:
                raise TransitionConflict(
                    f"task {task_id} has run {running['run_id']} in flight ({running['status']})"
                )
        state.insert(
            conn, RUNS,
            {
                "run_id": run_id, "task_id": task_id, "network": task["network"],
                "token": task["token"], "slot": slot, "trigger": trigger,
                "total_amount": str(total), "decimals": decimals,
                "manifest": json.dumps(amounts.manifest_answer(manifest), separators=(",", ":")),
                "manifest_hash": amounts.manifest_hash(manifest), "source": source,
            },
            status=RunStatus.PENDING, actor=actor, note=f"{trigger} slot {slot}", now=now,
        )  # fmt: skip
        state.insert_many(
            conn, TRANSFERS,
            [
                {"transfer_id": f"{run_id}:{i}", "run_id": run_id, "position": i,
                 "address": address, "amount": str(value)}
                for i, (address, value) in enumerate(manifest)
            ],
            status=TransferStatus.PENDING, actor=actor, now=now,
        )  # fmt: skip
        columns: dict[str, object] = {"run_count": task["run_count"] + 1, "last_run_at": now}
        columns.update(task_columns or {})
        state.transition(
            conn, TASKS, task_id, TaskStatus.ACTIVE, TaskStatus.ACTIVE, actor=actor,
            note=f"run {run_id} recorded", set_columns=columns, now=now,
        )  # fmt: skip
    log.info("distribution_run_recorded", task_id=task_id, run_id=run_id, slot=slot,
             trigger=trigger, recipients=len(manifest), total=str(total))  # fmt: skip
    return run_id


def _run_answer(run: sqlite3.Row, transfers: Sequence[sqlite3.Row]) -> dict[str, Any]:
    return {
        "id": run["run_id"],
        "taskId": run["task_id"],
        "network": run["network"],
        "tokenMint": run["token"],
        "slot": run["slot"],
        "trigger": run["trigger"],
        "status": run["status"],
        "reason": run["reason"],
        "totalAmount": run["total_amount"],
        "decimals": run["decimals"],
        "manifestHash": run["manifest_hash"],
        "source": run["source"],
        "createdAt": iso(run["created_at"]),
        "startedAt": iso(run["started_at"]),
        "finishedAt": iso(run["finished_at"]),
        "transfers": [
            {
                "address": t["address"],
                "amount": t["amount"],
                "status": t["status"],
                "txHash": t["tx_hash"],
                "reason": t["reason"],
            }
            for t in transfers
        ],
    }


def run_answer(conn: sqlite3.Connection, run_id: str) -> dict[str, Any]:
    """The run in issue 21 §8's shape, with every recipient's outcome (NotFoundError)."""
    with read_transaction(conn):
        run = conn.execute("SELECT * FROM distribution_runs WHERE run_id = ?", (run_id,)).fetchone()
        if run is None:
            raise NotFoundError(f"no run {run_id}")
        transfers = conn.execute(
            "SELECT * FROM distribution_transfers WHERE run_id = ? ORDER BY position", (run_id,)
        ).fetchall()
    return _run_answer(run, transfers)


def runs_answer(
    conn: sqlite3.Connection, task_id: str, *, limit: int = 100
) -> list[dict[str, Any]]:
    """The task's runs, newest first, each with its transfers (NotFoundError for no task)."""
    with read_transaction(conn):
        task_row(conn, task_id, deleted=True)
        runs = conn.execute(
            "SELECT * FROM distribution_runs WHERE task_id = ? ORDER BY created_at DESC, run_id"
            " LIMIT ?",
            (task_id, min(limit, MAX_RUNS_LISTED)),
        ).fetchall()
        by_run: dict[str, list[sqlite3.Row]] = {r["run_id"]: [] for r in runs}
        if runs:
            marks = ",".join("?" * len(runs))
            for t in conn.execute(
                f"SELECT * FROM distribution_transfers WHERE run_id IN ({marks})"
                " ORDER BY run_id, position",
                list(by_run),
            ):
                by_run[t["run_id"]].append(t)
    return [_run_answer(r, by_run[r["run_id"]]) for r in runs]


def manifest_of_run(conn: sqlite3.Connection, run_id: str) -> list[tuple[str, int]]:
    row = conn.execute("SELECT manifest FROM distribution_runs WHERE run_id = ?", (run_id,))
    found = row.fetchone()
    if found is None:
        raise NotFoundError(f"no run {run_id}")
    return [(e["address"], int(e["amount"])) for e in json.loads(found["manifest"])]
