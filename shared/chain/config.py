"""What a log poller is configured with: its tunables and its progress display.

Plain values, no settings class: each executor reads its own settings (the indexer's
``HODLAI_INDEXER_*``, workers/oracle/indexer/settings.py, which says why each default is what it
is) and builds a :class:`PollerConfig` in its composition root.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class PollerConfig:
    """A poller's tunables (the indexer's come from HODLAI_INDEXER_*: its settings.py says
    why each default is what it is)."""

    #: the poller's cursor (``cursors.name``), halt (``halts.worker``) and resume command
    name: str
    #: blocks below the head a range's end must be
    confirmations: int
    #: blocks per eth_getLogs at most
    max_range: int
    #: logs one poll should carry at most (larger answers shrink the next range)
    target_logs: int
    #: seconds between polls once caught up
    poll_interval_s: float
    #: polls between backup re-scans once caught up
    rescan_every: int
    #: accepted blocks a backup re-scan reads again
    rescan_blocks: int
    #: blocks below the cursor whose hashes are kept
    block_history: int
    #: blocks below the head whose headers' blooms each poll checks (0: off)
    bloom_window: int
    #: accepted blocks a rollback may undo without an operator
    max_reorg_depth: int
    #: polls in a row without progress before the health check fails
    unhealthy_after_polls: int
    #: the setting that moves the filters' start block (named in warnings)
    start_setting: str = "HODLAI_START_BLOCK"
    #: the operator's command that clears its halt, named in its log lines and /healthz
    #: ("": ``hodlai poller-resume <name>``, which clears any poller's)
    resume_command: str = ""


class ProgressReporter(Protocol):
    """A backfill progress display (workers/oracle/indexer/progress.py draws one on a terminal)."""

    def update(self, cursor: int, head: int | None, events: int) -> None: ...

    def close(self) -> None: ...
