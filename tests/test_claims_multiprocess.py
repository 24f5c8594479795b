"""Four OS processes claim 20,000 PENDING rows at once: each row exactly once, no 'locked'."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from shared.db import atomic, connect
from tests.conftest import make_request
from workers.oracle import store

ROOT = Path(__file__).resolve().parent.parent
ROWS = 20_000


def test_four_processes_claim_every_row_exactly_once(tmp_path: Path) -> None:
    db = tmp_path / "claims.db"
    conn = connect(db)
    with atomic(conn):
        for i in range(ROWS):
            value = i + 1 if i % 2 else 2**63 + i  # half beyond SQLite's signed INTEGER
            store.insert_request(conn, make_request(value, block_number=i // 7, log_index=i % 7),
                                 actor="test")  # fmt: skip
    outs = [tmp_path / f"{p}.ids" for p in range(4)]
    start_at = time.time() + 3.0  # every process started and waiting, even on a busy box
    procs = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "claim_load.py"), str(db), "--owner",
             f"p{p}", "--worker-count", "1", "--limit", "25", "--out", str(out),
             "--start-at", str(start_at)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for p, out in enumerate(outs)
    ]  # fmt: skip
    results = [proc.communicate(timeout=240) for proc in procs]
    for proc, (stdout, stderr) in zip(procs, results, strict=True):
        assert proc.returncode == 0, stderr
        assert "database is locked" not in stderr
        assert json.loads(stdout.splitlines()[-1])["busy_errors"] == 0
    claimed = Counter(line for out in outs for line in out.read_text().split())
    assert len(claimed) == ROWS
    assert max(claimed.values()) == 1
    # every process got a share: they really contended
    assert all(out.read_text() for out in outs)
    owners = {r[0] for r in conn.execute("SELECT DISTINCT lease_owner FROM requests")}
    assert owners == {"p0", "p1", "p2", "p3"}
