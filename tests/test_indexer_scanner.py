"""What one poll's answer allows (scanner.judge) and how the range adapts (RangeSizer)."""

from __future__ import annotations

from typing import Any

import pytest

from shared.chain.scan import BlockHeader, LogRange, PollAnswer, RangeSizer, Verdict, judge
from shared.errors import RpcTransportError

PROVIDER = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


def _hash(number: int, fork: str = "a") -> str:
    return "0x" + (fork * 2 + f"{number:062x}")[-64:]


def _header(number: int, fork: str = "a") -> BlockHeader:
    return BlockHeader(number, _hash(number, fork), _hash(number - 1, fork))


def _log(block: int, fork: str = "a", address: str = PROVIDER) -> dict[str, Any]:
    return {"blockNumber": hex(block), "blockHash": _hash(block, fork), "address": address}


def _answer(
    first: int,
    last: int,
    head: int,
    *,
    logs: list[dict[str, Any]] | None = None,
    end: BlockHeader | None = None,
    anchor: BlockHeader | None = None,
) -> PollAnswer:
    return PollAnswer(
        range=LogRange(first, last),
        head=head,
        logs=logs or [],
        range_end=end if end is not None else _header(last),
        anchor=anchor,
    )


def _judge(answer: PollAnswer, anchor: BlockHeader | None = None, confirmations: int = 3) -> Any:
    return judge(answer, anchor=anchor, confirmations=confirmations, addresses=[PROVIDER])


def test_a_consistent_answer_with_enough_confirmations_is_accepted() -> None:
    answer = _answer(11, 20, 23, logs=[_log(12), _log(20)], anchor=_header(10))
    assert _judge(answer, _header(10)).verdict is Verdict.ACCEPT


def test_a_head_too_low_for_the_range_end_shrinks_the_range() -> None:
    judgement = _judge(_answer(11, 20, 21, anchor=_header(10)), _header(10))
    assert (judgement.verdict, judgement.safe_last) == (Verdict.SHRINK, 18)


def test_a_head_below_the_cursor_is_reported_as_such() -> None:
    judgement = _judge(_answer(11, 20, 9, anchor=None), _header(10))
    assert judgement.verdict is Verdict.HEAD_BELOW_CURSOR


def test_another_hash_for_the_last_accepted_block_is_a_suspected_reorg() -> None:
    answer = _answer(11, 20, 30, anchor=_header(10, fork="b"))
    assert _judge(answer, _header(10)).verdict is Verdict.REORG_SUSPECTED


def test_a_single_block_range_whose_parent_is_not_the_cursor_is_a_suspected_reorg() -> None:
    answer = _answer(11, 11, 30, end=_header(11, fork="b"), anchor=_header(10))
    assert _judge(answer, _header(10)).verdict is Verdict.REORG_SUSPECTED


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (_answer(11, 20, 30, anchor=None), "no header for accepted block"),
        (PollAnswer(LogRange(11, 20), 30, [], None, _header(10)), "no header 20"),
        (_answer(11, 20, 30, logs=[_log(21)], anchor=_header(10)), "outside the range"),
        (_answer(11, 20, 30, logs=[_log(15, address="0x" + "11" * 20)], anchor=_header(10)),
         "log from"),
        (_answer(11, 20, 30, logs=[_log(15), _log(15, fork="b")], anchor=_header(10)),
         "two hashes"),
        (_answer(11, 20, 30, logs=[_log(20, fork="b")], anchor=_header(10)), "carry"),
    ],
)  # fmt: skip
def test_answers_whose_parts_disagree_are_inconsistent(answer: PollAnswer, why: str) -> None:
    judgement = _judge(answer, _header(10))
    assert judgement.verdict is Verdict.INCONSISTENT
    assert why in judgement.reason


def test_a_header_for_another_block_than_asked_is_a_transport_error() -> None:
    with pytest.raises(RpcTransportError):
        _judge(_answer(11, 20, 30, end=_header(19), anchor=_header(10)), _header(10))


def test_first_range_without_an_anchor_needs_no_anchor_header() -> None:
    assert _judge(_answer(0, 5, 9)).verdict is Verdict.ACCEPT


def test_range_halves_on_refusal_down_to_one_block_then_gives_up() -> None:
    sizer = RangeSizer(max_range=8, target_logs=1000)
    sizes = []
    while sizer.too_large(sizer.size):
        sizes.append(sizer.size)
    assert sizes == [4, 2, 1]
    assert sizer.too_large(1) is False


def _grown(max_range: int = 2000, target_logs: int = 1000) -> RangeSizer:
    sizer = RangeSizer(max_range=max_range, target_logs=target_logs)
    while sizer.size < max_range:
        sizer.succeeded(sizer.size, 0)
    return sizer


def test_range_starts_small_and_doubles_per_sparse_poll_up_to_the_maximum() -> None:
    sizer = RangeSizer(max_range=2000, target_logs=1000)
    sizes = [sizer.size]
    while sizer.size < 2000:
        sizer.succeeded(sizer.size, 10)
        sizes.append(sizer.size)
    assert sizes == [16, 32, 64, 128, 256, 512, 1024, 2000]


def test_range_grows_back_after_a_refusal_but_stays_below_the_refused_size() -> None:
    sizer = _grown()
    sizer.too_large(2000)
    assert sizer.size == 1000
    for _ in range(30):
        sizer.succeeded(sizer.size, 0)
    assert sizer.size == 1999  # never the refused 2000 again while the ceiling holds


def test_range_returns_to_the_maximum_once_the_refusal_is_forgotten() -> None:
    sizer = _grown()
    sizer.too_large(2000)
    for _ in range(200):
        sizer.succeeded(sizer.size, 0)
    assert sizer.size == 2000


def test_range_shrinks_in_proportion_when_a_poll_returns_more_logs_than_targeted() -> None:
    sizer = _grown()
    sizer.succeeded(2000, 5000)
    assert sizer.size == 400
    sizer.succeeded(400, 900)
    assert sizer.size == 400  # within target: no growth while logs are dense


def test_range_does_not_grow_on_short_ranges_at_the_chain_head() -> None:
    sizer = RangeSizer(max_range=2000, target_logs=1000)
    for _ in range(10):
        sizer.succeeded(1, 0)
    assert sizer.size == 16
