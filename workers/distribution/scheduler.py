"""The scheduler of ``hodlai distributor`` (issue 21 §3): cron slots and conditions become
runs, each exactly once.

Guarantees:

- Cron (croniter, a pure function over datetimes) is evaluated in the task's time zone;
  slots are stored and compared in UTC. A task keeps ``next_run_at``, its next slot; it is
  advanced in the SAME transaction that records the slot's run, so a crash before that
  transaction loses nothing (the slot is still due after a restart) and a crash after it
  cannot run the slot again (the run row exists, ``UNIQUE (task_id, slot)``). APScheduler is
  not used: it saves the next run time before the job finishes.
- Two schedulers on one database: a slot's run is created under the write lock after
  checking that the slot has none and that the task's ``next_run_at`` is still the one read;
  the other scheduler finds it and records nothing. Each slot runs once.
- Missed slots (the distributor was down, or a pass came later than
  ``HODLAI_DIST_MISSED_GRACE_S`` after a slot) follow ``HODLAI_DIST_MISSED_SLOTS``:
  ``latest`` runs the latest missed slot once and skips the older ones, ``skip`` runs none;
  a slot inside the grace is on time and runs under either policy. Every decision is logged
  (``distribution_slots_missed``) with the slots skipped and the one run.
- Conditions are read at a confirmed block (the network's reads), every
  ``HODLAI_DIST_CHECK_INTERVAL_S`` per task, by one scheduler at a time (a lease on the task).
  A true check adds one to the task's streak, a false one resets it; at K
  (``HODLAI_DIST_CONDITION_CHECKS`` or the condition's ``checks``) consecutive true checks the
  task fires once: the run, streak 0 and the cool-down (``HODLAI_DIST_COOLDOWN_S`` or
  ``cooldownS``) are written in one transaction. No check happens during the cool-down, and a
  task with a run in flight does not fire (its streak waits at K).
- ``oracle_fees`` reads the provider's treasury's native balance: the fees accrued since the
  last run are its growth over the balance recorded when the task last fired (or was first
  checked); a withdrawal that lowers the balance lowers the baseline with it. The oracle
  package is not imported: ``treasury()`` is read from the chain.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final
from zoneinfo import ZoneInfo

import structlog
from croniter import croniter

from shared.db import atomic
from shared.errors import HodlaiError
from workers.distribution import amounts, store
from workers.distribution.networks import Network, source_of
from workers.distribution.settings import DistSettings
from workers.distribution.tasks import NATIVE_DECIMALS, iso, manifest_of, spec_from_row

log = structlog.get_logger(__name__)

#: slots examined at most when catching up (a "* * * * *" task down for a week has 10,080)
MAX_CATCHUP_SLOTS: Final = 100_000


def next_slot(cron: str, timezone: str, after: float) -> float:
    """The first slot of ``cron`` in ``timezone`` strictly after ``after`` (unix seconds)."""
    start = datetime.fromtimestamp(after, ZoneInfo(timezone))
    value: datetime = croniter(cron, start).get_next(datetime)
    return value.astimezone(UTC).timestamp()


def due_slots(cron: str, timezone: str, first: float, now: float) -> list[float]:
    """The slots from ``first`` (a slot) up to ``now``, oldest first (at most
    MAX_CATCHUP_SLOTS, the newest kept)."""
    slots: list[float] = []
    slot = first
    while slot <= now:
        slots.append(slot)
        if len(slots) > MAX_CATCHUP_SLOTS:
            slots.pop(0)
        slot = next_slot(cron, timezone, slot)
    return slots


class Scheduler:
    """One scheduler: ``tick()`` turns due slots and fired conditions into runs."""

    def __init__(
        self,
        db: sqlite3.Connection,
        settings: DistSettings,
        networks: Mapping[str, Network],
        *,
        owner: str,
        clock: Callable[[], float] = time.time,
        grace_s: float | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.networks = networks
        self.owner = owner
        self.clock = clock
        self.grace_s = settings.dist_missed_grace_s if grace_s is None else grace_s

    async def tick(self) -> bool:
        """One pass; True if it recorded a run."""
        did = False
        for row in self._due_scheduled(self.clock()):
            did = await self._scheduled(row) or did
        for row in self._due_conditional(self.clock()):
            did = await self._conditional(row) or did
        return did

    # ---- scheduled -------------------------------------------------------------------------

    def _due_scheduled(self, now: float) -> list[sqlite3.Row]:
        return self.db.execute(
            "SELECT * FROM distribution_tasks WHERE status = 'active' AND enabled = 1"
            " AND type = 'scheduled' AND (next_run_at IS NULL OR next_run_at <= ?)"
            " ORDER BY next_run_at",
            (now,),
        ).fetchall()

    async def _scheduled(self, row: sqlite3.Row) -> bool:
        now = self.clock()
        task_id, cron, zone = row["task_id"], row["cron"], row["timezone"]
        if row["next_run_at"] is None:
            self._set_next(task_id, None, next_slot(cron, zone, now))
            return False
        chosen, following = self._decide(row, now)
        if chosen is None:
            self._set_next(task_id, row["next_run_at"], following)
            return False
        prepared = await self._prepare(row, chosen, following)
        if prepared is None:
            return False
        network, decimals, total, manifest = prepared
        with atomic(self.db):
            current = self.db.execute(
                "SELECT next_run_at, enabled, status FROM distribution_tasks WHERE task_id = ?",
                (task_id,),
            ).fetchone()
            if tuple(current) != (row["next_run_at"], 1, "active"):
                return False  # another scheduler (or an operator) moved it first
            run_id = store.record_run(
                self.db, task_id, slot=iso(chosen) or "", trigger="scheduled",
                decimals=decimals, total=total, manifest=manifest,
                source=source_of(network, self.settings), actor=f"scheduler:{self.owner}",
                now=now, task_columns={"next_run_at": following},
            )  # fmt: skip
            if run_id is None:  # the slot has its run: only move the task on
                self._set_next(task_id, row["next_run_at"], following)
                return False
        log.info("distribution_slot_run", task_id=task_id, slot=iso(chosen), run_id=run_id,
                 next_slot=iso(following))  # fmt: skip
        return True

    async def _prepare(
        self, row: sqlite3.Row, chosen: float, following: float
    ) -> tuple[Network, int, int, amounts.Manifest] | None:
        """The network, decimals and manifest of the slot's run; None to retry next pass
        (the chain is unreadable) or, with the task moved on, when it cannot be paid."""
        task_id = row["task_id"]
        network = self.networks.get(row["network"])
        if network is None:
            log.error("distribution_network_unknown", task_id=task_id, network=row["network"])
            return None
        try:
            decimals = await network.decimals(row["token"])
        except HodlaiError as exc:  # retried next pass: the slot stays due
            log.warning("distribution_slot_deferred", task_id=task_id, slot=iso(chosen),
                        error=str(exc))  # fmt: skip
            return None
        try:
            total, manifest = manifest_of(spec_from_row(row), decimals)
        except HodlaiError as exc:
            log.error("distribution_slot_unpayable", task_id=task_id, slot=iso(chosen),
                      error=str(exc))  # fmt: skip
            self._set_next(task_id, row["next_run_at"], following)
            return None
        return network, decimals, total, manifest

    def _decide(self, row: sqlite3.Row, now: float) -> tuple[float | None, float]:
        """The slot to run now (None: none) and the task's next slot after now."""
        task_id, cron, zone = row["task_id"], row["cron"], row["timezone"]
        slots = due_slots(cron, zone, row["next_run_at"], now)
        following = next_slot(cron, zone, now)
        on_time = [s for s in slots if now - s <= self.grace_s]
        missed = [s for s in slots if now - s > self.grace_s]
        if on_time:
            chosen: float | None = on_time[-1]
        elif missed and self.settings.dist_missed_slots == "latest":
            chosen = missed[-1]
        else:
            chosen = None
        skipped = [s for s in slots if s != chosen]
        if missed:
            log.warning(
                "distribution_slots_missed", task_id=task_id,
                policy=self.settings.dist_missed_slots, missed=len(missed),
                skipped=len(skipped), first_skipped=iso(skipped[0]) if skipped else None,
                last_skipped=iso(skipped[-1]) if skipped else None,
                run=iso(chosen) if chosen is not None else None,
            )  # fmt: skip

        return chosen, following

    def _set_next(self, task_id: str, expected: float | None, value: float) -> None:
        with atomic(self.db):
            self.db.execute(
                "UPDATE distribution_tasks SET next_run_at = ? WHERE task_id = ?"
                " AND next_run_at IS ?",
                (value, task_id, expected),
            )

    # ---- conditional -----------------------------------------------------------------------

    def _due_conditional(self, now: float) -> list[sqlite3.Row]:
        interval = self.settings.dist_check_interval_s
        return self.db.execute(
            "SELECT * FROM distribution_tasks WHERE status = 'active' AND enabled = 1"
            " AND type = 'conditional' AND (cooldown_until IS NULL OR cooldown_until <= ?)"
            " AND (last_check_at IS NULL OR last_check_at <= ?)"
            " AND (lease_owner IS NULL OR lease_until < ?) ORDER BY last_check_at",
            (now, now - interval, now),
        ).fetchall()

    def _lease(self, task_id: str, now: float) -> bool:
        interval = self.settings.dist_check_interval_s
        with atomic(self.db):
            cursor = self.db.execute(
                "UPDATE distribution_tasks SET lease_owner = ?, lease_until = ?"
                " WHERE task_id = ? AND status = 'active' AND enabled = 1"
                " AND (lease_owner IS NULL OR lease_until < ?)"
                " AND (last_check_at IS NULL OR last_check_at <= ?)"
                " AND (cooldown_until IS NULL OR cooldown_until <= ?)",
                (self.owner, now + self.settings.dist_lease_s, task_id, now, now - interval, now),
            )
            return cursor.rowcount == 1

    async def _conditional(self, row: sqlite3.Row) -> bool:
        now = self.clock()
        task_id = row["task_id"]
        if not self._lease(task_id, now):
            return False
        try:
            return await self._check(row, now)
        finally:
            with atomic(self.db):  # a no-op when the check's own write released it
                self.db.execute(
                    "UPDATE distribution_tasks SET lease_owner = NULL, lease_until = NULL"
                    " WHERE task_id = ? AND lease_owner = ?",
                    (task_id, self.owner),
                )

    async def _check(self, row: sqlite3.Row, now: float) -> bool:
        task_id = row["task_id"]
        spec = spec_from_row(row)
        condition = spec.condition
        assert condition is not None
        network = self.networks.get(row["network"])
        if network is None:
            log.error("distribution_network_unknown", task_id=task_id, network=row["network"])
            return False
        source = source_of(network, self.settings)
        cond_state: dict[str, Any] = json.loads(row["condition_state"] or "{}")
        try:
            holds, value, cond_state = await self._evaluate(
                network, row["token"], condition.kind, condition.threshold,
                owner=condition.owner or source, provider=condition.provider,
                state=cond_state,
            )  # fmt: skip
        except HodlaiError as exc:  # an unreadable check is no true check
            log.warning("distribution_condition_unreadable", task_id=task_id, error=str(exc))
            holds, value = False, None
        checks = condition.checks or self.settings.dist_condition_checks
        streak = row["condition_streak"] + 1 if holds else 0
        log.info("distribution_condition_checked", task_id=task_id, kind=condition.kind,
                 holds=holds, value=value, streak=streak, needed=checks)  # fmt: skip
        bookkeeping: dict[str, object] = {
            "condition_streak": min(streak, checks), "last_check_at": now,
            "condition_state": json.dumps(cond_state) if cond_state else None,
        }  # fmt: skip
        fired = False
        if streak >= checks:
            fired = await self._fire(row, network, spec, condition, now, cond_state, source)
        if not fired:
            with atomic(self.db):
                self.db.execute(
                    "UPDATE distribution_tasks SET condition_streak = ?, last_check_at = ?,"
                    " condition_state = ? WHERE task_id = ? AND lease_owner = ?",
                    (*bookkeeping.values(), task_id, self.owner),
                )
        return fired

    async def _fire(
        self,
        row: sqlite3.Row,
        network: Network,
        spec: Any,
        condition: Any,
        now: float,
        cond_state: dict[str, Any],
        source: str | None,
    ) -> bool:
        task_id = row["task_id"]
        if store.in_flight_run(self.db, task_id) is not None:
            log.info("distribution_condition_waits", task_id=task_id,
                     why="a run of the task is in flight")  # fmt: skip
            return False
        try:
            decimals = await network.decimals(row["token"])
            total, manifest = manifest_of(spec, decimals)
        except HodlaiError as exc:
            log.warning("distribution_condition_deferred", task_id=task_id, error=str(exc))
            return False
        cooldown = (
            condition.cooldown_s
            if condition.cooldown_s is not None
            else self.settings.dist_cooldown_s
        )
        fired_state = dict(cond_state)
        if "balance" in fired_state:  # oracle_fees: count from this balance on
            fired_state["baseline"] = fired_state["balance"]
        with atomic(self.db):
            holder = self.db.execute(
                "SELECT lease_owner FROM distribution_tasks WHERE task_id = ?", (task_id,)
            ).fetchone()
            if holder is None or holder["lease_owner"] != self.owner:
                return False  # the lease expired under a slow check: another scheduler checks
            if store.in_flight_run(self.db, task_id) is not None:
                return False  # an execute recorded one since the check above
            run_id = store.record_run(
                self.db, task_id, slot=iso(now) or "", trigger="conditional", decimals=decimals,
                total=total, manifest=manifest, source=source,
                actor=f"scheduler:{self.owner}", now=now,
                task_columns={
                    "condition_streak": 0, "last_check_at": now, "cooldown_until": now + cooldown,
                    "condition_state": json.dumps(fired_state) if fired_state else None,
                    "lease_owner": None, "lease_until": None,
                },
            )  # fmt: skip
        if run_id is None:
            return False
        log.info("distribution_condition_fired", task_id=task_id, run_id=run_id,
                 cooldown_until=iso(now + cooldown))  # fmt: skip
        return True

    async def _evaluate(
        self,
        network: Network,
        token: str,
        kind: str,
        threshold: Decimal,
        *,
        owner: str | None,
        provider: str | None,
        state: dict[str, Any],
    ) -> tuple[bool, str, dict[str, Any]]:
        """(holds, the value read as a decimal string of base units, the condition's state)."""
        native = NATIVE_DECIMALS.get(network.kind, 18)
        if kind == "token_balance":
            if owner is None:
                raise ConfigErrorFor("token_balance")
            decimals = await network.decimals(token)
            value = await network.token_balance(token, owner)
            return value >= amounts.to_base_units(threshold, decimals), str(value), state
        if kind == "native_balance":
            if owner is None:
                raise ConfigErrorFor("native_balance")
            value = await network.native_balance(owner)
            return value >= amounts.to_base_units(threshold, native), str(value), state
        # oracle_fees
        provider = provider or self.settings.dist_oracle_provider or None
        treasury_of = getattr(network, "treasury", None)
        if provider is None or treasury_of is None:
            raise ConfigErrorFor("oracle_fees")
        treasury = await treasury_of(provider)
        balance = await network.native_balance(treasury)
        if state.get("treasury") != treasury or "baseline" not in state:
            state = {"treasury": treasury, "baseline": str(balance)}
        baseline = min(int(state["baseline"]), balance)  # a withdrawal lowers the baseline
        state = {"treasury": treasury, "baseline": str(baseline), "balance": str(balance)}
        accrued = balance - baseline
        return accrued >= amounts.to_base_units(threshold, native), str(accrued), state


class ConfigErrorFor(HodlaiError):
    """A condition this node cannot read (no source, no provider configured)."""

    def __init__(self, kind: str) -> None:
        need = {
            "token_balance": "an owner (condition.owner or the network's source address)",
            "native_balance": "an owner (condition.owner or the network's source address)",
            "oracle_fees": "an EVM network and a provider (condition.provider or"
            " HODLAI_DIST_ORACLE_PROVIDER)",
        }[kind]
        super().__init__(f"the {kind} condition needs {need}")
