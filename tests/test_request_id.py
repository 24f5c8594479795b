"""uint256 request ids in SQLite: exact storage and exact sharding at the integer bounds."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from shared.db import connect
from shared.errors import InvalidRequestError
from tests.conftest import make_request
from workers.oracle import request_id as rid
from workers.oracle import store

uint256 = st.integers(min_value=0, max_value=rid.UINT256_MAX)
BOUNDS = [0, 1, 2**31, 2**63 - 1, 2**63, 2**63 + 1, 2**64 - 1, 2**64, 2**128, 2**256 - 1]


@given(uint256)
@example(2**63)
@example(2**256 - 1)
def test_encode_decode_round_trips_every_uint256(value: int) -> None:
    assert rid.decode(rid.encode(value)) == value


@given(uint256, st.integers(min_value=1, max_value=rid.MAX_WORKER_COUNT))
@example(2**63, 7)
@example(2**256 - 1, 42)
@example(2**64 + 5, 41)
def test_shard_key_residue_equals_id_residue_for_every_worker_count(value: int, n: int) -> None:
    key = rid.shard_key(value)
    assert 0 <= key < 2**63  # fits SQLite INTEGER
    assert key % n == value % n


@pytest.mark.parametrize("bad", ["-1", "0x10", "1.5", "", str(2**256)])
def test_decode_rejects_non_uint256_text(bad: str) -> None:
    with pytest.raises(InvalidRequestError):
        rid.decode(bad)


def test_encode_rejects_out_of_range() -> None:
    with pytest.raises(InvalidRequestError):
        rid.encode(2**256)
    with pytest.raises(InvalidRequestError):
        rid.encode(-1)


def test_bound_ids_are_stored_exactly_and_found_by_sqlite_literal(
    conn: sqlite3.Connection,
) -> None:
    for n, value in enumerate(BOUNDS):
        store.insert_request(conn, make_request(value, block_number=n), actor="t")
    for value in BOUNDS:
        row = store.get_request(conn, value)
        assert row is not None and rid.decode(row["request_id"]) == value
    # what an operator types in the sqlite3 CLI: an integer literal against the TEXT column
    assert conn.execute("SELECT COUNT(*) FROM requests WHERE request_id = 9223372036854775807")
    assert conn.execute("SELECT request_id FROM requests WHERE request_id = 42").fetchall() == []
    assert (
        conn.execute("SELECT request_id FROM requests WHERE request_id = 2147483648").fetchone()[0]
        == "2147483648"
    )


@settings(max_examples=30, deadline=None)
@given(st.lists(uint256, min_size=1, max_size=30, unique=True),
       st.integers(min_value=1, max_value=rid.MAX_WORKER_COUNT))  # fmt: skip
def test_sql_sharding_partitions_ids_exactly(ids: list[int], n: int) -> None:
    conn = connect(":memory:")
    for i, value in enumerate(ids):
        store.insert_request(conn, make_request(value, block_number=i), actor="t")
    seen: list[int] = []
    for shard in range(n):
        got = store.claim(conn, owner=f"w{shard}", shard=shard, worker_count=n, limit=1000)
        assert all(c.request_id % n == shard for c in got)
        seen += [c.request_id for c in got]
    assert sorted(seen) == sorted(ids)
