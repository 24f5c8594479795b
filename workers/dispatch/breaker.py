"""A circuit breaker per agent.

closed: calls go through; ``failures`` consecutive failed calls (error, garbage, result
outside the schema, timeout) open it. open: the agent is left out of matching until the
cool-down has passed; then it is half-open: exactly one call (the probe) goes through. A
successful probe closes the breaker; a failed one opens it for another cool-down. A call
that ends without a verdict (cancelled before it answered) gives the probe back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


@dataclass
class Breaker:
    threshold: int
    cooldown_s: float
    state: BreakerState = "closed"
    failures: int = 0
    open_until: float = 0.0
    probe_out: bool = False

    def available(self, now: float) -> bool:
        """May a call be planned now? (No change of state.)"""
        if self.state == "closed":
            return True
        if self.state == "open" and now < self.open_until:
            return False
        return not self.probe_out

    def reserve(self, now: float) -> bool:
        """Take the right to call: always while closed, the one probe while half-open."""
        if not self.available(now):
            return False
        if self.state != "closed":
            self.state, self.probe_out = "half_open", True
        return True

    def succeeded(self) -> None:
        self.state, self.failures, self.probe_out = "closed", 0, False

    def failed(self, now: float) -> None:
        self.failures += 1
        if self.state != "closed" or self.failures >= self.threshold:
            self.state, self.open_until, self.probe_out = "open", now + self.cooldown_s, False

    def released(self) -> None:
        """The reserved call ended without a verdict."""
        self.probe_out = False

    def shown(self, now: float) -> BreakerState:
        if self.state == "open" and now >= self.open_until and not self.probe_out:
            return "half_open"
        return self.state
