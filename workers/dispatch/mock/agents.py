"""Scripted agents (``hodlai mock-agents``): each a real loopback HTTP server speaking the
agent contract of docs/API.md (``POST /execute``, ``POST /cancel``, ``GET /health``).

What an agent does with one call is drawn from its :class:`Behaviour` (seeded, so a run is
reproducible) or taken from its ``script`` (one token per call, first): ``ok``, ``ok:MS``
(answer after MS milliseconds), ``error`` (500), ``garbage`` (200 that is not JSON),
``invalid`` (a result outside the job's schema), ``hang`` (no answer, cancels ignored).
A cancelled call answers ``{"status": "cancelled"}`` at once, unless the agent has
``late_after_cancel`` (it finishes and answers anyway: the late results the dispatcher must
record and never let win). With ``cancel_delay_ms`` an agent takes that long to acknowledge
(and act on) a cancel: an answer due meanwhile crosses the cancel; ``health_delay_ms`` delays
its health answers. ``GET /stats`` counts
everything; ``POST /control`` changes the behaviour at run time; ``POST /reset`` clears
counters and script.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter, OrderedDict, deque
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from workers.dispatch.mock.http import HttpServer, Request, Response

# Cancels remembered for calls not seen yet (a cancel can overtake its call).
EARLY_CANCELS_KEPT: Final = 10_000
KINDS: Final = ("ok", "error", "garbage", "invalid", "hang")


@dataclass
class Behaviour:
    # (weight, mean ms, jitter ms): a mixture; jitter is the half-width of a uniform spread
    latency: list[tuple[float, float, float]] = field(default_factory=lambda: [(1.0, 20.0, 5.0)])
    error_rate: float = 0.0
    garbage_rate: float = 0.0
    invalid_rate: float = 0.0
    hang_rate: float = 0.0
    late_after_cancel: bool = False
    healthy: bool = True
    hang_s: float = 3600.0
    cancel_delay_ms: float = 0.0
    health_delay_ms: float = 0.0
    seed: int = 0
    script: list[str] = field(default_factory=list)


class MockAgent:
    def __init__(self, name: str, behaviour: Behaviour) -> None:
        self.name = name
        self.behaviour = behaviour
        self.rng = random.Random(behaviour.seed)
        self.script: deque[str] = deque(behaviour.script)
        self.cancelled: OrderedDict[str, asyncio.Event] = OrderedDict()
        self.stats: Counter[str] = Counter()
        self.in_flight = 0
        self.calls: list[dict[str, Any]] = []  # per call: work_id, kind, at, cancelled, answered
        self.health_at: list[float] = []  # unix seconds of each health check answered

    def _draw(self) -> tuple[str, float]:
        b = self.behaviour
        if self.script:
            token = self.script.popleft()
            kind, _, ms = token.partition(":")
            if kind not in KINDS:
                raise ValueError(f"unknown script token {token!r}")
            return kind, float(ms) if ms else self._latency()
        roll = self.rng.random()
        for kind, rate in (("error", b.error_rate), ("garbage", b.garbage_rate),
                           ("invalid", b.invalid_rate), ("hang", b.hang_rate)):  # fmt: skip
            if roll < rate:
                return kind, self._latency()
            roll -= rate
        return "ok", self._latency()

    def _latency(self) -> float:
        weights = [w for w, _, _ in self.behaviour.latency]
        _, mean, jitter = self.rng.choices(self.behaviour.latency, weights=weights)[0]
        return max(0.0, mean + self.rng.uniform(-jitter, jitter))

    def _event(self, work_id: str) -> asyncio.Event:
        event = self.cancelled.get(work_id)
        if event is None:
            event = self.cancelled[work_id] = asyncio.Event()
            while len(self.cancelled) > EARLY_CANCELS_KEPT:
                self.cancelled.popitem(last=False)
        return event

    async def handle(self, request: Request) -> Response:  # noqa: PLR0911 -- one route each
        # Only the last segment counts: one server can stand for several registered
        # endpoints (``{url}/summarize``, ``{url}/translate``), as an agent with several skills.
        path = "/" + request.path.rstrip("/").rsplit("/", 1)[-1]
        if path == "/execute" and request.method == "POST":
            return await self._execute(request.json())
        if path == "/cancel" and request.method == "POST":
            work_id = str(request.json()["work_id"])
            self.stats["cancels"] += 1
            if self.behaviour.cancel_delay_ms:
                await asyncio.sleep(self.behaviour.cancel_delay_ms / 1000)
            if work_id in self.cancelled and not self.cancelled[work_id].is_set():
                self.stats["cancels_in_flight"] += 1
            self._event(work_id).set()
            return Response(200, {"status": "cancelling"})
        if path == "/health":
            if self.behaviour.health_delay_ms:
                await asyncio.sleep(self.behaviour.health_delay_ms / 1000)
            self.stats["health_checks"] += 1
            self.health_at.append(time.time())
            return Response(200 if self.behaviour.healthy else 503, {"ok": self.behaviour.healthy})
        if path == "/stats":
            return Response(200, self.snapshot())
        if path == "/control" and request.method == "POST":
            self.control(request.json())
            return Response(200, self.snapshot())
        if path == "/reset" and request.method == "POST":
            self.stats.clear()
            self.script.clear()
            self.calls.clear()
            self.health_at.clear()
            return Response(200, {"ok": True})
        return Response(404, {"error": "not_found"})

    def control(self, changes: dict[str, Any]) -> None:
        for key, value in changes.items():
            if key == "script":
                self.script.extend(str(v) for v in value)
            elif key == "latency":
                self.behaviour.latency = [tuple(part) for part in value]
            elif hasattr(self.behaviour, key):
                setattr(self.behaviour, key, type(getattr(self.behaviour, key))(value))

    async def _execute(self, body: dict[str, Any]) -> Response:
        work_id = str(body["work_id"])
        kind, latency_ms = self._draw()
        call = {"work_id": work_id, "job_id": body.get("job_id"), "kind": kind,
                "at": time.time(), "cancelled": False, "answered": False}  # fmt: skip
        self.calls.append(call)
        self.stats["executes"] += 1
        self.stats[f"kind_{kind}"] += 1
        self.in_flight += 1
        self.stats["max_in_flight"] = max(self.stats["max_in_flight"], self.in_flight)
        event = self._event(work_id)
        try:
            if kind == "hang":
                await asyncio.sleep(self.behaviour.hang_s)
                return Response(504, {"error": "hung"})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), latency_ms / 1000)
            if event.is_set():
                call["cancelled"] = True
                if not self.behaviour.late_after_cancel:
                    self.stats["answered_cancelled"] += 1
                    return Response(200, {"status": "cancelled"})
                remaining = latency_ms / 1000  # ignores the cancel: finishes the work
                await asyncio.sleep(remaining * self.rng.uniform(0.2, 0.6))
                self.stats["late_answers"] += 1
            call["answered"] = True
            self.stats["answered"] += 1
            return self._answer(kind, body)
        finally:
            self.in_flight -= 1
            self.cancelled.pop(work_id, None)

    def _answer(self, kind: str, body: dict[str, Any]) -> Response:
        if kind == "error":
            return Response(500, {"error": "agent_failed", "message": "scripted failure"})
        if kind == "garbage":
            return Response(200, raw=b"<html>502 bad gateway</html>")
        if kind == "invalid":
            return Response(200, {"result": {"wrong": True}})
        return Response(200, {"result": {"answer": f"{self.name}:{body.get('job_id')}",
                                         "agent": self.name}})  # fmt: skip

    def snapshot(self) -> dict[str, Any]:
        return {"name": self.name, **dict(self.stats), "in_flight": self.in_flight,
                "script_left": len(self.script), "behaviour": asdict(self.behaviour)}  # fmt: skip


async def start_agents(
    specs: list[dict[str, Any]], host: str = "127.0.0.1"
) -> list[tuple[MockAgent, HttpServer]]:
    """Start one server per spec ``{"name", "port"?, ...Behaviour fields}``."""
    out = []
    for spec in specs:
        fields = {k: v for k, v in spec.items() if k not in ("name", "port")}
        if "latency" in fields:
            fields["latency"] = [tuple(part) for part in fields["latency"]]
        agent = MockAgent(str(spec["name"]), Behaviour(**fields))
        server = HttpServer(agent.handle, host, int(spec.get("port", 0)))
        await server.start()
        out.append((agent, server))
    return out
