"""``hodlai dispatcher`` refuses bad settings in one line naming the setting (exit 2), and
never echoes the queue token."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cret-queue-token-value"


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ.get("PATH", ""), "HODLAI_DB_PATH": str(tmp_path / "d.db")}
    return subprocess.run([sys.executable, "-m", "shared.cli", "dispatcher"],
                          env={**base, **env}, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip


def test_a_malformed_setting_is_named_in_one_line(tmp_path: Path) -> None:
    done = _run(tmp_path, REMOTE_QUEUE_URL="http://127.0.0.1:1", REMOTE_QUEUE_TOKEN=SECRET,
                HODLAI_DISPATCH_MAX_AGENTS_PER_JOB="three")  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "HODLAI_DISPATCH_MAX_AGENTS_PER_JOB" in done.stderr
    assert SECRET not in done.stderr + done.stdout


def test_the_seeds_queue_names_are_accepted_and_a_missing_queue_names_both(
    tmp_path: Path,
) -> None:
    missing = _run(tmp_path)
    assert missing.returncode == 2
    assert "HODLAI_DISPATCH_QUEUE_URL (or REMOTE_QUEUE_URL)" in missing.stderr
    assert "HODLAI_DISPATCH_QUEUE_TOKEN (or REMOTE_QUEUE_TOKEN)" in missing.stderr
    bad = _run(tmp_path, REMOTE_QUEUE_URL=f"ftp://user:{SECRET}@queue.example/x?key={SECRET}")
    assert bad.returncode == 2 and "REMOTE_QUEUE_URL" in bad.stderr
    assert SECRET not in bad.stderr
