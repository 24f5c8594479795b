"""The inference worker against a hostile LLM endpoint (issue 10), in-process on a real SQLite
file, over real HTTP to the mock server: a request that always fails, a bad key, a huge
Retry-After, runaway answers, credentials in the base URL."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from structlog.testing import capture_logs

from shared.metrics import serve
from tests.conftest import make_request
from tests.test_inference_worker import Harness, count, until
from workers.devnet.mockllm.server import MockLlmServer, authorization_fingerprint
from workers.oracle import store
from workers.oracle.inference.health import InferenceHealth
from workers.oracle.inference.worker import RETRY_AFTER_CAP_S

HEALTHY = 12


@pytest.fixture
def mock_llm() -> Iterator[MockLlmServer]:
    server = MockLlmServer().start()
    yield server
    server.stop()


@pytest.fixture
async def harnesses() -> AsyncIterator[list[Harness]]:
    started: list[Harness] = []
    yield started
    for harness in started:
        if not harness.stop.is_set():
            await harness.finish(grace_s=0)


def add_healthy(conn: sqlite3.Connection, first: int = 2) -> list[int]:
    ids = list(range(first, first + HEALTHY))
    for i in ids:
        store.insert_request(conn, make_request(i, state_string=f"fine {i}"), actor="t")
    return ids


@pytest.mark.parametrize("failure", ["500", "hang"])
async def test_a_request_that_always_fails_does_not_stall_its_shard(
    conn: sqlite3.Connection,
    db_path: Path,
    mock_llm: MockLlmServer,
    harnesses: list[Harness],
    failure: str,
) -> None:
    mock_llm.configure(hang_s=3.0)
    store.insert_request(conn, make_request(1, state_string=f"p [[mock:{failure}]]"), actor="t")
    harness = Harness(db_path, mock_llm, timeout_s=0.4, poison_strikes=3).start()
    harnesses.append(harness)
    # the failing request is the oldest row, tried first and failing before the others exist
    await until(lambda: harness.worker.paused)
    add_healthy(conn)
    began = time.monotonic()
    await until(lambda: count(conn, "ANSWERED") == HEALTHY, within_s=10)
    assert time.monotonic() - began < 6  # not behind the failing one's pauses
    await until(lambda: count(conn, "FAILED") == 1, within_s=20)
    row = store.get_request(conn, 1)
    assert row is not None and row["status"] == "FAILED"
    assert "failed this request 3 times while answering others" in row["fail_reason"]
    assert ("timed out" if failure == "hang" else "answered 500") in row["fail_reason"]
    audit = store.history(conn, 1)[-1]
    assert (audit["from_status"], audit["to_status"]) == ("PENDING", "FAILED")
    assert audit["actor"] == harness.config.owner


async def test_an_outage_still_fails_nothing_while_probes_rotate(
    conn: sqlite3.Connection, db_path: Path, mock_llm: MockLlmServer, harnesses: list[Harness]
) -> None:
    for i in range(1, 7):
        store.insert_request(conn, make_request(i), actor="t")
    mock_llm.configure(behaviour="500")
    harness = Harness(db_path, mock_llm, max_concurrency=1, claim_batch=1, poison_strikes=2)
    with capture_logs() as logs:
        harnesses.append(harness.start())
        await until(lambda: mock_llm.stats()["requests"] >= 3, within_s=10)
        await asyncio.sleep(0.1)
    assert count(conn, "FAILED") == 0  # nobody answered: an outage, not a poison request
    tried = [e["request_id"] for e in logs if e["event"] == "llm_unavailable"]
    assert len(tried) == len(set(tried)) >= 3  # each probe was another request
    mock_llm.configure(behaviour="ok")
    await until(lambda: count(conn, "ANSWERED") == 6)


async def test_a_huge_retry_after_is_capped_and_the_probe_rotates(
    conn: sqlite3.Connection, db_path: Path, mock_llm: MockLlmServer, harnesses: list[Harness]
) -> None:
    store.insert_request(conn, make_request(1, state_string="r [[mock:429:99999]]"), actor="t")
    harness = Harness(db_path, mock_llm)
    with capture_logs() as logs:
        harnesses.append(harness.start())
        await until(lambda: harness.worker.paused)
    pauses = [e["pause_s"] for e in logs if e["event"] == "llm_unavailable"]
    assert pauses and max(pauses) <= RETRY_AFTER_CAP_S <= 120


async def test_after_a_retry_after_the_next_probe_is_another_request(
    conn: sqlite3.Connection, db_path: Path, mock_llm: MockLlmServer, harnesses: list[Harness]
) -> None:
    store.insert_request(conn, make_request(1, state_string="r [[mock:429:1]]"), actor="t")
    harness = Harness(db_path, mock_llm).start()
    harnesses.append(harness)
    await until(lambda: harness.worker.paused)
    add_healthy(conn)
    await until(lambda: count(conn, "ANSWERED") == HEALTHY, within_s=10)
    # a rate limit says nothing about the request: it waits, it is not failed
    row = store.get_request(conn, 1)
    assert row is not None and row["status"] == "PENDING" and row["attempts"] == 0


async def test_a_refused_api_key_makes_health_503_with_the_reason(
    conn: sqlite3.Connection, db_path: Path, mock_llm: MockLlmServer, harnesses: list[Harness]
) -> None:
    store.insert_request(conn, make_request(1), actor="t")
    mock_llm.configure(behaviour="401")
    health = InferenceHealth(stale_after_s=30)
    server = serve(0, health)
    url = f"http://127.0.0.1:{server.server_port}/healthz"
    try:
        with capture_logs() as logs:
            harnesses.append(Harness(db_path, mock_llm, health=health).start())
            await until(lambda: mock_llm.stats()["requests"] >= 1)
            await asyncio.sleep(0.2)
            async with httpx.AsyncClient() as http:
                response = await http.get(url)
            assert response.status_code == 503
            detail = response.json()["detail"]
            assert "401" in detail and "HODLAI_LLM_API_KEY" in detail
            assert any(
                e["event"] == "llm_access_denied" and e["log_level"] == "error" for e in logs
            )
            mock_llm.configure(behaviour="ok")
            await until(lambda: count(conn, "ANSWERED") == 1, within_s=40)
            await asyncio.sleep(0.2)
            async with httpx.AsyncClient() as http:
                assert (await http.get(url)).status_code == 200
    finally:
        server.shutdown()
    assert count(conn, "FAILED") == 0


async def test_a_runaway_answer_is_cut_and_never_fed_back(
    conn: sqlite3.Connection, db_path: Path, mock_llm: MockLlmServer, harnesses: list[Harness]
) -> None:
    store.insert_request(conn, make_request(1, state_string="big [[mock:huge]]"), actor="t")
    harnesses.append(Harness(db_path, mock_llm, timeout_s=20).start())
    await until(lambda: count(conn, "FAILED") == 1, within_s=60)
    stats = mock_llm.stats()
    assert stats["requests"] == 3
    assert stats["max_request_bytes"] < 16_000  # attempts 2 and 3 did not carry the answer
    assert stats["aborted"] >= 1  # the node hung up instead of reading 10 MB
    assert stats["huge_sent_bytes"] < 3 * 10_000_000 / 2
    row = store.get_request(conn, 1)
    assert row is not None and len(row["reasoning"]) < 32_000
    assert "larger than" in row["fail_reason"]
    trace = json.loads(row["reasoning"])
    assert [a["outcome"] for a in trace["attempts"]] == ["bad_answer"] * 3
    shown = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "shared.cli", "show", "1", "--json"],
        env={"HODLAI_DB_PATH": str(db_path), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert len(shown.stdout) < 64_000


async def test_a_long_answer_under_the_cap_is_cut_in_the_trace_and_the_feedback(
    conn: sqlite3.Connection, db_path: Path, mock_llm: MockLlmServer, harnesses: list[Harness]
) -> None:
    store.insert_request(conn, make_request(1, state_string="l [[mock:huge=30000]]"), actor="t")
    harnesses.append(Harness(db_path, mock_llm).start())
    await until(lambda: count(conn, "FAILED") == 1)
    assert mock_llm.stats()["max_request_bytes"] < 16_000
    row = store.get_request(conn, 1)
    assert row is not None
    attempts = json.loads(row["reasoning"])["attempts"]
    assert len(attempts) == 3
    for attempt in attempts:
        assert len(attempt["raw"]) <= 2_000
        assert attempt["raw_cut"] == {"kept_chars": len(attempt["raw"]), "full_chars": 30_000}


async def test_the_trace_shows_the_endpoint_without_credentials(
    conn: sqlite3.Connection, db_path: Path, mock_llm: MockLlmServer, harnesses: list[Harness]
) -> None:
    store.insert_request(conn, make_request(1), actor="t")
    secret_url = mock_llm.url.replace("http://", "http://node:PASSWORD-1@") + "?key=TOKEN-2"
    harnesses.append(Harness(db_path, mock_llm, base_url=secret_url).start())
    await until(lambda: count(conn, "ANSWERED") == 1)
    row = store.get_request(conn, 1)
    assert row is not None
    assert "PASSWORD-1" not in row["reasoning"] and "TOKEN-2" not in row["reasoning"]
    endpoint = json.loads(row["reasoning"])["backend"]["params"]["endpoint"]
    assert endpoint == mock_llm.url + "/chat/completions"
    seen = json.dumps(mock_llm.stats())
    assert "PASSWORD-1" not in seen and "node:" not in seen
    basic = "Basic " + base64.b64encode(b"node:PASSWORD-1").decode()
    assert mock_llm.stats()["authorization"] == {authorization_fingerprint(basic): 1}


async def test_the_last_row_of_a_shard_failing_alone_ends_failed_after_the_bound(
    conn: sqlite3.Connection, db_path: Path, mock_llm: MockLlmServer, harnesses: list[Harness]
) -> None:
    store.insert_request(conn, make_request(1, state_string="p [[mock:500]]"), actor="t")
    harness = Harness(db_path, mock_llm, poison_strikes=3, poison_alone_after_s=2.0)
    harnesses.append(harness.start())
    await until(lambda: count(conn, "FAILED") == 1, within_s=20)
    row = store.get_request(conn, 1)
    assert row is not None and "answered nothing else meanwhile" in row["fail_reason"]
    assert "answered 500" in row["fail_reason"]


async def test_a_refused_key_never_fails_a_request_however_long_it_lasts(
    conn: sqlite3.Connection, db_path: Path, mock_llm: MockLlmServer, harnesses: list[Harness]
) -> None:
    store.insert_request(conn, make_request(1), actor="t")
    mock_llm.configure(behaviour="401")
    harness = Harness(db_path, mock_llm, poison_strikes=2, poison_alone_after_s=0.5)
    harnesses.append(harness.start())
    await until(lambda: mock_llm.stats()["requests"] >= 4, within_s=20)
    assert count(conn, "PENDING") == 1 and count(conn, "FAILED") == 0


async def test_stop_releases_parked_rows(
    conn: sqlite3.Connection, db_path: Path, mock_llm: MockLlmServer
) -> None:
    store.insert_request(conn, make_request(1, state_string="p [[mock:500]]"), actor="t")
    harness = Harness(db_path, mock_llm).start()
    await until(lambda: harness.worker.paused)
    held = store.get_request(conn, 1)
    assert held is not None and held["lease_owner"] == harness.config.owner  # parked, held
    await harness.finish(grace_s=0)
    row = store.get_request(conn, 1)
    assert row is not None and row["status"] == "PENDING" and row["lease_owner"] is None


async def test_with_the_parking_full_probes_rotate_among_the_parked_rows(
    conn: sqlite3.Connection, db_path: Path, mock_llm: MockLlmServer, harnesses: list[Harness]
) -> None:
    for i in range(1, 6):
        store.insert_request(conn, make_request(i), actor="t")
    mock_llm.configure(behaviour="500")
    harness = Harness(db_path, mock_llm, max_concurrency=1, claim_batch=1, max_parked=2)
    with capture_logs() as logs:
        harnesses.append(harness.start())
        await until(lambda: mock_llm.stats()["requests"] >= 3, within_s=15)
        await asyncio.sleep(0.1)
    tried = [int(e["request_id"]) for e in logs if e["event"] == "llm_unavailable"]
    assert tried[:3] == [1, 2, 1]  # the parked rows in turn; the others wait unleased
    leased = conn.execute("SELECT COUNT(*) FROM requests WHERE lease_owner IS NOT NULL")
    assert leased.fetchone()[0] <= 2
    mock_llm.configure(behaviour="ok")
    await until(lambda: count(conn, "ANSWERED") == 5, within_s=40)
