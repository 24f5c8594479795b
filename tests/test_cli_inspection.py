"""hodlai status / requests / show / retry against a real database, as an operator runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from shared.db import check_identity, connect
from tests.conftest import make_request
from workers.oracle import store
from workers.oracle.store import Status

PROVIDER = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


def _hodlai(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args],
        env={"HODLAI_DB_PATH": str(db), "PATH": "/usr/bin:/bin"},
        cwd=db.parent, capture_output=True, text=True, check=False,
    )  # fmt: skip


def _database(tmp_path: Path) -> Path:
    db = tmp_path / "node.db"
    conn = connect(db)
    check_identity(conn, chain_id=31337, provider_address=PROVIDER)
    store.insert_request(conn, make_request(1), actor="indexer")
    store.insert_request(conn, make_request(2**70, action_set=("UP", "DOWN")), actor="indexer")
    store.transition(conn, 2**70, Status.PENDING, Status.FAILED, actor="inference-0/1",
                     set_columns={"fail_reason": "model 'x' is not served"})  # fmt: skip
    conn.close()
    return db


def test_status_json_reports_counts_identity_and_oldest_pending(tmp_path: Path) -> None:
    proc = _hodlai(_database(tmp_path), "status", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["counts"]["PENDING"] == 1 and info["counts"]["FAILED"] == 1
    assert info["chain_id"] == 31337 and info["provider"] == PROVIDER
    assert info["oldest_pending_age_s"] is not None


def test_requests_filters_by_status(tmp_path: Path) -> None:
    proc = _hodlai(_database(tmp_path), "requests", "--status", "failed", "--json")
    rows = json.loads(proc.stdout)
    assert [r["request_id"] for r in rows] == [str(2**70)]
    assert rows[0]["fail_reason"] == "model 'x' is not served"


def test_show_prints_history_and_retry_reopens_failed_request(tmp_path: Path) -> None:
    db = _database(tmp_path)
    shown = json.loads(_hodlai(db, "show", str(2**70), "--json").stdout)
    assert [h["to_status"] for h in shown["history"]] == ["PENDING", "FAILED"]
    assert shown["action_set"] == ["UP", "DOWN"]
    retried = _hodlai(db, "retry", str(2**70))
    assert retried.returncode == 0 and "FAILED -> PENDING" in retried.stdout
    again = _hodlai(db, "retry", str(2**70))
    assert again.returncode == 1 and "is PENDING, not FAILED" in again.stderr
    text = _hodlai(db, "show", str(2**70)).stdout
    assert "operator" in text and "FAILED" in text


def test_show_of_unknown_request_fails_cleanly(tmp_path: Path) -> None:
    db = _database(tmp_path)
    proc = _hodlai(db, "show", "99")
    assert proc.returncode == 1 and "no request 99" in proc.stderr
    bad = _hodlai(db, "show", "0xzz")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr


def test_migrate_creates_the_schema_and_inspection_never_does(tmp_path: Path) -> None:
    db = tmp_path / "node.db"
    missing = _hodlai(db, "status")
    assert missing.returncode == 2 and "no database at" in missing.stderr
    assert not db.exists()  # inspection created nothing
    created = _hodlai(db, "migrate", "--json")
    assert created.returncode == 0, created.stderr
    report = json.loads(created.stdout)
    assert report["before"] == {} and report["after"]["core"] >= 1
    again = _hodlai(db, "migrate")
    assert again.returncode == 0 and "(unchanged)" in again.stdout
    status = _hodlai(db, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["counts"]["PENDING"] == 0


def test_show_refuses_an_id_with_superscript_digits_in_one_line(tmp_path: Path) -> None:
    # str.isdigit() is True for '²', which int() then refuses: once a traceback.
    done = _hodlai(_database(tmp_path), "show", "²")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "hodlai: request id is not a non-negative decimal integer: '²'"
    ]


def test_status_json_exits_1_like_the_text_form_after_a_deep_reorg(tmp_path: Path) -> None:
    db = _database(tmp_path)
    conn = connect(db)
    conn.execute(
        "INSERT INTO reorgs (detected_at, at_block, depth, deeper_than_confirmations, note) "
        "VALUES (1.0, 5, 9, 1, 'test')"
    )
    conn.close()
    text, as_json = _hodlai(db, "status"), _hodlai(db, "status", "--json")
    assert (text.returncode, as_json.returncode) == (1, 1)
    assert json.loads(as_json.stdout)["deep_reorgs"] == 1
