"""The 'fulfil' purpose on a real SQLite file: when a pending fulfilment is still worth
mining, what a settled nonce does to its request, and that no request is left stranded in
PROCESSED."""

from __future__ import annotations

import sqlite3
import time

import pytest
from eth_account import Account

from shared.db import atomic
from shared.tx import ledger
from shared.tx.fees import Fees
from shared.tx.ledger import Purpose, TxRecord, TxStatus
from shared.tx.settlement import Settlement
from shared.tx.signer import Call, LocalSigner
from tests.conftest import make_request
from workers.oracle import store
from workers.oracle.fulfiller.purpose import FULFIL_PURPOSE, FulfilmentPurpose, return_orphans
from workers.oracle.store import Status

SIGNER = LocalSigner(bytes(Account.create().key), chain_id=31337)
FEES = Fees(max_fee_per_gas=2, max_priority_fee_per_gas=1)
_nonce = iter(range(10_000))


def processed(conn: sqlite3.Connection, request_id: int) -> TxRecord:
    """A request PROCESSED with one BROADCAST fulfilment, as the fulfiller leaves it."""
    request = make_request(request_id)
    store.insert_request(conn, request, actor="test")
    store.transition(
        conn, request_id, Status.PENDING, Status.ANSWERED, actor="test",
        set_columns={"answer_action": "BUY", "answer_cid": "cid"},
    )  # fmt: skip
    return fulfilment(conn, request_id, request.content_hash, move=True)


def fulfilment(
    conn: sqlite3.Connection, request_id: int, content_hash: str, *, move: bool = False,
    generation: int = 1,
) -> TxRecord:  # fmt: skip
    call = Call(to=SIGNER.address, data=b"\x01", value=0, gas_limit=100_000)
    signed = SIGNER.sign(call, nonce=next(_nonce), fees=FEES)
    purpose = Purpose(FULFIL_PURPOSE, str(request_id), generation, content_hash)
    with atomic(conn):
        tx_id = ledger.insert(
            conn, signed, purpose, sender=SIGNER.address, chain_id=SIGNER.chain_id,
            now=time.time(),
            idempotency_key=f"test:{signed.tx_hash}",
        )  # fmt: skip
        ledger.mark_accepted(conn, [tx_id], now=time.time())
        if move:
            store.transition(conn, request_id, Status.ANSWERED, Status.PROCESSED, actor="test")
    (record,) = [
        t for t in ledger.open_txs(conn, SIGNER.address, chain_id=SIGNER.chain_id) if t.id == tx_id
    ]
    return record


def status(conn: sqlite3.Connection, request_id: int) -> str:
    row = store.get_request(conn, request_id)
    return "MISSING" if row is None else str(row["status"])


def test_a_fulfilment_still_matching_its_processed_request_is_valid(
    conn: sqlite3.Connection,
) -> None:
    tx = processed(conn, 1)
    assert FulfilmentPurpose().invalid(conn, [tx]) == {}


def test_a_fulfilment_is_invalid_once_its_request_is_removed_replaced_or_failed(
    conn: sqlite3.Connection,
) -> None:
    removed, replaced, failed = processed(conn, 1), processed(conn, 2), processed(conn, 3)
    store.remove_request(conn, 1, actor="indexer", note="reorg")
    store.transition(
        conn, 2, Status.PROCESSED, Status.PENDING, actor="indexer",
        set_columns={"generation": 2, "content_hash": "0x" + "99" * 32},
    )  # fmt: skip
    store.transition(conn, 3, Status.PROCESSED, Status.FAILED, actor="operator")
    reasons = FulfilmentPurpose().invalid(conn, [removed, replaced, failed])
    assert reasons == {
        removed.id: "the request was taken back by a reorg",
        replaced.id: "the request's content was replaced by a reorg (generation 1 -> 2)",
        failed.id: "the request is FAILED now",
    }


