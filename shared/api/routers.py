"""How executors add routes to the API: Python entry points in the group ``hodlai.routers``.

An executor declares in pyproject.toml, under ``[project.entry-points."hodlai.routers"]``,
either a ``fastapi.APIRouter`` (``oracle = "workers.oracle.routes:router"``) or a function
``register(app: FastAPI) -> None`` for one that needs more than a router. The API imports
nothing else of the executors, so adding one never means editing the core.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Final

import structlog
from fastapi import APIRouter, FastAPI

from shared.errors import ConfigError

log = structlog.get_logger(__name__)

GROUP: Final = "hodlai.routers"

RouterSource = APIRouter | Callable[[FastAPI], None]


@dataclass(frozen=True)
class NamedRouter:
    """One executor's contribution, with the entry point's name (for logs and errors)."""

    name: str
    source: RouterSource


def discover_routers(group: str = GROUP) -> list[NamedRouter]:
    """Every router installed in ``group``, sorted by name (a stable route order).

    An entry point whose package is absent from this build is skipped, as the CLI skips an
    absent worker; any other import error propagates (it is a bug in that executor)."""
    found = []
    for point in sorted(entry_points(group=group), key=lambda p: p.name):
        module = point.value.split(":", 1)[0]
        try:
            source = point.load()
        except ModuleNotFoundError as exc:
            if exc.name is None or not module.startswith(exc.name):
                raise
            log.warning("api_router_missing", name=point.name, module=module)
            continue
        if not isinstance(source, APIRouter) and not callable(source):
            raise ConfigError(
                f"entry point {point.name} = {point.value} in {group} is neither a "
                "fastapi.APIRouter nor a register(app) function"
            )
        found.append(NamedRouter(point.name, source))
    return found


def add_router(app: FastAPI, router: NamedRouter | RouterSource) -> None:
    named = router if isinstance(router, NamedRouter) else NamedRouter("", router)
    if isinstance(named.source, APIRouter):
        app.include_router(named.source)
    else:
        named.source(app)
    log.debug("api_router_added", name=named.name)
