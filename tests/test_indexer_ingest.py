"""Applying decoded logs to a real SQLite file: idempotent, atomic with the cursor, content
replacement as a new generation, fulfilments in either order, and reorg rollback."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from shared.chain.scan import BlockHeader
from shared.db import atomic, connect
from shared.errors import InvalidRequestError, TransitionConflict
from tests.conftest import make_request
from workers.oracle import store
from workers.oracle.indexer import ingest, reorg
from workers.oracle.indexer.logs_decode import DecodedLogs, FulfilledLog, MalformedRequest
from workers.oracle.store import NewRequest, Status

NOW = 1_700_000_000.0


def _decoded(
    requests: list[NewRequest] | None = None,
    fulfillments: list[FulfilledLog] | None = None,
    malformed: list[MalformedRequest] | None = None,
) -> DecodedLogs:
    out = DecodedLogs(
        requests=requests or [], fulfillments=fulfillments or [], malformed=malformed or []
    )
    for request in [*out.requests, *(m.request for m in out.malformed)]:
        out.log_blocks[request.block_number] = request.block_hash
    for fulfilment in out.fulfillments:
        out.log_blocks[fulfilment.block_number] = fulfilment.block_hash
    return out


def _apply(conn: sqlite3.Connection, decoded: DecodedLogs, now: float = NOW) -> ingest.IngestStats:
    with atomic(conn):
        return ingest.apply_logs(conn, decoded, now=now)


def _fulfilled(request_id: int, block: int, action: str = "BUY") -> FulfilledLog:
    return FulfilledLog(
        request_id=request_id,
        requester="0x" + "ab" * 20,
        result_action=action,
        reasoning_cid="bafy",
        block_number=block,
        block_hash=f"0x{block:064x}",
        tx_hash=f"0x{block + 7:064x}",
        log_index=0,
    )


def _row(conn: sqlite3.Connection, request_id: int) -> dict[str, object]:
    row = store.get_request(conn, request_id)
    assert row is not None
    return dict(row)


def _transitions(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM transitions").fetchone()[0])


def test_bulk_insert_writes_the_row_store_insert_request_writes(conn: sqlite3.Connection) -> None:
    ours = make_request(2**256 - 1, action_set=("ACHETER 🟢", "保持"), block_number=5)
    theirs = dataclasses.replace(ours, request_id=2**255)
    _apply(conn, _decoded([ours]))
    store.insert_request(conn, theirs, actor="indexer", now=NOW)
    mine, reference = _row(conn, ours.request_id), _row(conn, theirs.request_id)
    for column in ("request_id", "shard_key"):
        mine.pop(column), reference.pop(column)
    assert mine == reference
    audit = [(t["from_status"], t["to_status"], t["actor"], t["note"])
             for t in conn.execute("SELECT * FROM transitions ORDER BY id")]  # fmt: skip
    assert audit[0] == audit[1] == (None, "PENDING", "indexer", "block 5")


def test_applying_the_same_logs_again_changes_nothing(conn: sqlite3.Connection) -> None:
    requests = [make_request(i, block_number=10 + i) for i in range(1, 6)]
    decoded = _decoded(requests, [_fulfilled(3, 20)])
    first = _apply(conn, decoded)
    assert (first.inserted, first.fulfilments_new, first.fulfilments_applied) == (5, 1, 1)
    rows = {i: _row(conn, i) for i in range(1, 6)}
    count = _transitions(conn)
    again = _apply(conn, decoded, now=NOW + 100)
    assert again.changed == 0 and again.unchanged == 5
    assert {i: _row(conn, i) for i in range(1, 6)} == rows
    assert _transitions(conn) == count


def test_same_content_in_another_block_only_moves_the_request(conn: sqlite3.Connection) -> None:
    request = make_request(7, block_number=10)
    _apply(conn, _decoded([request]))
    store.transition(conn, 7, Status.PENDING, Status.ANSWERED, actor="t",
                     set_columns={"answer_action": "BUY"})  # fmt: skip
    moved = dataclasses.replace(request, block_number=12, block_hash="0x" + "12" * 32)
    stats = _apply(conn, _decoded([moved]))
    assert stats.moved == 1
    row = _row(conn, 7)
    assert (row["status"], row["answer_action"], row["generation"]) == ("ANSWERED", "BUY", 1)
    assert (row["block_number"], row["block_hash"]) == (12, "0x" + "12" * 32)


@pytest.mark.parametrize("status", [Status.PENDING, Status.ANSWERED, Status.PROCESSED,
                                    Status.FAILED])  # fmt: skip
def test_other_content_under_the_same_id_restarts_as_a_new_generation(
    conn: sqlite3.Connection, status: Status
) -> None:
    old = make_request(9, state_string="old", block_number=10)
    _apply(conn, _decoded([old]))
    conn.execute(
        "UPDATE requests SET status = ?, answer_action = 'BUY', answer_cid = 'bafy', "
        "attempts = 2, lease_owner = 'w', lease_until = 1e12, fail_reason = 'x' "
        "WHERE request_id = '9'",
        (status.value,),
    )  # the test's shortcut into each state; production code moves only via transition()
    new = make_request(9, state_string="new", action_set=("UP", "DOWN"), block_number=11)
    stats = _apply(conn, _decoded([new]))
    assert stats.replaced == 1
    row = _row(conn, 9)
    assert row["status"] == "PENDING" and row["generation"] == 2
    assert (row["state_string"], row["action_set"], row["content_hash"]) == (
        "new", '["UP", "DOWN"]', new.content_hash)  # fmt: skip
    for column in ("answer_action", "answer_cid", "lease_owner", "lease_until", "fail_reason"):
        assert row[column] is None
    assert row["attempts"] == 0


def test_replaced_content_of_a_fulfilled_request_stays_fulfilled(
    conn: sqlite3.Connection,
) -> None:
    _apply(conn, _decoded([make_request(4, state_string="old", block_number=10)],
                          [_fulfilled(4, 11)]))  # fmt: skip
    # The request's block was replaced by a reorg: the new content comes from another hash.
    _apply(conn, _decoded([make_request(4, state_string="new", block_number=12)]))
    row = _row(conn, 4)
    assert (row["status"], row["generation"], row["state_string"]) == ("FULFILLED", 2, "new")
    assert row["fulfilled_block"] == 11


@pytest.mark.parametrize("prior", [Status.PENDING, Status.ANSWERED, Status.PROCESSED,
                                   Status.FAILED])  # fmt: skip
def test_fulfilled_event_moves_any_open_or_failed_row_and_remembers_from_where(
    conn: sqlite3.Connection, prior: Status
) -> None:
    _apply(conn, _decoded([make_request(5, block_number=10)]))
    conn.execute("UPDATE requests SET status = ?, lease_owner = 'w', lease_until = 1e12 "
                 "WHERE request_id = '5'", (prior.value,))  # fmt: skip
    stats = _apply(conn, _decoded(fulfillments=[_fulfilled(5, 12, action="HOLD")]))
    assert stats.fulfilments_applied == 1
    row = _row(conn, 5)
    assert (row["status"], row["fulfilled_action"], row["lease_owner"]) == (
        "FULFILLED", "HOLD", None)  # fmt: skip
    prior_status = conn.execute("SELECT prior_status FROM fulfillments").fetchone()[0]
    assert prior_status == prior.value


def test_fulfilment_before_its_request_is_kept_and_ends_in_the_same_state(tmp_path: Path) -> None:
    request, fulfilment = make_request(6, block_number=10), _fulfilled(6, 11)
    orders = {
        "request_first": [_decoded([request]), _decoded(fulfillments=[fulfilment])],
        "fulfilment_first": [_decoded(fulfillments=[fulfilment]), _decoded([request])],
    }
    states = {}
    for name, batches in orders.items():
        conn = connect(tmp_path / f"{name}.db")
        first = _apply(conn, batches[0])
        if name == "fulfilment_first":
            assert first.fulfilments_waiting == 1 and store.get_request(conn, 6) is None
        _apply(conn, batches[1])
        history = [(h["from_status"], h["to_status"]) for h in store.history(conn, 6)]
        fulfilled = dict(conn.execute("SELECT * FROM fulfillments").fetchone())
        states[name] = (_row(conn, 6), fulfilled, history)
        conn.close()
    assert states["request_first"] == states["fulfilment_first"]
    row, fulfilled, history = states["request_first"]
    assert row["status"] == "FULFILLED" and fulfilled["prior_status"] == "PENDING"
    assert history == [(None, "PENDING"), ("PENDING", "FULFILLED")]


def test_malformed_request_is_stored_as_failed_with_its_reason(conn: sqlite3.Connection) -> None:
    broken = MalformedRequest(
        request=make_request(8, state_string="bad \ufffd", block_number=10),
        reason="stateString is not valid UTF-8 (invalid start byte at byte 4)",
    )
    stats = _apply(conn, _decoded(malformed=[broken]))
    assert (stats.inserted, stats.failed) == (1, 1)
    row = _row(conn, 8)
    assert row["status"] == "FAILED" and "not valid UTF-8" in str(row["fail_reason"])
    assert _apply(conn, _decoded(malformed=[broken])).changed == 0


def test_range_commits_logs_blocks_and_cursor_together_or_not_at_all(
    conn: sqlite3.Connection,
) -> None:
    end = BlockHeader(20, "0x" + "20" * 32, "0x" + "19" * 32)
    good = _decoded([make_request(1, block_number=15)])
    ingest.apply_range(conn, expected_cursor=9, new_cursor=20, range_end=end, decoded=good,
                       history_blocks=1000, now=NOW)  # fmt: skip
    assert ingest.read_anchor(conn, 10) == ingest.Anchor(20, end)
    # A failure half-way (a fulfilment with an impossible id, after the request rows were
    # inserted) leaves neither the requests nor the cursor nor the block hashes.
    bad = _decoded([make_request(2, block_number=25)], [_fulfilled(2**256, 26)])
    with pytest.raises(InvalidRequestError):
        ingest.apply_range(conn, expected_cursor=20, new_cursor=30, range_end=end,
                           decoded=bad, history_blocks=1000, now=NOW)  # fmt: skip
    assert store.get_request(conn, 2) is None
    assert ingest.read_anchor(conn, 10).number == 20
    assert conn.execute("SELECT MAX(number) FROM blocks").fetchone()[0] == 20


def test_range_refuses_a_cursor_moved_by_someone_else(conn: sqlite3.Connection) -> None:
    end = BlockHeader(20, "0x" + "20" * 32, None)
    ingest.apply_range(conn, expected_cursor=9, new_cursor=20, range_end=end,
                       decoded=_decoded(), history_blocks=1000, now=NOW)  # fmt: skip
    with pytest.raises(TransitionConflict, match="another indexer"):
        ingest.apply_range(conn, expected_cursor=9, new_cursor=30, range_end=end,
                           decoded=_decoded(), history_blocks=1000, now=NOW)  # fmt: skip


def test_block_hashes_are_pruned_below_the_history_window(conn: sqlite3.Connection) -> None:
    for last in range(100, 1100, 100):
        end = BlockHeader(last, f"0x{last:064x}", None)
        ingest.apply_range(conn, expected_cursor=last - 100 if last > 100 else 0,
                           new_cursor=last, range_end=end, decoded=_decoded(),
                           history_blocks=250, now=NOW)  # fmt: skip
    kept = [r[0] for r in conn.execute("SELECT number FROM blocks ORDER BY number")]
    assert kept == [800, 900, 1000]


def test_rollback_undoes_orphaned_fulfilments_and_requests_in_one_go(
    conn: sqlite3.Connection,
) -> None:
    end = BlockHeader(30, "0x" + "30" * 32, None)
    decoded = _decoded(
        [make_request(1, block_number=10), make_request(2, block_number=20),
         make_request(3, block_number=25)],
        [_fulfilled(1, 22), _fulfilled(2, 21)],
    )  # fmt: skip
    ingest.apply_range(conn, expected_cursor=0, new_cursor=30, range_end=end, decoded=decoded,
                       history_blocks=1000, now=NOW)  # fmt: skip
    store.transition(conn, 3, Status.PENDING, Status.ANSWERED, actor="t")
    stats = reorg.rollback_to(conn, 15, old_cursor=30, depth=16, deeper_than_confirmations=True,
                              note="test", now=NOW)  # fmt: skip
    assert (stats.requests_removed, stats.fulfillments_undone) == (2, 2)
    assert _row(conn, 1)["status"] == "PENDING" and _row(conn, 1)["fulfilled_block"] is None
    assert store.get_request(conn, 2) is None and store.get_request(conn, 3) is None
    assert conn.execute("SELECT COUNT(*) FROM fulfillments").fetchone()[0] == 0
    assert ingest.read_anchor(conn, 1).number == 15
    assert conn.execute("SELECT MAX(number) FROM blocks").fetchone()[0] == 10
    assert conn.execute("SELECT deeper_than_confirmations FROM reorgs").fetchone()[0] == 1
    # The id comes back (any content): its generation continues from the removed row's.
    stats_again = _apply(conn, _decoded([make_request(3, state_string="new", block_number=16)]))
    assert stats_again.inserted == 1
    assert _row(conn, 3)["generation"] == 2


def test_generation_keeps_counting_over_several_removals(conn: sqlite3.Connection) -> None:
    for round_ in range(3):
        _apply(conn, _decoded([make_request(11, state_string=f"v{round_}", block_number=50)]))
        assert _row(conn, 11)["generation"] == round_ + 1
        reorg.rollback_to(conn, 40, old_cursor=60, depth=20, deeper_than_confirmations=True,
                          note="t", now=NOW)  # fmt: skip
