"""The scheduler (issue 21 §3) on a real SQLite file with a clock the test moves: each cron
slot runs once (also with two schedulers racing), missed slots follow the policy and are
logged, the cron's time zone counts, a flickering condition never fires, K true checks fire
once and then cool down, oracle fees count from the last run."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from structlog.testing import capture_logs

from shared import state
from shared.db import AsyncDatabase, connect
from shared.errors import RpcServerError
from tests.distribution_fixtures import (
    PROVIDER,
    SOURCE,
    TOKEN,
    TREASURY,
    MemoryNetwork,
    dist_settings,
    seed_task,
)
from workers.distribution import service
from workers.distribution.machine import RUNS
from workers.distribution.main import Distributor
from workers.distribution.scheduler import Scheduler, next_slot

T = TypeVar("T")
MIDNIGHT = 1_800_000_000.0 - 8 * 3600  # 2027-01-15T00:00:00Z


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _create(conn: sqlite3.Connection, net: dict[str, MemoryNetwork], task: dict[str, Any],
            now: float) -> str:  # fmt: skip
    body = {"network": "devnet", "tokenMint": TOKEN, "task": task}
    created = run(service.create(conn, body, net, dist_settings(), actor="op", now=now))
    return str(created["id"])


def _slots(conn: sqlite3.Connection, task_id: str) -> list[str]:
    sql = "SELECT slot FROM distribution_runs WHERE task_id = ? ORDER BY slot"
    return [r[0] for r in conn.execute(sql, (task_id,))]


def _finish_runs(conn: sqlite3.Connection) -> None:
    for (run_id,) in conn.execute("SELECT run_id FROM distribution_runs WHERE status = 'pending'"):
        state.transition(conn, RUNS, run_id, "pending", "failed", actor="test")


def test_each_slot_runs_once_and_the_next_slot_moves_with_the_run(db_path: Path) -> None:
    conn = connect(db_path)
    net = {"devnet": MemoryNetwork()}
    task_id = _create(conn, net, seed_task(cron="0 * * * *"), MIDNIGHT - 10)
    clock = Clock(MIDNIGHT - 1)
    scheduler = Scheduler(conn, dist_settings(), net, owner="s1", clock=clock)
    assert run(scheduler.tick()) is False  # not due yet
    clock.now = MIDNIGHT + 2
    assert run(scheduler.tick()) is True
    assert run(scheduler.tick()) is False  # the same slot never twice
    # a restarted scheduler (a new object, the same database) does not run it again
    assert run(Scheduler(connect(db_path), dist_settings(), net, owner="s2", clock=clock)
               .tick()) is False  # fmt: skip
    clock.now = MIDNIGHT + 3600 + 5
    assert run(scheduler.tick()) is True
    assert _slots(conn, task_id) == ["2027-01-15T00:00:00.000Z", "2027-01-15T01:00:00.000Z"]
    row = conn.execute("SELECT * FROM distribution_tasks WHERE task_id = ?", (task_id,)).fetchone()
    assert (row["run_count"], row["next_run_at"]) == (2, MIDNIGHT + 7200)
    transfers = conn.execute("SELECT COUNT(*) FROM distribution_transfers").fetchone()[0]
    assert transfers == 4  # two recipients per run, recorded with it


def test_the_cron_runs_in_the_tasks_time_zone() -> None:
    # 09:00 in Shanghai (UTC+8) is 01:00 UTC
    assert next_slot("0 9 * * *", "Asia/Shanghai", MIDNIGHT) == MIDNIGHT + 3600
    assert next_slot("0 9 * * *", "UTC", MIDNIGHT) == MIDNIGHT + 9 * 3600


@pytest.mark.parametrize("policy", ["latest", "skip"])
def test_missed_slots_follow_the_policy_and_each_decision_is_logged(
    db_path: Path, policy: str
) -> None:
    conn = connect(db_path)
    net = {"devnet": MemoryNetwork()}
    task_id = _create(conn, net, seed_task(cron="*/10 * * * *"), MIDNIGHT - 1)
    clock = Clock(MIDNIGHT + 3600 + 35 * 60)  # down from 00:00 to 01:35: 10 slots missed
    settings = dist_settings(dist_missed_slots=policy, dist_missed_grace_s=60)
    with capture_logs() as logs:
        run(Scheduler(conn, settings, net, owner="s", clock=clock).tick())
    decision = next(e for e in logs if e["event"] == "distribution_slots_missed")
    assert decision["policy"] == policy and decision["missed"] == 10
    if policy == "latest":
        assert _slots(conn, task_id) == ["2027-01-15T01:30:00.000Z"]
        assert decision["skipped"] == 9 and decision["run"] == "2027-01-15T01:30:00.000Z"
    else:
        assert _slots(conn, task_id) == []
        assert decision["skipped"] == 10 and decision["run"] is None
    row = conn.execute("SELECT next_run_at FROM distribution_tasks").fetchone()
    assert row[0] == MIDNIGHT + 3600 + 40 * 60  # 01:40, either way
    # a slot within the grace is on time: it runs under "skip" too
    clock.now = MIDNIGHT + 3600 + 40 * 60 + 20
    _finish_runs(conn)
    run(Scheduler(conn, settings, net, owner="s", clock=clock).tick())
    assert _slots(conn, task_id)[-1] == "2027-01-15T01:40:00.000Z"


def test_two_schedulers_racing_on_one_database_run_each_slot_once(db_path: Path) -> None:
    conn = connect(db_path)
    net = {"devnet": MemoryNetwork()}
    task_ids = [_create(conn, net, seed_task(f"t{i}", cron="* * * * *"), MIDNIGHT - 1)
                for i in range(3)]  # fmt: skip
    minutes = 40
    times = [MIDNIGHT + 60 * m + 0.5 for m in range(minutes)]
    barrier = threading.Barrier(2)
    recorded: list[int] = [0, 0]

    def scheduler(index: int) -> None:
        clock = Clock(times[0])
        own = Scheduler(connect(db_path), dist_settings(), net, owner=f"s{index}", clock=clock)

        async def loop() -> None:
            for now in times:
                clock.now = now
                barrier.wait()  # both tick at the same moment of the same minute
                recorded[index] += int(await own.tick())

        asyncio.run(loop())

    threads = [threading.Thread(target=scheduler, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for task_id in task_ids:
        slots = _slots(conn, task_id)
        assert len(slots) == len(set(slots)) == minutes  # every slot, each once
    assert min(recorded) > 0  # both schedulers won some of the races
    assert conn.execute("SELECT COUNT(*) FROM distribution_transfers").fetchone()[0] == (
        3 * minutes * 2)  # fmt: skip


def _conditional(threshold: str = "100", **condition: Any) -> dict[str, Any]:
    task = seed_task("fees", type="conditional")
    task["condition"] = {"kind": "token_balance", "threshold": threshold, **condition}
    return task


def test_a_flickering_condition_never_fires(db_path: Path) -> None:
    conn = connect(db_path)
    network = MemoryNetwork()
    net = {"devnet": network}
    task_id = _create(conn, net, _conditional(), MIDNIGHT)
    settings = dist_settings(dist_condition_checks=3, dist_check_interval_s=10)
    clock = Clock(MIDNIGHT)
    scheduler = Scheduler(conn, settings, net, owner="s", clock=clock)
    for i in range(30):
        clock.now = MIDNIGHT + 10 * i
        high = i % 3 != 2  # true, true, false, true, true, false…
        network.tokens[(TOKEN, SOURCE)] = 150 * 10**18 if high else 50 * 10**18
        assert run(scheduler.tick()) is False
    assert network.reads == 30  # checked every interval
    assert _slots(conn, task_id) == []


def test_k_true_checks_fire_once_then_cool_down(db_path: Path) -> None:
    conn = connect(db_path)
    network = MemoryNetwork()
    net = {"devnet": network}
    task_id = _create(conn, net, _conditional(), MIDNIGHT)
    settings = dist_settings(dist_condition_checks=3, dist_check_interval_s=10,
                             dist_cooldown_s=600)  # fmt: skip
    network.tokens[(TOKEN, SOURCE)] = 100 * 10**18  # holds (>= threshold)
    clock = Clock(MIDNIGHT)
    scheduler = Scheduler(conn, settings, net, owner="s", clock=clock)
    fired = []
    for i in range(70):  # checks every 10 s for 700 s
        clock.now = MIDNIGHT + 10 * i
        fired.append(run(scheduler.tick()))
        if i == 5:
            _finish_runs(conn)
    assert fired.index(True) == 2  # the third true check
    # once, then the cool-down: no check for 600 s, then three more true checks
    assert [i for i, f in enumerate(fired) if f] == [2, 2 + 60 + 2]
    assert network.reads == 6  # 0, 10, 20 s; none in the cool-down; 620, 630, 640 s
    row = conn.execute("SELECT * FROM distribution_tasks WHERE task_id = ?", (task_id,)).fetchone()
    assert row["run_count"] == 2 and row["cooldown_until"] == MIDNIGHT + 640 + 600
    assert [r["trigger"] for r in conn.execute("SELECT trigger FROM distribution_runs")] == [
        "conditional", "conditional"]  # fmt: skip


def test_a_condition_waits_while_its_run_is_in_flight(db_path: Path) -> None:
    conn = connect(db_path)
    network = MemoryNetwork()
    net = {"devnet": network}
    task_id = _create(conn, net, _conditional(checks=1, cooldownS=0), MIDNIGHT)
    network.tokens[(TOKEN, SOURCE)] = 10**21
    clock = Clock(MIDNIGHT)
    scheduler = Scheduler(conn, dist_settings(dist_check_interval_s=1), net, owner="s",
                          clock=clock)  # fmt: skip
    assert run(scheduler.tick()) is True
    for i in range(1, 5):
        clock.now = MIDNIGHT + i
        assert run(scheduler.tick()) is False  # the run is pending: no second one
    _finish_runs(conn)
    clock.now = MIDNIGHT + 10
    assert run(scheduler.tick()) is True
    assert len(_slots(conn, task_id)) == 2


def test_oracle_fees_count_the_treasurys_growth_since_the_last_run(db_path: Path) -> None:
    conn = connect(db_path)
    network = MemoryNetwork()
    net = {"devnet": network}
    task = _conditional("1", checks=1, cooldownS=0)
    task["condition"] = {"kind": "oracle_fees", "threshold": "1", "provider": PROVIDER,
                         "checks": 1, "cooldownS": 0}  # fmt: skip
    task_id = _create(conn, net, task, MIDNIGHT)
    network.native[TREASURY] = 5 * 10**18  # fees from before the task: not counted
    clock = Clock(MIDNIGHT)
    scheduler = Scheduler(conn, dist_settings(dist_check_interval_s=1), net, owner="s",
                          clock=clock)  # fmt: skip
    assert run(scheduler.tick()) is False  # the baseline
    network.native[TREASURY] += 10**18 - 1
    clock.now += 1
    assert run(scheduler.tick()) is False  # accrued 1 ETH - 1 wei
    network.native[TREASURY] += 1
    clock.now += 1
    assert run(scheduler.tick()) is True  # accrued 1 ETH
    _finish_runs(conn)
    clock.now += 1
    assert run(scheduler.tick()) is False  # counted from the last run on
    network.native[TREASURY] = 2 * 10**18  # a withdrawal lowers the baseline
    clock.now += 1
    run(scheduler.tick())
    network.native[TREASURY] = 3 * 10**18
    clock.now += 1
    assert run(scheduler.tick()) is True
    assert len(_slots(conn, task_id)) == 2


class _Payer:
    def __init__(self, network: str, *, fails: bool) -> None:
        self.networks = frozenset({network})
        self.fails = fails
        self.ticks = 0

    async def tick(self) -> bool:
        self.ticks += 1
        if self.fails:
            raise RpcServerError("the RPC of this network is down")
        return False

    async def aclose(self) -> None:
        return None


def test_a_failing_payer_does_not_keep_the_others_from_their_turn(db_path: Path) -> None:
    conn = connect(db_path)
    net = {"devnet": MemoryNetwork()}
    distributor = Distributor(dist_settings(db_path=db_path), "d1", AsyncDatabase(conn))
    distributor.scheduler = Scheduler(conn, dist_settings(), net, owner="d1")
    down, up = _Payer("base", fails=True), _Payer("devnet", fails=False)
    distributor.payers = [down, up]
    with pytest.raises(RpcServerError), capture_logs() as logs:
        run(distributor.step())
    assert (down.ticks, up.ticks) == (1, 1)
    assert [e["part"] for e in logs if e["event"] == "distribution_part_failed"] == ["base"]
    distributor.db.close()
