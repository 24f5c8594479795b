"""The dispatcher's state machines (seed 004), declared for shared.state.

Jobs (``jobs``), the seed's ``OPEN → DISTRIBUTED → IN_PROGRESS → COMPLETED/CANCELLED/EXPIRED``
plus ``FAILED``, which the seed lacks: a job that every agent failed (after the retries), or
that was invalid when fetched, is neither completed nor cancelled, and calling it either
would mislead the operator and the queue.

| status | meaning | who moves it on |
|---|---|---|
| OPEN | fetched from the remote queue, validated, recorded, acknowledged | dispatcher: match |
| DISTRIBUTED | agents matched; JobDistributionRecord and agent rows exist | first call |
| IN_PROGRESS | at least one agent was called | the first valid result, the deadline, a cancel |
| COMPLETED | a valid result won; it is (or will be) posted to the queue | — |
| FAILED | invalid job, or every agent of every round failed; reasons posted | — |
| EXPIRED | the job's deadline passed first | — |
| CANCELLED | an operator cancelled it | — |

A terminal job is *delivered* when the queue accepted its outcome: the move
``X → X`` (same terminal status) sets ``delivered_at``, so the audit trail shows "decided"
and "delivered" apart (hosted agents report "sent", never "delivered").

Agent work (``job_distribution_agents``, the seed's AgentWorkStatus):
``IDLE → ASSIGNED → WORKING → COMPLETED/FAILED/CANCELLED/TIMEOUT``. IDLE is a planned
call not made yet (a hedged job's backups); a late result is recorded on a CANCELLED row by
``CANCELLED → CANCELLED`` (its timing counts for the agent's statistics, never for the job).

Agents (``agents``): ``ACTIVE ⇄ DISABLED``; an update of its other columns leaves an audit
row ``X → X`` (shared.state.audit) in the same transaction.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from shared.state import Machine


class JobStatus(StrEnum):
    OPEN = "OPEN"
    DISTRIBUTED = "DISTRIBUTED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"
    CANCELLED = "CANCELLED"


class WorkStatus(StrEnum):
    IDLE = "IDLE"
    ASSIGNED = "ASSIGNED"
    WORKING = "WORKING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"


class AgentStatus(StrEnum):
    ACTIVE = "ACTIVE"
    DISABLED = "DISABLED"


J = JobStatus
JOB_TERMINAL: Final = frozenset({J.COMPLETED, J.FAILED, J.EXPIRED, J.CANCELLED})
JOB_LIVE: Final = frozenset(J) - JOB_TERMINAL
JOB_MOVES: Final[frozenset[tuple[str, str]]] = frozenset(
    {
        (J.OPEN, J.DISTRIBUTED),  # agents matched, records created
        (J.DISTRIBUTED, J.IN_PROGRESS),  # the first agent call is made
        (J.IN_PROGRESS, J.IN_PROGRESS),  # a new round (retry, or resumed after a restart)
        (J.DISTRIBUTED, J.DISTRIBUTED),  # resumed after a restart before any call
        (J.IN_PROGRESS, J.COMPLETED),  # the first valid result won
        *((s, J.FAILED) for s in (J.OPEN, J.DISTRIBUTED, J.IN_PROGRESS)),  # invalid / all failed
        *((s, J.EXPIRED) for s in JOB_LIVE),  # the deadline passed
        *((s, J.CANCELLED) for s in JOB_LIVE),  # an operator cancelled it
        *((s, s) for s in JOB_TERMINAL),  # delivered to the queue
    }
)

W = WorkStatus
WORK_TERMINAL: Final = frozenset({W.COMPLETED, W.FAILED, W.CANCELLED, W.TIMEOUT})
WORK_MOVES: Final[frozenset[tuple[str, str]]] = frozenset(
    {
        (W.IDLE, W.ASSIGNED),  # a planned backup is called (hedge, failover)
        (W.IDLE, W.CANCELLED),  # the job ended without needing it
        (W.ASSIGNED, W.WORKING),  # the call is sent
        (W.ASSIGNED, W.CANCELLED),  # the job ended first / restart before the call
        (W.ASSIGNED, W.FAILED),  # refused before sending (breaker open at call time)
        (W.WORKING, W.COMPLETED),  # a valid result (the winner's)
        (W.WORKING, W.FAILED),  # error, garbage, result outside the schema
        (W.WORKING, W.TIMEOUT),  # no answer within the call's timeout or the deadline
        (W.WORKING, W.CANCELLED),  # another agent won / restart / operator
        (W.CANCELLED, W.CANCELLED),  # its late answer recorded
    }
)

A = AgentStatus
AGENT_MOVES: Final[frozenset[tuple[str, str]]] = frozenset(
    {(A.ACTIVE, A.DISABLED), (A.DISABLED, A.ACTIVE)}
)

_LEASE: Final = frozenset({"lease_owner", "lease_until"})

JOBS: Final = Machine(
    name="dispatch.job",
    table="jobs",
    key="job_id",
    statuses=JobStatus,
    moves=JOB_MOVES,
    settable=frozenset(
        {
            "rounds", "retries", "result", "winner_agent_id", "winner_work_id", "finished_at",
            "fail_code", "fail_reason", "delivery_key", "delivered_at", "delivery_attempts",
            "delivery_error", "acked_at", "next_match_at",
        }
    ) | _LEASE,
    insertable=frozenset(
        {
            "category", "tags", "skill_level", "input", "result_schema", "deadline",
            "queue_deliveries", "fetched_at", "raw", "lease_owner", "lease_until",
        }
    ),
    claim_order=("created_at",),
    terminal=frozenset(JOB_TERMINAL),
)  # fmt: skip

DISTRIBUTION_AGENTS: Final = Machine(
    name="dispatch.distribution_agent",
    table="job_distribution_agents",
    key="work_id",
    statuses=WorkStatus,
    moves=WORK_MOVES,
    settable=frozenset(
        {
            "started_at", "finished_at", "latency_ms", "outcome", "error", "result", "won",
            "cancel_sent_at", "late_at", "late_latency_ms", "late_outcome", "late_result",
            "late_crossed",
        }
    ) | _LEASE,
    insertable=frozenset(
        {
            "distribution_id", "job_id", "agent_id", "category", "round", "rank", "score",
            "role", "lease_owner", "lease_until",
        }
    ),
    claim_order=("created_at",),
    terminal=frozenset(WORK_TERMINAL),
)  # fmt: skip

AGENTS: Final = Machine(
    name="dispatch.agent",
    table="agents",
    key="agent_id",
    statuses=AgentStatus,
    moves=AGENT_MOVES,
    settable=frozenset({"name", "endpoint", "tags", "category", "skill_level", "reputation"})
    | _LEASE,
    claim_order=("last_health_at",),
)
