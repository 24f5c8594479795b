"""``hodlai status`` shows the whole node: every executor (enabled or not, health, processes
by their role locks, counts per status of each of its machines, its own figures) and every
poller's lag against its own chain, from one database; the oracle's old fields stay at the
top of ``--json``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest

from shared import halt, state
from shared.config import CoreSettings, load_settings
from shared.db import check_identity, connect, open_readonly
from shared.instance import hold_role
from shared.status import ExecutorReport, PollerChain, StatusContext, StatusProvider, collect
from tests.conftest import make_request
from workers.devnet.anvil import Anvil
from workers.dispatch import agents as registry
from workers.dispatch.machine import JOBS, JobStatus
from workers.oracle import store as oracle_store
from workers.oracle.status import STATUS as ORACLE_STATUS

PROVIDER = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


def _hodlai(db: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args],
        env={"HODLAI_DB_PATH": str(db), "PATH": "/usr/bin:/bin", **extra},
        cwd=db.parent, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def _node(tmp_path: Path) -> Path:
    """One database with both executors' entities: two requests, two agents, three jobs."""
    db = tmp_path / "node.db"
    conn = connect(db)
    check_identity(conn, chain_id=31337, provider_address=PROVIDER)
    oracle_store.insert_request(conn, make_request(1), actor="indexer")
    oracle_store.insert_request(conn, make_request(2), actor="indexer")
    for n in (1, 2):
        registry.register(conn, registry.AgentSpec(
            agent_id=f"a{n}", name=f"a{n}", endpoint=f"http://127.0.0.1:{9000 + n}",
            category="summarize"), actor="test")  # fmt: skip
    now = time.time()
    for job_id in ("j1", "j2", "j3"):
        state.insert(conn, JOBS, {"job_id": job_id, "fetched_at": now, "deadline": now + 60},
                     status=JobStatus.OPEN, actor="test", now=now)  # fmt: skip
    state.transition(conn, JOBS, "j3", JobStatus.OPEN, JobStatus.FAILED, actor="test",
                     set_columns={"fail_code": "no_agents", "delivery_key": "k3"})  # fmt: skip
    conn.close()
    return db


def test_status_shows_every_executor_with_its_counts_from_one_database(tmp_path: Path) -> None:
    done = _hodlai(_node(tmp_path), "status", "--json", HODLAI_DISPATCH_ENABLED="true")
    info = json.loads(done.stdout)
    oracle, dispatch = info["executors"]["oracle"], info["executors"]["dispatch"]
    assert oracle["counts"]["oracle.request"]["PENDING"] == 2
    assert dispatch["counts"]["dispatch.job"] == {
        "OPEN": 2, "DISTRIBUTED": 0, "IN_PROGRESS": 0, "COMPLETED": 0, "FAILED": 1,
        "EXPIRED": 0, "CANCELLED": 0,
    }  # fmt: skip
    assert dispatch["counts"]["dispatch.agent"]["ACTIVE"] == 2
    assert (dispatch["jobs_live"], dispatch["outcomes_undelivered"]) == (2, 1)
    assert oracle["processes"] == {"indexer": "not running", "fulfiller": "not running"}
    assert dispatch["processes"] == {"dispatcher": "not running"}
    # Two live jobs and no agent has passed a health check: they can only expire.
    assert dispatch["health"] == "problem" and oracle["health"] == "ok"
    assert "no active agent has passed a health check" in dispatch["problems"][0]
    assert done.returncode == 1 and info["healthy"] is False
    # The oracle's fields of before stay at the top level.
    assert info["counts"]["PENDING"] == 2 and info["chain_id"] == 31337
    assert info["provider"] == PROVIDER and info["deep_reorgs"] == 0
    text = _hodlai(tmp_path / "node.db", "status", HODLAI_DISPATCH_ENABLED="true")
    assert text.returncode == 1
    assert "dispatch.job" in text.stdout and "oracle.request" in text.stdout
    assert "PROBLEM: 2 live job(s)" in text.stdout


def test_a_switched_off_executor_shows_disabled_and_its_problems_do_not_count(
    tmp_path: Path,
) -> None:
    db = _node(tmp_path)
    done = _hodlai(db, "status", "--json", HODLAI_DISPATCH_ENABLED="false")
    assert done.returncode == 0, done.stdout
    dispatch = json.loads(done.stdout)["executors"]["dispatch"]
    assert (dispatch["enabled"], dispatch["health"], dispatch["problems"]) == (
        False, "disabled", []
    )  # fmt: skip
    assert dispatch["counts"]["dispatch.job"]["OPEN"] == 2  # still shown


