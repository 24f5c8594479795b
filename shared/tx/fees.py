"""Transaction pricing: what to offer per gas, and how much more to offer for a replacement.

Guarantees:

- A chain whose latest block has a base fee gets EIP-1559 fees (``maxFeePerGas`` covers
  ``BASE_FEE_HEADROOM`` times the base fee plus the tip, so a transaction stays includable
  through several full blocks of base-fee growth); a chain without one gets a legacy
  ``gasPrice``. Nothing offered ever exceeds the policy's caps.
- When the market is above the cap the quote raises :class:`FeeCapExceededError`
  (retryable: sending waits for the market to come back) rather than signing a transaction
  that cannot be included.
- A replacement bumps *every* fee field by at least ``REPLACEMENT_BUMP`` (12.5 % + 1 wei;
  geth and BSC nodes refuse replacements below +10 %), and to the current market price when
  that is higher. :func:`bump` returns None when the cap leaves no room for a valid bump.
- :func:`fetch_market` with ``at_least`` never prices from a node behind a head the caller
  has already seen: behind a load balancer, a lagging backend reports the base fee of some
  blocks ago (in a spike, a fraction of today's), and a replacement priced from it is
  refused and wasted. An answer from behind is asked again, up to MARKET_ATTEMPTS times,
  then StaleNodeError (retryable: the caller prices on a later poll).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Final

from shared.chain.rpc import RpcCall, RpcClient, hex_int
from shared.errors import FeeCapExceededError, HodlaiError, RpcTransportError, StaleNodeError

GWEI: Final = 10**9
# Multiple of the current base fee that maxFeePerGas covers: the base fee can rise 12.5 % per
# full block, so 2x keeps a transaction includable for ~6 full blocks without a replacement.
BASE_FEE_HEADROOM: Final = 2
# Minimum fee increase of a same-nonce replacement (geth's txpool requires +10 %; 12.5 % and
# the extra wei keep us clear of rounding on every node).
REPLACEMENT_BUMP: Final = Fraction(1125, 1000)
# Tip (wei) when the node cannot suggest one (no eth_maxPriorityFeePerGas): 1 gwei is accepted
# by BSC validators and by dev nodes.
FALLBACK_PRIORITY_FEE: Final = GWEI
# Market reads per fetch_market before an answer from a node behind the caller's head is
# given up on: behind a load balancer most requests reach a fresh backend, so a few tries
# nearly always find one, and a poll later is soon enough otherwise.
MARKET_ATTEMPTS: Final = 3


@dataclass(frozen=True)
class Fees:
    """What one transaction offers per gas: EIP-1559 fields, or a legacy gas price."""

    max_fee_per_gas: int | None = None
    max_priority_fee_per_gas: int | None = None
    gas_price: int | None = None

    def __post_init__(self) -> None:
        dynamic = self.max_fee_per_gas is not None and self.max_priority_fee_per_gas is not None
        legacy = self.gas_price is not None
        if dynamic == legacy or (not dynamic and self.max_fee_per_gas is not None):
            raise ValueError("Fees holds either both EIP-1559 fields or a gas price")

    @property
    def is_dynamic(self) -> bool:
        return self.gas_price is None

    @property
    def ceiling(self) -> int:
        """The most this transaction can pay per gas."""
        value = self.gas_price if self.gas_price is not None else self.max_fee_per_gas
        assert value is not None  # guaranteed by __post_init__
        return value

    def describe(self) -> dict[str, int]:
        """The fee fields for logs (wei)."""
        if self.gas_price is not None:
            return {"gas_price": self.gas_price}
        assert self.max_fee_per_gas is not None and self.max_priority_fee_per_gas is not None
        return {
            "max_fee_per_gas": self.max_fee_per_gas,
            "max_priority_fee_per_gas": self.max_priority_fee_per_gas,
        }


@dataclass(frozen=True)
class FeePolicy:
    """The operator's limits (wei per gas)."""

    max_fee_per_gas: int
    max_priority_fee_per_gas: int

    def __post_init__(self) -> None:
        if self.max_fee_per_gas <= 0 or self.max_priority_fee_per_gas < 0:
            raise ValueError("fee caps must be positive")


@dataclass(frozen=True)
class Market:
    """What the node reports about current prices."""

    base_fee: int | None  # None: the chain has no EIP-1559
    priority_fee: int | None  # eth_maxPriorityFeePerGas, when the node implements it
    gas_price: int  # eth_gasPrice
    block: int | None = None  # the number of the 'latest' block the base fee was read from

    @property
    def level(self) -> int:
        """One figure that changes when the price of inclusion does: the base fee, or the gas
        price on a chain without one."""
        return self.gas_price if self.base_fee is None else self.base_fee


