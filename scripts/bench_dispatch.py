"""Benchmark of the dispatcher: 20 mock agents with heavy-tailed latency (95 % around
50 ms, 5 % around 2 s), 2,000 jobs per mode, measured in one run for single-agent dispatch,
top-3 concurrent and hedged (each mode its own category and database, so each starts
cold). Every party is its own process, as in production: ``hodlai mock-agents`` (the 20
agents), ``hodlai mock-queue`` and ``hodlai dispatcher``.

Reported per mode: job latency p50/p99 (fetch to decision, from the database), agent calls
per job (calls sent), jobs per second (first fetch to last outcome at the queue). The
dispatcher holds at most ``IN_FLIGHT`` jobs, so the backlog waits in the queue and the
latency measures dispatching, not a 2,000-job line inside the process. The last line is
JSON; ``jobs_per_s`` there is the slowest mode's.

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

import httpx

from shared.db import connect
from workers.dispatch import agents as registry
from workers.dispatch.book import quantile
from workers.dispatch.mock.queue import generate_jobs

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"
MODES = (("single", "summarize", 1), ("top3", "translate", 3), ("hedged", "classify", 3))
# Jobs the dispatcher executes at once in this benchmark.
IN_FLIGHT = 100
AGENTS = 20


def _spawn(argv: list[str], env: dict[str, str], prefix: str, count: int,
           log: Path) -> tuple[subprocess.Popen[str], list[str]]:  # fmt: skip
    """Start a mock and read the ``… listening on URL`` lines it prints."""
    process = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=log.open("w"), text=True)  # fmt: skip
    assert process.stdout is not None
    urls = []
    while len(urls) < count:
        line = process.stdout.readline()
        if not line:
            raise SystemExit(f"{argv[3]} did not start; see {log}")
        if line.startswith(prefix):
            urls.append(line.split()[-1])
    return process, urls


def _stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)


def run_mode(workdir: Path, name: str, category: str, agents_per_job: int, jobs: int,
             urls: list[str], env: dict[str, str]) -> dict[str, float]:  # fmt: skip
    db = workdir / f"{name}.db"
    conn = connect(db)
    for i, url in enumerate(urls):
        registry.register(conn, registry.AgentSpec(
            agent_id=f"agent{i:02d}", name=f"agent{i:02d}", endpoint=f"{url}/{category}",
            category=category, tags=["en", "fr"], skill_level=5), actor="bench")  # fmt: skip
    conn.close()
    queue, (queue_url,) = _spawn(
        [sys.executable, "-m", "shared.cli", "mock-queue", "--port", "0"], env,
        "mock-queue listening on", 1, workdir / f"{name}-queue.log",
    )  # fmt: skip
    client = httpx.Client(base_url=queue_url, headers={"Authorization": f"Bearer {TOKEN}"})
    batch = generate_jobs(jobs, categories=(category,), deadline_s=600, prefix=name)
    client.post("/v1/admin/jobs", json={"jobs": batch}, timeout=60).raise_for_status()
    dispatcher_env = {
        **env, "HODLAI_DB_PATH": str(db), "REMOTE_QUEUE_URL": queue_url,
        "HODLAI_DISPATCH_MAX_AGENTS_PER_JOB": str(agents_per_job),
        "HODLAI_DISPATCH_HEDGED_CATEGORIES": "classify" if name == "hedged" else "",
        "HODLAI_DISPATCH_HEDGE_INITIAL_DELAY_MS": "100",
        "HODLAI_DISPATCH_MAX_IN_FLIGHT": str(IN_FLIGHT),
        "HODLAI_DISPATCH_DEFAULT_AGENT_TIMEOUT_S": "10",
    }  # fmt: skip
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "shared.cli", "dispatcher"],
                               env=dispatcher_env, cwd=ROOT,
                               stderr=(workdir / f"{name}.log").open("w"))  # fmt: skip
    while True:
        stats = client.get("/v1/admin/stats").json()
        if stats.get("completed", 0) + stats.get("failed", 0) >= jobs:
            break
        if process.poll() is not None:
            raise SystemExit(f"the dispatcher exited; see {workdir / name}.log")
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    _stop(process)
    _stop(queue)
    client.close()
    conn = connect(db)
    latencies = [1000 * (r[0] - r[1]) for r in conn.execute(
        "SELECT finished_at, fetched_at FROM jobs WHERE finished_at IS NOT NULL")]  # fmt: skip
    calls = conn.execute(
        "SELECT COUNT(*) FROM job_distribution_agents WHERE started_at IS NOT NULL"
    ).fetchone()[0]
    conn.close()
    return {"p50_ms": quantile(latencies, 0.5) or 0.0, "p99_ms": quantile(latencies, 0.99) or 0.0,
            "calls_per_job": calls / jobs, "jobs_per_s": jobs / elapsed,
            "completed": stats.get("completed", 0), "failed": stats.get("failed", 0),
            "second_deliveries": stats.get("second_deliveries", 0)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2000)
    args = parser.parse_args()
    env = {**os.environ, "REMOTE_QUEUE_TOKEN": TOKEN, "LOG_LEVEL": "WARNING"}
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-dispatch-") as tmp:
        workdir = Path(tmp)
        spec = workdir / "agents.json"
        spec.write_text(json.dumps([
            {"name": f"agent{i:02d}", "latency": [[0.95, 50, 15], [0.05, 2000, 300]], "seed": i}
            for i in range(AGENTS)
        ]))  # fmt: skip
        agents, urls = _spawn(
            [sys.executable, "-m", "shared.cli", "mock-agents", str(spec)], env,
            "mock-agent", AGENTS, workdir / "agents.log",
        )  # fmt: skip
        try:
            for name, category, k in MODES:
                results[name] = run_mode(workdir, name, category, k, args.jobs, urls, env)
                r = results[name]
                print(f"{name:<7} p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
                      f"calls/job {r['calls_per_job']:.3f}  jobs/s {r['jobs_per_s']:6.1f}  "
                      f"completed {r['completed']} failed {r['failed']}", flush=True)  # fmt: skip
        finally:
            _stop(agents)
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
