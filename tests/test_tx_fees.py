"""Pricing and replacement bumps (pure functions), including properties over wide ranges."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import FeeCapExceededError, RpcTransportError
from shared.tx.fees import (
    BASE_FEE_HEADROOM,
    FALLBACK_PRIORITY_FEE,
    GWEI,
    FeePolicy,
    Fees,
    Market,
    bump,
    minimum_replacement,
    parse_market,
    price,
)

POLICY = FeePolicy(max_fee_per_gas=100 * GWEI, max_priority_fee_per_gas=5 * GWEI)


def test_a_chain_with_a_base_fee_gets_eip1559_fees_covering_twice_the_base_fee() -> None:
    fees = price(Market(base_fee=3 * GWEI, priority_fee=GWEI, gas_price=4 * GWEI), POLICY)
    assert fees == Fees(max_fee_per_gas=7 * GWEI, max_priority_fee_per_gas=GWEI)


def test_a_chain_without_a_base_fee_gets_a_legacy_gas_price() -> None:
    fees = price(Market(base_fee=None, priority_fee=None, gas_price=3 * GWEI), POLICY)
    assert fees == Fees(gas_price=3 * GWEI) and not fees.is_dynamic


def test_a_node_without_a_tip_suggestion_gets_the_fallback_tip() -> None:
    fees = price(Market(base_fee=GWEI, priority_fee=None, gas_price=GWEI), POLICY)
    assert fees.max_priority_fee_per_gas == FALLBACK_PRIORITY_FEE


def test_the_tip_and_the_max_fee_never_exceed_their_caps() -> None:
    fees = price(Market(base_fee=60 * GWEI, priority_fee=40 * GWEI, gas_price=GWEI), POLICY)
    assert fees == Fees(max_fee_per_gas=100 * GWEI, max_priority_fee_per_gas=5 * GWEI)


@pytest.mark.parametrize(
    "market",
    [
        Market(base_fee=100 * GWEI, priority_fee=GWEI, gas_price=GWEI),
        Market(base_fee=None, priority_fee=None, gas_price=101 * GWEI),
    ],
)
def test_a_market_above_the_cap_refuses_to_price(market: Market) -> None:
    with pytest.raises(FeeCapExceededError, match="cap"):
        price(market, POLICY)


def test_a_replacement_bumps_both_fields_by_at_least_twelve_and_a_half_percent() -> None:
    old = Fees(max_fee_per_gas=10 * GWEI, max_priority_fee_per_gas=GWEI)
    new = bump(old, Market(base_fee=GWEI, priority_fee=GWEI, gas_price=GWEI), POLICY)
    assert new == Fees(max_fee_per_gas=11_250_000_001, max_priority_fee_per_gas=1_125_000_001)


def test_a_replacement_follows_the_market_when_it_rose_more_than_the_bump() -> None:
    old = Fees(max_fee_per_gas=3 * GWEI, max_priority_fee_per_gas=GWEI)
    new = bump(old, Market(base_fee=40 * GWEI, priority_fee=2 * GWEI, gas_price=GWEI), POLICY)
    assert new == Fees(max_fee_per_gas=82 * GWEI, max_priority_fee_per_gas=2 * GWEI)


def test_a_replacement_is_capped_and_refused_when_the_cap_leaves_no_valid_bump() -> None:
    capped = bump(
        Fees(max_fee_per_gas=80 * GWEI, max_priority_fee_per_gas=GWEI),
        Market(base_fee=60 * GWEI, priority_fee=GWEI, gas_price=GWEI),
        POLICY,
    )
    assert capped is not None and capped.max_fee_per_gas == 100 * GWEI
    assert (
        bump(
            Fees(max_fee_per_gas=95 * GWEI, max_priority_fee_per_gas=GWEI),
            Market(base_fee=GWEI, priority_fee=GWEI, gas_price=GWEI),
            POLICY,
        )
        is None
    )


def test_a_legacy_replacement_stays_legacy() -> None:
    new = bump(Fees(gas_price=8 * GWEI), Market(None, None, 5 * GWEI), POLICY)
    assert new == Fees(gas_price=9 * GWEI + 1)


def test_a_market_answer_without_a_block_is_a_transport_error() -> None:
    with pytest.raises(RpcTransportError):
        parse_market([None, "0x1", "0x1"])


def test_a_node_without_eth_max_priority_fee_per_gas_still_prices() -> None:
    market = parse_market(
        [{"baseFeePerGas": hex(GWEI)}, RpcTransportError("method not found"), hex(2 * GWEI)]
    )
    assert market == Market(base_fee=GWEI, priority_fee=None, gas_price=2 * GWEI)


def test_fees_hold_exactly_one_kind_of_pricing() -> None:
    with pytest.raises(ValueError, match="either"):
        Fees(max_fee_per_gas=1, max_priority_fee_per_gas=1, gas_price=1)
    with pytest.raises(ValueError, match="either"):
        Fees(max_fee_per_gas=1)


wei = st.integers(min_value=0, max_value=10**15)


@given(
    old_fee=st.integers(min_value=1, max_value=10**12),
    old_tip=st.integers(min_value=0, max_value=10**12),
    base=st.one_of(st.none(), wei),
    tip=st.one_of(st.none(), wei),
    gas_price=wei,
    cap=st.integers(min_value=1, max_value=10**13),
    tip_cap=st.integers(min_value=0, max_value=10**13),
)
def test_a_bump_is_always_a_valid_replacement_under_the_caps_or_nothing(
    old_fee: int, old_tip: int, base: int | None, tip: int | None, gas_price: int, cap: int,
    tip_cap: int,
) -> None:  # fmt: skip
    policy = FeePolicy(max_fee_per_gas=cap, max_priority_fee_per_gas=tip_cap)
    old = Fees(max_fee_per_gas=old_fee, max_priority_fee_per_gas=min(old_tip, old_fee))
    new = bump(old, Market(base_fee=base, priority_fee=tip, gas_price=gas_price), policy)
    if new is None:
        return
    assert new.max_fee_per_gas is not None and new.max_priority_fee_per_gas is not None
    assert new.max_fee_per_gas >= minimum_replacement(old_fee) > old_fee * 1.1
    assert new.max_priority_fee_per_gas >= minimum_replacement(old.max_priority_fee_per_gas or 0)
    assert new.max_fee_per_gas <= cap and new.max_priority_fee_per_gas <= tip_cap
    assert new.max_priority_fee_per_gas <= new.max_fee_per_gas


@given(base=wei, tip=st.one_of(st.none(), wei), gas_price=wei)
def test_a_price_is_under_the_caps_and_covers_the_base_fee_headroom_when_it_can(
    base: int, tip: int | None, gas_price: int
) -> None:
    try:
        fees = price(Market(base_fee=base, priority_fee=tip, gas_price=gas_price), POLICY)
    except FeeCapExceededError:
        assert base >= POLICY.max_fee_per_gas
        return
    assert fees.max_fee_per_gas is not None and fees.max_priority_fee_per_gas is not None
    assert fees.max_fee_per_gas <= POLICY.max_fee_per_gas
    assert fees.max_priority_fee_per_gas <= POLICY.max_priority_fee_per_gas
    assert fees.max_fee_per_gas >= base + fees.max_priority_fee_per_gas or (
        fees.max_fee_per_gas == POLICY.max_fee_per_gas
    )
    if BASE_FEE_HEADROOM * base + fees.max_priority_fee_per_gas <= POLICY.max_fee_per_gas:
        assert fees.max_fee_per_gas == BASE_FEE_HEADROOM * base + fees.max_priority_fee_per_gas
