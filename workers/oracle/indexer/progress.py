"""A one-line backfill progress bar on stderr, drawn only when stderr is a terminal (under
systemd, honcho or CI the structured log says the same thing without control characters)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

# Seconds between redraws: often enough to look alive, rarely enough to cost nothing.
REDRAW_EVERY_S = 0.2
# Blocks behind the head below which there is no backfill worth a bar.
MIN_BACKLOG_BLOCKS = 100
_WIDTH = 30


class BackfillProgress:
    """Call :meth:`update` after each accepted range; :meth:`close` when done."""

    def __init__(self, stream: TextIO | None = None, *, now: float | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self.enabled = self._stream.isatty()
        self._start_block: int | None = None
        self._started = time.monotonic() if now is None else now
        self._last_draw = 0.0
        self._drawn = False

    def update(
        self, cursor: int, head: int | None, events: int, *, now: float | None = None
    ) -> None:
        if not self.enabled or head is None:
            return
        at = time.monotonic() if now is None else now
        if self._start_block is None:
            if head - cursor < MIN_BACKLOG_BLOCKS:
                return
            self._start_block = cursor
            self._started = at
        if at - self._last_draw < REDRAW_EVERY_S and cursor < head:
            return
        self._last_draw = at
        total = max(1, head - self._start_block)
        done = min(total, max(0, cursor - self._start_block))
        filled = _WIDTH * done // total
        rate = events / max(at - self._started, 1e-9)
        bar = "#" * filled + "." * (_WIDTH - filled)
        self._stream.write(
            f"\rindexer backfill [{bar}] {100 * done / total:5.1f}%  block {cursor:,} of "
            f"{head:,}  {events:,} events  {rate:,.0f}/s "
        )
        self._stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False