def market_calls() -> list[RpcCall]:
    """The calls :func:`parse_market` reads; callers may put them in a larger batch."""
    return [
        RpcCall("eth_getBlockByNumber", ["latest", False]),
        RpcCall("eth_maxPriorityFeePerGas", []),
        RpcCall("eth_gasPrice", []),
    ]


def parse_market(results: list[Any | HodlaiError]) -> Market:
    """Read the settled results of :func:`market_calls` (in that order)."""
    block, priority, gas_price = results
    if isinstance(block, HodlaiError):
        raise block
    if isinstance(gas_price, HodlaiError):
        raise gas_price
    if not isinstance(block, dict):
        raise RpcTransportError("eth_getBlockByNumber('latest') returned no block")
    base = block.get("baseFeePerGas")
    number = block.get("number")
    return Market(
        base_fee=hex_int(base) if base is not None else None,
        # Not every node implements eth_maxPriorityFeePerGas; the fallback tip covers that.
        priority_fee=None if isinstance(priority, HodlaiError) else hex_int(priority),
        gas_price=hex_int(gas_price),
        block=hex_int(number) if number is not None else None,
    )


async def fetch_market(rpc: RpcClient, *, at_least: int | None = None) -> Market:
    """Current prices, in one HTTP round trip per try, from a node whose latest block is at
    least ``at_least`` (the highest head the caller has seen; see the module docstring)."""
    for _ in range(MARKET_ATTEMPTS):
        market = parse_market(await rpc.batch_settled(market_calls()))
        if at_least is None or (market.block is not None and market.block >= at_least):
            return market
    raise StaleNodeError(
        f"the fee market was read at block {market.block}, behind the head {at_least} already "
        f"seen, {MARKET_ATTEMPTS} times"
    )


def price(market: Market, policy: FeePolicy) -> Fees:
    """The fees to offer now. Raises FeeCapExceededError when the market is above the cap."""
    if market.base_fee is None:
        if market.gas_price > policy.max_fee_per_gas:
            raise FeeCapExceededError(
                f"gas price {market.gas_price} wei is above the cap {policy.max_fee_per_gas} wei"
            )
        return Fees(gas_price=market.gas_price)
    if market.base_fee >= policy.max_fee_per_gas:
        raise FeeCapExceededError(
            f"base fee {market.base_fee} wei is at or above the cap {policy.max_fee_per_gas} wei"
        )
    suggested = FALLBACK_PRIORITY_FEE if market.priority_fee is None else market.priority_fee
    tip = min(suggested, policy.max_priority_fee_per_gas)
    max_fee = min(BASE_FEE_HEADROOM * market.base_fee + tip, policy.max_fee_per_gas)
    return Fees(max_fee_per_gas=max_fee, max_priority_fee_per_gas=min(tip, max_fee))


def minimum_replacement(value: int) -> int:
    """The smallest fee a node accepts to replace a transaction offering ``value``."""
    return int(value * REPLACEMENT_BUMP) + 1


def bump(old: Fees, market: Market, policy: FeePolicy) -> Fees | None:
    """Fees for a same-nonce replacement of a transaction priced ``old``, or None when the
    caps leave no room for a bump the nodes would accept."""
    if not old.is_dynamic:
        assert old.gas_price is not None
        wanted = max(minimum_replacement(old.gas_price), market.gas_price)
        if wanted > policy.max_fee_per_gas:
            return None
        return Fees(gas_price=wanted)
    assert old.max_fee_per_gas is not None and old.max_priority_fee_per_gas is not None
    now = _market_dynamic(market, policy)
    need_fee = minimum_replacement(old.max_fee_per_gas)
    need_tip = minimum_replacement(old.max_priority_fee_per_gas)
    max_fee = min(max(need_fee, now.max_fee_per_gas or 0), policy.max_fee_per_gas)
    tip = min(max(need_tip, now.max_priority_fee_per_gas or 0), policy.max_priority_fee_per_gas)
    if max_fee < need_fee or tip < need_tip or tip > max_fee:
        return None
    return Fees(max_fee_per_gas=max_fee, max_priority_fee_per_gas=tip)


def _market_dynamic(market: Market, policy: FeePolicy) -> Fees:
    # The market price ignoring the "above the cap" refusal: a replacement of an already
    # signed transaction goes as high as the cap allows rather than not at all.
    if market.base_fee is None:
        return Fees(max_fee_per_gas=market.gas_price, max_priority_fee_per_gas=market.gas_price)
    suggested = FALLBACK_PRIORITY_FEE if market.priority_fee is None else market.priority_fee
    tip = min(suggested, policy.max_priority_fee_per_gas)
    return Fees(
        max_fee_per_gas=BASE_FEE_HEADROOM * market.base_fee + tip, max_priority_fee_per_gas=tip
    )
