"""What a log filter matches and how one answer is routed to several sinks
(shared/chain/filters.py), merged from several eth_getLogs (scan.merged) and checked per
filter against the blocks' blooms (bloom.suspects)."""

from __future__ import annotations

from typing import Any

import pytest

from shared.chain.bloom import EventBloom, suspects
from shared.chain.filters import LogFilter, Registration, route
from shared.chain.scan import BlockHeader, LogRange, PollAnswer, merged
from shared.errors import RpcTransportError

A = "0x" + "aa" * 20
B = "0x" + "BB" * 20
T1, T2, T3 = ("0x" + f"{n:064x}" for n in (1, 2, 3))


def _log(
    block: int, index: int, address: str = A, topics: list[Any] | None = None
) -> dict[str, Any]:
    return {
        "address": address, "topics": [T1] if topics is None else topics,
        "blockNumber": hex(block), "blockHash": "0x" + f"{block:064x}", "logIndex": hex(index),
    }  # fmt: skip


class _Sink:
    """Registration needs a sink; routing never calls it."""


def _registered(*filters: LogFilter) -> list[Registration]:
    return [Registration(f, _Sink()) for f in filters]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"name": "Bad Name", "addresses": (A,)}, "snake_case"),
        ({"name": "x", "addresses": ()}, "addresses"),
        ({"name": "x", "addresses": ("0x1234",)}, "addresses"),
        ({"name": "x", "addresses": (A,), "topics": (("0x12",),)}, "topics"),
        ({"name": "x", "addresses": (A,), "topics": ((),)}, "topics"),
        ({"name": "x", "addresses": (A,), "topics": (None,) * 5}, "at most 4"),
        ({"name": "x", "addresses": (A,), "start_block": -1}, "negative"),
    ],
)
def test_a_malformed_filter_is_refused_naming_what_is_wrong(kwargs: Any, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        LogFilter(**kwargs)


def test_a_filter_matches_its_addresses_and_topics_in_any_case_and_nothing_else() -> None:
    only = LogFilter(name="x", addresses=(A, B), topics=((T1, T2), None, (T3,)))
    assert only.matches(_log(1, 0, B.lower(), [T1.upper().replace("0X", "0x"), T3, T3]))
    assert only.matches(_log(1, 0, A, [T2, "0x" + "00" * 32, T3]))
    assert not only.matches(_log(1, 0, A, [T3, T3, T3]))  # first topic not allowed
    assert not only.matches(_log(1, 0, A, [T1, T3]))  # third topic missing
    assert not only.matches(_log(1, 0, "0x" + "cc" * 20, [T1, T3, T3]))
    with pytest.raises(RpcTransportError, match="without topics"):
        only.matches({"address": A, "topics": "0x"})
    query = only.query(5, 9)
    assert query == {"address": [A, B], "fromBlock": "0x5", "toBlock": "0x9",
                     "topics": [[T1, T2], None, [T3]]}  # fmt: skip
    starting = LogFilter(name="y", addresses=(A,), topics=((T1,), None), start_block=7)
    assert starting.query(5, 9) == {"address": A, "fromBlock": "0x7", "toBlock": "0x9",
                                    "topics": [[T1]]}  # fmt: skip


def test_routing_hands_each_filter_its_logs_once_from_its_start_block() -> None:
    first = LogFilter(name="first", addresses=(A,), topics=((T1,),))
    both = LogFilter(name="both", addresses=(A, B), start_block=12)
    logs = [
        _log(10, 0), _log(11, 0, B), _log(12, 0), _log(12, 1, A, [T2]),
        {**_log(13, 0), "removed": True}, _log(13, 1, "0x" + "cc" * 20),
    ]  # fmt: skip
    routed = route(_registered(first, both), logs, first_block=10)
    assert [[(int(e["blockNumber"], 16), int(e["logIndex"], 16)) for e in own]
            for own in routed.logs] == [[(10, 0), (12, 0)], [(12, 0), (12, 1)]]  # fmt: skip
    # Blocks of logs some filter took; not of a removed log or one nobody wants.
    assert routed.blocks == {10: "0x" + f"{10:064x}", 12: "0x" + f"{12:064x}"}


def test_several_answers_merge_in_chain_order_each_log_once() -> None:
    one = [_log(10, 2), _log(12, 0)]
    other = [_log(10, 1), _log(10, 2), _log(11, 5)]
    assert merged([one]) is one
    order = [(int(e["blockNumber"], 16), int(e["logIndex"], 16)) for e in merged([one, other])]
    assert order == [(10, 1), (10, 2), (11, 5), (12, 0)]


def test_the_bloom_check_suspects_a_block_per_filter() -> None:
    requests = LogFilter(name="requests", addresses=(A,), topics=((T1,),))
    fees = LogFilter(name="fees", addresses=(A,), topics=((T2,),))
    header = BlockHeader(10, "0x" + f"{10:064x}", None, logs_bloom=None)  # unknown bloom
    answer = PollAnswer(range=LogRange(10, 10), head=10, logs=[_log(10, 0)], range_end=header,
                        anchor=None)  # fmt: skip
    # The block returned a request log, so it is no suspect for requests; for fees it is.
    assert suspects(answer, EventBloom(requests)) == []
    assert suspects(answer, EventBloom(fees)) == [header]
    later = LogFilter(name="later", addresses=(A,), topics=((T2,),), start_block=11)
    assert suspects(answer, EventBloom(later)) == []
