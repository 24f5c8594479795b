"""The state machine on a real SQLite file: transitions, audit, leases, fencing."""

from __future__ import annotations

import sqlite3

import pytest

from shared.errors import LeaseLostError, TransitionConflict
from tests.conftest import make_request
from workers.oracle import store
from workers.oracle.store import Status


def _audit(conn: sqlite3.Connection, request_id: int) -> list[tuple[str | None, str, str]]:
    return [(r["from_status"], r["to_status"], r["actor"]) for r in store.history(conn, request_id)]


def test_insert_creates_pending_row_with_audit_row(conn: sqlite3.Connection) -> None:
    assert store.insert_request(conn, make_request(7), actor="indexer")
    row = store.get_request(conn, 7)
    assert row is not None and row["status"] == "PENDING" and row["generation"] == 1
    assert _audit(conn, 7) == [(None, "PENDING", "indexer")]


def test_insert_of_existing_id_changes_nothing(conn: sqlite3.Connection) -> None:
    assert store.insert_request(conn, make_request(7, state_string="a"), actor="indexer")
    assert not store.insert_request(conn, make_request(7, state_string="b"), actor="indexer")
    row = store.get_request(conn, 7)
    assert row is not None and row["state_string"] == "a"
    assert len(_audit(conn, 7)) == 1


def test_every_transition_writes_one_audit_row(conn: sqlite3.Connection) -> None:
    store.insert_request(conn, make_request(1), actor="indexer")
    store.transition(conn, 1, Status.PENDING, Status.ANSWERED, actor="inference-0",
                     set_columns={"answer_action": "BUY"})  # fmt: skip
    store.transition(conn, 1, Status.ANSWERED, Status.PROCESSED, actor="fulfiller")
    store.transition(conn, 1, Status.PROCESSED, Status.FULFILLED, actor="indexer")
    assert _audit(conn, 1) == [
        (None, "PENDING", "indexer"),
        ("PENDING", "ANSWERED", "inference-0"),
        ("ANSWERED", "PROCESSED", "fulfiller"),
        ("PROCESSED", "FULFILLED", "indexer"),
    ]


def test_transition_from_wrong_status_is_rejected_and_not_audited(
    conn: sqlite3.Connection,
) -> None:
    store.insert_request(conn, make_request(1), actor="indexer")
    with pytest.raises(TransitionConflict, match="is PENDING, not ANSWERED"):
        store.transition(conn, 1, Status.ANSWERED, Status.PROCESSED, actor="fulfiller")
    assert len(_audit(conn, 1)) == 1
    row = store.get_request(conn, 1)
    assert row is not None and row["status"] == "PENDING"


def test_transition_outside_the_state_machine_is_a_programming_error(
    conn: sqlite3.Connection,
) -> None:
    store.insert_request(conn, make_request(1), actor="indexer")
    with pytest.raises(ValueError, match="not in the state machine"):
        store.transition(conn, 1, Status.PENDING, Status.PROCESSED, actor="x")


def test_transition_refuses_unknown_columns(conn: sqlite3.Connection) -> None:
    store.insert_request(conn, make_request(1), actor="indexer")
    with pytest.raises(ValueError, match="may not set"):
        store.transition(conn, 1, Status.PENDING, Status.ANSWERED, actor="x",
                         set_columns={"status": "FULFILLED"})  # fmt: skip


def test_transition_of_missing_request_says_so(conn: sqlite3.Connection) -> None:
    with pytest.raises(TransitionConflict, match="does not exist"):
        store.transition(conn, 99, Status.PENDING, Status.ANSWERED, actor="x")


def test_claim_leases_rows_in_chain_order_and_never_twice(conn: sqlite3.Connection) -> None:
    for i in range(1, 6):
        store.insert_request(conn, make_request(i, block_number=100 - i), actor="indexer")
    first = store.claim(conn, owner="a", limit=3, now=1000.0)
    second = store.claim(conn, owner="b", limit=10, now=1000.0)
    assert [c.request_id for c in first] == [5, 4, 3]
    assert [c.request_id for c in second] == [2, 1]
    assert store.claim(conn, owner="c", limit=10, now=1000.0) == []


def test_abandoned_lease_is_taken_by_another_worker_after_expiry(
    conn: sqlite3.Connection,
) -> None:
    store.insert_request(conn, make_request(1), actor="indexer")
    assert [c.request_id for c in store.claim(conn, owner="dead", lease_seconds=30, now=0.0)] == [1]
    assert store.claim(conn, owner="alive", lease_seconds=30, now=29.0) == []
    taken = store.claim(conn, owner="alive", lease_seconds=30, now=31.0)
    assert [c.request_id for c in taken] == [1]
    assert taken[0].lease_owner == "alive"


def test_stale_owner_completion_is_rejected(conn: sqlite3.Connection) -> None:
    store.insert_request(conn, make_request(1), actor="indexer")
    store.claim(conn, owner="dead", lease_seconds=30, now=0.0)
    store.claim(conn, owner="alive", lease_seconds=30, now=31.0)
    with pytest.raises(LeaseLostError, match="held by 'alive'"):
        store.transition(conn, 1, Status.PENDING, Status.ANSWERED, actor="dead",
                         lease_owner="dead", set_columns={"answer_action": "SELL"})  # fmt: skip
    store.transition(conn, 1, Status.PENDING, Status.ANSWERED, actor="alive",
                     lease_owner="alive", set_columns={"answer_action": "BUY"})  # fmt: skip
    row = store.get_request(conn, 1)
    assert row is not None and row["answer_action"] == "BUY"
    assert row["lease_owner"] is None and row["lease_until"] is None
    assert [t[2] for t in _audit(conn, 1)] == ["indexer", "alive"]


