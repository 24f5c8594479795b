"""``hodlai status``: the whole node in one view, every executor and every poller.

The core knows no executor; it composes what each installed one declares:

- its state machines (group ``hodlai.machines``): counts per status, read from the
  trigger-kept ``state_counts`` (O(1) per machine). A machine belongs to the executor named
  before the dot of its name (``oracle.request``, ``dispatch.job``);
- its :class:`StatusProvider` (group ``hodlai.status``), optional: the processes that hold a
  role lock on the database (shared.instance: "running" means the lock is held right now),
  its pollers and the chain each reads, and its own figures and problems.

Per executor it shows whether it is switched on (``HODLAI_<EXECUTOR>_ENABLED``), its health
(``ok``, ``problem`` with the problems in words, or ``disabled``), its processes and its
counts; per poller (every row of ``cursors``) its cursor, the chain head, the lag in blocks
and its halt. The chain heads are read with a short total deadline
(:data:`RPC_DEADLINE_S`): the command answers even when an RPC trickles, with the head
unknown.

Guarantees: the database is opened read-only and never migrated (shared.cli
open_for_reading); the exit code is 1 when an enabled executor has a problem (a halt, a deep
reorg, ...), 0 otherwise, in the text and the ``--json`` form alike. A process that is not
running is shown, not counted as a problem (an operator may inspect a stopped node).

``--json`` keeps at its top level the fields a provider names in ``top_level`` (the oracle's
``counts``, ``chain_id``, ... as ``hodlai status`` printed them before executors had their
own sections), besides ``database``, ``healthy``, ``executors`` and ``pollers``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from shared.config import CoreSettings
from shared.errors import HodlaiError

#: Seconds ``hodlai status`` waits for the chain heads at most, whatever the RPCs do.
RPC_DEADLINE_S: Final = 5.0
#: Seconds one head request may take before the next URL is tried.
RPC_TIMEOUT_S: Final = 3.0
#: The keys of ``--json`` that are the core's; a provider's ``top_level`` may not use them.
CORE_KEYS: Final = frozenset({"database", "healthy", "executors", "pollers"})


@dataclass(frozen=True)
class PollerChain:
    """A poller of an executor and where the head of the chain it reads is asked for."""

    poller: str  # its cursor's name (``cursors.name``), its halt's worker
    rpc_urls: Sequence[str]


@dataclass(frozen=True)
class StatusContext:
    """What a provider's report reads: the database (read-only), the heads of its pollers'
    chains (None: unknown), the time."""

    conn: sqlite3.Connection
    settings: CoreSettings
    heads: Mapping[str, int | None]
    now: float


@dataclass
class ExecutorReport:
    """An executor's own part: ``fields`` go into its ``--json`` section, ``lines`` under its
    heading in the text form, each of ``problems`` makes its health ``problem`` (and the
    exit code 1) and is printed; ``top_level`` fields are repeated at the top of ``--json``."""

    fields: dict[str, Any] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    top_level: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StatusProvider:
    """What an executor declares in the entry point group ``hodlai.status``."""

    executor: str
    report: Callable[[StatusContext], ExecutorReport]
    #: the roles of its processes that hold a role lock on the database (shared.instance)
    roles: tuple[str, ...] = ()
    #: its pollers and their chains, from the node's settings
    pollers: Callable[[CoreSettings], Sequence[PollerChain]] = lambda _settings: ()
    #: prefixes of its machines' names other than ``executor`` (``distribution.run`` belongs
    #: to the executor ``dist``, switched by HODLAI_DIST_ENABLED)
    machine_prefixes: tuple[str, ...] = ()


def register_status(sub: Any) -> None:
    status = sub.add_parser(
        "status",
        help="every executor: health, counts per status, processes; every poller: lag",
        description="The whole node: per executor whether it is enabled, its health, its "
        "processes and its entities per status; per poller its cursor, the chain head and "
        "the lag. Exits 1 when an enabled executor has a problem (a halt, a deep reorg).",
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    from shared.cli import inspection_settings, open_for_reading

    settings = inspection_settings()
    conn = open_for_reading(settings)
    try:
        info, text = collect(conn, settings, now=time.time())
    finally:
        conn.close()
    print(json.dumps(info, indent=2) if args.json else text)
    return 0 if info["healthy"] else 1


def collect(
    conn: sqlite3.Connection,
    settings: CoreSettings,
    *,
    now: float,
    providers: Sequence[StatusProvider] | None = None,
    machines: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], str]:
    """The status as ``--json`` prints it, and its text form. ``providers`` and ``machines``
    default to the installed executors' (a test passes its own)."""
    from shared import registry
    from shared.runtime import executor_enabled
    from shared.state import store as state_store

    if providers is None:
        providers = [_checked(p) for p in registry.status_providers()]
    if machines is None:
        machines = registry.machines()
    by_executor = {p.executor: p for p in providers}
    aliases = {prefix: p.executor for p in providers for prefix in p.machine_prefixes}
    machine_owner = {name: aliases.get(name.split(".", 1)[0], name.split(".", 1)[0])
                     for name in machines}  # fmt: skip
    names = sorted(set(by_executor) | set(machine_owner.values()))
    chains = {c.poller: (p.executor, c) for p in providers for c in p.pollers(settings)}
    heads = asyncio.run(_heads({name: c.rpc_urls for name, (_, c) in chains.items()}))
    ctx = StatusContext(conn=conn, settings=settings, heads=heads, now=now)

    executors: dict[str, Any] = {}
    top: dict[str, Any] = {}
    text = [f"database      {settings.db_path}"]
    for name in names:
        provider = by_executor.get(name)
        enabled = executor_enabled(name)
        counts = {
            m: state_store.counts(conn, machines[m])
            for m in sorted(machines)
            if machine_owner[m] == name
        }
        processes = {
            role: _process_state(settings.db_path, role)
            for role in (provider.roles if provider else ())
        }
        report = provider.report(ctx) if provider is not None else ExecutorReport()
        problems = report.problems if enabled else []
        health = "disabled" if not enabled else ("problem" if problems else "ok")
        executors[name] = {
            "enabled": enabled, "health": health, "problems": problems,
            "processes": processes, "counts": counts, **report.fields,
        }  # fmt: skip
        clash = CORE_KEYS & report.top_level.keys()
        if clash:
            raise TypeError(f"status of {name}: top-level fields {sorted(clash)} are the core's")
        top.update(report.top_level)
        text += ["", f"{name:<13} {health}" + ("" if enabled else " (its processes stand down)")]
        if processes:
            shown = ", ".join(f"{role} {state}" for role, state in processes.items())
            text.append(f"  processes   {shown}")
        for machine, by_status in counts.items():
            text.append(f"  {machine}")
            text += [f"    {status:<12} {n:>10}" for status, n in by_status.items()]
        text += [f"  {line}" for line in report.lines]
        text += [f"  PROBLEM: {problem}" for problem in problems]

    pollers = _pollers(conn, heads, {name: owner for name, (owner, _) in chains.items()})
    if pollers:
        text += ["", "pollers"]
    for name, p in pollers.items():
        head = "unknown" if p["head"] is None else p["head"]
        lag = "-" if p["lag_blocks"] is None else f"{p['lag_blocks']} blocks"
        block = "- (not started)" if p["cursor"] is None else p["cursor"]
        text.append(f"  {name:<12} block {block}  head {head}  lag {lag}"
                    f"  ({p['executor'] or 'no executor installed'})")  # fmt: skip
        if p["halted"] is not None:
            text.append(f"  HALTED: {name} waits for an operator: {p['halted']}")
    healthy = all(e["health"] != "problem" for e in executors.values())
    info = {**top, "database": str(settings.db_path), "healthy": healthy,
            "executors": executors, "pollers": pollers}  # fmt: skip
    return info, "\n".join(text)


