"""The backfill progress bar: drawn only on a terminal, throttled, closed with a newline."""

from __future__ import annotations

import io

from workers.oracle.indexer.progress import BackfillProgress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_is_drawn_on_a_terminal_and_ends_with_a_newline() -> None:
    screen = _Terminal()
    bar = BackfillProgress(screen, now=0.0)
    bar.update(0, 1000, 0, now=0.0)
    bar.update(500, 1000, 5000, now=1.0)
    bar.update(1000, 1000, 10_000, now=2.0)
    bar.close()
    text = screen.getvalue()
    assert "50.0%" in text and "100.0%" in text
    assert "block 1,000 of 1,000" in text
    assert text.endswith("\n")


def test_progress_bar_stays_silent_off_a_terminal_and_for_a_small_backlog() -> None:
    pipe = io.StringIO()
    bar = BackfillProgress(pipe, now=0.0)
    bar.update(0, 100_000, 0, now=0.0)
    bar.close()
    assert pipe.getvalue() == ""
    screen = _Terminal()
    near = BackfillProgress(screen, now=0.0)
    near.update(990, 1000, 3, now=5.0)
    near.close()
    assert screen.getvalue() == ""


def test_progress_bar_redraws_at_most_five_times_a_second() -> None:
    screen = _Terminal()
    bar = BackfillProgress(screen, now=0.0)
    for step in range(100):
        bar.update(step, 10_000, step, now=step * 0.01)  # one second of updates
    assert screen.getvalue().count("\r") <= 6
