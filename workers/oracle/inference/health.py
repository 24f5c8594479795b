"""Health of an inference shard: its loop is alive *and* the LLM endpoint accepts the node.

Guarantee: while the endpoint refuses this node (401/403/404: a wrong key, plan or model
id), ``/healthz`` answers 503 with a reason naming the problem and the settings to check,
even though the loop itself runs fine. Such a refusal needs an operator; a pause would
only hide it. The first success clears it.
"""

from __future__ import annotations

from shared.metrics import Health


class InferenceHealth(Health):
    """:class:`shared.metrics.Health` plus "the LLM refuses access" (set by the worker)."""

    def __init__(self, stale_after_s: float) -> None:
        super().__init__(stale_after_s)
        self._refused: str | None = None

    def refuse(self, reason: str) -> bool:
        """Report the endpoint refusing the node; True when it was not refusing before."""
        with self._lock:
            was, self._refused = self._refused, reason
        return was is None

    def accept(self) -> bool:
        """The endpoint answered; True when it had been refusing until now."""
        with self._lock:
            was, self._refused = self._refused, None
        return was is not None

    @property
    def refused(self) -> str | None:
        with self._lock:
            return self._refused

    def check(self) -> tuple[bool, str]:
        ok, detail = super().check()
        refused = self.refused
        if refused is not None:
            return False, refused
        return ok, detail
