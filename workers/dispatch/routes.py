"""The dispatcher's API routes under ``/api/dispatch`` (docs/API.md, "Dispatcher").

Reads: statistics per agent and per category, jobs with every agent's status and timings
and the explainable dispatch log, agents. Writes (operator token): register, update,
disable and enable an agent; cancel a job (the dispatcher acts on it within a second).
Errors leave through the core's one JSON error shape (shared/api/errors.py).
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Final

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, BeforeValidator, Field

from shared.api.auth import READ, Operator
from shared.api.deps import Database
from shared.api.errors import CONFLICT, INVALID, NOT_FOUND, UNAUTHORIZED
from workers.dispatch import agents, stats, store, views
from workers.dispatch.machine import JobStatus

# Jobs one listing returns at most: a page a console reads.
MAX_LIST_LIMIT: Final = 1000

router = APIRouter(prefix="/api/dispatch", tags=["dispatch"])

JobIdPath = Annotated[str, Path(min_length=1, max_length=256, description="the queue's job id")]
AgentIdPath = Annotated[str, Path(min_length=1, max_length=128)]


def _status_filter(value: object) -> object:
    return (value.strip().upper() or None) if isinstance(value, str) else value


StatusFilter = Annotated[
    JobStatus | None,
    BeforeValidator(_status_filter),
    Query(description="only jobs in this status (any case); empty or absent: all"),
]


class JobList(BaseModel):
    jobs: list[dict[str, Any]] = Field(description="newest first")


class AgentList(BaseModel):
    agents: list[dict[str, Any]]


class AgentCreated(BaseModel):
    agent_id: str


class Done(BaseModel):
    ok: bool = True
    status: str | None = None


@router.get(
    "/stats", dependencies=[READ], summary="statistics per agent and per category",
    description="Exact figures from the call rows; `meanings` says what each figure counts "
    "(docs/API.md, 'What the statistics mean').",
)  # fmt: skip
def get_stats(conn: Database) -> dict[str, Any]:
    return stats.collect(conn)


@router.get(
    "/jobs", dependencies=[READ], response_model=JobList, responses=INVALID, summary="list jobs"
)
def list_jobs(
    conn: Database,
    status: StatusFilter = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 50,
) -> JobList:
    return JobList(jobs=views.list_jobs(conn, status=status, limit=limit))


@router.get(
    "/jobs/{job_id}",
    dependencies=[READ],
    responses=NOT_FOUND,
    summary="one job: agents, timings, log",
)
def get_job(conn: Database, job_id: JobIdPath) -> dict[str, Any]:
    return views.job_detail(conn, job_id)


@router.post(
    "/jobs/{job_id}/cancel", response_model=Done,
    responses=UNAUTHORIZED | NOT_FOUND | CONFLICT, summary="cancel a job (operator only)",
)  # fmt: skip
def cancel_job(operator: Operator, conn: Database, job_id: JobIdPath) -> Done:
    status = store.request_cancel(conn, job_id, actor=operator.actor, now=time.time())
    return Done(status=status)


@router.get(
    "/agents",
    dependencies=[READ],
    response_model=AgentList,
    summary="registered agents with their figures",
)
def list_agents(conn: Database) -> AgentList:
    return AgentList(agents=[agents.public(r) for r in agents.list_agents(conn)])


@router.post(
    "/agents", response_model=AgentCreated, responses=UNAUTHORIZED | INVALID,
    summary="register an agent (operator only)",
)  # fmt: skip
def register_agent(operator: Operator, conn: Database, spec: agents.AgentSpec) -> AgentCreated:
    return AgentCreated(agent_id=agents.register(conn, spec, actor=operator.actor))


@router.post(
    "/agents/{agent_id}", response_model=Done, responses=UNAUTHORIZED | INVALID | NOT_FOUND,
    summary="update an agent's fields (operator only)",
)  # fmt: skip
def update_agent(
    operator: Operator, conn: Database, agent_id: AgentIdPath, changes: agents.AgentChanges
) -> Done:
    agents.update(conn, agent_id, changes, actor=operator.actor)
    return Done()


@router.post(
    "/agents/{agent_id}/disable", response_model=Done,
    responses=UNAUTHORIZED | NOT_FOUND | CONFLICT, summary="disable an agent (operator only)",
)  # fmt: skip
def disable_agent(operator: Operator, conn: Database, agent_id: AgentIdPath) -> Done:
    agents.set_enabled(conn, agent_id, False, actor=operator.actor)
    return Done(status="DISABLED")


@router.post(
    "/agents/{agent_id}/enable", response_model=Done,
    responses=UNAUTHORIZED | NOT_FOUND | CONFLICT, summary="enable an agent (operator only)",
)  # fmt: skip
def enable_agent(operator: Operator, conn: Database, agent_id: AgentIdPath) -> Done:
    agents.set_enabled(conn, agent_id, True, actor=operator.actor)
    return Done(status="ACTIVE")
