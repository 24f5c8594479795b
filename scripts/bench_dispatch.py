"""Benchmark of the dispatcher: 20 mock agents with heavy-tailed latency (95 % around
50 ms, 5 % around 2 s), 2,000 jobs per mode, measured in one run for single-agent dispatch,
top-3 concurrent and hedged (each mode its own category, so each starts cold). Reports job
latency p50/p99 (fetch to decision, from the database), agent calls per job and jobs per
second through one ``hodlai dispatcher`` process; the last line is JSON.

    python -m scripts.bench_dispatch [--jobs 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shared.db import connect
from workers.dispatch import agents as registry
from workers.dispatch.book import quantile
from workers.dispatch.mock.agents import start_agents
from workers.dispatch.mock.http import HttpServer, ServerThread
from workers.dispatch.mock.queue import MockQueue, generate_jobs

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"
MODES = (("single", "summarize", 1), ("top3", "translate", 3), ("hedged", "classify", 3))


def run_mode(workdir: Path, name: str, category: str, agents_per_job: int, jobs: int,
             thread: ServerThread, urls: list[str]) -> dict[str, float]:  # fmt: skip
    db = workdir / f"{name}.db"
    conn = connect(db)
    for i, url in enumerate(urls):
        registry.register(conn, registry.AgentSpec(
            agent_id=f"agent{i:02d}", name=f"agent{i:02d}", endpoint=f"{url}/{category}",
            category=category, tags=["en", "fr"], skill_level=5), actor="bench")  # fmt: skip
    conn.close()
    queue = MockQueue(TOKEN)
    queue.add(generate_jobs(jobs, categories=(category,), deadline_s=600, prefix=name))
    server = HttpServer(queue.handle)
    thread.run(server.start())
    env = {**os.environ, "HODLAI_DB_PATH": str(db), "REMOTE_QUEUE_URL": server.url,
           "REMOTE_QUEUE_TOKEN": TOKEN, "HODLAI_DISPATCH_MAX_AGENTS_PER_JOB": str(agents_per_job),
           "HODLAI_DISPATCH_HEDGED_CATEGORIES": "classify" if name == "hedged" else "",
           "HODLAI_DISPATCH_HEDGE_INITIAL_DELAY_MS": "100", "LOG_LEVEL": "WARNING",
           "HODLAI_DISPATCH_DEFAULT_AGENT_TIMEOUT_S": "10"}  # fmt: skip
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "shared.cli", "dispatcher"], env=env,
                               cwd=ROOT, stderr=(workdir / f"{name}.log").open("w"))  # fmt: skip
    while queue.stats["completed"] + queue.stats["failed"] < jobs:
        if process.poll() is not None:
            raise SystemExit(f"the dispatcher exited; see {workdir / name}.log")
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    thread.run(server.close())
    conn = connect(db)
    latencies = [1000 * (r[0] - r[1]) for r in conn.execute(
        "SELECT finished_at, fetched_at FROM jobs WHERE finished_at IS NOT NULL")]  # fmt: skip
    calls = conn.execute(
        "SELECT COUNT(*) FROM job_distribution_agents WHERE started_at IS NOT NULL"
    ).fetchone()[0]
    conn.close()
    return {"p50_ms": quantile(latencies, 0.5) or 0.0, "p99_ms": quantile(latencies, 0.99) or 0.0,
            "calls_per_job": calls / jobs, "jobs_per_s": jobs / elapsed,
            "completed": queue.stats["completed"], "failed": queue.stats["failed"],
            "second_deliveries": queue.stats["second_deliveries"]}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2000)
    args = parser.parse_args()
    thread = ServerThread()
    specs = [{"name": f"agent{i:02d}", "latency": [[0.95, 50, 15], [0.05, 2000, 300]], "seed": i}
             for i in range(20)]  # fmt: skip
    started = thread.run(start_agents(specs))
    urls = [server.url for _, server in started]
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-dispatch-") as tmp:
        for name, category, k in MODES:
            results[name] = run_mode(Path(tmp), name, category, k, args.jobs, thread, urls)
            r = results[name]
            print(f"{name:<7} p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
                  f"calls/job {r['calls_per_job']:.3f}  jobs/s {r['jobs_per_s']:6.1f}  "
                  f"completed {r['completed']} failed {r['failed']}", flush=True)  # fmt: skip
    thread.stop([s for _, s in started])
    single, top3, hedged = results["single"], results["top3"], results["hedged"]
    print(f"hedged p99 / single p99 = {hedged['p99_ms'] / single['p99_ms']:.3f} (target <= 0.2)")
    print(json.dumps({
        "p99_single_ms": round(single["p99_ms"], 1), "p99_top3_ms": round(top3["p99_ms"], 1),
        "p99_hedged_ms": round(hedged["p99_ms"], 1),
        "calls_per_job_top3": round(top3["calls_per_job"], 3),
        "calls_per_job_hedged": round(hedged["calls_per_job"], 3),
        "jobs_per_s": round(min(r["jobs_per_s"] for r in results.values()), 1),
        "double_deliveries": sum(int(r["second_deliveries"]) for r in results.values()),
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
