"""SIGKILL chaos: ``hodlai dispatcher`` as a real process, killed at random moments and
started again, while the strict mock queue counts every delivery. Every job must reach the
queue completed or failed exactly once, with zero second deliveries."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.db import connect
from tests.dispatch_fixtures import TOKEN, World, job, outcomes, world  # noqa: F401 -- the fixture

ROOT = Path(__file__).resolve().parent.parent


def _start(w: World, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HODLAI_DB_PATH": str(w.db), "REMOTE_QUEUE_URL": w.queue_url,
           "REMOTE_QUEUE_TOKEN": TOKEN, "HODLAI_DISPATCH_DEFAULT_AGENT_TIMEOUT_S": "1.5",
           "HODLAI_DISPATCH_POLL_IDLE_S": "0.05", "HODLAI_DISPATCH_FETCH_BATCH": "20",
           "HODLAI_DISPATCH_HEDGED_CATEGORIES": "translate", "LOG_LEVEL": "INFO"}  # fmt: skip
    return subprocess.Popen([sys.executable, "-m", "shared.cli", "dispatcher"], env=env,
                            cwd=ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT)  # fmt: skip


def _chaos(w: World, tmp_path: Path, jobs: int, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    specs = [{"name": f"fast{i}", "latency": [[0.9, 30, 10], [0.1, 600, 100]], "seed": i}
             for i in range(4)]  # fmt: skip
    specs += [{"name": "late", "latency": [[1, 80, 20]], "late_after_cancel": True},
              {"name": "broken", "error_rate": 0.7, "garbage_rate": 0.3},
              {"name": "sleeper", "hang_rate": 1.0}]  # fmt: skip
    w.add_agents(specs, category="summarize")
    w.add_agents([{**s, "name": f"{s['name']}-t"} for s in specs], category="translate")
    w.enqueue([job(n, category=("summarize", "translate")[n % 2], deadline_s=60)
               for n in range(jobs)])  # fmt: skip
    log = tmp_path / "dispatcher.log"
    process = _start(w, log)
    try:
        for _ in range(kills):
            time.sleep(rng.uniform(0.4, 1.5))
            process.send_signal(signal.SIGKILL)
            process.wait()
            process = _start(w, log)
        deadline = time.monotonic() + 90
        while len(outcomes(w)) < jobs and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)  # a last re-post would show as a second delivery
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    got = outcomes(w)
    assert len(got) == jobs, f"{len(got)} of {jobs} reached the queue; see {log}"
    assert w.queue.stats["second_deliveries"] == 0
    assert w.queue.stats["completed"] + w.queue.stats["failed"] == jobs
    conn = connect(w.db)
    open_jobs = conn.execute(
        "SELECT COUNT(*) FROM jobs WHERE delivered_at IS NULL OR status NOT IN"
        " ('COMPLETED','FAILED','EXPIRED','CANCELLED')"
    ).fetchone()[0]
    assert open_jobs == 0
    for job_id, outcome in got.items():  # the queue holds what the database decided
        row = conn.execute("SELECT status, delivery_key, winner_agent_id FROM jobs WHERE"
                           " job_id = ?", (job_id,)).fetchone()  # fmt: skip
        assert outcome["key"] == row["delivery_key"]
        if outcome["kind"] == "result":
            assert row["status"] == "COMPLETED"
            assert outcome["body"]["agent_id"] == row["winner_agent_id"]
    conn.close()


def test_sigkilled_dispatchers_deliver_every_job_exactly_once(world: World, tmp_path: Path) -> None:
    _chaos(world, tmp_path, jobs=100, kills=3, seed=1)


@pytest.mark.slow
def test_500_jobs_with_random_sigkills_deliver_each_exactly_once(
    world: World, tmp_path: Path
) -> None:
    _chaos(world, tmp_path, jobs=500, kills=8, seed=2)
