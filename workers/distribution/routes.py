"""The distribution API on the seed's path, ``/api/execution/kmt-automation`` (issue 21 §6,
§8; docs/API.md, "Token distribution").

- ``GET ?network=&tokenMint=`` → ``{tasks: [...]}`` (the seed's task JSON, the seed's units).
- ``POST {network, tokenMint, task}`` (``template`` optional) → 201 ``{task}``.
- ``PATCH {network, tokenMint, taskId, action: execute|enable|disable|delete}`` → ``{run}``
  for execute, ``{task}`` otherwise.
- ``GET /runs?taskId=`` → ``{runs}``; ``GET /runs/{runId}`` → ``{run}``.
- ``POST /preview`` (the POST body) → ``{manifest, totalAmount, manifestHash}`` (+ the
  unsigned ``transaction`` when the source is known).
- ``GET /templates`` → ``{templates}``.

Writes need an admin token, reads a read or admin token (shared.api.auth). A body the node
cannot accept is a 400 ``invalid_task`` naming the field; a used task id, a delete or execute
while a run is in flight is a 409 ``conflict``; an unknown task or run a 404.

The routes are plain ``def`` (FastAPI runs them on worker threads with their own database
connection); chain reads run on the server's event loop (``anyio.from_thread``), where each
configured network's client lives for the life of the process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any, Final, TypeVar

import anyio.from_thread
from fastapi import APIRouter, Body, Path, Query
from fastapi.responses import JSONResponse

from shared.api.auth import READ, Operator
from shared.api.deps import Database
from shared.api.errors import CONFLICT, NOT_FOUND, UNAUTHORIZED, Refusal, Responses, _doc
from shared.config import load_settings
from shared.errors import InvalidRequestError, NotFoundError
from workers.distribution import service, store
from workers.distribution.networks import Network, build_networks
from workers.distribution.scheduler import next_slot
from workers.distribution.settings import DistSettings
from workers.distribution.tasks import TaskError, task_answer
from workers.distribution.templates import list_templates

T = TypeVar("T")
PREFIX: Final = "/api/execution/kmt-automation"
ACTIONS: Final = ("execute", "enable", "disable", "delete")
BAD: Final[Responses] = {
    400: _doc("the body cannot be accepted; the message says why (`invalid_task`)")
}

router = APIRouter(prefix=PREFIX, tags=["distribution"])

_lock = threading.Lock()


class _Node:
    """The distribution settings and networks of this API process, made once."""

    settings: DistSettings | None = None
    networks: dict[str, Network] | None = None


def _settings() -> DistSettings:
    with _lock:
        if _Node.settings is None:
            _Node.settings = load_settings(DistSettings)
        return _Node.settings


def _networks() -> Mapping[str, Network]:
    settings = _settings()
    with _lock:
        if _Node.networks is None:
            _Node.networks = build_networks(settings, strict=False)
        return _Node.networks


def _on_loop(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine on the server's event loop (the networks' clients live there); a
    refusal of the body becomes a 400."""

    async def call() -> T:
        return await make()

    try:
        return anyio.from_thread.run(call)
    except (TaskError, InvalidRequestError) as exc:
        raise Refusal(400, "invalid_task", str(exc)) from None


def _bad(exc: InvalidRequestError) -> Refusal:
    return Refusal(400, "invalid_task", str(exc))


@router.get("", dependencies=[READ], summary="list tasks (the seed's GET)")
def list_tasks(
    conn: Database,
    network: Annotated[str | None, Query(max_length=64)] = None,
    token_mint: Annotated[str | None, Query(alias="tokenMint", max_length=128)] = None,
) -> dict[str, Any]:
    rows = store.task_rows(conn, network=network or None, token=token_mint or None)
    return {"tasks": [task_answer(r) for r in rows]}


@router.get("/templates", dependencies=[READ], summary="the seed's four presets")
def templates() -> dict[str, Any]:
    return {"templates": list_templates()}


@router.post(
    "", status_code=201, responses=BAD | UNAUTHORIZED | CONFLICT,
    summary="create a task (admin): {network, tokenMint, task}",
)  # fmt: skip
def create_task(
    operator: Operator, conn: Database, body: Annotated[Any, Body()] = None
) -> JSONResponse:
    networks, settings = _networks(), _settings()
    task = _on_loop(lambda: service.create(conn, body, networks, settings, actor=operator.actor))
    return JSONResponse({"task": task}, status_code=201)


@router.post(
    "/preview", dependencies=[READ], responses=BAD, summary="the manifest, without sending"
)
def preview(body: Annotated[Any, Body()] = None) -> dict[str, Any]:
    networks, settings = _networks(), _settings()
    return _on_loop(lambda: service.preview(body, networks, settings))


@router.patch(
    "", responses=BAD | UNAUTHORIZED | NOT_FOUND | CONFLICT,
    summary="execute, enable, disable or delete a task (admin)",
)  # fmt: skip
def act(operator: Operator, conn: Database, body: Annotated[Any, Body()] = None) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _bad(TaskError("the body must be a JSON object {network, tokenMint, taskId, action}"))
    task_id, action = body.get("taskId"), body.get("action")
    if not isinstance(task_id, str) or not task_id:
        raise _bad(TaskError("taskId is required"))
    if action not in ACTIONS:
        raise _bad(TaskError(f"action must be one of {', '.join(ACTIONS)}"))
    row = store.task_row(conn, task_id)
    network, token = body.get("network"), body.get("tokenMint")
    if (network and network != row["network"]) or (
        isinstance(token, str) and token and token.lower() != str(row["token"]).lower()
    ):
        raise NotFoundError(f"no task {task_id} on network {network} for token {token}")
    now = time.time()
    if action == "execute":
        networks, settings = _networks(), _settings()
        run = _on_loop(lambda: service.execute(conn, task_id, networks, settings,
                                               actor=operator.actor, now=now))  # fmt: skip
        return {"run": run}
    if action == "delete":
        store.delete_task(conn, task_id, actor=operator.actor, now=now)
        return {"task": task_answer(store.task_row(conn, task_id, deleted=True))}
    following = next_slot(row["cron"], row["timezone"], now) if row["cron"] else None
    store.set_enabled(conn, task_id, action == "enable", actor=operator.actor, now=now,
                      next_run_at=following)  # fmt: skip
    return {"task": task_answer(store.task_row(conn, task_id))}


@router.get("/runs", dependencies=[READ], responses=NOT_FOUND, summary="a task's runs")
def runs(
    conn: Database,
    task_id: Annotated[str, Query(alias="taskId", min_length=1, max_length=128)],
    limit: Annotated[int, Query(ge=1, le=store.MAX_RUNS_LISTED)] = 100,
) -> dict[str, Any]:
    return {"runs": store.runs_answer(conn, task_id, limit=limit)}


@router.get("/runs/{run_id}", dependencies=[READ], responses=NOT_FOUND, summary="one run")
def one_run(
    conn: Database, run_id: Annotated[str, Path(min_length=1, max_length=128)]
) -> dict[str, Any]:
    return {"run": store.run_answer(conn, run_id)}