def test_completion_for_replaced_content_is_rejected_by_generation(
    conn: sqlite3.Connection,
) -> None:
    store.insert_request(conn, make_request(1), actor="indexer")
    [claimed] = store.claim(conn, owner="w", now=0.0)
    # a reorg replaced the content while the worker was thinking
    store.transition(conn, 1, Status.PENDING, Status.PENDING, actor="indexer",
                     set_columns={"generation": 2, "state_string": "new"})  # fmt: skip
    with pytest.raises(LeaseLostError, match="generation 2, not 1"):
        store.transition(conn, 1, Status.PENDING, Status.ANSWERED, actor="w", lease_owner="w",
                         generation=claimed.generation)  # fmt: skip


def test_sharded_claims_only_take_their_own_shard(conn: sqlite3.Connection) -> None:
    ids = [1, 2, 3, 4, 2**63 - 1, 2**63, 2**64 + 3, 2**256 - 1]
    for n, i in enumerate(ids):
        store.insert_request(conn, make_request(i, block_number=n), actor="indexer")
    for shard in range(3):
        got = store.claim(conn, owner=f"s{shard}", shard=shard, worker_count=3, limit=100)
        assert sorted(c.request_id for c in got) == sorted(i for i in ids if i % 3 == shard)


def test_release_makes_rows_claimable_at_once(conn: sqlite3.Connection) -> None:
    store.insert_request(conn, make_request(1), actor="indexer")
    store.claim(conn, owner="a", now=0.0, lease_seconds=600)
    assert store.release(conn, [1], owner="a") == 1
    assert [c.request_id for c in store.claim(conn, owner="b", now=1.0)] == [1]


def test_extend_lease_reports_leases_lost(conn: sqlite3.Connection) -> None:
    store.insert_request(conn, make_request(1), actor="indexer")
    store.insert_request(conn, make_request(2), actor="indexer")
    store.claim(conn, owner="a", now=0.0, lease_seconds=10, limit=2)
    store.claim(conn, owner="b", now=11.0, lease_seconds=10, limit=1)  # takes the oldest back
    lost = store.extend_lease(conn, [1, 2], owner="a", lease_seconds=10, now=12.0)
    assert len(lost) == 1


def test_retry_reopens_failed_request_with_fresh_budget(conn: sqlite3.Connection) -> None:
    store.insert_request(conn, make_request(1), actor="indexer")
    store.transition(conn, 1, Status.PENDING, Status.FAILED, actor="inference",
                     set_columns={"fail_reason": "bad answers", "attempts": 3})  # fmt: skip
    store.retry(conn, 1)
    row = store.get_request(conn, 1)
    assert row is not None
    assert (row["status"], row["attempts"], row["fail_reason"]) == ("PENDING", 0, None)
    assert _audit(conn, 1)[-1] == ("FAILED", "PENDING", "operator")


def test_retry_of_non_failed_request_is_refused(conn: sqlite3.Connection) -> None:
    store.insert_request(conn, make_request(1), actor="indexer")
    with pytest.raises(TransitionConflict):
        store.retry(conn, 1)


def test_removed_request_leaves_its_audit_trail(conn: sqlite3.Connection) -> None:
    store.insert_request(conn, make_request(1), actor="indexer")
    assert store.remove_request(conn, 1, actor="indexer", note="reorg") == "PENDING"
    assert store.get_request(conn, 1) is None
    assert _audit(conn, 1)[-1] == ("PENDING", "REMOVED", "indexer")


def test_views_answer_counts_and_stuck_reasons(conn: sqlite3.Connection) -> None:
    store.insert_request(conn, make_request(1), actor="indexer")
    store.insert_request(conn, make_request(2), actor="indexer")
    store.transition(conn, 2, Status.PENDING, Status.FAILED, actor="inference",
                     set_columns={"fail_reason": "model not served"})  # fmt: skip
    counts = dict(conn.execute("SELECT status, requests FROM v_status_counts").fetchall())
    assert counts == {"PENDING": 1, "ANSWERED": 0, "PROCESSED": 0, "FULFILLED": 0, "FAILED": 1}
    why = dict(conn.execute("SELECT request_id, why FROM v_stuck").fetchall())
    assert why["1"].startswith("waiting for an inference worker")
    assert "model not served" in why["2"] and "hodlai retry 2" in why["2"]


def test_status_counts_follow_inserts_transitions_and_removals(conn: sqlite3.Connection) -> None:
    for i in range(1, 5):
        store.insert_request(conn, make_request(i), actor="indexer")
    store.transition(conn, 1, Status.PENDING, Status.ANSWERED, actor="w")
    store.transition(conn, 2, Status.PENDING, Status.FAILED, actor="w")
    store.transition(conn, 3, Status.PENDING, Status.PENDING, actor="indexer",
                     set_columns={"generation": 2})  # fmt: skip
    store.remove_request(conn, 4, actor="indexer", note="reorg")
    expected = {"PENDING": 1, "ANSWERED": 1, "PROCESSED": 0, "FULFILLED": 0, "FAILED": 1}
    assert store.status_counts(conn) == expected
    actual = dict(conn.execute("SELECT status, COUNT(*) FROM requests GROUP BY status").fetchall())
    assert {k: v for k, v in expected.items() if v} == actual
