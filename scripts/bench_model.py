"""Benchmark: the embedded model (SmolLM2-135M-Instruct Q4_1 on llama.cpp) on this machine.

Each shard is its own OS process (this script started again with ``--shard``), as the
inference workers are: it checks and loads the GGUF (``LlamaBackend.load``: SHA-256, then
llama.cpp), answers one warm-up request, then ``--answers`` requests one after another
through ``execute_holdai_inference``, the worker's own path (prompt, grammar-constrained
decoding, validation, trace and CID). The requests are the demo's twelve asks with a tick
number added to their state, so every prompt differs.

- one shard: one process with all of this machine's cores as llama.cpp threads;
- two shards: two processes at once, one thread each (what ``make demo`` runs: the
  default HODLAI_LOCAL_MODEL_THREADS is cores / HODLAI_WORKER_COUNT).

Reported: p50 / p95 latency per answer (one shard), answers per second for one and for two
shards (all answers over the wall time from the first to the last), start-up (checking and
loading the model, and the first answer), peak RSS per shard process, and the share of
answers inside their action set.

    .venv/bin/python -m scripts.bench_model [--answers 48]

Last line: {"p50_ms": ..., "p95_ms": ..., "answers_per_s_1": ..., "answers_per_s_2": ...,
"rss_mb": ..., "in_set": 1.0}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from scripts.rss import peak_rss_mb

# Answers per set-up: enough for a stable p95 (the 46th of 48), about a minute per set-up.
DEFAULT_ANSWERS = 48


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def run_shard(shard: int, shards: int, answers: int, threads: int) -> dict[str, Any]:
    """One shard's work, in this process; returns its measurements."""
    from scripts.demo import ASKS
    from shared.llm import InferenceRequest, execute_holdai_inference
    from shared.llm.backends.llama import LlamaBackend, LoadParams, default_model_path

    path = default_model_path()
    if path is None:
        raise SystemExit("the default model is not installed: run `make setup`")
    began = time.perf_counter()
    backend = LlamaBackend.load(path, params=LoadParams(n_threads=threads))
    loaded_s = time.perf_counter() - began

    def request(n: int) -> InferenceRequest:
        ask = ASKS[n % len(ASKS)]
        return InferenceRequest(
            request_id=n, model=ask.model, system_prompt=ask.prompt,
            state_string=f"{ask.state}; tick={n}", action_set=ask.actions,
        )  # fmt: skip

    warm = time.perf_counter()
    await execute_holdai_inference(request(10_000 + shard), backend=backend)
    first_s = time.perf_counter() - warm
    latencies, in_set, started = [], 0, time.time()
    for n in range(shard, answers * shards, shards):
        t0 = time.perf_counter()
        result = await execute_holdai_inference(request(n), backend=backend)
        latencies.append(time.perf_counter() - t0)
        in_set += result.action in request(n).action_set
    finished = time.time()
    await backend.aclose()
    return {
        "latencies": latencies, "in_set": in_set, "started": started, "finished": finished,
        "loaded_s": loaded_s, "first_answer_s": first_s, "rss_mb": peak_rss_mb(os.getpid()),
    }  # fmt: skip


def run_setup(shards: int, answers: int, threads: int) -> list[dict[str, Any]]:
    """``shards`` processes at once, each answering ``answers / shards`` requests."""
    per_shard = answers // shards
    procs = []
    for shard in range(shards):
        argv = [sys.executable, "-m", "scripts.bench_model", "--shard", str(shard),
                "--shards", str(shards), "--answers", str(per_shard),
                "--threads", str(threads)]  # fmt: skip
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            raise SystemExit(f"a shard failed ({proc.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def summary(results: list[dict[str, Any]]) -> dict[str, float]:
    latencies = [x for r in results for x in r["latencies"]]
    wall = max(r["finished"] for r in results) - min(r["started"] for r in results)
    return {
        "answers": len(latencies),
        "aps": len(latencies) / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p95_ms": 1000 * percentile(latencies, 0.95),
        "in_set": sum(r["in_set"] for r in results) / len(latencies),
        "rss_mb": max(r["rss_mb"] for r in results),
        "loaded_s": max(r["loaded_s"] for r in results),
        "first_answer_s": max(r["first_answer_s"] for r in results),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--answers", type=int, default=DEFAULT_ANSWERS)
    parser.add_argument("--shard", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--shards", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.shard is not None:  # a child: one shard's measurements as one JSON line
        from shared.logs import configure_logging

        configure_logging("WARNING")
        result = asyncio.run(run_shard(args.shard, args.shards, args.answers, args.threads))
        print(json.dumps(result))
        return 0
    cores = len(os.sched_getaffinity(0))
    one = summary(run_setup(1, args.answers, cores))
    print(f"one shard, {cores} threads: {one['answers']} answers, {one['aps']:.2f} answers/s, "
          f"p50 {one['p50_ms']:.0f} ms, p95 {one['p95_ms']:.0f} ms")  # fmt: skip
    two = summary(run_setup(2, args.answers, max(1, cores // 2)))
    print(f"two shards, {max(1, cores // 2)} thread(s) each: {two['answers']} answers, "
          f"{two['aps']:.2f} answers/s, p50 {two['p50_ms']:.0f} ms, "
          f"p95 {two['p95_ms']:.0f} ms")  # fmt: skip
    print(f"start-up: model checked (SHA-256) and loaded in {one['loaded_s']:.2f} s, "
          f"first answer {one['first_answer_s']:.2f} s; peak RSS per shard "
          f"{max(one['rss_mb'], two['rss_mb']):.0f} MB")  # fmt: skip
    print(json.dumps({
        "p50_ms": round(one["p50_ms"]), "p95_ms": round(one["p95_ms"]),
        "answers_per_s_1": round(one["aps"], 2), "answers_per_s_2": round(two["aps"], 2),
        "rss_mb": round(max(one["rss_mb"], two["rss_mb"])),
        "in_set": min(one["in_set"], two["in_set"]),
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
