"""Real ``hodlai inference`` OS processes against the mock server: shards answer every row
exactly once, each by its own shard; a SIGKILLed worker's row is answered once after a
restart; SIGTERM releases work; the chain identity is enforced."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from shared.db import atomic, check_identity, connect
from tests.conftest import make_request
from workers.devnet.mockllm.server import MockLlmServer
from workers.oracle import store
from workers.oracle.request_id import UINT256_MAX

PROVIDER = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


@pytest.fixture
def mock_llm() -> Iterator[MockLlmServer]:
    server = MockLlmServer().start()
    yield server
    server.stop()


class Workers:
    """Starts ``hodlai inference`` processes and makes sure none outlives the test."""

    def __init__(self, tmp_path: Path, db_path: Path, mock: MockLlmServer) -> None:
        self.tmp_path = tmp_path
        self.env = {
            **os.environ,
            "HODLAI_DB_PATH": str(db_path),
            "HODLAI_CHAIN_ID": "31337",
            "HODLAI_PROVIDER_ADDRESS": PROVIDER,
            "HODLAI_LLM_BACKEND": "openai",
            "HODLAI_LLM_BASE_URL": mock.url,
            "HODLAI_LLM_MODEL_MAP": json.dumps({"hodlai-local": "mock-1"}),
            "HODLAI_LLM_TIMEOUT_S": "10",
            "HODLAI_INFERENCE_POLL_S": "0.02",
            "LOG_LEVEL": "INFO",
        }
        self.procs: list[subprocess.Popen[str]] = []

    def start(
        self, worker_id: int, worker_count: int, *, unset: tuple[str, ...] = (), **env: str
    ) -> subprocess.Popen[str]:
        """Start one worker; ``env`` adds variables, ``unset`` removes them."""
        log = self.tmp_path / f"worker-{len(self.procs)}.log"
        environment = {k: v for k, v in {**self.env, **env}.items() if k not in unset}
        proc = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "inference", "--worker-id", str(worker_id),
             "--worker-count", str(worker_count)],
            env=environment, cwd=self.tmp_path, text=True,
            stdout=subprocess.DEVNULL, stderr=log.open("w"),
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def stop_all(self) -> list[int]:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        return [proc.wait(timeout=30) for proc in self.procs]

    def logs(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.tmp_path.glob("worker-*.log")))


@pytest.fixture
def workers(tmp_path: Path, db_path: Path, mock_llm: MockLlmServer) -> Iterator[Workers]:
    group = Workers(tmp_path, db_path, mock_llm)
    yield group
    for proc in group.procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_for(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def count(conn: sqlite3.Connection, status: str) -> int:
    return int(
        conn.execute("SELECT COUNT(*) FROM requests WHERE status = ?", (status,)).fetchone()[0]
    )


def spread_ids(n: int) -> list[int]:
    """Small ids, ids around 2**63 and ids near 2**256 - 1."""
    ids = []
    for i in range(n):
        base = (1, 2**63 - 50, UINT256_MAX - 3 * n)[i % 3]
        ids.append(base + i)
    return ids


@pytest.mark.parametrize("shards", [2, 4])
def test_every_row_is_answered_exactly_once_by_its_own_shard(
    conn: sqlite3.Connection, mock_llm: MockLlmServer, workers: Workers, shards: int
) -> None:
    mock_llm.configure(latency_ms=5)
    ids = spread_ids(300)
    with atomic(conn):
        for n, request_id in enumerate(ids):
            store.insert_request(conn, make_request(request_id, state_string=f"tick {n}"),
                                 actor="test")  # fmt: skip
    for shard in range(shards):
        workers.start(shard, shards)
    wait_for(lambda: count(conn, "ANSWERED") == len(ids))
    assert workers.stop_all() == [0] * shards, workers.logs()
    rows = conn.execute(
        "SELECT entity_id AS request_id, actor FROM transitions WHERE from_status = 'PENDING'"
    ).fetchall()
    per_row = Counter(r["request_id"] for r in rows)
    assert len(per_row) == len(ids) and set(per_row.values()) == {1}
    for row in rows:
        shard = int(row["actor"].split("-")[1].split("/")[0])
        assert row["actor"].startswith(f"inference-{shard}/{shards}:")
        assert int(row["request_id"]) % shards == shard
    assert len({r["actor"] for r in rows}) == shards  # every shard did its part
    assert mock_llm.stats()["requests"] == len(ids)  # no row was sent twice
    assert count(conn, "FAILED") == 0


def test_a_sigkilled_worker_s_row_is_answered_once_after_restart(
    conn: sqlite3.Connection, mock_llm: MockLlmServer, workers: Workers
) -> None:
    store.insert_request(conn, make_request(2**255, state_string="slow [[mock:latency=4000x1]]"),
                         actor="test")  # fmt: skip
    for i in range(1, 21):
        store.insert_request(conn, make_request(i, state_string=f"t{i} [[mock:latency=300]]"),
                             actor="test")  # fmt: skip
    first = workers.start(0, 1, HODLAI_INFERENCE_LEASE_S="2")
    wait_for(lambda: mock_llm.stats()["in_flight"] >= 1 and count(conn, "ANSWERED") >= 1)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    held = store.get_request(conn, 2**255)
    assert held is not None and held["status"] == "PENDING" and held["lease_owner"] is not None
    workers.start(0, 1, HODLAI_INFERENCE_LEASE_S="2")
    wait_for(lambda: count(conn, "ANSWERED") == 21)
    assert workers.stop_all()[-1] == 0
    answers = conn.execute(
        "SELECT entity_id AS request_id, actor FROM transitions WHERE to_status = 'ANSWERED'"
    ).fetchall()
    assert sorted(Counter(r["request_id"] for r in answers).values()) == [1] * 21
    slow = [r["actor"] for r in answers if r["request_id"] == str(2**255)]
    assert slow[0] != held["lease_owner"]  # the restarted worker answered it
    assert f":{first.pid}:" not in slow[0]


def test_sigterm_releases_in_flight_rows_and_exits_cleanly(
    conn: sqlite3.Connection, mock_llm: MockLlmServer, workers: Workers
) -> None:
    store.insert_request(conn, make_request(7, state_string="s [[mock:latency=5000]]"), actor="t")
    proc = workers.start(0, 1, HODLAI_INFERENCE_SHUTDOWN_GRACE_S="0.2")
    wait_for(lambda: mock_llm.stats()["in_flight"] == 1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    row = store.get_request(conn, 7)
    assert row is not None and row["status"] == "PENDING" and row["lease_owner"] is None
    assert "inference_released" in workers.logs()


def test_a_database_of_another_chain_is_refused(conn: sqlite3.Connection, workers: Workers) -> None:
    check_identity(conn, chain_id=56, provider_address=PROVIDER)
    proc = workers.start(0, 1)
    assert proc.wait(timeout=30) == 2
    assert "created for chain 56" in workers.logs()


def test_without_a_chain_id_the_worker_waits_for_the_indexer_to_record_it(
    conn: sqlite3.Connection, workers: Workers
) -> None:
    store.insert_request(conn, make_request(3), actor="t")
    proc = workers.start(0, 1, unset=("HODLAI_CHAIN_ID",))
    wait_for(lambda: "waiting_for_chain_identity" in workers.logs(), timeout=30)
    assert proc.poll() is None and count(conn, "PENDING") == 1
    check_identity(conn, chain_id=97, provider_address=PROVIDER)  # what the indexer does
    wait_for(lambda: count(conn, "ANSWERED") == 1)
    trace = json.loads(conn.execute("SELECT reasoning FROM requests").fetchone()[0])
    assert trace["request"]["chain_id"] == 97
    assert workers.stop_all() == [0]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HODLAI_PROVIDER_ADDRESS": ""}, "HODLAI_PROVIDER_ADDRESS"),
        ({"HODLAI_LLM_MODEL_MAP": "{not json"}, "HODLAI_LLM_MODEL_MAP"),
        ({"HODLAI_LLM_BASE_URL": ""}, "HODLAI_LLM_BASE_URL"),
        ({"HODLAI_LLM_CONSTRAINED": "regex"}, "HODLAI_LLM_CONSTRAINED"),
        ({"HODLAI_LLM_MODEL_MAP": '{"m": 5}'}, "HODLAI_LLM_MODEL_MAP"),
        ({"HODLAI_LLM_TIMEOUT_S": "0"}, "HODLAI_LLM_TIMEOUT_S"),
        ({"HODLAI_WORKER_COUNT": "2", "HODLAI_WORKER_ID": "2"}, "HODLAI_WORKER_ID"),
        ({"HODLAI_LLM_MAX_RESPONSE_BYTES": "10"}, "HODLAI_LLM_MAX_RESPONSE_BYTES"),
        ({"HODLAI_INFERENCE_LIMITS_REFRESH_S": "0"}, "HODLAI_INFERENCE_LIMITS_REFRESH_S"),
    ],
)
def test_bad_settings_stop_the_worker_naming_the_setting(
    tmp_path: Path, db_path: Path, mock_llm: MockLlmServer, env: dict[str, str], message: str
) -> None:
    connect(db_path).close()
    base = Workers(tmp_path, db_path, mock_llm).env
    result = subprocess.run(
        [sys.executable, "-m", "shared.cli", "inference"],
        env={**base, "HODLAI_LLM_API_KEY": "sk-secret-xyz", **env}, cwd=tmp_path,
        check=False, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr
    assert "sk-secret-xyz" not in result.stderr


def test_a_refused_api_key_turns_the_shard_s_healthz_503(
    conn: sqlite3.Connection, mock_llm: MockLlmServer, workers: Workers
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store.insert_request(conn, make_request(1), actor="t")
    mock_llm.configure(behaviour="401")
    workers.start(0, 1, HODLAI_METRICS_PORT=str(port), HODLAI_LLM_API_KEY="sk-wrong-KEY")

    def health() -> tuple[int, str]:
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
        except httpx.HTTPError:
            return 0, ""
        return response.status_code, response.json()["detail"]

    wait_for(lambda: health()[0] == 503, timeout=30)
    assert "HODLAI_LLM_API_KEY" in health()[1] and "401" in health()[1]
    mock_llm.configure(behaviour="ok")
    wait_for(lambda: count(conn, "ANSWERED") == 1 and health()[0] == 200, timeout=60)
    assert workers.stop_all() == [0]
    logs = workers.logs()
    assert '"event": "inference_unhealthy"' in logs and '"level": "error"' in logs
    assert "sk-wrong-KEY" not in logs
