"""The mint server's purchases on real SQLite: one row per payment identifier and per
authorization, conflicts refused, a refused or failed payment presented again, every move
audited through shared.state."""

from __future__ import annotations

import dataclasses
import sqlite3
import subprocess
import sys

import pytest

from shared import state
from workers.mint.server import store
from workers.mint.server.machine import PURCHASES, PurchaseStatus
from workers.mint.server.purpose import return_orphans

P = PurchaseStatus
NEW = store.NewPurchase(
    payment_id="pay_store_test_000000001",
    fingerprint="f" * 64,
    payer="0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
    auth_nonce="0x" + "11" * 32,
    token="0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512",
    recipient="0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
    asset="0x5FbDB2315678afecb367f032d93F642f64180aa3",
    amount=2_500_000,
    pay_to="0x2Cfac734495e8a02Bd7DC662EC1F618566d4552E",
    network="eip155:31337",
)


def test_a_new_payment_is_recorded_received_and_presented_again_proceeds(
    conn: sqlite3.Connection,
) -> None:
    first = store.admit(conn, NEW, now=1.0)
    assert (first.verdict, first.purchase.status) == ("proceed", P.RECEIVED)
    again = store.admit(conn, NEW, now=2.0)  # nothing was sent yet: x402 may go on
    assert (again.verdict, again.purchase.status) == ("proceed", P.RECEIVED)
    assert store.sold(conn, NEW.token) == 1
    assert [r["to_status"] for r in state.history(conn, PURCHASES, NEW.payment_id)] == ["RECEIVED"]


def test_another_payload_under_the_id_and_the_authorization_under_another_id_conflict(
    conn: sqlite3.Connection,
) -> None:
    store.admit(conn, NEW, now=1.0)
    with pytest.raises(store.PurchaseConflict) as same_id:
        store.admit(conn, dataclasses.replace(NEW, fingerprint="0" * 64), now=2.0)
    assert same_id.value.reason == "payment_id_reused"
    with pytest.raises(store.PurchaseConflict) as same_auth:
        store.admit(conn, dataclasses.replace(NEW, payment_id="pay_store_test_000000002"), now=3.0)
    assert same_auth.value.reason == "authorization_reused"
    assert store.get(conn, "pay_store_test_000000002") is None


def test_settle_queued_once_then_known_and_a_failed_one_may_be_presented_again(
    conn: sqlite3.Connection,
) -> None:
    store.admit(conn, NEW, now=1.0)
    queued = store.queue_settle(conn, NEW.payment_id, "0xabcd", now=2.0)
    assert (queued.status, queued.settle_call) == (P.SETTLE_QUEUED, "0xabcd")
    assert store.queue_settle(conn, NEW.payment_id, "0xabcd", now=3.0).status is P.SETTLE_QUEUED
    with pytest.raises(Exception, match="another settle call"):
        store.queue_settle(conn, NEW.payment_id, "0xffff", now=3.0)
    assert store.admit(conn, NEW, now=4.0).verdict == "known"
    assert not store.refuse(conn, NEW.payment_id, "late", now=4.0)  # only RECEIVED is refused
    state.transition(conn, PURCHASES, NEW.payment_id, P.SETTLE_QUEUED, P.SETTLING, actor="t")
    state.transition(conn, PURCHASES, NEW.payment_id, P.SETTLING, P.SETTLE_CHECK, actor="t")
    assert store.admit(conn, NEW, now=4.5).verdict == "known"  # being checked: not again
    state.transition(conn, PURCHASES, NEW.payment_id, P.SETTLE_CHECK, P.SETTLE_FAILED, actor="t")
    again = store.admit(conn, NEW, now=5.0)
    assert (again.verdict, again.purchase.status) == ("proceed", P.RECEIVED)


def test_refused_payment_presented_again_proceeds(conn: sqlite3.Connection) -> None:
    store.admit(conn, NEW, now=1.0)
    assert store.refuse(conn, NEW.payment_id, "x402 answered 402", now=2.0)
    assert store.get(conn, NEW.payment_id).status is P.REFUSED  # type: ignore[union-attr]
    assert store.sold(conn, NEW.token) == 0
    assert store.admit(conn, NEW, now=3.0).verdict == "proceed"


def test_orphans_a_mint_is_owed_again_and_a_settle_without_a_transaction_is_checked(
    conn: sqlite3.Connection,
) -> None:
    other = dataclasses.replace(
        NEW, payment_id="pay_store_test_000000003", auth_nonce="0x" + "22" * 32
    )
    for new, to in ((NEW, P.SETTLING), (other, P.MINTING)):
        store.admit(conn, new, now=1.0)
        store.queue_settle(conn, new.payment_id, "0xabcd", now=1.0)
        state.transition(conn, PURCHASES, new.payment_id, P.SETTLE_QUEUED, P.SETTLING, actor="t")
        if to is P.MINTING:
            state.transition(conn, PURCHASES, new.payment_id, P.SETTLING, P.MINT_QUEUED, actor="t")
            state.transition(conn, PURCHASES, new.payment_id, P.MINT_QUEUED, P.MINTING, actor="t")
    assert return_orphans(conn, now=2.0) == 2
    assert store.get(conn, NEW.payment_id).status is P.SETTLE_CHECK  # type: ignore[union-attr]
    assert store.get(conn, other.payment_id).status is P.MINT_QUEUED  # type: ignore[union-attr]


def test_help_lists_every_setting_with_its_default() -> None:
    from shared.config import env_name
    from workers.mint.server.settings import MintServerSettings

    done = subprocess.run(
        [sys.executable, "-m", "shared.cli", "mint-server", "--help"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for field in MintServerSettings.model_fields:
        if field != "chains":
            assert env_name(MintServerSettings, field) in done.stdout, field
    assert "HODLAI_MINT_SERVER_PRICE_PER_MINT [1000000]" in done.stdout
    assert "HODLAI_LOCK_DIR" in done.stdout
