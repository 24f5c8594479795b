"""``/healthz`` for a log poller: healthy only while it makes progress.

The loop's heartbeat (shared.metrics.Health) says only that steps return; a poller whose
every step is a stale answer, a wrong chain or a halt returns from its steps too, and the
indexer was reported healthy with its cursor at -1 (issue 10). :class:`ProgressHealth` adds
what the poller itself knows: it is unhealthy while halted, and after a set number of polls
in a row without progress (the indexer's ``HODLAI_INDEXER_UNHEALTHY_AFTER_POLLS``; see
:meth:`shared.chain.poller.LogPoller.progress_problem`).
"""

from __future__ import annotations

from typing import Protocol

from shared.metrics import Health


class ProgressSource(Protocol):
    """What a poller tells its health check (shared.chain.poller.LogPoller has it)."""

    def progress_problem(self) -> str | None:
        """Why the poller is not making progress, or None while it is."""


class ProgressHealth(Health):
    """The loop's heartbeat, and the poller's own account of its progress."""

    def __init__(self, stale_after_s: float) -> None:
        super().__init__(stale_after_s)
        self._source: ProgressSource | None = None

    def watch(self, source: ProgressSource) -> None:
        self._source = source

    def check(self) -> tuple[bool, str]:
        ok, detail = super().check()
        if not ok or self._source is None:
            return ok, detail
        problem = self._source.progress_problem()
        return (True, detail) if problem is None else (False, problem)
