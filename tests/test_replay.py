"""``hodlai replay ID``: the whole node on anvil answers with the embedded model, and the
replay reproduces the answer and the CID on chain; tampered, forged and unfinished records
are caught, each by the check it fails; exit status 0 / 1 and ``--json``."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from scripts.localnode import Ask, LocalNode
from shared.llm import InferenceRequest, execute_holdai_inference
from shared.llm.backends import LocalBackend
from shared.llm.cid import cid_v1_raw
from shared.llm.trace import canonical_json
from tests.conftest import make_request
from workers.oracle import store
from workers.oracle.store import Status

# Seconds the node gets to fulfil the test's requests: devnet start, model load, answers.
FULFIL_TIMEOUT_S = 120.0
CHECKS = ["answer", "inputs", "onchain_cid", "trace_cid"]


def replay(
    db_path: Path, request_id: int | str, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "HODLAI_DB_PATH": str(db_path), **env}
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", "replay", str(request_id), *args],
        env=environment, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def report(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert "Traceback" not in proc.stderr, proc.stderr
    parsed: dict[str, Any] = json.loads(proc.stdout)
    return parsed


def failing(parsed: dict[str, Any]) -> list[str]:
    return sorted(name for name, check in parsed["checks"].items() if not check["ok"])


def copy_database(source: Path, target: Path) -> sqlite3.Connection:
    """A consistent copy (WAL included) to tamper with, as someone with the file could."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    return sqlite3.connect(target, isolation_level=None)


