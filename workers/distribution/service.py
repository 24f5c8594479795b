"""What the API and the CLI do with a task: validate a body against its network (addresses,
the token's decimals), create, preview, execute, enable, disable, delete.

Guarantees:

- A body is validated completely before anything is written; every refusal is a TaskError /
  AmountError / InvalidRequestError whose message names the field (the API answers 400).
- ``network`` must name a configured network; ``tokenMint`` must be a valid token address of
  it whose decimals the chain answers; the amounts are converted with those decimals.
- Preview computes exactly the manifest a run of the task would record now (same function,
  same order, same hash), and writes nothing.
- Execute records a run for the execute time (to the millisecond) unless the task has a run
  in flight (409), in the same transaction that checks it.
"""

from __future__ import annotations

import sqlite3
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from shared.errors import ConfigError, HodlaiError, InvalidRequestError, TransitionConflict
from workers.distribution import amounts, store
from workers.distribution.networks import Network, source_of
from workers.distribution.scheduler import next_slot
from workers.distribution.settings import DistSettings
from workers.distribution.tasks import (
    TaskError,
    TaskSpec,
    check_keys,
    iso,
    manifest_of,
    parse_task,
    spec_from_row,
    task_answer,
)
from workers.distribution.templates import apply_template

_BODY_KEYS: Final = frozenset({"network", "tokenMint", "task", "template"})
#: network -> token -> decimals: a token's decimals never change
_DECIMALS: weakref.WeakKeyDictionary[Network, dict[str, int]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Prepared:
    network: Network
    token: str
    spec: TaskSpec
    decimals: int
    total: int
    manifest: amounts.Manifest


def pick_network(networks: Mapping[str, Network], name: object) -> Network:
    if not isinstance(name, str) or not name:
        raise TaskError("network is required (a configured network's name)")
    found = networks.get(name) or networks.get(name.lower())
    if found is None:
        known = ", ".join(sorted(networks)) or "none"
        raise TaskError(f"network {name[:40]!r} is not configured here (configured: {known})")
    return found


async def token_decimals(network: Network, token: str) -> int:
    known = _DECIMALS.setdefault(network, {})
    if token not in known:
        known[token] = await network.decimals(token)
    return known[token]


def pick_token(network: Network, value: object) -> str:
    token = network.normalize_address(value) if isinstance(value, str) else None
    if token is None:
        raise TaskError(f"tokenMint {str(value)[:80]!r} is not a valid token address of"
                        f" network {network.name}")  # fmt: skip
    return token


async def prepare(
    body: object, networks: Mapping[str, Network], settings: DistSettings
) -> Prepared:
    """Validate a POST / preview body: ``{network, tokenMint, task}`` (``template`` optional)."""
    if not isinstance(body, dict):
        raise TaskError("the body must be a JSON object {network, tokenMint, task}")
    unknown = set(body) - _BODY_KEYS
    if unknown:
        raise TaskError(f"unknown field(s): {', '.join(sorted(unknown))[:200]}")
    network = pick_network(networks, body.get("network"))
    token = pick_token(network, body.get("tokenMint"))
    raw = body.get("task")
    if not isinstance(raw, dict):
        raise TaskError("task must be a JSON object (the seed's task)")
    check_keys(raw)
    template = body.get("template") or raw.get("template")
    if template is not None:
        if not isinstance(template, str):
            raise TaskError("template must be a string")
        raw = apply_template(template, raw)
    spec = parse_task(
        raw, normalize=network.normalize_address, max_recipients=settings.dist_max_recipients,
        network_kind=network.kind,
    )  # fmt: skip
    decimals = await token_decimals(network, token)
    total, manifest = manifest_of(spec, decimals)
    return Prepared(network, token, spec, decimals, total, manifest)


async def preview(
    body: object, networks: Mapping[str, Network], settings: DistSettings
) -> dict[str, Any]:
    """``{manifest: [{address, amount}], totalAmount, manifestHash}``, plus the unsigned
    transaction of the seed's buildTokenDistributionTransaction when the source is known."""
    p = await prepare(body, networks, settings)
    answer: dict[str, Any] = {
        "manifest": amounts.manifest_answer(p.manifest),
        "totalAmount": str(p.total),
        "manifestHash": amounts.manifest_hash(p.manifest),
        "decimals": p.decimals,
    }
    source = source_of(p.network, settings)
    transaction = None
    if source is not None:
        try:
            transaction = await p.network.build_unsigned(p.token, source, p.manifest)
        except (ConfigError, NotImplementedError):
            transaction = None
    answer["transaction"] = transaction
    return answer


async def create(
    conn: sqlite3.Connection,
    body: object,
    networks: Mapping[str, Network],
    settings: DistSettings,
    *,
    actor: str,
    now: float | None = None,
) -> dict[str, Any]:
    """Validate and record a task; the task's JSON (the seed's units)."""
    p = await prepare(body, networks, settings)
    at = time.time() if now is None else now
    next_run = None
    if p.spec.type == "scheduled" and p.spec.cron:
        next_run = next_slot(p.spec.cron, p.spec.timezone, at)
    task_id = store.create_task(
        conn, p.spec, network=p.network.name, token=p.token, next_run_at=next_run,
        actor=actor, now=at,
    )  # fmt: skip
    return task_answer(store.task_row(conn, task_id))


async def execute(
    conn: sqlite3.Connection,
    task_id: str,
    networks: Mapping[str, Network],
    settings: DistSettings,
    *,
    actor: str,
    now: float | None = None,
) -> dict[str, Any]:
    """Record a manual run of the task now (409 while one is in flight or it is disabled)."""
    row = store.task_row(conn, task_id)
    if not row["enabled"]:
        raise TransitionConflict(f"task {task_id} is disabled; enable it first")
    running = store.in_flight_run(conn, task_id)
    if running is not None:  # checked again in the transaction that records the run
        raise TransitionConflict(
            f"task {task_id} has run {running['run_id']} in flight ({running['status']})"
        )
    network = pick_network(networks, row["network"])
    spec = spec_from_row(row)
    decimals = await token_decimals(network, row["token"])
    total, manifest = manifest_of(spec, decimals)
    at = time.time() if now is None else now
    run_id = store.record_run(
        conn, task_id, slot=iso(at) or "", trigger="manual", decimals=decimals, total=total,
        manifest=manifest, source=source_of(network, settings), actor=actor, now=at,
        refuse_if_in_flight=True,
    )  # fmt: skip
    if run_id is None:
        raise TransitionConflict(f"task {task_id} has a run for {iso(at)} already")
    return store.run_answer(conn, run_id)


def is_bad_request(exc: HodlaiError) -> bool:
    """The errors a body or a task causes (answered 400)."""
    return isinstance(exc, InvalidRequestError)
