"""Requests the LLM endpoint failed transport-side: their strikes, and where they wait.

Guarantees (no I/O here; the worker passes ``now`` in):
- A row that failed is *parked*: the worker keeps its lease (renewed with the calls in
  flight) but does not send it again before its own back-off has passed, so the next claim,
  and the probe after a pause, take other rows. One failing row is never the only row tried.
- A failure counts as a strike against its row unless it looks like an outage: other rows
  failed too since the row's previous failure and nothing was answered in between. So an
  outage over several rows adds at most one strike per row (their first failures), while a
  request that keeps failing, whether the endpoint answers the others or it is the only
  one left, collects a strike on every try.
- A "come back later" answer (LlmBusyError: 429, 503) parks the row but never counts: a
  rate limit is about the node's key, not about the request. A refusal (LlmAccessError:
  401/403/404) counts only once the endpoint has answered others since the row's previous
  failure, which shows that the key works and the refusal is about this request (its model):
  a bad key is the operator's to fix and never fails requests by itself.
- At most ``max_parked`` rows are held; past that the worker releases a failed row instead
  of parking it (and its strikes are forgotten), so an endless outage over a large backlog
  cannot make one worker hold the whole backlog, and the book's memory stays bounded.
- Strikes live in memory: a restart gives every row a fresh count.

Whether strikes fail a row is the worker's rule (``workers/oracle/inference/worker.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from workers.oracle.store import Claimed

#: "busy": come back later (429, 503); "refused": 401/403/404; "failure": anything else.
FailureKind = Literal["busy", "refused", "failure"]


@dataclass(frozen=True)
class Strikes:
    """What the endpoint did to one request so far."""

    counted: int  # failures that were not part of an apparent outage (the first always is)
    failures: int  # every transport failure, counted or not
    first_at: float
    last_at: float


@dataclass(frozen=True)
class _Parked:
    row: Claimed
    until: float


class StrikeBook:
    """Strikes per request and the rows parked until their own back-off has passed."""

    def __init__(self, *, backoff_start_s: float, backoff_cap_s: float, max_parked: int) -> None:
        self._start_s = backoff_start_s
        self._cap_s = backoff_cap_s
        self._max_parked = max_parked
        self._strikes: dict[int, Strikes] = {}
        self._parked: dict[int, _Parked] = {}

    @property
    def full(self) -> bool:
        return len(self._parked) >= self._max_parked

    def strikes(self, request_id: int) -> Strikes | None:
        return self._strikes.get(request_id)

    def record_failure(
        self, request_id: int, *, now: float, last_success_at: float, kind: FailureKind
    ) -> tuple[Strikes, bool]:
        """Note a transport failure. Returns the row's strikes and whether the endpoint
        answered others since the row's previous failure: evidence that the failure is
        about this row."""
        previous = self._strikes.get(request_id)
        if previous is None:
            first = int(kind == "failure")
            strikes = Strikes(counted=first, failures=1, first_at=now, last_at=now)
            self._strikes[request_id] = strikes
            return strikes, False
        answered_since = last_success_at > previous.last_at
        others_failed_since = any(
            other.last_at > previous.last_at
            for other_id, other in self._strikes.items()
            if other_id != request_id
        )
        if kind == "failure":
            counts = answered_since or not others_failed_since  # not an apparent outage
        else:
            counts = kind == "refused" and answered_since
        strikes = Strikes(
            counted=previous.counted + int(counts),
            failures=previous.failures + 1,
            first_at=previous.first_at,
            last_at=now,
        )
        self._strikes[request_id] = strikes
        return strikes, answered_since

    def backoff(self, strikes: Strikes) -> float:
        """Seconds a row waits after its n-th failure: doubling from the start, capped."""
        return min(self._cap_s, self._start_s * 2.0 ** (strikes.failures - 1))

    def park(self, row: Claimed, *, until: float) -> bool:
        """Hold ``row`` until ``until``; False when the book is full: then nothing is held
        and the row's strikes are forgotten (the caller releases it)."""
        if row.request_id not in self._parked and self.full:
            self._strikes.pop(row.request_id, None)
            return False
        self._parked[row.request_id] = _Parked(row, until)
        return True

    def take_due(self, now: float, limit: int) -> list[Claimed]:
        """Up to ``limit`` parked rows whose time has come, the longest-due first; they are
        no longer parked (the caller works on them)."""
        waiting = [p for p in self._parked.values() if p.until <= now]
        due = sorted(waiting, key=lambda p: p.until)[: max(0, limit)]
        for parked in due:
            del self._parked[parked.row.request_id]
        return [parked.row for parked in due]

    def next_due(self) -> float | None:
        return min((p.until for p in self._parked.values()), default=None)

    def parked_ids(self) -> list[int]:
        return list(self._parked)

    def forget(self, request_id: int) -> None:
        """The row was answered, failed or lost: drop its strikes and any parked entry."""
        self._strikes.pop(request_id, None)
        self._parked.pop(request_id, None)

    def unpark_all(self) -> list[int]:
        """Every parked row's id, no longer parked (the worker releases them on stop)."""
        ids = list(self._parked)
        self._parked.clear()
        return ids
