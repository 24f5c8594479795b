"""Peak resident memory of processes, read from /proc (VmHWM: the high-water mark)."""

from __future__ import annotations

from pathlib import Path


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM of ``pid`` in MiB, or None when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


class PeakTracker:
    """Keeps the highest VmHWM seen per process name across restarts (sample it often)."""

    def __init__(self) -> None:
        self.peaks: dict[str, float] = {}

    def sample(self, pids: dict[str, int]) -> None:
        for name, pid in pids.items():
            value = peak_rss_mb(pid)
            if value is not None:
                self.peaks[name] = max(self.peaks.get(name, 0.0), value)
