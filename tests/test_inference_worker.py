"""The inference worker in-process, on a real SQLite file, against the mock server over
real HTTP: sharding, bounded concurrency, fencing, outages, budgets, leases, draining."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from shared.db import AsyncDatabase, connect
from shared.llm.backends import OpenAIBackend
from shared.llm.cid import cid_v1_raw
from shared.runtime import run_loop
from tests.conftest import make_request
from workers.devnet.mockllm.server import MockLlmServer
from workers.oracle import store
from workers.oracle.inference.health import InferenceHealth
from workers.oracle.inference.worker import InferenceWorker, WorkerConfig
from workers.oracle.store import Status

PROVIDER = "0x" + "5f" * 20


@pytest.fixture
def mock_llm() -> Iterator[MockLlmServer]:
    server = MockLlmServer().start()
    yield server
    server.stop()


class Harness:
    """One worker on its own DB connection, run by the real run_loop in a task."""

    def __init__(
        self,
        db_path: Path,
        mock: MockLlmServer,
        *,
        base_url: str | None = None,
        timeout_s: float = 5.0,
        health: InferenceHealth | None = None,
        **config: Any,
    ) -> None:
        fields: dict[str, Any] = {
            "owner": "inference-0/1:test", "shard": 0, "worker_count": 1, "chain_id": 31337,
            "provider": PROVIDER, "max_concurrency": 4, "attempts": 3, "lease_s": 10.0,
            "claim_batch": 4, "poll_s": 0.02,
        }  # fmt: skip
        fields.update(config)
        self.config = WorkerConfig(**fields)
        self.adb = AsyncDatabase(connect(db_path))
        self.backend = OpenAIBackend(
            base_url=base_url or mock.url, model_map={"hodlai-local": "mock-1"},
            timeout_s=timeout_s,
        )  # fmt: skip
        self.stop = asyncio.Event()
        self.worker = InferenceWorker(
            self.config, adb=self.adb, backend=self.backend, stop=self.stop, health=health
        )
        self.loop: asyncio.Task[None] | None = None

    def start(self) -> Harness:
        self.loop = asyncio.create_task(run_loop("inference", self.worker.step, stop=self.stop))
        return self

    async def finish(self, grace_s: float = 5.0) -> None:
        self.stop.set()
        assert self.loop is not None
        await self.loop
        await self.worker.drain(grace_s)
        await self.backend.aclose()
        self.adb.close()


@pytest.fixture
async def harnesses() -> AsyncIterator[list[Harness]]:
    started: list[Harness] = []
    yield started
    for harness in started:
        if not harness.stop.is_set():
            await harness.finish(grace_s=0)


async def until(check: Callable[[], bool], within_s: float = 15.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def count(conn: sqlite3.Connection, status: str) -> int:
    return int(
        conn.execute("SELECT COUNT(*) FROM requests WHERE status = ?", (status,)).fetchone()[0]
    )


def answered_audit(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT entity_id AS request_id, actor FROM transitions WHERE to_status = 'ANSWERED'"
    ).fetchall()


async def test_answers_only_its_shard_within_the_concurrency_bound(
    conn: sqlite3.Connection, db_path: Path, mock_llm: MockLlmServer, harnesses: list[Harness]
) -> None:
    mock_llm.configure(latency_ms=50)
    ids = [i for i in range(1, 41)] + [2**64 + 2, 2**256 - 2]
    for request_id in ids:
        store.insert_request(conn, make_request(request_id), actor="test")
    harness = Harness(db_path, mock_llm, shard=0, worker_count=2, owner="inference-0/2:t").start()
    harnesses.append(harness)
    evens = [i for i in ids if i % 2 == 0]
    await until(lambda: count(conn, "ANSWERED") == len(evens))
    await asyncio.sleep(0.2)  # nothing more gets answered
    assert count(conn, "ANSWERED") == len(evens)
    assert {int(r["request_id"]) for r in answered_audit(conn)} == set(evens)
    assert all(r["actor"] == "inference-0/2:t" for r in answered_audit(conn))
    odd = conn.execute("SELECT lease_owner FROM requests WHERE status = 'PENDING'").fetchall()
    assert len(odd) == len(ids) - len(evens) and all(r[0] is None for r in odd)
    assert 2 <= mock_llm.stats()["max_in_flight"] <= 4
    row = store.get_request(conn, 2**256 - 2)
    assert row is not None and row["answer_action"] in ("BUY", "SELL", "HOLD")
    assert row["answer_cid"] == cid_v1_raw(row["reasoning"].encode("utf-8"))
    assert json.loads(row["reasoning"])["request"]["request_id"] == str(2**256 - 2)
    assert row["lease_owner"] is None and row["attempts"] == 1


async def test_invalid_requests_fail_with_a_reason_and_no_llm_call(
    conn: sqlite3.Connection, db_path: Path, mock_llm: MockLlmServer, harnesses: list[Harness]
) -> None:
    bad = {
        1: make_request(1, action_set=()),
        2: make_request(2, action_set=("BUY", "BUY")),
        3: make_request(3, model="gpt-not-served"),
        4: make_request(4, state_string="x" * 3000),
        5: make_request(5, action_set=tuple(f"A{i}" for i in range(11))),
        6: make_request(6, system_prompt="\x07 bell"),
    }
    for request in bad.values():
        store.insert_request(conn, request, actor="test")
    harnesses.append(Harness(db_path, mock_llm).start())
    await until(lambda: count(conn, "FAILED") == len(bad))
    reasons = {
        int(r[0]): r[1] for r in conn.execute("SELECT request_id, fail_reason FROM requests")
    }
    assert "actionSet is empty" in reasons[1]
    assert "more than once" in reasons[2]
    assert "not served" in reasons[3]
    assert "stateString is 3000 bytes" in reasons[4]
    assert "11 items" in reasons[5]
    assert "control character" in reasons[6]
    assert all(reason.startswith("invalid request: ") for reason in reasons.values())
    assert mock_llm.stats()["requests"] == 0


async def test_a_bad_answer_is_retried_and_a_hopeless_one_fails_with_its_trace(
    conn: sqlite3.Connection, db_path: Path, mock_llm: MockLlmServer, harnesses: list[Harness]
) -> None:
    store.insert_request(conn, make_request(1, state_string="a [[mock:outside@1]]"), actor="t")
    store.insert_request(conn, make_request(2, state_string="b [[mock:words]]"), actor="t")
    harnesses.append(Harness(db_path, mock_llm).start())
    await until(lambda: count(conn, "ANSWERED") == 1 and count(conn, "FAILED") == 1)
    retried = store.get_request(conn, 1)
    assert retried is not None and retried["attempts"] == 2
    failed = store.get_request(conn, 2)
    assert failed is not None and failed["attempts"] == 3
    assert "no valid answer in 3 attempt(s)" in failed["fail_reason"]
    trace = json.loads(failed["reasoning"])
    assert [a["outcome"] for a in trace["attempts"]] == ["bad_answer"] * 3
    assert failed["answer_action"] is None and failed["answer_cid"] is None


async def test_the_attempt_budget_survives_a_restart(
    conn: sqlite3.Connection, db_path: Path, mock_llm: MockLlmServer, harnesses: list[Harness]
) -> None:
    store.insert_request(conn, make_request(9, state_string="c [[mock:outside]]"), actor="t")
    # a previous worker spent two attempts, then died
    store.claim(conn, owner="dead", lease_seconds=60)
    store.record_attempts(conn, 9, owner="dead", attempts=2)
    store.release(conn, [9], owner="dead")
    harnesses.append(Harness(db_path, mock_llm).start())
    await until(lambda: count(conn, "FAILED") == 1)
    assert mock_llm.stats()["requests"] == 1
    row = store.get_request(conn, 9)
    assert row is not None and "in 3 attempt(s)" in row["fail_reason"]


async def test_an_llm_outage_pauses_the_worker_and_fails_nothing(
    conn: sqlite3.Connection, db_path: Path, mock_llm: MockLlmServer, harnesses: list[Harness]
) -> None:
    for i in range(1, 13):
        store.insert_request(conn, make_request(i), actor="t")
    mock_llm.configure(behaviour="500")
    harness = Harness(db_path, mock_llm).start()
    harnesses.append(harness)
    with capture_logs() as logs:
        await asyncio.sleep(1.6)
        during = mock_llm.stats()["requests"]
        assert harness.worker.paused
        assert count(conn, "PENDING") == 12 and count(conn, "FAILED") == 0
        # first wave (4 in flight) + a single probe per pause (0.5 s, 1 s): not a flood
        assert 4 <= during <= 7
        spent = conn.execute("SELECT MAX(attempts) FROM requests").fetchone()[0]
        assert spent == 0  # an outage spends no attempt budget
        mock_llm.configure(behaviour="ok")
        await until(lambda: count(conn, "ANSWERED") == 12)
    assert "llm_unavailable" in {e["event"] for e in logs}
    assert all(
        e.get("kind") == "LlmTransportError" for e in logs if e["event"] == "llm_unavailable"
    )


async def test_retry_after_from_a_429_is_honoured(
    conn: sqlite3.Connection, db_path: Path, mock_llm: MockLlmServer, harnesses: list[Harness]
) -> None:
    store.insert_request(conn, make_request(1), actor="t")
    mock_llm.script("429:1.5")
    began = time.time()
    harnesses.append(Harness(db_path, mock_llm).start())
    await until(lambda: count(conn, "ANSWERED") == 1)
    row = store.get_request(conn, 1)
    assert row is not None and row["answered_at"] - began >= 1.4
    assert mock_llm.stats()["requests"] == 2 and row["attempts"] == 1


async def test_a_request_the_endpoint_always_fails_is_failed_as_poison(
    conn: sqlite3.Connection, db_path: Path, mock_llm: MockLlmServer, harnesses: list[Harness]
) -> None:
    store.insert_request(conn, make_request(1, state_string="p [[mock:500]]"), actor="t")
    for i in range(2, 8):
        store.insert_request(conn, make_request(i, state_string=f"fine {i}"), actor="t")
    harnesses.append(Harness(db_path, mock_llm, poison_strikes=3, max_concurrency=2).start())
    await until(lambda: count(conn, "FAILED") == 1 and count(conn, "ANSWERED") == 6)
    row = store.get_request(conn, 1)
    assert row is not None and "failed this request 3 times" in row["fail_reason"]


async def test_leases_are_renewed_during_a_long_call(
    conn: sqlite3.Connection, db_path: Path, mock_llm: MockLlmServer, harnesses: list[Harness]
) -> None:
    store.insert_request(
        conn, make_request(1, state_string="slow [[mock:latency=2500]]"), actor="t"
    )
    harnesses.append(Harness(db_path, mock_llm, lease_s=1.0).start())
    await asyncio.sleep(1.8)  # well past the first lease
    assert store.claim(conn, owner="rival", lease_seconds=5) == []
    await until(lambda: count(conn, "ANSWERED") == 1)
    assert len(answered_audit(conn)) == 1
    assert mock_llm.stats()["requests"] == 1


async def test_a_worker_that_lost_its_lease_cannot_answer(
    conn: sqlite3.Connection, db_path: Path, mock_llm: MockLlmServer, harnesses: list[Harness]
) -> None:
    store.insert_request(conn, make_request(1, state_string="s [[mock:latency=800]]"), actor="t")
    harness = Harness(db_path, mock_llm, lease_s=30.0).start()
    harnesses.append(harness)
    await until(lambda: mock_llm.stats()["in_flight"] == 1)
    # the rival sees the lease as expired (its clock is far ahead) and takes the row
    assert len(store.claim(conn, owner="rival", lease_seconds=600, now=time.time() + 100)) == 1
    with capture_logs() as logs:
        await asyncio.sleep(1.2)
    assert answered_audit(conn) == []
    row = store.get_request(conn, 1)
    assert row is not None and row["status"] == "PENDING" and row["lease_owner"] == "rival"
    assert "inference_result_dropped" in {e["event"] for e in logs}


async def test_content_replaced_by_a_reorg_mid_call_is_not_answered(
    conn: sqlite3.Connection, db_path: Path, mock_llm: MockLlmServer, harnesses: list[Harness]
) -> None:
    store.insert_request(conn, make_request(1, state_string="s [[mock:latency=600]]"), actor="t")
    harnesses.append(Harness(db_path, mock_llm).start())
    await until(lambda: mock_llm.stats()["in_flight"] == 1)
    store.transition(conn, 1, Status.PENDING, Status.PENDING, actor="indexer",
                     set_columns={"generation": 2, "state_string": "new content"})  # fmt: skip
    await asyncio.sleep(1.0)
    assert answered_audit(conn) == []


async def test_stop_lets_calls_finish_within_the_grace_period(
    conn: sqlite3.Connection, db_path: Path, mock_llm: MockLlmServer
) -> None:
    store.insert_request(conn, make_request(1, state_string="s [[mock:latency=400]]"), actor="t")
    harness = Harness(db_path, mock_llm).start()
    await until(lambda: mock_llm.stats()["in_flight"] == 1)
    await harness.finish(grace_s=5.0)
    assert count(conn, "ANSWERED") == 1


async def test_stop_releases_calls_that_outlast_the_grace_period(
    conn: sqlite3.Connection, db_path: Path, mock_llm: MockLlmServer
) -> None:
    for i in (1, 2):
        store.insert_request(conn, make_request(i, state_string=f"{i} [[mock:latency=3000]]"),
                             actor="t")  # fmt: skip
    harness = Harness(db_path, mock_llm).start()
    await until(lambda: mock_llm.stats()["in_flight"] == 2)
    began = time.monotonic()
    await harness.finish(grace_s=0.2)
    assert time.monotonic() - began < 2.0
    rows = conn.execute("SELECT status, lease_owner, attempts FROM requests").fetchall()
    assert [tuple(r) for r in rows] == [("PENDING", None, 0), ("PENDING", None, 0)]


async def test_each_spent_attempt_is_written_before_the_next_call(
    conn: sqlite3.Connection, db_path: Path, mock_llm: MockLlmServer, harnesses: list[Harness]
) -> None:
    state = "s [[mock:outside@1]] [[mock:latency=1000@2]]"
    store.insert_request(conn, make_request(1, state_string=state), actor="t")
    harnesses.append(Harness(db_path, mock_llm).start())
    await until(lambda: mock_llm.stats()["requests"] == 2 and mock_llm.stats()["in_flight"] == 1)
    row = store.get_request(conn, 1)
    assert row is not None and row["attempts"] == 1 and row["status"] == "PENDING"
    await until(lambda: count(conn, "ANSWERED") == 1)
    row = store.get_request(conn, 1)
    assert row is not None and row["attempts"] == 2


async def test_answers_are_pinned_to_ipfs_and_a_dead_ipfs_blocks_nothing(
    conn: sqlite3.Connection, db_path: Path, mock_llm: MockLlmServer, harnesses: list[Harness]
) -> None:
    from tests.test_llm_ipfs import FakeKubo

    kubo = FakeKubo()
    try:
        store.insert_request(conn, make_request(1), actor="t")
        harnesses.append(Harness(db_path, mock_llm, ipfs_api_url=kubo.url).start())
        await until(lambda: count(conn, "ANSWERED") == 1 and len(kubo.received) == 1)
        row = store.get_request(conn, 1)
        assert row is not None and kubo.received[0][1] == row["reasoning"].encode("utf-8")
    finally:
        kubo.server.shutdown()
        kubo.server.server_close()
    await harnesses[0].finish()
    store.insert_request(conn, make_request(2), actor="t")
    dead = Harness(db_path, mock_llm, ipfs_api_url=kubo.url, owner="inference-0/1:b").start()
    harnesses.append(dead)
    await until(lambda: count(conn, "ANSWERED") == 2)