def _checked(provider: object) -> StatusProvider:
    if not isinstance(provider, StatusProvider):
        raise TypeError(f"entry point in hodlai.status is not a StatusProvider: {provider!r}")
    return provider


def _process_state(db_path: Path, role: str) -> str:
    from shared.instance import role_holder

    try:
        holder = role_holder(db_path, role)
    except NotImplementedError:
        return "unknown"
    return "not running" if holder is None else f"running ({holder})"


def _pollers(
    conn: sqlite3.Connection, heads: Mapping[str, int | None], owners: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    """Every poller with a cursor, and every declared one (cursor None: not started): its
    block, the head, the lag, its halt."""
    cursors = {
        name: (cursor, updated_at)
        for name, cursor, updated_at in conn.execute(
            "SELECT name, block_number, updated_at FROM cursors"
        )
    }
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(set(cursors) | set(owners)):
        cursor, updated_at = cursors.get(name, (None, None))
        head = heads.get(name)
        halt = conn.execute(
            "SELECT reason FROM halts WHERE worker = ? AND resumed_at IS NULL", (name,)
        ).fetchone()
        out[name] = {
            "executor": owners.get(name),
            "cursor": cursor,
            "head": head,
            "lag_blocks": None if head is None or cursor is None else head - cursor,
            "cursor_updated_at": updated_at,
            "halted": None if halt is None else halt[0],
        }
    return out


async def _heads(urls_by_poller: Mapping[str, Sequence[str]]) -> dict[str, int | None]:
    """The chain head for each poller (None: no URL answered within the deadline); each
    distinct list of URLs is asked once, all at the same time."""
    distinct = {tuple(urls) for urls in urls_by_poller.values() if urls}
    found = dict(zip(distinct, await asyncio.gather(*(_head(list(u)) for u in distinct)),
                     strict=True))  # fmt: skip
    return {name: found.get(tuple(urls)) for name, urls in urls_by_poller.items()}


async def _head(urls: list[str]) -> int | None:
    from shared.chain.rpc import RpcClient, hex_int

    async with RpcClient(urls, timeout=RPC_TIMEOUT_S, deadline_s=RPC_DEADLINE_S) as client:
        for _ in urls:
            try:
                return hex_int(await client.call("eth_blockNumber"))
            except HodlaiError:
                continue
    return None
