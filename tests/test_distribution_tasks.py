"""The task model (issue 21 §1, §6, §8): the seed's JSON is validated with a reason per
refusal, stored, listed in the seed's units, previewed exactly as a run records it;
templates; execute and delete refused while a run is in flight."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest

from shared import state
from shared.db import connect
from shared.errors import InvalidRequestError, NotFoundError, TransitionConflict
from tests.distribution_fixtures import TOKEN, MemoryNetwork, addr, dist_settings, seed_task
from workers.distribution import amounts, service, store
from workers.distribution.machine import RUNS, TASKS, TRANSFERS
from workers.distribution.templates import TEMPLATES

T = TypeVar("T")
NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def body(task: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"network": "devnet", "tokenMint": TOKEN, "task": task, **extra}


@pytest.fixture
def net() -> dict[str, MemoryNetwork]:
    return {"devnet": MemoryNetwork()}


def _refusal(net: dict[str, MemoryNetwork], task: dict[str, Any], **settings: Any) -> str:
    with pytest.raises(InvalidRequestError) as caught:
        run(service.prepare(body(task), net, dist_settings(**settings)))
    return str(caught.value)


def _pct(*pairs: tuple[str, object]) -> dict[str, Any]:
    return {"recipients": [{"address": a, "percentage": p} for a, p in pairs],
            "totalAmount": 1000, "usePercentage": True}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"distribution": _pct((addr(0), 50), ("0x1234", 50))}, "not a valid address"),
        ({"distribution": _pct((addr(0), 50), (addr(1), 49))}, "sum to 99, not 100"),
        ({"distribution": _pct((addr(0), 50), (addr(0).lower(), 50))}, "listed twice"),
        ({"distribution": _pct((addr(0), "33.33333"), (addr(1), 50))}, "more than 4 decimal"),
        ({"schedule": {"cron": "61 * * * *"}}, "does not parse"),
        ({"schedule": {"cron": "0 0 * *"}}, "must have 5 fields"),
        ({"schedule": {"cron": "0 0 * * *", "timezone": "Mars/Base"}}, "no IANA time zone"),
        ({"type": "weekly"}, "task.type must be one of"),
        ({"distribution": {"recipients": [{"address": addr(0), "amount": 0}]}}, "greater than 0"),
        ({"distribution": {"recipients": [{"address": addr(0), "amount": "-1"}]}}, "decimal"),
        ({"distribution": {"recipients": [{"address": addr(0), "amount": 5}], "totalAmount": 6}},
         "not the sum of the amounts"),
        ({"distribution": {"recipients": [{"address": addr(0), "amount": "1e-19"}]}},
         "decimal string"),
        ({"distribution": {"recipients": [{"address": addr(0), "amount": "0." + "0" * 18 + "1"}]}},
         "beyond the token's 18 decimals"),
        ({"distribution": {**_pct((addr(0), 100)), "totalAmount": "1e-18"}}, "decimal string"),
        ({"id": "bad id/../x"}, "task.id must be"),
        ({"bogus": 1}, "unknown field"),
        ({"type": "conditional", "schedule": None}, "needs a condition"),
    ],
)  # fmt: skip
def test_each_invalid_task_is_refused_with_its_reason(
    net: dict[str, MemoryNetwork], change: dict[str, Any], reason: str
) -> None:
    task = {**seed_task(), **change}
    message = _refusal(net, task)
    assert reason in message, message


def test_too_many_recipients_names_the_setting(net: dict[str, MemoryNetwork]) -> None:
    task = seed_task(recipients=4)
    assert "HODLAI_DIST_MAX_RECIPIENTS" in _refusal(net, task, dist_max_recipients=3)


def test_an_unconfigured_network_and_a_bad_token_are_refused(
    net: dict[str, MemoryNetwork],
) -> None:
    settings = dist_settings()
    with pytest.raises(InvalidRequestError, match="not configured here"):
        run(service.prepare({**body(seed_task()), "network": "base"}, net, settings))
    with pytest.raises(InvalidRequestError, match="not a valid token address"):
        run(service.prepare({**body(seed_task()), "tokenMint": "KMT"}, net, settings))


def test_a_split_that_gives_a_recipient_nothing_is_refused() -> None:
    net = {"devnet": MemoryNetwork(decimals=0)}
    task = seed_task(recipients=3)
    task["distribution"]["totalAmount"] = 1
    task["distribution"]["recipients"] = [
        {"address": addr(0), "percentage": "33.3334"},
        {"address": addr(1), "percentage": "33.3333"},
        {"address": addr(2), "percentage": "33.3333"},
    ]
    assert "would get 0 base units" in _refusal(net, task)


def test_preview_gives_the_manifest_a_run_records(
    conn: sqlite3.Connection, net: dict[str, MemoryNetwork]
) -> None:
    settings = dist_settings()
    task = seed_task(recipients=3, type="manual")
    task["distribution"]["recipients"] = [
        {"address": addr(0), "percentage": "33.3333"},
        {"address": addr(1), "percentage": "33.3333"},
        {"address": addr(2), "percentage": "33.3334"},
    ]
    preview = run(service.preview(body(task), net, settings))
    total = 1000 * 10**18
    assert preview["totalAmount"] == str(total)
    values = [int(m["amount"]) for m in preview["manifest"]]
    assert sum(values) == total and [m["address"] for m in preview["manifest"]] == [
        addr(0), addr(1), addr(2)]  # fmt: skip
    assert preview["manifestHash"] == amounts.manifest_hash(
        [(m["address"], int(m["amount"])) for m in preview["manifest"]]
    )
    assert state.counts(conn, TASKS)["active"] == 0  # a preview writes nothing
    created = run(service.create(conn, body(task), net, settings, actor="t", now=NOW))
    answer = run(service.execute(conn, created["id"], net, settings, actor="t", now=NOW + 1))
    assert answer["manifestHash"] == preview["manifestHash"]
    assert [(t["address"], t["amount"], t["status"]) for t in answer["transfers"]] == [
        (m["address"], m["amount"], "pending") for m in preview["manifest"]]  # fmt: skip
    assert answer["slot"] == "2027-01-15T08:00:01.000Z" and answer["status"] == "pending"


def test_a_task_is_stored_in_the_seeds_units_and_its_id_is_kept_once(
    conn: sqlite3.Connection, net: dict[str, MemoryNetwork]
) -> None:
    settings = dist_settings()
    created = run(service.create(conn, body(seed_task()), net, settings, actor="op", now=NOW))
    assert created["id"] == "staking-reward-001"
    assert created["distribution"] == {
        "recipients": [{"address": addr(0), "percentage": "50"},
                       {"address": addr(1), "percentage": "50"}],
        "totalAmount": "1000", "usePercentage": True,
    }  # fmt: skip
    assert created["schedule"] == {"cron": "0 0 * * *", "timezone": "UTC"}
    assert created["nextRunAt"] == "2027-01-16T00:00:00.000Z" and created["lastRunAt"] is None
    with pytest.raises(TransitionConflict, match="used already"):
        run(service.create(conn, body(seed_task()), net, settings, actor="op", now=NOW))
    anonymous = seed_task()
    del anonymous["id"]
    other = run(service.create(conn, body(anonymous), net, settings, actor="op", now=NOW))
    assert other["id"].startswith("task-")
    assert [t["task_id"] for t in store.task_rows(conn, network="devnet", token=TOKEN.upper()
            .replace("0X", "0x"))] == ["staking-reward-001", other["id"]]  # fmt: skip


def test_templates_fill_the_task_and_are_still_validated(
    conn: sqlite3.Connection, net: dict[str, MemoryNetwork]
) -> None:
    settings = dist_settings()
    assert set(TEMPLATES) == {"staking-reward", "trading-fee-reward", "governance-reward",
                              "airdrop"}  # fmt: skip
    airdrop = {"distribution": {"recipients": [{"address": addr(i), "amount": "2.5"}
                                               for i in range(3)]}}  # fmt: skip
    created = run(service.create(conn, body(airdrop, template="airdrop"), net, settings,
                                 actor="op", now=NOW))  # fmt: skip
    assert (created["type"], created["template"], created["distribution"]["totalAmount"]) == (
        "manual", "airdrop", "7.5")  # fmt: skip
    fee = {"distribution": _pct((addr(0), 60), (addr(1), 40))}
    task = run(service.create(conn, body(fee, template="trading-fee-reward"), net, settings,
                              actor="op", now=NOW))  # fmt: skip
    assert task["condition"] == {"kind": "token_balance", "threshold": "1000"}
    with pytest.raises(InvalidRequestError, match="sum to 60, not 100"):
        bad = {"distribution": _pct((addr(0), 60))}
        run(service.prepare(body(bad, template="staking-reward"), net, settings))
    with pytest.raises(InvalidRequestError, match="no template"):
        run(service.prepare(body(airdrop, template="lottery"), net, settings))


def test_execute_and_delete_wait_for_the_run_in_flight(
    conn: sqlite3.Connection, net: dict[str, MemoryNetwork]
) -> None:
    settings = dist_settings()
    task = run(service.create(conn, body(seed_task(type="manual")), net, settings, actor="op",
                              now=NOW))  # fmt: skip
    first = run(service.execute(conn, task["id"], net, settings, actor="op", now=NOW + 1))
    with pytest.raises(TransitionConflict, match="in flight"):
        run(service.execute(conn, task["id"], net, settings, actor="op", now=NOW + 2))
    with pytest.raises(TransitionConflict, match="in flight"):
        store.delete_task(conn, task["id"], actor="op", now=NOW + 2)
    # the payer finishes the run: then both are allowed
    for i in range(2):
        key = f"{first['id']}:{i}"
        state.transition(conn, TRANSFERS, key, "pending", "sent", actor="payer")
        state.transition(conn, TRANSFERS, key, "sent", "paid", actor="payer")
    state.transition(conn, RUNS, first["id"], "pending", "running", actor="payer")
    state.transition(conn, RUNS, first["id"], "running", "completed", actor="payer")
    second = run(service.execute(conn, task["id"], net, settings, actor="op", now=NOW + 3))
    assert second["id"] != first["id"]
    row = store.task_row(conn, task["id"])
    assert (row["run_count"], row["last_run_at"]) == (2, NOW + 3)
    store.set_enabled(conn, task["id"], False, actor="op", now=NOW + 4)
    with pytest.raises(TransitionConflict, match="disabled"):
        run(service.execute(conn, task["id"], net, settings, actor="op", now=NOW + 5))
    state.transition(conn, RUNS, second["id"], "pending", "failed", actor="payer")
    store.delete_task(conn, task["id"], actor="op", now=NOW + 6)
    with pytest.raises(NotFoundError):
        store.task_row(conn, task["id"])
    assert [r["id"] for r in store.runs_answer(conn, task["id"])] == [second["id"], first["id"]]
    trail = [(h["from_status"], h["to_status"], h["note"])
             for h in state.history(conn, TASKS, task["id"])]  # fmt: skip
    assert trail[0] == (None, "active", "created") and trail[-1][1:] == ("deleted", "deleted")


def test_a_run_and_its_transfers_are_one_transaction_unique_per_slot(tmp_path: Any) -> None:
    conn = connect(tmp_path / "d.db")
    net = {"devnet": MemoryNetwork()}
    settings = dist_settings()
    task = run(service.create(conn, body(seed_task(type="manual")), net, settings, actor="op",
                              now=NOW))  # fmt: skip
    manifest = [(addr(0), 5), (addr(1), 7)]
    kwargs: dict[str, Any] = dict(slot="2027-01-16T00:00:00.000Z", trigger="scheduled",
                                  decimals=18, total=12, manifest=manifest, source=None,
                                  actor="s", now=NOW)  # fmt: skip
    run_id = store.record_run(conn, task["id"], **kwargs)
    assert run_id is not None
    assert store.record_run(conn, task["id"], **kwargs) is None  # the slot has its run
    assert conn.execute("SELECT COUNT(*) FROM distribution_transfers").fetchone()[0] == 2
    with pytest.raises(sqlite3.IntegrityError):  # the table itself refuses a second
        conn.execute(
            "INSERT INTO distribution_runs (run_id, task_id, network, token, slot, trigger,"
            " status, total_amount, decimals, manifest, manifest_hash, created_at, updated_at)"
            " VALUES ('x', ?, 'devnet', ?, '2027-01-16T00:00:00.000Z', 'scheduled', 'pending',"
            " '1', 18, '[]', '0x', 0, 0)",
            (task["id"], TOKEN),
        )


def test_the_sqlite3_views_show_due_tasks_run_history_and_failed_transfers(
    conn: sqlite3.Connection, net: dict[str, MemoryNetwork]
) -> None:
    settings = dist_settings()
    now = time.time()
    due = run(service.create(conn, body(seed_task("due", cron="* * * * *")), net, settings,
                             actor="op", now=now - 120))  # fmt: skip
    run(service.create(conn, body(seed_task("later", cron="0 0 1 1 *")), net, settings,
                       actor="op", now=now))  # fmt: skip
    manual = run(service.create(conn, body(seed_task("m", type="manual")), net, settings,
                                actor="op", now=now))  # fmt: skip
    ran = run(service.execute(conn, manual["id"], net, settings, actor="op", now=now))
    first, second = f"{ran['id']}:0", f"{ran['id']}:1"
    state.transition(conn, TRANSFERS, first, "pending", "sent", actor="payer")
    state.transition(conn, TRANSFERS, first, "sent", "paid", actor="payer")
    state.transition(conn, TRANSFERS, second, "pending", "failed", actor="payer",
                     set_columns={"reason": "BlacklistedRecipient(0x…)"})  # fmt: skip
    assert [r["task_id"] for r in conn.execute("SELECT * FROM v_distribution_due_tasks")] == [
        due["id"]]  # fmt: skip
    (history,) = conn.execute("SELECT * FROM v_distribution_run_history").fetchall()
    assert (history["run_id"], history["recipients"], history["paid"], history["failed"],
            history["open"]) == (ran["id"], 2, 1, 1, 0)  # fmt: skip
    (failed,) = conn.execute("SELECT * FROM v_distribution_failed_transfers").fetchall()
    assert (failed["task_id"], failed["address"], failed["reason"]) == (
        "m", addr(1), "BlacklistedRecipient(0x…)")  # fmt: skip


def test_a_task_read_back_can_be_posted_again(
    conn: sqlite3.Connection, net: dict[str, MemoryNetwork]
) -> None:
    settings = dist_settings()
    task = seed_task("fees", type="conditional", schedule=None)
    task["condition"] = {"kind": "token_balance", "threshold": "5", "checks": 2}
    created = run(service.create(conn, body(task), net, settings, actor="op", now=NOW))
    copy = {**created, "id": "fees-2"}
    again = run(service.create(conn, body(copy), net, settings, actor="op", now=NOW))
    assert again["distribution"] == created["distribution"]
    assert again["condition"] == created["condition"] == {
        "kind": "token_balance", "threshold": "5", "checks": 2}  # fmt: skip


def test_hodlai_status_shows_the_distribution_under_its_switch(
    conn: sqlite3.Connection, db_path: Any, net: dict[str, MemoryNetwork]
) -> None:
    import subprocess
    import sys

    settings = dist_settings()
    task = run(service.create(conn, body(seed_task(type="manual")), net, settings, actor="op",
                              now=time.time()))  # fmt: skip
    ran = run(service.execute(conn, task["id"], net, settings, actor="op", now=time.time()))
    hours_ago = time.time() - 7200  # a run paused two hours ago: the source stays short
    state.transition(conn, RUNS, ran["id"], "pending", "running", actor="payer", now=hours_ago)
    state.transition(conn, RUNS, ran["id"], "running", "paused", actor="payer", now=hours_ago,
                     set_columns={"reason": "balance 0 < 1000"})  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "HODLAI_DB_PATH": str(db_path)}
    for switch, health in (("true", "problem"), ("false", "disabled")):
        shown = subprocess.run(
            [sys.executable, "-m", "shared.cli", "status", "--json"], capture_output=True,
            text=True, env={**env, "HODLAI_DIST_ENABLED": switch}, check=False, timeout=60,
        )  # fmt: skip
        executors = json.loads(shown.stdout)["executors"]
        assert "distribution" not in executors  # its machines count under "dist"
        dist = executors["dist"]
        assert (dist["enabled"], dist["health"]) == (switch == "true", health)
        assert dist["counts"]["distribution.run"]["paused"] == 1
        assert dist["runs_paused"] == 1 and dist["tasks"] == 1
        if switch == "true":
            assert ran["id"] in dist["problems"][0] and "balance 0 < 1000" in dist["problems"][0]
