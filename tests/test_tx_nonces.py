"""Nonce allocation: never below the ledger, the chain's latest or its pending count; gaps."""

from __future__ import annotations

import pytest

from shared.tx.nonces import NonceTracker, gaps


def test_the_next_nonce_is_the_highest_of_ledger_latest_and_pending() -> None:
    for recorded, latest, pending, expected in [(5, 3, 4, 5), (2, 3, 3, 3), (2, 3, 7, 7)]:
        tracker = NonceTracker()
        assert (
            tracker.reconcile(recorded_next=recorded, chain_latest=latest, chain_pending=pending)
            == expected
        )


def test_nonces_are_only_consumed_once_recorded_and_jump_past_foreign_use() -> None:
    tracker = NonceTracker()
    with pytest.raises(RuntimeError, match="reconcile"):
        tracker.peek()
    tracker.reconcile(recorded_next=0, chain_latest=0, chain_pending=0)
    assert tracker.peek() == tracker.peek() == 0
    tracker.consume(3)
    assert tracker.peek() == 3
    tracker.observe_chain(2)
    assert tracker.peek() == 3
    tracker.observe_chain(9)
    assert tracker.peek() == 9


def test_gaps_are_the_unheld_nonces_between_the_chain_and_our_highest_open_one() -> None:
    assert gaps([], 4) == []
    assert gaps([4, 5, 6], 4) == []
    assert gaps([5, 7], 4) == [4, 6]
    assert gaps([9], 10) == []  # already below the chain: settles, is not a gap
