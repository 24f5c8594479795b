"""Amounts of a distribution (issue 21 §2, §8): exact whole-token parsing, the
largest-remainder split (property-tested) and the manifest hash anyone can recompute."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.distribution.amounts import (
    HUNDRED_PERCENT,
    AmountError,
    from_base_units,
    manifest_hash,
    parse_percentage,
    split,
    to_base_units,
)


@pytest.mark.parametrize(
    ("value", "decimals", "expected"),
    [
        (1000, 18, 1000 * 10**18),
        ("1000", 18, 1000 * 10**18),
        ("0.5", 6, 500_000),
        (0.1, 18, 10**17),  # a JSON number by its shortest text, not its binary value
        ("0.000001", 6, 1),
        ("12.340000", 2, 1234),  # zeros beyond the decimals are no digit
        ("7", 0, 7),
    ],
)
def test_whole_tokens_become_exact_base_units(value: object, decimals: int, expected: int) -> None:
    assert to_base_units(value, decimals) == expected


@pytest.mark.parametrize(
    ("value", "decimals", "message"),
    [
        ("0.0000001", 6, "beyond the token's 6 decimals"),
        (1.5, 0, "beyond the token's 0 decimals"),
        ("-1", 18, "decimal string"),
        (-1, 18, "negative"),
        ("1e3", 18, "decimal string"),
        (" 1", 18, "decimal string"),
        (True, 18, "number or a decimal string"),
        (None, 18, "number or a decimal string"),
        (float("nan"), 18, "finite"),
    ],
)
def test_amounts_the_token_cannot_hold_are_refused(
    value: object, decimals: int, message: str
) -> None:
    with pytest.raises(AmountError, match=message):
        to_base_units(value, decimals)


def test_base_units_read_back_as_whole_tokens() -> None:
    assert from_base_units(1500 * 10**15, 18) == "1.5"
    assert from_base_units(10**18, 18) == "1"
    assert from_base_units(0, 6) == "0"


def test_percentages_have_at_most_four_places() -> None:
    assert parse_percentage(50) == 500_000
    assert parse_percentage("33.3333") == 333_333
    assert parse_percentage(0.0001) == 1
    with pytest.raises(AmountError, match="more than 4 decimal places"):
        parse_percentage("33.33333")
    with pytest.raises(AmountError, match="greater than 0"):
        parse_percentage(0)
    with pytest.raises(AmountError, match="more than 100"):
        parse_percentage("100.0001")


def test_the_remainder_goes_to_the_largest_remainders_then_by_list_order() -> None:
    third = [333_333, 333_333, 333_334]
    # 100 * 33.3333 % = 33.3333 -> 33 (rest .3333), 33 (.3333), 33.3334 -> 33 (.3334): one
    # unit left, to the largest remainder, the third.
    assert split(100, third) == [33, 33, 34]
    # equal remainders: list order decides
    assert split(10, [250_000] * 4) == [3, 3, 2, 2]
    assert split(1, [500_000, 500_000]) == [1, 0]
    with pytest.raises(AmountError, match=r"sum to 99\.9999, not 100"):
        split(10, [500_000, 499_999])


def _to_shares(raw: list[int]) -> list[int]:
    """Any list of positive weights scaled to shares that sum to exactly 100 %."""
    raw = raw[:HUNDRED_PERCENT]
    total = sum(raw)
    shares = [max(1, w * HUNDRED_PERCENT // total) for w in raw]
    while sum(shares) > HUNDRED_PERCENT:
        shares[shares.index(max(shares))] -= 1
    shares[0] += HUNDRED_PERCENT - sum(shares)
    return shares


shares_lists = st.lists(
    st.integers(min_value=1, max_value=HUNDRED_PERCENT), min_size=1, max_size=300
).map(_to_shares)


@settings(max_examples=300, deadline=None)
@given(total=st.integers(min_value=0, max_value=2**256 - 1), shares=shares_lists)
def test_a_percentage_split_sums_to_the_total_exactly_and_is_never_negative(
    total: int, shares: list[int]
) -> None:
    amounts = split(total, shares)
    assert sum(amounts) == total
    assert all(a >= 0 for a in amounts)
    assert len(amounts) == len(shares)
    # each within one base unit of its exact share: floor(exact) <= amount <= floor + 1
    for amount, share in zip(amounts, shares, strict=True):
        floor = total * share // HUNDRED_PERCENT
        assert floor <= amount <= floor + 1


@settings(max_examples=200, deadline=None)
@given(total=st.integers(min_value=0, max_value=10**30), shares=shares_lists)
def test_the_split_is_order_stable(total: int, shares: list[int]) -> None:
    # The same list gives the same amounts; equal shares in a list get amounts that never
    # favour a later entry over an earlier one.
    assert split(total, shares) == split(total, list(shares))
    amounts = split(total, shares)
    for i in range(len(shares)):
        for j in range(i + 1, len(shares)):
            if shares[i] == shares[j]:
                assert amounts[i] >= amounts[j]


def test_the_manifest_hash_is_the_documented_recipe() -> None:
    manifest = [("0xBBbb000000000000000000000000000000000002", 5), ("0xAa" + "00" * 19, 10**18)]
    expected_json = (
        '[{"address":"0xaa' + "00" * 19 + '","amount":"1000000000000000000"},'
        '{"address":"0xbbbb000000000000000000000000000000000002","amount":"5"}]'
    )
    assert json.loads(expected_json)  # valid JSON
    expected = "0x" + hashlib.sha256(expected_json.encode()).hexdigest()
    assert manifest_hash(manifest) == expected
    assert manifest_hash(list(reversed(manifest))) == expected  # sorted by address
