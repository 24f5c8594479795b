"""What the indexer refuses to write, on a real SQLite file: other log data under an unchanged
block hash (issue 10 item 5), a retry of text the vault never sent (issue 10 item 7); and the
alarm for a request fulfilled on chain with an action outside its set (issue 9 item 1)."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest
from eth_abi.abi import encode as abi_encode
from structlog.testing import capture_logs

from shared.chain.scan import BlockHeader
from shared.db import atomic, connect
from shared.errors import InvalidRequestError, LogDataConflictError
from shared.migrations import SCHEMA_MIGRATIONS_DDL, core_set
from tests.conftest import make_request
from workers.oracle import store
from workers.oracle.contracts import REASONING_REQUESTED_TOPIC0
from workers.oracle.indexer import ingest
from workers.oracle.indexer.logs_decode import DecodedLogs, FulfilledLog, decode_logs
from workers.oracle.store import NewRequest, Status

NOW = 1_700_000_000.0


def _decoded(
    requests: list[NewRequest] | None = None, fulfillments: list[FulfilledLog] | None = None
) -> DecodedLogs:
    out = DecodedLogs(requests=requests or [], fulfillments=fulfillments or [])
    for item in [*out.requests, *out.fulfillments]:
        out.log_blocks[item.block_number] = item.block_hash
    return out


def _fulfilled(request: NewRequest, block: int, action: str = "BUY") -> FulfilledLog:
    return FulfilledLog(
        request_id=request.request_id, requester=request.requester, result_action=action,
        reasoning_cid="bafy", block_number=block, block_hash=f"0x{block:064x}",
        tx_hash=f"0x{block + 7:064x}", log_index=0,
    )  # fmt: skip


def _requested_log(request_id: int, data: bytes) -> dict[str, object]:
    return {
        "address": "0x5fbdb2315678afecb367f032d93f642f64180aa3",
        "topics": [REASONING_REQUESTED_TOPIC0, f"0x{request_id:064x}", "0x" + "ab" * 32],
        "data": "0x" + data.hex(), "blockNumber": "0x10", "blockHash": "0x" + "10" * 32,
        "transactionHash": "0x" + "77" * 32, "logIndex": "0x0",
    }  # fmt: skip


def _apply(conn: sqlite3.Connection, decoded: DecodedLogs) -> ingest.IngestStats:
    with atomic(conn):
        return ingest.apply_logs(conn, decoded, now=NOW)


def _snapshot(conn: sqlite3.Connection) -> tuple[list[tuple[object, ...]], ...]:
    return tuple(
        [tuple(row) for row in conn.execute(f"SELECT * FROM {table} ORDER BY 1")]
        for table in ("requests", "fulfillments", "transitions", "blocks", "cursors")
    )


def test_other_content_under_an_unchanged_block_hash_rewrites_nothing(
    conn: sqlite3.Connection,
) -> None:
    good = [make_request(i, block_number=10 + i) for i in range(1, 4)]
    end = BlockHeader(20, "0x" + "20" * 32, None)
    ingest.apply_range(conn, expected_cursor=9, new_cursor=20, range_end=end,
                       decoded=_decoded(good, [_fulfilled(good[0], 15)]), history_blocks=100,
                       now=NOW)  # fmt: skip
    store.transition(conn, 2, Status.PENDING, Status.ANSWERED, actor="t",
                     set_columns={"answer_action": "BUY"})  # fmt: skip
    before = _snapshot(conn)
    # The same blocks (same hashes) with other data: one request altered, one moved to another
    # log index, one fulfilment with another action. Each alone is refused, as a whole answer.
    altered = dataclasses.replace(good[1], state_string="altered", content_hash="0x" + "ee" * 32)
    moved = dataclasses.replace(good[2], log_index=5)
    other_fulfilment = dataclasses.replace(_fulfilled(good[0], 15), result_action="SELL")
    for bad in (_decoded([altered]), _decoded([moved]), _decoded([], [other_fulfilment])):
        with pytest.raises(LogDataConflictError, match="same block hash"):
            ingest.apply_rescan(conn, cursor=20, decoded=bad, now=NOW + 1)
        assert _snapshot(conn) == before
    # A whole range containing a conflicting log stores none of its logs, not even new ones.
    mixed = _decoded([make_request(9, block_number=21), altered])
    with pytest.raises(LogDataConflictError):
        ingest.apply_range(conn, expected_cursor=20, new_cursor=30, range_end=end,
                           decoded=mixed, history_blocks=100, now=NOW)  # fmt: skip
    assert _snapshot(conn) == before
    # Content from another block hash (a reorg replaced the block) is still the new truth.
    reorged = dataclasses.replace(altered, block_hash="0x" + "aa" * 32)
    assert _apply(conn, _decoded([reorged])).replaced == 1


def test_invalid_utf8_request_is_flagged_lossy_and_retry_refuses_it(
    conn: sqlite3.Connection,
) -> None:
    data = abi_encode(("bytes", "bytes", "bytes", "bytes[]"), [b"m", b"ok \xff", b"s", [b"A"]])
    decoded = decode_logs([_requested_log(7, data)])
    assert decoded.malformed and decoded.malformed[0].request.content_lossy
    _apply(conn, decoded)
    row = store.get_request(conn, 7)
    assert row is not None and row["status"] == "FAILED" and row["content_lossy"] == 1
    with pytest.raises(InvalidRequestError, match="cannot be retried: its text is not what"):
        store.retry(conn, 7)
    row = store.get_request(conn, 7)
    assert row is not None and row["status"] == "FAILED"
    why = conn.execute("SELECT why FROM v_stuck WHERE request_id = '7'").fetchone()[0]
    assert "cannot be retried" in why and "hodlai retry" not in why
    # An ordinary FAILED request is still retried.
    store.insert_request(conn, make_request(8), actor="indexer")
    store.transition(conn, 8, Status.PENDING, Status.FAILED, actor="t",
                     set_columns={"fail_reason": "model not served"})  # fmt: skip
    store.retry(conn, 8)
    assert store.get_request(conn, 8)["status"] == "PENDING"  # type: ignore[index]


def test_fulfilment_outside_the_action_set_raises_the_alarm(conn: sqlite3.Connection) -> None:
    ok, wrong = make_request(1, block_number=10), make_request(2, block_number=11)
    with capture_logs() as logs:
        fulfilments = [_fulfilled(ok, 12, "HOLD"), _fulfilled(wrong, 13, "BUY IT ALL")]
        stats = _apply(conn, _decoded([ok, wrong], fulfilments))
    assert stats.fulfilments_applied == 2 and stats.wrong_answers == 1
    alarms = [e for e in logs if e["event"] == "fulfilled_action_not_in_action_set"]
    assert [(e["request_id"], e["log_level"]) for e in alarms] == [("2", "error")]
    stuck = conn.execute("SELECT request_id, status, why FROM v_stuck").fetchall()
    assert [(r[0], r[1]) for r in stuck] == [("2", "FULFILLED")]
    assert "WRONG ANSWER" in stuck[0][2] and '"BUY IT ALL"' in stuck[0][2]


def test_content_replaced_under_a_fulfilment_outside_the_new_set_raises_the_alarm(
    conn: sqlite3.Connection,
) -> None:
    old = make_request(4, block_number=10)
    _apply(conn, _decoded([old], [_fulfilled(old, 11, "BUY")]))
    new = make_request(4, state_string="new", action_set=("UP", "DOWN"), block_number=12)
    with capture_logs() as logs:
        stats = _apply(conn, _decoded([new]))
    assert stats.replaced == 1 and stats.wrong_answers == 1
    assert any(e["event"] == "fulfilled_action_not_in_action_set" for e in logs)
    (why,) = conn.execute("SELECT why FROM v_stuck WHERE request_id = '4'").fetchone()
    assert '"BUY"' in why and '["UP", "DOWN"]' in why


def test_migration_flags_existing_lossy_requests_and_wrong_answers(tmp_path: Path) -> None:
    path = tmp_path / "before-0003.db"
    old = sqlite3.connect(path, isolation_level=None)
    old.execute(SCHEMA_MIGRATIONS_DDL)
    for statement in core_set().migrations[0].statements():
        old.execute(statement)
    old.execute("INSERT INTO schema_migrations VALUES ('core', 1, 'initial', 0)")
    columns = (
        "request_id, shard_key, status, requester, model, system_prompt, state_string, "
        "action_set, content_hash, block_number, block_hash, tx_hash, log_index, "
        "fulfilled_action, fail_reason, created_at, updated_at"
    )
    rows = [
        ("1", 1, "FAILED", "systemPrompt is not valid UTF-8 (invalid start byte at byte 3)", None),
        ("2", 2, "FULFILLED", None, "SELL EVERYTHING"),
        ("3", 3, "FULFILLED", None, "BUY"),
        ("4", 4, "FAILED", "model not served", None),
    ]
    for key, shard, status, reason, action in rows:
        old.execute(
            f"INSERT INTO requests ({columns}) VALUES (?, ?, ?, 'r', 'm', 'p', 's', "
            "'[\"BUY\", \"SELL\"]', '0x0', 1, '0x0', '0x0', 0, ?, ?, 0, 0)",
            (key, shard, status, action, reason),
        )
    old.close()
    conn = connect(path)
    flags = conn.execute(
        "SELECT request_id, content_lossy, answer_outside_set FROM requests ORDER BY 1"
    ).fetchall()
    assert [tuple(f) for f in flags] == [("1", 1, 0), ("2", 0, 1), ("3", 0, 0), ("4", 0, 0)]
    why = dict(conn.execute("SELECT request_id, why FROM v_stuck").fetchall())
    assert set(why) == {"1", "2", "4"}
    assert "cannot be retried" in why["1"] and "WRONG ANSWER" in why["2"]
    assert "hodlai retry 4" in why["4"]
    conn.close()
