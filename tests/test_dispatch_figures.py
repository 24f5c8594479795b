"""Figures an operator reads without misreading them: calls cut off by a restart and answers
that merely crossed our cancel are counted apart, a new agent takes calls only after a passing
health check, and every figure's meaning is shown where the figure is (CLI table, API docs)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from shared.db import connect
from tests.dispatch_fixtures import World, job, outcomes, world  # noqa: F401 -- the fixture
from tests.test_dispatch import _rows
from workers.dispatch import matcher, stats, store
from workers.dispatch.book import AgentBook, AgentInfo
from workers.dispatch.jobs import parse_envelope, validate

ROOT = Path(__file__).resolve().parent.parent


def _figures(w: World) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    conn = connect(w.db)
    try:
        by_agent = {a["agent_id"]: a for a in stats.collect(conn)["agents"]}
        rows = {r["agent_id"]: dict(r) for r in conn.execute("SELECT * FROM agents")}
    finally:
        conn.close()
    return by_agent, rows


def test_an_answer_that_crossed_the_cancel_is_not_a_late_result(world: World) -> None:
    world.add_agents([{"name": "winner", "script": ["ok:100"]}], reputation=0.9)
    # its answer (250 ms) comes before it acknowledges the cancel (600 ms after it was sent)
    world.add_agents([{"name": "crosser", "script": ["ok:250"], "cancel_delay_ms": 600}])
    # acknowledges the cancel at once, then answers anyway
    world.add_agents([{"name": "ignorer", "script": ["ok:400"], "late_after_cancel": True}])
    world.enqueue([job(1)])

    def late_rows() -> int:
        return sum(r["late_at"] is not None for r in _rows(world, "job-1").values())

    world.run_until(lambda: bool(outcomes(world)) and late_rows() == 2)
    assert outcomes(world)["job-1"]["body"]["agent_id"] == "winner"
    rows = _rows(world, "job-1")
    assert (rows["crosser"]["late_outcome"], rows["crosser"]["late_crossed"]) == ("valid", 1)
    assert (rows["ignorer"]["late_outcome"], rows["ignorer"]["late_crossed"]) == ("valid", 0)
    by_agent, counters = _figures(world)
    for name, late, crossed in (("crosser", 0, 1), ("ignorer", 1, 0), ("winner", 0, 0)):
        want = {"late_results": late, "crossed_cancel": crossed, "successes": 1, "calls": 1}
        assert {k: by_agent[name][k] for k in want} == want
        assert {k: counters[name][k] for k in want} == want  # the registry's counters agree


def _leave_an_orphan(w: World, body: dict[str, Any], agent_id: str) -> None:
    """What a SIGKILLed dispatcher leaves: the job IN_PROGRESS under a dead owner's lease and
    its call WORKING."""
    now = time.time()
    fetched = validate(parse_envelope({"id": body["id"], "receipt": "r0", "job": body}),
                       now=now, max_deadline_s=86_400.0, max_input_bytes=1 << 20)  # fmt: skip
    conn = connect(w.db)
    dead, actor = "dispatcher:dead", "dispatcher"
    store.record_fetched(conn, [fetched], [], owner=dead, lease_s=60.0, actor=actor, now=now)
    (work_id,) = store.begin_round(
        conn, {"job_id": fetched.job_id, "category": fetched.category}, frm="OPEN", round_no=0,
        retries=0, planned=[store.Planned(agent_id, 0, 0.5, "concurrent", "ASSIGNED")],
        explain={}, mode="concurrent", max_agents=3, hedge_delay_ms=None, owner=dead,
        lease_until=now + 60, actor=actor, now=now,
    )  # fmt: skip
    store.start_calls(conn, fetched.job_id, [(work_id, "ASSIGNED")], job_from="DISTRIBUTED",
                      owner=dead, lease_until=now + 60, actor=actor, now=now)  # fmt: skip
    conn.close()


def test_a_call_cut_off_by_a_restart_is_counted_apart_from_calls(world: World) -> None:
    world.add_agents([{"name": "solo", "script": ["ok:5"]}])
    body = job(1)
    _leave_an_orphan(world, body, "solo")
    world.enqueue([body])  # the queue hands it out again: recognised, acknowledged
    solo = world.agents["solo"]
    world.run_until(lambda: bool(outcomes(world)) and solo.stats["cancels"] == 1)
    assert outcomes(world)["job-1"]["body"]["agent_id"] == "solo"
    rounds = sorted((r["round"], r["outcome"]) for r in _rows_all(world, "job-1"))
    assert rounds == [(0, "orphaned"), (1, "won")]
    by_agent, counters = _figures(world)
    want = {"calls": 1, "cut_off": 1, "wins": 1, "successes": 1, "errors": 0, "timeouts": 0}
    assert {k: by_agent["solo"][k] for k in want} == want
    assert {k: counters["solo"][k] for k in want} == want  # the registry's counters agree
    assert solo.stats["executes"] == 1  # the cut-off call never reached it here


def _rows_all(w: World, job_id: str) -> list[Any]:
    conn = connect(w.db)
    try:
        return conn.execute(
            "SELECT round, outcome FROM job_distribution_agents WHERE job_id = ?", (job_id,)
        ).fetchall()
    finally:
        conn.close()


def test_an_agent_registered_while_running_takes_calls_only_after_a_passing_check(
    world: World,
) -> None:
    world.add_agents([{"name": "steady", "script": ["ok:5"] * 200}], reputation=0.1)
    world.enqueue([job(0)])
    sent = [1]

    def done() -> bool:
        if sent[0] == 1 and outcomes(world):
            # its first health check takes 0.5 s: jobs keep coming meanwhile
            world.add_agents([{"name": "fresh", "script": ["ok:5"] * 200,
                               "health_delay_ms": 500}], reputation=0.9)  # fmt: skip
        if sent[0] < 60 and "fresh" in world.agents and len(world.agents["fresh"].calls) < 3:
            world.enqueue([job(sent[0])])  # a steady stream: fresh would get one if it could
            sent[0] += 1
        return (
            len(outcomes(world)) == sent[0]
            and len(world.agents.get("fresh", []) and world.agents["fresh"].calls) >= 3
        )

    world.run_until(done, dispatch_health_interval_s=3600.0)  # only the first-check path
    fresh = world.agents["fresh"]
    assert fresh.health_at, "fresh was never health-checked"
    assert fresh.calls[0]["at"] > fresh.health_at[0]
    assert len(world.agents["steady"].calls) >= 2  # jobs went on meanwhile


def test_an_agent_not_yet_checked_or_failing_its_check_is_left_out_of_matching() -> None:
    book = AgentBook(half_life_s=3600.0, breaker_failures=5, breaker_cooldown_s=30.0)
    for name, health in (("new", "unknown"), ("sick", "failing"), ("fine", "ok")):
        book.agents[name] = AgentInfo(name, name, f"http://127.0.0.1/{name}", "summarize",
                                      frozenset(), 0, 0.5, health)  # fmt: skip
    ranking = matcher.rank(book, category="summarize", tags=(), skill_level=0, now=0.0)
    assert [s.agent.agent_id for s in ranking.eligible] == ["fine"]
    assert ranking.excluded == {"new": "unchecked", "sick": "health"}
    assert ranking.could_take()


def test_every_figure_has_its_meaning_under_the_cli_table_and_in_the_api_docs() -> None:
    figures = {"agents": [{"agent_id": "a", "name": "a", **dict.fromkeys(stats.MEANINGS, 0),
                           "success_rate": None, "latency_p50_ms": None,
                           "latency_p95_ms": None}]}  # fmt: skip
    table = " ".join(stats.render_table(figures).split())  # the legend is wrapped
    docs = (ROOT / "docs" / "API.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \| ", docs, re.M))
    for name, meaning in stats.MEANINGS.items():
        assert f" {name}: {meaning}" in table
        assert name in documented, f"{name} is not in docs/API.md's table of figures"
