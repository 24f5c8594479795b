"""The distribution executor's state machines (issue 21 §7), declared for shared.state.

Runs (``distribution_runs``): one row per (task, slot), created ``pending`` in the same
transaction as one ``pending`` transfer row per recipient, with the manifest and its hash.

| status | meaning | who moves it on |
|---|---|---|
| pending | recorded with its manifest; nothing sent | the network's payer: claim, pre-flight |
| running | the payer works on it (it may have sent) | the payer |
| paused | short of balance, gas or allowance (``reason``); resumes when met | the payer |
| completed | every transfer is final (paid or failed) and at least one was paid | — |
| failed | the run cannot be paid (``reason``); its transfers are final | — |

``completed`` and ``failed`` are final; a run in any other status is "in flight". The
self-moves ``running → running`` and ``paused → paused`` record a resume after a restart
(or a new reason) with an audit row.

Transfers (``distribution_transfers``), one per recipient of a run:
``pending → sent`` (recorded in a transaction that was handed to the sender),
``sent → paid`` (FINAL on chain, from the receipt's Transfer logs / the token balance),
``sent → pending`` (the transaction was reorganised away or expired: before it is sent
again), ``sent → sent`` (the same payment under a new transaction: a replacement, a
re-broadcast), ``pending/sent → failed`` (the recipient's transfer reverts: ``reason`` holds
the decoded reason). ``paid`` and ``failed`` are final.

Tasks (``distribution_tasks``): ``active → deleted``; ``active → active`` audits an update of
the task (enable, disable, a run recorded). ``enabled`` is a column, not a status. Bookkeeping
of the scheduler (``next_run_at``, ``condition_streak``, ``last_check_at``) is written without
an audit row: it is no change of the task's status.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from shared.state import Machine


class RunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"


class TransferStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    PAID = "paid"
    FAILED = "failed"


class TaskStatus(StrEnum):
    ACTIVE = "active"
    DELETED = "deleted"


R = RunStatus
RUN_FINAL: Final = frozenset({R.COMPLETED, R.FAILED})
RUN_IN_FLIGHT: Final = frozenset(R) - RUN_FINAL
RUN_MOVES: Final[frozenset[tuple[str, str]]] = frozenset(
    {
        (R.PENDING, R.RUNNING),  # claimed by the payer
        (R.PENDING, R.FAILED),  # cannot be paid at all (its network is gone, the token changed)
        (R.RUNNING, R.PAUSED),  # a shortfall: balance, gas, allowance
        (R.PAUSED, R.RUNNING),  # the shortfall is met
        (R.RUNNING, R.COMPLETED),  # every transfer final
        (R.RUNNING, R.FAILED),
        (R.PAUSED, R.FAILED),
        (R.RUNNING, R.RUNNING),  # resumed after a restart
        (R.PAUSED, R.PAUSED),  # still short (a new reason)
    }
)

T = TransferStatus
TRANSFER_FINAL: Final = frozenset({T.PAID, T.FAILED})
TRANSFER_MOVES: Final[frozenset[tuple[str, str]]] = frozenset(
    {
        (T.PENDING, T.SENT),
        (T.SENT, T.PAID),
        (T.SENT, T.PENDING),  # reorganised away / expired, before being sent again
        (T.SENT, T.SENT),  # the same payment under a new transaction
        (T.PENDING, T.FAILED),
        (T.SENT, T.FAILED),
    }
)

K = TaskStatus
TASK_MOVES: Final[frozenset[tuple[str, str]]] = frozenset(
    {(K.ACTIVE, K.DELETED), (K.ACTIVE, K.ACTIVE)}
)

_LEASE: Final = frozenset({"lease_owner", "lease_until"})

RUNS: Final = Machine(
    name="distribution.run",
    table="distribution_runs",
    key="run_id",
    statuses=RunStatus,
    moves=RUN_MOVES,
    settable=frozenset({"reason", "started_at", "finished_at", "source"}) | _LEASE,
    insertable=frozenset(
        {
            "task_id", "network", "token", "slot", "trigger", "reason", "total_amount",
            "decimals", "manifest", "manifest_hash", "source", "lease_owner", "lease_until",
        }
    ),
    claim_order=("created_at",),
    terminal=frozenset(RUN_FINAL),
)  # fmt: skip

TRANSFERS: Final = Machine(
    name="distribution.transfer",
    table="distribution_transfers",
    key="transfer_id",
    statuses=TransferStatus,
    moves=TRANSFER_MOVES,
    settable=frozenset({"tx_hash", "reason", "batch_id", "paid_at", "sent_at", "attempts"})
    | _LEASE,
    insertable=frozenset({"run_id", "position", "address", "amount", "lease_owner", "lease_until"}),
    claim_order=("run_id", "position"),
    terminal=frozenset(TRANSFER_FINAL),
)

TASKS: Final = Machine(
    name="distribution.task",
    table="distribution_tasks",
    key="task_id",
    statuses=TaskStatus,
    moves=TASK_MOVES,
    settable=frozenset(
        {
            "name", "enabled", "run_count", "last_run_at", "next_run_at", "condition_streak",
            "cooldown_until", "last_check_at", "condition_state", "deleted_at",
        }
    ) | _LEASE,
    insertable=frozenset(
        {
            "network", "token", "name", "type", "cron", "timezone", "condition", "recipients",
            "total_amount", "use_percentage", "enabled", "run_count", "last_run_at",
            "next_run_at", "template", "condition_state", "lease_owner", "lease_until",
        }
    ),
    claim_order=("created_at",),
    terminal=frozenset({K.DELETED}),
)  # fmt: skip