@pytest.fixture(scope="module")
def fulfilled(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A node on anvil (indexer, one llama shard, fulfiller) that fulfilled two requests."""
    node = LocalNode(
        tmp_path_factory.mktemp("node"), inference_shards=1,
        env_overrides={"HODLAI_LLM_BACKEND": "llama", "HODLAI_LOCAL_MODEL_THREADS": "1",
                       "HODLAI_INFERENCE_POLL_S": "0.05"},
    )  # fmt: skip
    asks = (
        Ask("BNB=571.10 USD; 24h=-9.8%; drawdown=11.4%"),
        Ask("価格=612 📈", actions=('"```"', "BU\u200bY", "BUY", "Buy", "back\\slash")),
    )
    with node:
        node.start_chain()
        node.start_all()
        ids = node.submit(asks)
        deadline = time.monotonic() + FULFIL_TIMEOUT_S
        conn = sqlite3.connect(node.db_path, timeout=10)
        while True:
            with contextlib.suppress(sqlite3.OperationalError):  # not migrated yet
                done = conn.execute(
                    "SELECT COUNT(*) FROM requests WHERE status = 'FULFILLED'"
                ).fetchone()[0]
                if done == len(ids):
                    break
            assert time.monotonic() < deadline, (node.workdir / "logs").as_posix()
            time.sleep(0.2)
        conn.close()
        decisions = node.decisions(ids)
        yield node, ids, decisions


def test_replay_reproduces_the_answer_and_the_cid_on_chain(fulfilled: Any) -> None:
    node, ids, decisions = fulfilled
    for request_id in ids:
        proc = replay(node.db_path, request_id, "--json", **node.env)
        parsed = report(proc)
        assert proc.returncode == 0, parsed
        assert parsed["ok"] and parsed["backend"] == "llama" and failing(parsed) == []
        assert sorted(parsed["checks"]) == CHECKS
        action, cid, _deliveries = decisions[request_id]
        assert parsed["checks"]["onchain_cid"]["found"] == cid  # what the vault received
        assert json.loads(parsed["checks"]["answer"]["found"])["action"] == action


def test_replay_prints_each_check_for_a_person(fulfilled: Any) -> None:
    node, ids, _ = fulfilled
    proc = replay(node.db_path, ids[1], **node.env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in CHECKS:
        assert f"ok   {name}" in proc.stdout
    assert proc.stdout.rstrip().endswith("replay: reproduced")


def test_a_trace_changed_after_the_fact_fails_its_cid(fulfilled: Any, tmp_path: Path) -> None:
    node, ids, _ = fulfilled
    copy = tmp_path / "tampered.db"
    conn = copy_database(node.db_path, copy)
    trace = json.loads(conn.execute(
        "SELECT reasoning FROM requests WHERE request_id = ?", (str(ids[0]),)
    ).fetchone()[0])  # fmt: skip
    trace["timings"]["total_s"] += 1  # any change at all
    conn.execute("UPDATE requests SET reasoning = ? WHERE request_id = ?",
                 (canonical_json(trace), str(ids[0])))  # fmt: skip
    conn.close()
    proc = replay(copy, ids[0], "--json", **{**node.env, "HODLAI_DB_PATH": str(copy)})
    assert proc.returncode == 1
    assert failing(report(proc)) == ["onchain_cid", "trace_cid"]


def test_a_consistently_rewritten_answer_fails_on_chain_and_on_re_run(
    fulfilled: Any, tmp_path: Path
) -> None:
    """Someone rewrites the stored answer and its CID together: the chain and the model
    both disagree."""
    node, ids, _ = fulfilled
    copy = tmp_path / "forged.db"
    conn = copy_database(node.db_path, copy)
    trace = json.loads(conn.execute(
        "SELECT reasoning FROM requests WHERE request_id = ?", (str(ids[0]),)
    ).fetchone()[0])  # fmt: skip
    answer = json.loads(trace["attempts"][-1]["raw"])
    forged = next(a for a in ("BUY", "SELL", "HOLD") if a != answer["action"])
    trace["attempts"][-1]["raw"] = json.dumps({**answer, "action": forged}, ensure_ascii=False)
    trace["action"] = trace["attempts"][-1]["detail"] = forged
    text = canonical_json(trace)
    conn.execute(
        "UPDATE requests SET reasoning = ?, answer_cid = ?, answer_action = ? "
        "WHERE request_id = ?", (text, cid_v1_raw(text.encode()), forged, str(ids[0])),
    )  # fmt: skip
    conn.close()
    proc = replay(copy, ids[0], "--json", **{**node.env, "HODLAI_DB_PATH": str(copy)})
    assert proc.returncode == 1
    assert failing(report(proc)) == ["answer", "onchain_cid"]


def test_another_model_file_is_refused_for_the_re_run(fulfilled: Any, tmp_path: Path) -> None:
    node, ids, _ = fulfilled
    from shared.llm.backends.llama import default_model_path

    path = default_model_path()
    assert path is not None
    other = tmp_path / "other.gguf"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    other.write_bytes(bytes(data))
    proc = replay(node.db_path, ids[0], "--json",
                  **{**node.env, "HODLAI_LOCAL_MODEL_PATH": str(other)})  # fmt: skip
    parsed = report(proc)
    assert proc.returncode == 1 and failing(parsed) == ["answer"]
    assert "SHA-256" in parsed["checks"]["answer"]["detail"]


# --- without a chain: rows written as the inference worker writes them -------------------


async def answered_locally(conn: sqlite3.Connection, request_id: int) -> str:
    """One row answered through the deterministic backend, stored as the worker stores it;
    returns its CID."""
    request = make_request(request_id, state_string="signal=SELL")
    store.insert_request(conn, request, actor="test")
    [row] = store.claim(conn, owner="t", limit=1)
    result = await execute_holdai_inference(
        InferenceRequest(
            request_id=row.request_id, model=row.model, system_prompt=row.system_prompt,
            state_string=row.state_string, action_set=row.action_set,
        ),
        backend=LocalBackend(),
    )  # fmt: skip
    store.transition(
        conn, request_id, Status.PENDING, Status.ANSWERED, actor="t", lease_owner="t",
        generation=row.generation,
        set_columns={"answer_action": result.action, "answer_cid": result.cid,
                     "reasoning": result.trace_json, "answered_at": time.time()},
    )  # fmt: skip
    return result.cid


async def test_an_answer_not_yet_on_chain_fails_only_the_chain_check(
    conn: sqlite3.Connection, db_path: Path
) -> None:
    await answered_locally(conn, 41)
    proc = replay(db_path, 41, "--json")
    parsed = report(proc)
    assert proc.returncode == 1 and parsed["backend"] == "local"
    assert failing(parsed) == ["onchain_cid"]
    assert "not FULFILLED" in parsed["checks"]["onchain_cid"]["detail"]


async def test_the_chain_check_passes_once_the_fulfilment_carries_the_cid(
    conn: sqlite3.Connection, db_path: Path
) -> None:
    cid = await answered_locally(conn, 42)
    store.transition(conn, 42, Status.ANSWERED, Status.FULFILLED, actor="indexer",
                     set_columns={"fulfilled_cid": cid, "fulfilled_action": "SELL"})  # fmt: skip
    proc = replay(db_path, 42, "--json")
    assert proc.returncode == 0, proc.stdout
    assert report(proc)["checks"]["answer"]["found"] == "SELL"  # named in the state


def test_a_request_without_an_answer_or_unknown_is_status_1(
    conn: sqlite3.Connection, db_path: Path
) -> None:
    store.insert_request(conn, make_request(43), actor="test")
    pending = replay(db_path, 43, "--json")
    assert pending.returncode == 1 and "no answer trace" in pending.stdout
    unknown = replay(db_path, 44)
    assert unknown.returncode == 1 and "no request 44" in unknown.stderr
    bad = replay(db_path, "-5")
    assert bad.returncode == 1 and "request id" in bad.stderr
