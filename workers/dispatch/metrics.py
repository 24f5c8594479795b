"""The dispatcher's Prometheus metrics (label ``executor="dispatch"``), served with the core's
``/metrics`` (shared/metrics.py). Agent labels are registered agent ids: bounded by the
registry, never by job data."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

EXECUTOR: Final = "dispatch"
_LATENCY_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)

JOBS = Gauge("hodlai_dispatch_jobs", "Dispatcher jobs by status", ["executor", "status"])
IN_FLIGHT = Gauge("hodlai_dispatch_jobs_in_flight", "Jobs being executed now", ["executor"])
JOB_OUTCOMES = Counter(
    "hodlai_dispatch_job_outcomes_total", "Jobs decided, by status and code",
    ["executor", "status", "code"],
)  # fmt: skip
JOB_LATENCY = Histogram(
    "hodlai_dispatch_job_latency_seconds", "From fetch to the job's outcome",
    ["executor", "mode"], buckets=_LATENCY_BUCKETS,
)  # fmt: skip
INVALID_JOBS = Counter(
    "hodlai_dispatch_invalid_jobs_total", "Fetched jobs refused by validation", ["executor", "code"]
)
AGENT_CALLS = Counter(
    "hodlai_dispatch_agent_calls_total", "Agent calls by verdict (success, error, timeout, none)",
    ["executor", "agent", "category", "verdict"],
)  # fmt: skip
AGENT_LATENCY = Histogram(
    "hodlai_dispatch_agent_latency_seconds", "Latency of an agent's valid results",
    ["executor", "agent", "category"], buckets=_LATENCY_BUCKETS,
)  # fmt: skip
AGENT_WINS = Counter(
    "hodlai_dispatch_agent_wins_total", "Jobs won", ["executor", "agent", "category"]
)
LATE_RESULTS = Counter(
    "hodlai_dispatch_late_results_total",
    "Results given after the agent acknowledged our cancel (it kept working)",
    ["executor", "agent", "category"],
)  # fmt: skip
CROSSED_CANCEL = Counter(
    "hodlai_dispatch_crossed_cancel_total",
    "Results already under way when we cancelled (arrived before the agent acknowledged it)",
    ["executor", "agent", "category"],
)  # fmt: skip
BREAKER_OPEN = Gauge(
    "hodlai_dispatch_agent_breaker_open",
    "1 while an agent's breaker is open",
    ["executor", "agent"],
)
EXTRA_CALLS = Counter(
    "hodlai_dispatch_extra_calls_total", "Hedged jobs' extra calls (hedge after p95, failover)",
    ["executor", "category", "kind"],
)  # fmt: skip
DELIVERIES = Counter(
    "hodlai_dispatch_deliveries_total", "Outcome deliveries to the queue, by result",
    ["executor", "kind", "result"],
)  # fmt: skip