def test_a_halted_indexer_is_the_oracles_problem_and_the_pollers_halt(tmp_path: Path) -> None:
    db = _node(tmp_path)
    conn = connect(db)
    halt.halt(conn, "the RPC serves chain 56", worker=halt.INDEXER, at_block=7)
    conn.close()
    done = _hodlai(db, "status", "--json", HODLAI_DISPATCH_ENABLED="false")
    assert done.returncode == 1
    info = json.loads(done.stdout)
    assert info["executors"]["oracle"]["health"] == "problem"
    assert "the indexer is halted" in info["executors"]["oracle"]["problems"][0]
    assert info["pollers"]["indexer"]["halted"] == "the RPC serves chain 56"
    assert info["indexer_halted"] == "the RPC serves chain 56"  # the old top-level field
    off = _hodlai(db, "status", "--json", HODLAI_ORACLE_ENABLED="false",
                  HODLAI_DISPATCH_ENABLED="false")  # fmt: skip
    assert off.returncode == 0


def test_a_running_process_is_seen_by_its_role_lock(tmp_path: Path) -> None:
    db = _node(tmp_path)
    lock = hold_role(db, "dispatcher")
    try:
        info = json.loads(_hodlai(db, "status", "--json").stdout)
    finally:
        lock.release()
    shown = info["executors"]["dispatch"]["processes"]["dispatcher"]
    assert shown.startswith("running (pid ") and f"pid {os.getpid()} " in shown
    after = json.loads(_hodlai(db, "status", "--json").stdout)
    assert after["executors"]["dispatch"]["processes"]["dispatcher"] == "not running"


def _mine(chain: Anvil, blocks: int) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "anvil_mine", "params": [hex(blocks)]}
    assert "error" not in httpx.post(chain.rpc_url, json=body, timeout=10).json()


def _sample_provider(rpc_urls: Sequence[str]) -> StatusProvider:
    def report(ctx: StatusContext) -> ExecutorReport:
        return ExecutorReport(fields={"head_seen": ctx.heads["sample-poller"]},
                              lines=["sample line"])  # fmt: skip

    return StatusProvider(
        executor="sample", report=report,
        pollers=lambda _settings: [PollerChain("sample-poller", rpc_urls)],
    )  # fmt: skip


def test_each_pollers_lag_is_against_its_own_chain(tmp_path: Path) -> None:
    # The oracle's indexer on one anvil, a test executor's poller on another chain id.
    db = _node(tmp_path)
    with Anvil() as oracle_chain, Anvil(chain_id=4242) as other_chain:
        _mine(oracle_chain, 5)
        _mine(other_chain, 30)
        conn = connect(db)
        for name, block in (("indexer", 2), ("sample-poller", 10), ("orphan", 3)):
            conn.execute("INSERT INTO cursors (name, block_number, updated_at) VALUES (?, ?, ?)",
                         (name, block, time.time()))  # fmt: skip
        conn.close()
        settings = load_settings(CoreSettings, db_path=db, rpc_urls=[oracle_chain.rpc_url])
        reader = open_readonly(db)
        try:
            info, text = collect(
                reader, settings, now=time.time(),
                providers=[ORACLE_STATUS, _sample_provider([other_chain.rpc_url])],
                machines={},
            )  # fmt: skip
        finally:
            reader.close()
    pollers = info["pollers"]
    assert (pollers["indexer"]["head"], pollers["indexer"]["lag_blocks"]) == (5, 3)
    assert (pollers["sample-poller"]["head"], pollers["sample-poller"]["lag_blocks"]) == (30, 20)
    assert pollers["sample-poller"]["executor"] == "sample"
    # A cursor no installed executor declares is listed, its head unknown.
    assert pollers["orphan"] == {**pollers["orphan"], "executor": None, "head": None}
    assert info["executors"]["sample"]["head_seen"] == 30
    assert info["chain_head"] == 5 and info["lag_blocks"] == 3  # the oracle's old fields
    assert "sample line" in text and "sample-poller" in text


def test_a_head_that_cannot_be_read_is_unknown_not_an_error(tmp_path: Path) -> None:
    db = _node(tmp_path)
    started = time.monotonic()
    done = _hodlai(db, "status", "--json", HODLAI_RPC_URLS="http://127.0.0.1:9",
                   HODLAI_DISPATCH_ENABLED="false")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["pollers"]["indexer"]["head"] is None
    assert time.monotonic() - started < 30


def test_a_provider_may_not_take_the_cores_top_level_keys(tmp_path: Path) -> None:
    db = _node(tmp_path)
    bad = StatusProvider(
        executor="sample", report=lambda _ctx: ExecutorReport(top_level={"healthy": True})
    )
    reader = open_readonly(db)
    try:
        with pytest.raises(TypeError, match="healthy"):
            collect(reader, load_settings(CoreSettings, db_path=db), now=time.time(),
                    providers=[bad], machines={})  # fmt: skip
    finally:
        reader.close()
