"""The dispatcher's contract points as docs/API.md defines them, each against the strict mock
queue and scripted agents on loopback: the failure bodies' statuses and codes (the docs'
table is checked against what the queue received), the two shapes of "expired",
``no_agents``, a job with an outcome never run twice, a cancel for a call that hit its timeout.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.db import connect
from tests.dispatch_fixtures import TOKEN, World, job, outcomes, world  # noqa: F401 -- the fixture
from tests.test_dispatch import _job, _rows
from workers.dispatch import store
from workers.dispatch.mock.http import HttpServer, Response
from workers.dispatch.mock.queue import MockQueue

ROOT = Path(__file__).resolve().parent.parent
_FAILURE_ROW = re.compile(r"^\| `([A-Z]+)` \| `([a-z_]+)` \| (true|false) \|", re.M)


def _bodies(w: World) -> dict[str, tuple[str, str, bool]]:
    return {job_id: (o["body"]["status"], o["body"]["code"], o["body"]["retryable"])
            for job_id, o in outcomes(w).items() if o["kind"] == "failure"}  # fmt: skip


def _documented_failures() -> set[tuple[str, str, bool]]:
    text = (ROOT / "docs" / "API.md").read_text(encoding="utf-8")
    return {(s, c, r == "true") for s, c, r in _FAILURE_ROW.findall(text)}


def _cancel_once_running(w: World, job_id: str) -> None:
    conn = connect(w.db)
    try:
        row = conn.execute("SELECT status, cancel_requested_at FROM jobs WHERE job_id = ?",
                           (job_id,)).fetchone()  # fmt: skip
        if row is not None and row[0] == "IN_PROGRESS" and row[1] is None:
            store.request_cancel(conn, job_id, actor="operator:test", now=time.time())
    finally:
        conn.close()


def test_a_failure_body_has_status_failed_expired_or_cancelled_with_the_documented_codes(
    world: World,
) -> None:
    world.add_agents([{"name": "writer", "script": ["ok:5"] * 3}], category="summarize")
    world.add_agents([{"name": "broken", "error_rate": 1.0}], category="translate")
    world.add_agents([{"name": "slow", "script": ["ok:5000", "ok:5000"]}], category="classify")
    world.enqueue([
        job(1),
        {**job(2), "result_schema": {"type": 12}},
        {**job(3), "deadline": time.time() - 5},
        job(4, category="translate"),
        job(5, category="poetry"),
        job(6, category="classify", deadline_s=1.0),
        job(7, category="classify"),
    ])  # fmt: skip

    def done() -> bool:
        _cancel_once_running(world, "job-7")
        return len(outcomes(world)) == 7

    world.run_until(done, dispatch_execution_retry_count=1)
    got = _bodies(world)
    assert got == {
        "job-2": ("FAILED", "invalid_job", False),
        "job-3": ("FAILED", "expired", True),
        "job-4": ("FAILED", "agents_failed", True),
        "job-5": ("FAILED", "no_agents", True),
        "job-6": ("EXPIRED", "expired", True),
        "job-7": ("CANCELLED", "cancelled", False),
    }
    assert outcomes(world)["job-1"]["kind"] == "result"
    for job_id, (status, _code, _retryable) in got.items():
        assert _job(world, job_id)["status"] == status  # the body's status is the job's
    assert set(got.values()) == _documented_failures()  # docs/API.md lists exactly these
    assert "cancelled by operator:test" in outcomes(world)["job-7"]["body"]["reason"]


def test_expired_has_two_shapes_failed_at_fetch_never_dispatched_and_expired_in_flight(
    world: World,
) -> None:
    world.add_agents([{"name": "slow", "script": ["ok:5000"] * 2}])
    world.enqueue([{**job(1), "deadline": time.time() + 0.01}, job(2, deadline_s=0.8)])
    slow = world.agents["slow"]
    # no retry round left: the call timing out with the deadline must not read as agents_failed
    world.run_until(lambda: len(outcomes(world)) == 2 and slow.stats["cancels"] == 1,
                    dispatch_default_agent_timeout_s=30.0,
                    dispatch_execution_retry_count=0)  # fmt: skip
    at_fetch, in_flight = outcomes(world)["job-1"]["body"], outcomes(world)["job-2"]["body"]
    assert (at_fetch["status"], at_fetch["code"]) == ("FAILED", "expired")
    assert "before the job was fetched" in at_fetch["reason"]
    assert _job(world, "job-1")["rounds"] == 0 and _rows(world, "job-1") == {}
    assert (in_flight["status"], in_flight["code"]) == ("EXPIRED", "expired")
    assert in_flight["reason"].startswith("the deadline passed")
    row = _rows(world, "job-2")["slow"]
    assert (row["status"], row["outcome"]) == ("TIMEOUT", "timeout")
    assert row["cancel_sent_at"] is not None  # the agent may still be working: told to stop
    assert [c["job_id"] for c in world.agents["slow"].calls] == ["job-2"]


def test_no_agents_only_when_no_active_agent_meets_the_requirements_else_it_waits(
    world: World,
) -> None:
    world.add_agents([{"name": "english"}], tags=("en",), skill=5)
    world.add_agents([{"name": "sick", "healthy": False}], category="classify")
    world.enqueue([
        job(1, tags=("fr",)),
        {**job(2), "skill_level": 9},
        job(3, category="classify", deadline_s=1.0),
    ])  # fmt: skip
    started = time.monotonic()
    world.run_until(lambda: len(outcomes(world)) == 3, dispatch_rematch_s=0.1)
    got = {k: v["body"] for k, v in outcomes(world).items()}
    assert (got["job-1"]["status"], got["job-1"]["code"]) == ("FAILED", "no_agents")
    assert got["job-1"]["reason"] == (
        "no active agent offers category 'summarize', tags ['fr'], skill level >= 1"
        " (agents of that category left out: 1 tags)"
    )
    assert got["job-2"]["code"] == "no_agents" and "1 skill_level" in got["job-2"]["reason"]
    # a matching agent exists but is unhealthy: the job waits for it until its deadline
    assert (got["job-3"]["status"], got["job-3"]["code"]) == ("EXPIRED", "expired")
    assert got["job-3"]["reason"] == (
        "the deadline passed before any agent could take the job (1 health)"
    )
    assert time.monotonic() - started >= 0.9
    assert world.agents["sick"].stats["executes"] == 0
    assert world.agents["english"].stats["executes"] == 0


@dataclass
class _Queue(MockQueue):
    """The mock queue, made harder: acks refused (503), or a job with an outcome handed out
    again once (a queue breaking the contract)."""

    refuse_acks: bool = False
    reoffer_finished: bool = False
    reoffered: set[str] = field(default_factory=set)

    def _ack(self, body: dict[str, Any]) -> Response:
        if self.refuse_acks:
            self.stats["acks_refused"] += 1
            return Response(503, {"error": "unavailable", "message": "try later"})
        return super()._ack(body)

    def _fetch(self, body: dict[str, Any]) -> Response:
        for j in self.jobs.values():
            finished = j.state in ("completed", "failed") and j.visible_at <= self.clock()
            if self.reoffer_finished and finished and j.job_id not in self.reoffered:
                j.state = "leased"  # its lease expired: the parent hands it out
                self.reoffered.add(j.job_id)
        return super()._fetch(body)


def _swap_queue(w: World, queue: _Queue) -> None:
    server = HttpServer(queue.handle)
    w.thread.run(server.start())
    w.servers.append(server)
    w.queue, w.queue_url = queue, server.url


def test_a_job_with_an_outcome_is_not_handed_out_again_even_unacknowledged(
    world: World,
) -> None:
    _swap_queue(world, _Queue(TOKEN, refuse_acks=True))
    world.add_agents([{"name": "quick", "script": ["ok:5"] * 3}])
    world.enqueue([job(1)])
    finished: list[float] = []
    # Hand-outs by the time the outcome was posted. On a loaded box the queue may hand the
    # un-acknowledged job out again before the outcome exists (its visibility is 0.2 s); what
    # the contract says is that once it has an outcome it is never handed out again, and
    # that the dispatcher never runs it twice.
    handed_at_outcome: list[int] = []

    def done() -> bool:  # the outcome, then at least three visibility windows more
        if outcomes(world) and not finished:
            finished.append(time.monotonic())
            handed_at_outcome.append(world.queue.stats["handed_out"])
        return bool(finished) and time.monotonic() - finished[0] > 0.9

    world.run_until(done, dispatch_visibility_s=0.2)
    queued = world.queue.jobs["job-1"]
    assert world.queue.stats["acks_refused"] >= 1 and queued.state == "completed"
    assert world.queue.stats["handed_out"] == handed_at_outcome[0] == queued.deliveries
    assert world.agents["quick"].stats["executes"] == 1


def test_a_decided_job_handed_out_again_is_acknowledged_and_never_run_twice(
    world: World,
) -> None:
    queue = _Queue(TOKEN, reoffer_finished=True)
    _swap_queue(world, queue)
    world.add_agents([{"name": "quick", "script": ["ok:5"] * 3}])
    world.enqueue([job(1)])
    world.run_until(lambda: bool(queue.reoffered) and queue.jobs["job-1"].state == "acked",
                    dispatch_visibility_s=0.2)  # fmt: skip
    assert queue.stats["handed_out"] == 2 and queue.stats["acks"] == 2
    assert world.agents["quick"].stats["executes"] == 1
    assert queue.stats["second_deliveries"] == queue.stats["replays"] == 0
    row = _job(world, "job-1")
    assert (row["status"], row["queue_deliveries"]) == ("COMPLETED", 1)


def test_a_call_that_hits_its_timeout_is_sent_a_cancel(world: World) -> None:
    world.add_agents([{"name": "sleeper", "hang_rate": 1.0}])
    world.enqueue([job(1)])
    world.run_until(
        lambda: bool(outcomes(world)) and world.agents["sleeper"].stats["cancels"] == 1,
        dispatch_default_agent_timeout_s=0.3, dispatch_execution_retry_count=0,
    )  # fmt: skip
    row = _rows(world, "job-1")["sleeper"]
    assert (row["status"], row["outcome"]) == ("TIMEOUT", "timeout")
    assert row["cancel_sent_at"] is not None and row["cancel_sent_at"] >= row["started_at"] + 0.25
    # the agent was still working on it when the cancel came
    assert world.agents["sleeper"].stats["cancels_in_flight"] == 1
