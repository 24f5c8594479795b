"""What each executor adds to ``hodlai devnet``: its contracts, keys and settings.

An executor that needs more than the oracle's stack on the local chain (the mint executor's
USDC-like token and mint server, the distributor's token and multisend contract) registers a
callable in the ``hodlai.devnet`` entry-point group::

    [project.entry-points."hodlai.devnet"]
    mint = "workers.mint.devnet:setup"

The callable takes a :class:`DevnetChain` and returns a :class:`DevnetPart`.

Guarantees:

- Parts run in entry-point name order, after the oracle's stack is deployed and before the env
  file and the ready file are written: a script that waits for the ready file sees every
  part's contracts deployed and every part's setting in the env file.
- A part that fails stops the devnet (the error propagates): a half-deployed chain is never
  announced.
- A part's settings are written to the env file with their comments, in part order; a setting
  two parts both define is refused (:class:`DevnetPartError`) rather than silently overwritten.
- The ready file carries each part's ``deployment`` mapping under ``parts.<name>``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Final

from shared.errors import PermanentError

DEVNET_GROUP: Final = "hodlai.devnet"


class DevnetPartError(PermanentError):
    """A devnet part is not a callable, or two parts define the same setting."""


@dataclass(frozen=True)
class DevAccountKey:
    """One of anvil's ten default accounts (public test keys)."""

    address: str
    private_key: str


@dataclass(frozen=True)
class DevnetChain:
    """The local chain a part deploys to.

    ``accounts`` are anvil's ten default accounts; ``accounts[0]`` deploys. A node's own keys
    (relayers, minters, distributors) are never among them: a part generates its keys in
    ``state_dir`` (mode 0600, reused across runs) and funds them from ``accounts[0]``.
    """

    rpc_url: str
    chain_id: int
    state_dir: Path
    db_path: Path
    accounts: tuple[DevAccountKey, ...]
    #: The port the node's one ``hodlai api`` listens on (``hodlai devnet --api-port``).
    api_port: int = 8000
    #: The settings already written for the oracle's stack (HODLAI_RPC_URLS, ...).
    settings: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EnvSetting:
    """One line of the env file, with the comment above it."""

    comment: str
    name: str
    value: str


@dataclass(frozen=True)
class DevnetPart:
    """What a part deployed: env settings, summary lines and a JSON-able deployment record."""

    settings: Sequence[EnvSetting] = ()
    summary: Sequence[str] = ()
    deployment: Mapping[str, Any] = field(default_factory=dict)


DevnetSetup = Callable[[DevnetChain], DevnetPart]


def registered_parts() -> list[tuple[str, DevnetSetup]]:
    """The ``hodlai.devnet`` entry points, by name, loaded."""
    found: list[tuple[str, DevnetSetup]] = []
    for ep in sorted(entry_points(group=DEVNET_GROUP), key=lambda e: e.name):
        setup = ep.load()
        if not callable(setup):
            raise DevnetPartError(f"entry point {ep.name} in {DEVNET_GROUP} is not callable")
        found.append((ep.name, setup))
    return found


def run_parts(
    chain: DevnetChain, parts: Sequence[tuple[str, DevnetSetup]] | None = None
) -> dict[str, DevnetPart]:
    """Run every part against ``chain`` in order; refuse a setting defined twice."""
    done: dict[str, DevnetPart] = {}
    owner: dict[str, str] = {name: "oracle" for name in chain.settings}
    for name, setup in registered_parts() if parts is None else parts:
        part = setup(chain)
        for setting in part.settings:
            if setting.name in owner:
                raise DevnetPartError(
                    f"devnet part {name} sets {setting.name}, already set by {owner[setting.name]}"
                )
            owner[setting.name] = name
        done[name] = part
    return done


def part_settings(parts: Mapping[str, DevnetPart]) -> list[EnvSetting]:
    """Every part's settings, in part order."""
    return [setting for part in parts.values() for setting in part.settings]
