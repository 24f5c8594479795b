"""Stale and inconsistent answers: asked again at once, then after a growing pause, and,
repeated, from the next RPC URL.

Guarantees:
- A stale answer is never used: the poller throws it (and any prefetched poll) away and
  asks again (poller.py); this module only decides when and where.
- One stale answer from a load balancer is routine (a debug line); every
  ``STALE_FAILOVER_AFTER``-th in a row moves to the next RPC URL and forgets the head seen so
  far, so a chain that really got shorter is followed.
- A head below the cursor is taken for a lagging backend until it repeats
  (:meth:`StaleStreak.walk_back_due`); only then are the stored hashes compared with the
  chain, which costs a request per step and would otherwise hand every poll of a round-robin
  load balancer to its lagging backend.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

# Stale answers in a row before moving to the next RPC URL: one stale answer from a load
# balancer is normal; three in a row means this endpoint is behind.
STALE_FAILOVER_AFTER = 3
# Answers in a row reporting a head below the cursor before the stored hashes are compared
# with the chain (to tell a lagging node from a chain that got shorter).
WALK_BACK_AFTER_STALE = 3
# Seconds before asking again after a stale answer, doubled per repetition up to the cap: a
# lagging backend catches up within a block or two.
STALE_RETRY_S = 0.05
STALE_RETRY_CAP_S = 5.0


@dataclass(frozen=True, slots=True)
class StaleRetry:
    #: seconds to wait before asking again
    delay: float
    #: move to the next RPC URL first
    failover: bool


class StaleStreak:
    """Stale or inconsistent answers in a row."""

    def __init__(self) -> None:
        self.count = 0

    def reset(self) -> None:
        self.count = 0

    def record(self, reason: str) -> StaleRetry:
        """One more stale answer: when and where to ask again."""
        self.count += 1
        failover = self.count % STALE_FAILOVER_AFTER == 0
        delay = min(STALE_RETRY_CAP_S, STALE_RETRY_S * 2.0 ** min(self.count - 1, 10))
        # One stale answer behind a load balancer is routine (debug); a streak is news.
        (log.warning if failover else log.debug)(
            "rpc_answer_stale", reason=reason, streak=self.count, retry_in_s=delay
        )
        return StaleRetry(delay=delay, failover=failover)

    def walk_back_due(self) -> bool:
        """Whether a head below the cursor, answered now, has repeated often enough to
        compare the stored hashes with the chain."""
        return self.count + 1 >= WALK_BACK_AFTER_STALE