def test_a_request_fulfilled_by_our_own_transaction_on_that_nonce_is_not_cancelled(
    conn: sqlite3.Connection,
) -> None:
    ours, theirs = processed(conn, 1), processed(conn, 2)
    for request_id, by in ((1, ours.tx_hash.upper().replace("0X", "0x")), (2, "0x" + "ee" * 32)):
        store.transition(
            conn, request_id, Status.PROCESSED, Status.FULFILLED, actor="indexer",
            set_columns={"fulfilled_tx_hash": by},
        )  # fmt: skip
    assert FulfilmentPurpose().invalid(conn, [ours, theirs]) == {
        theirs.id: "the request is FULFILLED now"
    }


def test_a_revert_earns_one_resimulation_and_a_second_revert_fails_the_request(
    conn: sqlite3.Connection,
) -> None:
    purpose = FulfilmentPurpose()
    tx = processed(conn, 1)
    with atomic(conn):
        ledger.set_status(conn, tx.id, TxStatus.REVERTED, now=time.time())
        purpose.settled(conn, tx, Settlement.REVERTED, detail="tx a in block 5", now=time.time())
    assert status(conn, 1) == "ANSWERED"
    row = store.get_request(conn, 1)
    assert row is not None
    again = fulfilment(conn, 1, row["content_hash"], move=True)
    with atomic(conn):
        ledger.set_status(conn, again.id, TxStatus.REVERTED, now=time.time())
        purpose.settled(conn, again, Settlement.REVERTED, detail="tx b in block 9", now=time.time())
    assert status(conn, 1) == "FAILED"
    row = store.get_request(conn, 1)
    assert row is not None
    assert row["fail_reason"] == "fulfilment reverted on chain 2 times (last: tx b in block 9)"


@pytest.mark.parametrize("outcome", [Settlement.REVERTED, Settlement.SUPERSEDED])
def test_a_settlement_for_an_older_generation_leaves_the_new_content_alone(
    conn: sqlite3.Connection, outcome: Settlement
) -> None:
    tx = processed(conn, 1)
    store.transition(
        conn, 1, Status.PROCESSED, Status.PENDING, actor="indexer",
        set_columns={"generation": 2, "content_hash": "0x" + "99" * 32},
    )  # fmt: skip
    with atomic(conn):
        FulfilmentPurpose().settled(conn, tx, outcome, detail="x", now=time.time())
    assert status(conn, 1) == "PENDING"


def test_processed_requests_without_a_live_transaction_return_to_answered(
    conn: sqlite3.Connection,
) -> None:
    live, mined, cancelled = processed(conn, 1), processed(conn, 2), processed(conn, 3)
    with atomic(conn):
        ledger.set_status(conn, mined.id, TxStatus.MINED, now=time.time())
        ledger.set_status(conn, cancelled.id, TxStatus.CANCELLED, now=time.time())
    assert live.is_open
    assert return_orphans(conn, now=time.time()) == 1
    assert [status(conn, i) for i in (1, 2, 3)] == ["PROCESSED", "PROCESSED", "ANSWERED"]
    assert store.history(conn, 3)[-1]["note"].startswith("no transaction of this answer")


def test_a_refused_fulfilment_fails_its_request_only_when_its_cancel_mined(
    conn: sqlite3.Connection,
) -> None:
    """No REJECTED on a node's word: a fulfilment cancelled because a node refused it fails
    its request once the nonce settles with the cancel (SUPERSEDED); one cancelled because
    its purpose became invalid leaves the request to the orphan sweep."""
    from dataclasses import replace

    from shared.tx.replacements import REJECTED_REASON

    purpose = FulfilmentPurpose()
    refused, invalid = processed(conn, 1), processed(conn, 2)
    for tx, why in ((refused, REJECTED_REASON), (invalid, "cancelled: the request is FAILED")):
        ledger.set_status(conn, tx.id, TxStatus.CANCELLED, now=time.time(), error=why)
    with atomic(conn):
        for tx, why in ((refused, REJECTED_REASON), (invalid, "cancelled: x")):
            settled_row = replace(tx, status=TxStatus.CANCELLED, error=why)
            purpose.settled(conn, settled_row, Settlement.SUPERSEDED, detail="tx c in block 4",
                            now=time.time())  # fmt: skip
    assert [status(conn, 1), status(conn, 2)] == ["FAILED", "PROCESSED"]
    row = store.get_request(conn, 1)
    assert row is not None and row["fail_reason"].startswith("no node accepts")
