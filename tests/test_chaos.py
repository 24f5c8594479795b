"""Chaos: 320 requests while every worker is SIGKILLed and restarted at random moments.

Pass condition (issue 6): every request ends FULFILLED exactly once *on chain* (counted as
HoldAI_ReasoningFulfilled events and as the vault's per-request delivery count), with an
action from its own action set, and no row is left in a non-terminal state.

Marked slow: `make chaos` runs it (about two to three minutes).
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest

from scripts.localnode import Ask, LocalNode
from scripts.rss import PeakTracker
from workers.oracle import store

REQUESTS = 320
# Seconds of random SIGKILLs; each of the 4 processes dies several times in this window.
CHAOS_S = 75.0
# Seconds the node gets after the last restart to finish everything.
SETTLE_S = 180.0
ACTION_SETS = (
    ("BUY", "SELL", "HOLD"),
    ("STAKE", "UNSTAKE", "COMPOUND", "WAIT"),
    ("REBALANCE", "HOLD"),
    ("A", "B", "C", "D", "E", "F", "G", "H", "I", "J"),
)


def _asks() -> list[Ask]:
    return [
        Ask(f"tick {i}: price={500 + i % 97}.{i % 10} ünïcode ✓", actions=ACTION_SETS[i % 4])
        for i in range(REQUESTS)
    ]


@pytest.mark.slow
def test_every_request_fulfilled_exactly_once_while_workers_are_killed(tmp_path: Path) -> None:
    rng = random.Random(20261123)
    node = LocalNode(tmp_path / "node", block_time=1.0, inference_shards=2,
                     env_overrides={"LOG_LEVEL": "INFO"})  # fmt: skip
    peaks = PeakTracker()
    kills: Counter[str] = Counter()
    with node:
        node.start_chain()
        node.start_all()
        asks = _asks()
        ids = node.submit(asks)
        assert len(ids) == REQUESTS
        wanted = dict(zip(ids, asks, strict=True))

        deadline = time.monotonic() + CHAOS_S
        names = list(node.commands())
        while time.monotonic() < deadline:
            peaks.sample({n: p.pid for n, p in node.processes.items()})
            victim = rng.choice(names)
            node.kill(victim)
            kills[victim] += 1
            time.sleep(rng.uniform(0.2, 1.5))
            node.start(victim)
            time.sleep(rng.uniform(0.5, 3.0))
        assert min(kills[n] for n in names) >= 2, kills

        conn = sqlite3.connect(node.db_path, timeout=10)
        conn.row_factory = sqlite3.Row
        settle = time.monotonic() + SETTLE_S
        while time.monotonic() < settle:
            peaks.sample({n: p.pid for n, p in node.processes.items()})
            counts = store.status_counts(conn)
            if counts["FULFILLED"] + counts["FAILED"] >= REQUESTS:
                break
            time.sleep(1.0)

        events = node.fulfilled_events()
        decisions = node.decisions(ids)
        counts = store.status_counts(conn)
        (tmp_path / "chaos.json").write_text(json.dumps({"kills": kills, "peaks_mb": peaks.peaks}))
        print(f"kills={dict(kills)} peak_rss_mb={ {k: round(v) for k, v in peaks.peaks.items()} }")

    per_id = Counter(request_id for request_id, _action, _block in events)
    assert set(per_id) == set(ids), f"missing on chain: {sorted(set(ids) - set(per_id))[:10]}"
    assert max(per_id.values()) == 1, "a request was fulfilled twice on chain"
    for request_id, action, _block in events:
        assert action in wanted[request_id].actions
        assert decisions[request_id][2] == 1
    assert counts == {"PENDING": 0, "ANSWERED": 0, "PROCESSED": 0, "FULFILLED": REQUESTS,
                      "FAILED": 0}  # fmt: skip
    for name, peak in peaks.peaks.items():
        assert peak <= 150, f"{name} peaked at {peak:.0f} MiB"
