"""What the installed executors contribute to the core, found through entry points.

Each executor declares in pyproject.toml what it adds, so the core never names an executor:

- ``hodlai.machines``: its state machines (:class:`shared.state.Machine` constants);
- ``hodlai.migrations``: its migration set (a package of ``NNNN_name.sql`` files, or
  ``module:attribute`` naming a :class:`shared.migrations.MigrationSet`; read by
  shared.migrations.executor_sets);
- ``hodlai.commands``: a ``register(subparsers)`` function adding its ``hodlai`` subcommands;
- ``hodlai.routers``: its FastAPI router for ``hodlai api``;
- ``hodlai.abis``: the compiled contracts it calls, whose reverts the core decodes (a
  :class:`shared.contracts.ContractAbis`; read by shared.contracts.registered_abis).
- ``hodlai.status``: its part of ``hodlai status`` (a :class:`shared.status.StatusProvider`).

Every function here also takes explicit extras, so a test can add an executor that is not
installed (tests/test_new_executor.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from typing import Any

from shared.state import Machine

MACHINES_GROUP = "hodlai.machines"
MIGRATIONS_GROUP = "hodlai.migrations"
COMMANDS_GROUP = "hodlai.commands"
ROUTERS_GROUP = "hodlai.routers"
STATUS_GROUP = "hodlai.status"


def _load(group: str) -> list[tuple[str, Any]]:
    found = sorted(entry_points(group=group), key=lambda ep: ep.name)
    return [(ep.name, ep.load()) for ep in found]


def machines(extra: Iterable[Machine] = ()) -> dict[str, Machine]:
    """Every declared machine by name (a name declared twice is a packaging error)."""
    out: dict[str, Machine] = {}
    for _, machine in _load(MACHINES_GROUP):
        if not isinstance(machine, Machine):
            raise TypeError(f"entry point in {MACHINES_GROUP} is not a Machine: {machine!r}")
        out[machine.name] = machine
    for machine in extra:
        out[machine.name] = machine
    return out


def command_registrars() -> list[tuple[str, Callable[[Any], None]]]:
    """(name, register) of every executor's CLI commands, by entry point name."""
    return _load(COMMANDS_GROUP)


def status_providers(extra: Iterable[Any] = ()) -> list[Any]:
    """Every executor's :class:`shared.status.StatusProvider` (checked there), by entry point
    name, then ``extra``."""
    return [provider for _, provider in _load(STATUS_GROUP)] + list(extra)
