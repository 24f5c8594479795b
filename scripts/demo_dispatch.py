"""The dispatcher's part of ``make demo`` (also ``python -m scripts.demo_dispatch``).

A strict mock queue with 100 jobs (two of them invalid) and 8 mock agents (five quick, one
slow, one failing, one hanging), registered in the node's database. ``make demo``
(scripts/demo.py) runs the dispatcher under the node's one honcho, on the oracle's database
(:func:`prepare`, :func:`dispatcher_env`, :func:`wait`, :func:`report`); run alone, this
module starts one ``hodlai dispatcher`` process on a database of its own (:func:`run`).
Either way it shows live job counts from the database, then the agent statistics table, and
succeeds only when every job reached the queue exactly once (completed or failed with its
reason), the queue saw no second delivery, and at least 90 % of the valid jobs completed.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shared.db import connect
from shared.logs import configure_logging
from workers.dispatch import agents as registry
from workers.dispatch import stats
from workers.dispatch.mock.agents import start_agents
from workers.dispatch.mock.http import HttpServer, ServerThread
from workers.dispatch.mock.queue import CATEGORIES, MockQueue, generate_jobs

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "demo-queue-token"
JOBS = 98  # plus 2 invalid ones: 100
TOTAL = JOBS + 2
# Seconds the demo waits for every job to reach the queue once the dispatcher runs.
TIMEOUT_S = 90.0
# Seconds from the jobs' creation to their deadline: the whole node's start (the embedded
# model loads in two shards on the same cores) comes first under make demo.
DEADLINE_S = 180.0
AGENTS = (
    *({"name": f"quick-{i}", "latency": [[0.9, 60, 20], [0.1, 400, 100]], "seed": i}
      for i in range(5)),
    {"name": "slow", "latency": [[1.0, 1500, 300]], "late_after_cancel": True},
    {"name": "failing", "error_rate": 0.6, "garbage_rate": 0.2, "invalid_rate": 0.2},
    {"name": "hanging", "hang_rate": 1.0},
)  # fmt: skip
DESCRIPTION = (
    f"mock queue with {TOTAL} jobs, {len(AGENTS)} agents (5 quick, 1 slow, 1 failing, "
    "1 hanging); 'classify' is hedged"
)


@dataclass
class DispatchPart:
    """The mock queue and agents, serving from a thread of their own."""

    queue: MockQueue
    server: HttpServer
    thread: ServerThread
    agent_servers: list[HttpServer]

    def done(self) -> int:
        """Jobs whose outcome the queue has accepted."""
        return int(self.queue.stats["completed"] + self.queue.stats["failed"])

    def stop(self) -> None:
        self.thread.stop([self.server, *self.agent_servers])


def prepare(db: Path) -> DispatchPart:
    """Start the mock queue and agents and register the agents in ``db`` (created and
    migrated when it does not exist yet, as ``hodlai agents register`` does)."""
    thread = ServerThread()
    queue = MockQueue(TOKEN)
    queue.add(generate_jobs(JOBS, invalid=2, deadline_s=DEADLINE_S, seed=4))
    server = HttpServer(queue.handle)
    thread.run(server.start())
    started = thread.run(start_agents(list(AGENTS)))
    conn = connect(db)
    try:
        for agent, agent_server in started:
            for category in CATEGORIES:
                registry.register(conn, registry.AgentSpec(
                    agent_id=f"{agent.name}:{category}", name=f"{agent.name}:{category}",
                    endpoint=f"{agent_server.url}/{category}", category=category,
                    tags=["en", "fr"], skill_level=5), actor="demo")  # fmt: skip
    finally:
        conn.close()
    return DispatchPart(queue, server, thread, [s for _, s in started])


def dispatcher_env(part: DispatchPart) -> dict[str, str]:
    """The dispatcher's settings for this demo (the seed's names for the queue)."""
    return {
        "HODLAI_DISPATCH_ENABLED": "true", "REMOTE_QUEUE_URL": part.server.url,
        "REMOTE_QUEUE_TOKEN": TOKEN, "HODLAI_DISPATCH_DEFAULT_AGENT_TIMEOUT_S": "3",
        "HODLAI_DISPATCH_HEDGED_CATEGORIES": "classify", "HODLAI_DISPATCH_FETCH_BATCH": "10",
    }  # fmt: skip


def wait(part: DispatchPart, db: Path, alive: Callable[[], bool]) -> None:
    """Live job counts until every job reached the queue, the time is up or ``alive`` says
    the dispatcher is gone."""
    tty = sys.stdout.isatty()
    began = time.monotonic()
    while time.monotonic() - began < TIMEOUT_S and alive():
        _show(db, began, part.done(), tty)
        if part.done() >= TOTAL:
            break
        time.sleep(0.5)
    time.sleep(0.5)
    _show(db, began, part.done(), tty)
    print()


def report(part: DispatchPart, db: Path) -> bool:
    """The agent statistics and the queue's count; True when the part did its job."""
    view = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    view.row_factory = sqlite3.Row
    try:
        print(stats.render_table(stats.collect(view)))
    finally:
        view.close()
    snap = part.queue.snapshot()
    ok = (snap["completed"] + snap["failed"] == TOTAL and snap["second_deliveries"] == 0
          and snap["completed"] >= JOBS * 0.9)  # fmt: skip
    print(f"== queue: {snap['completed']} completed, {snap['failed']} failed, "
          f"{snap['second_deliveries']} second deliveries: "
          f"{'every job delivered exactly once' if ok else 'NOT as expected'}")  # fmt: skip
    print(f"   try: HODLAI_DB_PATH={db} hodlai dispatch stats")
    return ok


def run(workdir: Path) -> bool:
    """The dispatcher alone: its own database, its own ``hodlai dispatcher`` process."""
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "dispatch.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    configure_logging("WARNING")  # the printout is the demo's; the processes keep their logs
    part = prepare(db)
    env = {**os.environ, **dispatcher_env(part), "HODLAI_DB_PATH": str(db),
           "LOG_LEVEL": "WARNING"}  # fmt: skip
    print(f"== dispatcher: {DESCRIPTION}")
    log = (workdir / "dispatcher.log").open("ab")
    process = subprocess.Popen([sys.executable, "-m", "shared.cli", "dispatcher"], env=env,
                               cwd=ROOT, stderr=log)  # fmt: skip
    try:
        wait(part, db, lambda: process.poll() is None)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    try:
        return report(part, db)
    finally:
        part.stop()


def _show(db: Path, began: float, done: int, tty: bool) -> None:
    try:
        view = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        counts = dict(
            view.execute("SELECT status, n FROM state_counts WHERE machine = 'dispatch.job'")
        )
        view.close()
    except sqlite3.Error:
        return
    line = f"t={time.monotonic() - began:5.1f}s  " + "  ".join(
        f"{s} {counts.get(s, 0):>3}" for s in
        ("OPEN", "DISTRIBUTED", "IN_PROGRESS", "COMPLETED", "FAILED", "EXPIRED")
    ) + f"   ({done}/{TOTAL} at the queue)"  # fmt: skip
    print(("\r" + line) if tty else line, end="" if tty else "\n", flush=True)


if __name__ == "__main__":
    sys.exit(0 if run(ROOT / ".devnet" / "demo-dispatch") else 1)
