"""What the dispatcher knows about its agents while it runs: their registry rows, their
breakers, their time-decayed record per category and overall, and recent latencies.

One dispatcher per database (it holds the database's dispatcher role), so this memory is the
one view; it is rebuilt at start from ``agents`` and ``job_distribution_agents``, and the
registry rows are re-read every ``HODLAI_DISPATCH_AGENTS_REFRESH_S``. The exact, lifetime
statistics are computed from the rows (workers/dispatch/stats.py); this holds what ranking
and hedging need, fast.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections import deque
from dataclasses import dataclass, field
from typing import Final, Literal

from workers.dispatch.breaker import Breaker

Verdict = Literal["success", "error", "timeout"]

# Latencies kept per agent and per category: enough for a stable p95 (50 samples above it),
# small enough to sort on every completion.
LATENCY_WINDOW: Final = 1000
# Finished calls read back at start to rebuild the decayed records (the newest ones).
REBUILD_ROWS: Final = 200_000


@dataclass
class Decayed:
    """A sum whose terms lose half their weight every half-life."""

    value: float = 0.0
    at: float = 0.0

    def read(self, now: float, half_life_s: float) -> float:
        if self.value == 0.0:
            return 0.0
        return self.value * math.pow(2.0, -max(0.0, now - self.at) / half_life_s)

    def add(self, amount: float, now: float, half_life_s: float) -> None:
        self.value = self.read(now, half_life_s) + amount
        self.at = max(now, self.at)


@dataclass
class Record:
    calls: Decayed = field(default_factory=Decayed)
    successes: Decayed = field(default_factory=Decayed)
    timeouts: Decayed = field(default_factory=Decayed)

    def add(self, verdict: Verdict, now: float, half_life_s: float) -> None:
        self.calls.add(1.0, now, half_life_s)
        if verdict == "success":
            self.successes.add(1.0, now, half_life_s)
        elif verdict == "timeout":
            self.timeouts.add(1.0, now, half_life_s)


@dataclass(frozen=True)
class AgentInfo:
    agent_id: str
    name: str
    endpoint: str
    category: str
    tags: frozenset[str]
    skill_level: int
    reputation: float
    health: str


def quantile(values: list[float], q: float) -> float | None:
    """The q-quantile by nearest rank (a value that was observed; None without values)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


class AgentBook:
    def __init__(self, *, half_life_s: float, breaker_failures: int, breaker_cooldown_s: float):
        self.half_life_s = half_life_s
        self.breaker_failures = breaker_failures
        self.breaker_cooldown_s = breaker_cooldown_s
        self.agents: dict[str, AgentInfo] = {}
        self.breakers: dict[str, Breaker] = {}
        self.by_category: dict[tuple[str, str], Record] = {}
        self.overall: dict[str, Record] = {}
        self.category_calls: dict[str, Decayed] = {}
        self.category_latency: dict[str, deque[float]] = {}
        self.agent_latency: dict[str, deque[float]] = {}

    def load_agents(self, rows: list[sqlite3.Row]) -> None:
        """The ACTIVE agents from the registry (a disabled one drops out of matching)."""
        self.agents = {
            r["agent_id"]: AgentInfo(
                r["agent_id"], r["name"], r["endpoint"], r["category"],
                frozenset(json.loads(r["tags"])), int(r["skill_level"]), float(r["reputation"]),
                r["health"],
            )
            for r in rows
        }  # fmt: skip
        for row in rows:
            if row["agent_id"] not in self.breakers:
                self.breakers[row["agent_id"]] = Breaker(
                    self.breaker_failures, self.breaker_cooldown_s,
                    state=row["breaker"] if row["breaker"] != "half_open" else "open",
                    failures=int(row["consecutive_failures"]),
                    open_until=float(row["breaker_open_until"] or 0.0),
                )  # fmt: skip

    def unchecked(self) -> bool:
        """Is an agent waiting for its first passing health check (new, re-enabled, moved)?"""
        return any(a.health == "unknown" for a in self.agents.values())

    def set_health(self, agent_id: str, health: str) -> None:
        info = self.agents.get(agent_id)
        if info is not None and info.health != health:
            self.agents[agent_id] = AgentInfo(**{**info.__dict__, "health": health})

    def breaker(self, agent_id: str) -> Breaker:
        found = self.breakers.get(agent_id)
        if found is None:
            found = self.breakers[agent_id] = Breaker(
                self.breaker_failures, self.breaker_cooldown_s
            )
        return found

    def observe(
        self, agent_id: str, category: str, verdict: Verdict, latency_ms: float | None,
        now: float,
    ) -> None:  # fmt: skip
        """One call's verdict, with its latency when it was a success."""
        h = self.half_life_s
        self.by_category.setdefault((agent_id, category), Record()).add(verdict, now, h)
        self.overall.setdefault(agent_id, Record()).add(verdict, now, h)
        self.category_calls.setdefault(category, Decayed()).add(1.0, now, h)
        if verdict == "success" and latency_ms is not None:
            window: deque[float] = deque(maxlen=LATENCY_WINDOW)
            self.category_latency.setdefault(category, window).append(latency_ms)
            self.agent_latency.setdefault(agent_id, deque(maxlen=LATENCY_WINDOW)).append(latency_ms)

    def latency_quantile(self, category: str, q: float, min_samples: int) -> float | None:
        window = self.category_latency.get(category)
        if window is None or len(window) < min_samples:
            return None
        return quantile(list(window), q)

    def agent_latency_figures(self, agent_id: str) -> tuple[float | None, float | None]:
        values = list(self.agent_latency.get(agent_id, ()))
        return quantile(values, 0.5), quantile(values, 0.95)

    def rebuild(self, conn: sqlite3.Connection) -> int:
        """Replay the newest finished calls into the decayed records and latency windows."""
        rows = conn.execute(
            "SELECT agent_id, category, outcome, latency_ms, late_outcome, late_latency_ms,"
            " finished_at, late_at FROM job_distribution_agents"
            " WHERE finished_at IS NOT NULL ORDER BY finished_at DESC LIMIT ?",
            (REBUILD_ROWS,),
        ).fetchall()
        for row in reversed(rows):
            verdict, latency = verdict_of(row["outcome"], row["late_outcome"])
            if verdict is None:
                continue
            at = row["late_at"] if latency == "late" else row["finished_at"]
            ms = row["late_latency_ms"] if latency == "late" else row["latency_ms"]
            self.observe(row["agent_id"], row["category"], verdict,
                         ms if verdict == "success" else None, float(at or 0.0))  # fmt: skip
        return len(rows)


def verdict_of(  # noqa: PLR0911 -- one return per rule reads as the table it is
    outcome: str | None, late_outcome: str | None
) -> tuple[Verdict | None, Literal["on_time", "late"]]:
    """The verdict a finished call counts as for its agent (None: no verdict), and whether
    its latency is the on-time or the late one. The one definition, used by the book, the
    agents' counters and the statistics (stats.py's SQL spells the same rules)."""
    if outcome == "won":
        return "success", "on_time"
    if outcome in ("error", "invalid"):
        return "error", "on_time"
    if outcome == "timeout":
        return "timeout", "on_time"
    if outcome == "cancelled":
        if late_outcome == "valid":
            return "success", "late"
        if late_outcome in ("invalid", "error"):
            return "error", "late"
        if late_outcome == "timeout":
            return "timeout", "late"
    return None, "on_time"
