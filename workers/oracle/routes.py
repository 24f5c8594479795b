"""The oracle's API routes under ``/api/oracle`` (docs/API.md): the state of its requests,
and the operator's retry of a FAILED one.

Reads go through the store's functions (workers/oracle/store.py) on the request's own connection;
the one write, retry, goes through ``store.retry`` and so through ``store.transition`` with
its audit row, naming the operator by its token's id as the actor. Reads need a read token
(or HODLAI_API_PUBLIC_READS), the retry an admin token (shared/api/auth.py). Request ids are
uint256 and travel as decimal strings, in paths and in bodies: a JSON number would lose
precision.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Final

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, BeforeValidator, Field

from shared.api.auth import READ, Operator
from shared.api.deps import Database
from shared.api.errors import CONFLICT, INVALID, NOT_FOUND, UNAUTHORIZED
from shared.db import read_transaction
from shared.errors import NotFoundError
from workers.oracle import request_id as rid
from workers.oracle import store
from workers.oracle.inspect import collect_status
from workers.oracle.store import Status

# Rows one listing returns at most: a page an operator or a console reads; a larger limit
# would let one call hold a connection for seconds.
MAX_LIST_LIMIT: Final = 1000
DEFAULT_LIST_LIMIT: Final = 50
# Decimal digits of the largest uint256 (2**256 - 1).
_UINT256_DIGITS: Final = len(str(rid.UINT256_MAX))

router = APIRouter(prefix="/api/oracle", tags=["oracle"])

RequestIdPath = Annotated[
    str,
    Path(
        pattern=r"^[0-9]+$",
        max_length=_UINT256_DIGITS,
        description="the request id: a uint256 in decimal",
        examples=["42"],
    ),
]


def _status_filter(value: object) -> object:
    """``status=failed`` as ``hodlai requests --status failed`` takes it; ``status=`` (what a
    form sends for "any") as no filter."""
    if isinstance(value, str):
        return value.strip().upper() or None
    return value


StatusFilter = Annotated[
    Status | None,
    BeforeValidator(_status_filter),
    Query(description="only requests in this status (any case); empty or absent: all"),
]


class OracleStatus(BaseModel):
    """What ``hodlai status`` shows, without the chain head (the API asks no RPC node)."""

    counts: dict[Status, int] = Field(description="requests per status")
    chain_id: int | None = Field(description="chain the database was created for")
    provider: str | None = Field(description="HoldAIProvider address the database serves")
    indexer_cursor: int | None = Field(description="last block the indexer accepted")
    oldest_pending_age_s: float | None = Field(description="age of the oldest PENDING request")
    reorgs: int
    deep_reorgs: int = Field(description="reorgs deeper than HODLAI_CONFIRMATIONS")
    last_deep_reorg_at: float | None


class RequestSummary(BaseModel):
    request_id: str
    status: Status
    model: str
    answer_action: str | None
    attempts: int
    block_number: int
    fail_reason: str | None
    updated_at: float


class RequestList(BaseModel):
    requests: list[RequestSummary] = Field(description="newest on chain first")


class Transition(BaseModel):
    """One row of the audit trail."""

    id: int
    from_status: str | None = Field(description="null when the row was created")
    to_status: str = Field(description="a status, or REMOVED when a reorg took the row back")
    actor: str
    at: float
    note: str | None


class RequestDetail(BaseModel):
    request_id: str
    status: Status
    generation: int
    requester: str
    model: str
    system_prompt: str
    state_string: str
    action_set: list[str]
    content_hash: str
    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int
    lease_owner: str | None
    lease_until: float | None
    attempts: int
    answer_action: str | None
    answer_cid: str | None
    reasoning: dict[str, Any] | None = Field(description="the reasoning trace answer_cid names")
    answered_at: float | None
    fulfilled_block: int | None
    fulfilled_tx_hash: str | None
    fulfilled_action: str | None
    fulfilled_cid: str | None
    fail_reason: str | None
    created_at: float
    updated_at: float
    history: list[Transition] = Field(description="every state change, oldest first")


class RetryResult(BaseModel):
    request_id: str
    status: Status


@router.get(
    "/status",
    dependencies=[READ],
    response_model=OracleStatus,
    summary="request counts and indexer state",
)
def get_status(conn: Database) -> OracleStatus:
    with read_transaction(conn):
        info = collect_status(conn, None, time.time())
    return OracleStatus.model_validate(info)


@router.get(
    "/requests",
    dependencies=[READ],
    response_model=RequestList,
    responses=INVALID,
    summary="list requests",
)
def list_requests(
    conn: Database,
    status: StatusFilter = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = DEFAULT_LIST_LIMIT,
) -> RequestList:
    rows = store.list_requests(conn, status=status, limit=limit)
    return RequestList(requests=[RequestSummary.model_validate(dict(row)) for row in rows])


@router.get(
    "/requests/{request_id}",
    dependencies=[READ],
    response_model=RequestDetail,
    responses=INVALID | NOT_FOUND,
    summary="one request with its history",
)
def get_request(conn: Database, request_id: RequestIdPath) -> RequestDetail:
    key = rid.decode(request_id)
    with read_transaction(conn):
        row = store.get_request(conn, key)
        if row is None:
            raise NotFoundError(f"no request {key}")
        history = store.history(conn, key)
    detail = dict(row)
    detail["action_set"] = json.loads(detail["action_set"])
    detail["reasoning"] = json.loads(detail["reasoning"]) if detail["reasoning"] else None
    detail["history"] = [Transition.model_validate(dict(t)) for t in history]
    return RequestDetail.model_validate(detail)


@router.post(
    "/requests/{request_id}/retry",
    response_model=RetryResult,
    responses=UNAUTHORIZED | INVALID | NOT_FOUND | CONFLICT,
    summary="re-open a FAILED request (operator only)",
    description="FAILED -> PENDING with a fresh attempt budget and no answer; the audit "
    "trail names the operator by its token's id in the tokens file (operator:api:<id>).",
)
def retry_request(
    operator: Operator,  # first: a caller without a token is refused before anything is read
    conn: Database,
    request_id: RequestIdPath,
) -> RetryResult:
    key = rid.decode(request_id)
    if store.get_request(conn, key) is None:
        raise NotFoundError(f"no request {key}")
    store.retry(conn, key, actor=operator.actor)
    return RetryResult(request_id=str(key), status=Status.PENDING)
