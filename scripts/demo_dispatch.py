"""The dispatcher's part of ``make demo`` (also ``python -m scripts.demo_dispatch``).

A strict mock queue with 100 jobs (two of them invalid), 8 mock agents (five quick, one
slow, one failing, one hanging), one ``hodlai dispatcher`` process; live job counts from its
database, then the agent statistics table. Succeeds only when every job reached the queue
exactly once (completed or failed with its reason) and the queue saw no second delivery.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
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
# Seconds the demo waits for every job to reach the queue.
TIMEOUT_S = 90.0
AGENTS = (
    *({"name": f"quick-{i}", "latency": [[0.9, 60, 20], [0.1, 400, 100]], "seed": i}
      for i in range(5)),
    {"name": "slow", "latency": [[1.0, 1500, 300]], "late_after_cancel": True},
    {"name": "failing", "error_rate": 0.6, "garbage_rate": 0.2, "invalid_rate": 0.2},
    {"name": "hanging", "hang_rate": 1.0},
)  # fmt: skip


def run(workdir: Path) -> bool:
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "dispatch.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    thread = ServerThread()
    queue = MockQueue(TOKEN)
    queue.add(generate_jobs(JOBS, invalid=2, deadline_s=60, seed=4))
    server = HttpServer(queue.handle)
    thread.run(server.start())
    started = thread.run(start_agents(list(AGENTS)))
    configure_logging("WARNING")  # the printout is the demo's; the processes keep their logs
    conn = connect(db)
    for agent, agent_server in started:
        for category in CATEGORIES:
            registry.register(conn, registry.AgentSpec(
                agent_id=f"{agent.name}:{category}", name=f"{agent.name}:{category}",
                endpoint=f"{agent_server.url}/{category}", category=category,
                tags=["en", "fr"], skill_level=5), actor="demo")  # fmt: skip
    conn.close()
    env = {**os.environ, "HODLAI_DB_PATH": str(db), "REMOTE_QUEUE_URL": server.url,
           "REMOTE_QUEUE_TOKEN": TOKEN, "HODLAI_DISPATCH_DEFAULT_AGENT_TIMEOUT_S": "3",
           "HODLAI_DISPATCH_HEDGED_CATEGORIES": "classify", "HODLAI_DISPATCH_FETCH_BATCH": "10",
           "LOG_LEVEL": "WARNING"}  # fmt: skip
    print(f"== dispatcher: mock queue {server.url} with {JOBS + 2} jobs, {len(AGENTS)} agents "
          "(5 quick, 1 slow, 1 failing, 1 hanging); 'classify' is hedged")  # fmt: skip
    log = (workdir / "dispatcher.log").open("ab")
    process = subprocess.Popen([sys.executable, "-m", "shared.cli", "dispatcher"], env=env,
                               cwd=ROOT, stderr=log)  # fmt: skip
    tty = sys.stdout.isatty()
    began = time.monotonic()
    total = JOBS + 2
    try:
        while time.monotonic() - began < TIMEOUT_S and process.poll() is None:
            done = queue.stats["completed"] + queue.stats["failed"]
            _show(db, began, done, total, tty)
            if done >= total:
                break
            time.sleep(0.5)
        time.sleep(0.5)
        _show(db, began, queue.stats["completed"] + queue.stats["failed"], total, tty)
        print()
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    view = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    view.row_factory = sqlite3.Row
    print(stats.render_table(stats.collect(view)))
    view.close()
    snap = queue.snapshot()
    ok = (snap["completed"] + snap["failed"] == total and snap["second_deliveries"] == 0
          and snap["completed"] >= JOBS * 0.9)  # fmt: skip
    print(f"== queue: {snap['completed']} completed, {snap['failed']} failed, "
          f"{snap['second_deliveries']} second deliveries: "
          f"{'every job delivered exactly once' if ok else 'NOT as expected'}")  # fmt: skip
    print(f"   try: HODLAI_DB_PATH={db} hodlai dispatch stats")
    thread.stop([server, *(s for _, s in started)])
    return ok


def _show(db: Path, began: float, done: int, total: int, tty: bool) -> None:
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
    ) + f"   ({done}/{total} at the queue)"  # fmt: skip
    print(("\r" + line) if tty else line, end="" if tty else "\n", flush=True)


if __name__ == "__main__":
    sys.exit(0 if run(ROOT / ".devnet" / "demo-dispatch") else 1)
