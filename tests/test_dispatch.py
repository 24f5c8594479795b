"""The dispatcher against real loopback servers: the strict mock queue and scripted agents
(latencies, 500s, garbage, hangs, results outside the schema, results after a cancel)."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from shared.db import connect
from tests.dispatch_fixtures import World, job, outcomes, world  # noqa: F401 -- the fixture
from workers.dispatch import stats, views
from workers.dispatch.breaker import Breaker


def _rows(w: World, job_id: str) -> dict[str, sqlite3.Row]:
    conn = connect(w.db)
    rows = conn.execute("SELECT * FROM job_distribution_agents WHERE job_id = ?", (job_id,))
    out = {r["agent_id"]: r for r in rows}
    conn.close()
    return out


def _job(w: World, job_id: str) -> sqlite3.Row:
    conn = connect(w.db)
    row = conn.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    conn.close()
    return row  # type: ignore[no-any-return]


def _late_recorded(w: World, job_id: str, agent: str) -> bool:
    row = _rows(w, job_id).get(agent)
    return row is not None and row["late_at"] is not None


def test_the_first_valid_result_wins_cancels_are_sent_and_a_late_result_never_replaces_it(
    world: World,
) -> None:
    world.add_agents([
        {"name": "garbler", "script": ["garbage:5"]},
        {"name": "outsider", "script": ["invalid:10"]},
        {"name": "winner", "script": ["ok:120"]},
        {"name": "straggler", "script": ["ok:400"], "late_after_cancel": True},
    ])  # fmt: skip
    world.enqueue([job(1)])
    world.run_until(
        lambda: bool(outcomes(world)) and _late_recorded(world, "job-1", "straggler"),
        dispatch_max_agents_per_job=4,
    )  # fmt: skip
    outcome = outcomes(world)["job-1"]
    assert outcome["kind"] == "result"
    assert outcome["body"]["agent_id"] == "winner"
    assert outcome["body"]["result"]["answer"] == "winner:job-1"
    rows = _rows(world, "job-1")
    assert (rows["winner"]["status"], rows["winner"]["outcome"], rows["winner"]["won"]) == (
        "COMPLETED", "won", 1)  # fmt: skip
    assert (rows["garbler"]["status"], rows["garbler"]["outcome"]) == ("FAILED", "error")
    assert "not JSON" in rows["garbler"]["error"]
    assert (rows["outsider"]["status"], rows["outsider"]["outcome"]) == ("FAILED", "invalid")
    assert "outside the job's schema" in rows["outsider"]["error"]
    late = rows["straggler"]
    assert (late["status"], late["outcome"], late["late_outcome"]) == (
        "CANCELLED", "cancelled", "valid")  # fmt: skip
    assert late["cancel_sent_at"] is not None
    assert late["late_latency_ms"] > rows["winner"]["latency_ms"]
    assert world.agents["straggler"].stats["cancels"] == 1  # the cancel was sent
    assert world.agents["straggler"].stats["late_answers"] == 1
    stored = _job(world, "job-1")
    assert (stored["status"], stored["winner_agent_id"]) == ("COMPLETED", "winner")
    assert stored["delivered_at"] is not None
    assert world.queue.stats["second_deliveries"] == 0


def test_a_hanging_agent_times_out_and_the_job_fails_back_with_the_reason(
    world: World,
) -> None:
    world.add_agents([{"name": "sleeper", "hang_rate": 1.0}])
    world.enqueue([job(1)])
    world.run_until(lambda: bool(outcomes(world)), dispatch_default_agent_timeout_s=0.3,
                    dispatch_execution_retry_count=0)  # fmt: skip
    outcome = outcomes(world)["job-1"]
    assert outcome["kind"] == "failure"
    assert outcome["body"]["code"] == "agents_failed"
    assert outcome["body"]["retryable"] is True
    assert "sleeper: no answer within 0.3" in outcome["body"]["reason"]
    row = _rows(world, "job-1")["sleeper"]
    assert (row["status"], row["outcome"]) == ("TIMEOUT", "timeout")
    assert 250 <= row["latency_ms"] < 1500


def test_when_every_agent_fails_the_next_ranked_agents_get_the_job(world: World) -> None:
    world.add_agents([{"name": "broken", "error_rate": 1.0}], reputation=0.9)
    world.add_agents([{"name": "spare", "script": ["ok:5"]}], reputation=0.1)
    world.enqueue([job(1)])
    world.run_until(lambda: bool(outcomes(world)), dispatch_max_agents_per_job=1)
    assert outcomes(world)["job-1"]["body"]["agent_id"] == "spare"
    rows = _rows(world, "job-1")
    assert (rows["broken"]["round"], rows["broken"]["status"]) == (0, "FAILED")
    assert (rows["spare"]["round"], rows["spare"]["status"]) == (1, "COMPLETED")
    assert _job(world, "job-1")["retries"] == 1


def test_the_retry_budget_is_execution_retry_count_rounds(world: World) -> None:
    world.add_agents([{"name": f"broken{i}", "error_rate": 1.0} for i in range(5)])
    world.enqueue([job(1)])
    world.run_until(lambda: bool(outcomes(world)), dispatch_max_agents_per_job=1,
                    dispatch_execution_retry_count=2)  # fmt: skip
    assert outcomes(world)["job-1"]["body"]["code"] == "agents_failed"
    assert len(_rows(world, "job-1")) == 3  # the first round and two retries, one agent each
    assert sum(a.stats["executes"] for a in world.agents.values()) == 3


def test_a_job_past_its_deadline_expires_with_its_calls_timed_out(world: World) -> None:
    world.add_agents([{"name": "slow", "script": ["ok:5000"]}])
    world.enqueue([job(1, deadline_s=0.6)])
    world.run_until(lambda: bool(outcomes(world)), dispatch_default_agent_timeout_s=30.0)
    outcome = outcomes(world)["job-1"]
    assert (outcome["kind"], outcome["body"]["code"], outcome["body"]["status"]) == (
        "failure", "expired", "EXPIRED")  # fmt: skip
    row = _rows(world, "job-1")["slow"]
    assert row["status"] == "TIMEOUT"
    assert _job(world, "job-1")["status"] == "EXPIRED"


def test_an_invalid_job_is_failed_back_with_the_reason_and_never_dispatched(
    world: World,
) -> None:
    world.add_agents([{"name": "worker", "script": ["ok:5"] * 10}])
    bad = [
        {**job(1), "deadline": time.time() - 10},
        {**job(2), "result_schema": {"type": 12}},
        {**job(3), "tags": "en"},
        {k: v for k, v in job(4).items() if k != "deadline"},
        {**job(5), "deadline": (time.time() + 60) * 1000},  # milliseconds, not seconds
    ]
    world.enqueue([*bad, job(6)])
    world.run_until(lambda: len(outcomes(world)) == 6)
    got = outcomes(world)
    assert got["job-6"]["kind"] == "result"
    reasons = {k: (v["body"]["code"], v["body"]["reason"]) for k, v in got.items() if k != "job-6"}
    assert reasons["job-1"][0] == "expired" and "deadline passed" in reasons["job-1"][1]
    assert reasons["job-2"][0] == "invalid_job" and "not a valid JSON Schema" in reasons["job-2"][1]
    assert "tags must be a list" in reasons["job-3"][1]
    assert "deadline (unix seconds) is missing" in reasons["job-4"][1]
    assert "milliseconds instead of seconds" in reasons["job-5"][1]
    assert {c["job_id"] for c in world.agents["worker"].calls} == {"job-6"}  # never dispatched
    for n in range(1, 6):
        row = _job(world, f"job-{n}")
        assert (row["status"], row["rounds"]) == ("FAILED", 0)
        assert _rows(world, f"job-{n}") == {}


def test_the_breaker_opens_after_consecutive_failures_and_half_opens_for_one_probe() -> None:
    breaker = Breaker(threshold=2, cooldown_s=10.0)
    breaker.failed(now=0.0)
    assert breaker.state == "closed" and breaker.available(1.0)
    breaker.failed(now=1.0)
    assert breaker.state == "open" and not breaker.available(5.0)
    assert breaker.shown(11.5) == "half_open"
    assert breaker.reserve(11.5) is True  # the one probe
    assert breaker.reserve(11.6) is False  # nobody else while it is out
    breaker.failed(now=12.0)  # the probe failed: open for another cool-down
    assert not breaker.available(20.0) and breaker.available(22.1)
    assert breaker.reserve(22.1)
    breaker.succeeded()
    assert breaker.state == "closed" and breaker.reserve(22.2) and breaker.reserve(22.3)


def test_an_open_breaker_keeps_the_agent_out_until_its_probe_succeeds(world: World) -> None:
    world.add_agents([{"name": "flaky", "script": ["error", "error", "ok:5"]}])
    world.enqueue([job(1), job(2), job(3)])
    world.run_until(
        lambda: len(outcomes(world)) == 3,
        dispatch_max_agents_per_job=1, dispatch_execution_retry_count=0,
        dispatch_breaker_failures=2, dispatch_breaker_cooldown_s=1.0, dispatch_rematch_s=0.1,
        dispatch_max_in_flight=1,
    )  # fmt: skip
    calls = world.agents["flaky"].calls
    assert [c["kind"] for c in calls] == ["error", "error", "ok"]
    assert outcomes(world)["job-3"]["kind"] == "result"
    conn = connect(world.db)
    agent = conn.execute("SELECT * FROM agents WHERE agent_id = 'flaky'").fetchone()
    assert (agent["breaker"], agent["consecutive_failures"]) == ("closed", 0)
    trail = conn.execute(
        "SELECT started_at FROM job_distribution_agents ORDER BY started_at"
    ).fetchall()
    # the third call (the probe) waited out the cool-down after the breaker opened
    assert trail[2][0] - trail[1][0] >= 0.9


def test_statistics_match_a_scripted_run_exactly(world: World) -> None:
    world.add_agents([
        {"name": "alpha", "script": ["ok:10", "error", "ok:150"]},
        {"name": "beta", "script": ["ok:300", "ok:40", "invalid:5"]},
    ])  # fmt: skip
    world.enqueue([job(1), job(2), job(3)])
    world.run_until(lambda: len(outcomes(world)) == 3 and _settled(world),
                    dispatch_max_agents_per_job=2, dispatch_max_in_flight=1,
                    dispatch_fetch_batch=1)  # fmt: skip
    winners = [outcomes(world)[f"job-{n}"]["body"]["agent_id"] for n in (1, 2, 3)]
    assert winners == ["alpha", "beta", "alpha"]
    conn = connect(world.db)
    figures = stats.collect(conn)
    by_agent = {a["agent_id"]: a for a in figures["agents"]}
    # alpha: won job 1 and job 3, failed job 2.  beta: cancelled (acknowledged) in job 1,
    # won job 2, answered outside the schema in job 3.
    expected: dict[str, dict[str, Any]] = {
        "alpha": {"calls": 3, "successes": 2, "errors": 1, "timeouts": 0, "wins": 2,
                  "late_results": 0, "success_rate": round(2 / 3, 6)},
        "beta": {"calls": 3, "successes": 1, "errors": 1, "timeouts": 0, "wins": 1,
                 "late_results": 0, "success_rate": 0.5},
    }  # fmt: skip
    for agent, want in expected.items():
        assert {k: by_agent[agent][k] for k in want} == want
        row = conn.execute("SELECT * FROM agents WHERE agent_id = ?", (agent,)).fetchone()
        assert {k: row[k] for k in want if k != "success_rate"} == {
            k: v for k, v in want.items() if k != "success_rate"
        }  # the counters kept on every completion agree with the rows
    latencies = sorted(
        r[0] for r in conn.execute(
            "SELECT latency_ms FROM job_distribution_agents WHERE agent_id = 'alpha' AND won = 1")
    )  # fmt: skip
    assert by_agent["alpha"]["latency_p50_ms"] == latencies[0]
    assert by_agent["alpha"]["latency_p95_ms"] == latencies[1]
    assert 10 <= latencies[0] < 100 and 150 <= latencies[1] < 400
    (category,) = figures["categories"]
    assert (category["category"], category["calls"], category["wins"]) == ("summarize", 6, 3)
    assert figures["jobs"]["COMPLETED"] == 3 and figures["deliveries"]["pending"] == 0


def _settled(w: World) -> bool:
    conn = connect(w.db)
    try:
        open_rows = conn.execute(
            "SELECT COUNT(*) FROM job_distribution_agents WHERE status IN ('IDLE','ASSIGNED',"
            "'WORKING') OR (status = 'CANCELLED' AND outcome = 'cancelled' AND late_at IS NULL)"
        ).fetchone()[0]
        return bool(open_rows == 0)
    finally:
        conn.close()


def test_hedged_mode_calls_the_backup_only_after_the_categorys_delay(world: World) -> None:
    world.add_agents([{"name": "first", "script": ["ok:600", "ok:5"]}], reputation=0.9)
    world.add_agents([{"name": "second", "script": ["ok:20"]}], reputation=0.1)
    world.enqueue([job(1)])
    world.run_until(lambda: bool(outcomes(world)), dispatch_hedged_categories="summarize",
                    dispatch_hedge_initial_delay_ms=150.0)  # fmt: skip
    assert outcomes(world)["job-1"]["body"]["agent_id"] == "second"
    rows = _rows(world, "job-1")
    assert (rows["first"]["role"], rows["second"]["role"]) == ("primary", "hedge")
    assert 0.14 <= rows["second"]["started_at"] - rows["first"]["started_at"] < 0.5
    world.enqueue([job(2)])  # a fast primary: the backup is never called
    world.run_until(lambda: len(outcomes(world)) == 2, dispatch_hedged_categories="*",
                    dispatch_hedge_initial_delay_ms=150.0)  # fmt: skip
    rows = _rows(world, "job-2")
    assert rows["first"]["won"] == 1
    assert (rows["second"]["status"], rows["second"]["outcome"]) == ("CANCELLED", "not_called")
    assert len(world.agents["second"].calls) == 1


def test_without_a_crash_every_outcome_is_posted_once_not_replayed(world: World) -> None:
    # The delivery sweep runs every 10 ms here: it must leave outcomes whose first post is
    # still under way to the task that decided them (a replay is harmless, but double load).
    world.add_agents([{"name": f"quick{i}", "latency": [[1.0, 20, 10]], "seed": i}
                      for i in range(6)])  # fmt: skip
    world.enqueue([job(n) for n in range(300)])
    world.run_until(lambda: len(outcomes(world)) == 300, dispatch_delivery_retry_s=0.01)
    assert world.queue.stats["replays"] == 0
    assert world.queue.stats["second_deliveries"] == 0


def test_a_huge_answer_outside_the_schema_is_stored_readably(world: World) -> None:
    world.add_agents([{"name": "verbose", "script": ["ok:5"]}])
    schema = {"type": "object", "required": ["answer"],
              "properties": {"answer": {"type": "string", "maxLength": 10}}}  # fmt: skip
    world.enqueue([{**job(1, schema=schema), "input": {"text": "x"}}])
    # the mock answers "verbose:job-1" (13 characters): outside the schema; make it huge
    world.agents["verbose"].name = "v" * 100_000
    world.run_until(lambda: bool(outcomes(world)), dispatch_execution_retry_count=0)
    conn = connect(world.db)
    detail = views.job_detail(conn, "job-1")
    (row,) = detail["agents"]
    assert row["outcome"] == "invalid"
    assert row["result"]["truncated"] is True and row["result"]["chars"] > 100_000
