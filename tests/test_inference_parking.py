"""The strike book on its own, with time passed in: what counts as a strike, how rows are
parked and handed back, and its bounds."""

from __future__ import annotations

from workers.oracle.inference.parking import StrikeBook
from workers.oracle.store import Claimed


def row(request_id: int) -> Claimed:
    return Claimed(
        request_id=request_id, generation=1, requester="0x" + "ab" * 20, model="m",
        system_prompt="", state_string="", action_set=("A",), content_hash="0x",
        attempts=0, answer_action=None, answer_cid=None, lease_owner="w", lease_until=0.0,
    )  # fmt: skip


def book(max_parked: int = 8) -> StrikeBook:
    return StrikeBook(backoff_start_s=0.5, backoff_cap_s=30.0, max_parked=max_parked)


def test_a_row_failing_while_others_are_answered_collects_a_strike_each_time() -> None:
    strikes = book()
    for n, at in enumerate((10.0, 20.0, 30.0), start=1):
        got, answered_others = strikes.record_failure(
            1, now=at, last_success_at=at - 1, kind="failure"
        )
        assert got.counted == n and answered_others == (n > 1)


def test_a_row_failing_alone_collects_strikes_too() -> None:
    strikes = book()
    for at in (1.0, 2.0, 3.0):
        got, answered_others = strikes.record_failure(1, now=at, last_success_at=0, kind="failure")
    assert got.counted == 3 and not answered_others


def test_an_outage_over_several_rows_adds_only_their_first_strikes() -> None:
    strikes = book()
    for at in range(1, 13):  # probes rotate over three rows, nothing is answered
        got, _ = strikes.record_failure(at % 3, now=float(at), last_success_at=0, kind="failure")
        assert got.counted == 1
    assert got.failures == 4


def test_busy_answers_never_count_and_refusals_only_with_the_key_shown_to_work() -> None:
    strikes = book()
    for at in (1.0, 2.0, 3.0):
        busy, _ = strikes.record_failure(1, now=at, last_success_at=at - 0.5, kind="busy")
        refused_alone, _ = strikes.record_failure(2, now=at, last_success_at=0, kind="refused")
    assert busy.counted == 0 and busy.failures == 3
    assert refused_alone.counted == 0  # a bad key never fails requests by itself
    for at in (4.0, 5.0, 6.0):
        refused, _ = strikes.record_failure(3, now=at, last_success_at=at - 0.5, kind="refused")
    assert refused.counted == 2  # the first has no "since", the others follow answers


def test_parked_rows_come_back_after_their_back_off_longest_due_first() -> None:
    strikes = book()
    first, _ = strikes.record_failure(1, now=0, last_success_at=0, kind="failure")
    assert strikes.backoff(first) == 0.5
    assert strikes.park(row(1), until=5.0) and strikes.park(row(2), until=3.0)
    assert strikes.park(row(3), until=9.0)
    assert strikes.take_due(2.9, 10) == []
    assert [r.request_id for r in strikes.take_due(6.0, 10)] == [2, 1]
    assert strikes.parked_ids() == [3] and strikes.next_due() == 9.0
    assert [r.request_id for r in strikes.take_due(100.0, 0)] == []
    assert strikes.unpark_all() == [3] and strikes.parked_ids() == []


def test_back_off_doubles_per_failure_up_to_the_cap() -> None:
    strikes = book()
    waits = []
    for at in range(10):
        got, _ = strikes.record_failure(1, now=float(at), last_success_at=0, kind="failure")
        waits.append(strikes.backoff(got))
    assert waits[:4] == [0.5, 1.0, 2.0, 4.0] and max(waits) == 30.0


def test_a_full_book_refuses_to_park_and_forgets_that_row() -> None:
    strikes = book(max_parked=2)
    for request_id in (1, 2, 3):
        strikes.record_failure(request_id, now=1.0, last_success_at=0, kind="failure")
    assert strikes.park(row(1), until=2.0) and strikes.park(row(2), until=2.0)
    assert strikes.full and not strikes.park(row(3), until=2.0)
    assert strikes.strikes(3) is None and strikes.strikes(1) is not None
    assert strikes.park(row(1), until=4.0)  # re-parking a held row is always possible
    strikes.forget(1)
    assert strikes.strikes(1) is None and strikes.parked_ids() == [2]
