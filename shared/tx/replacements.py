"""Which unmined transactions to replace on their nonce, with what, and at what price.

Guarantees (:func:`plan`):

- At most one replacement per nonce per poll, chosen in this order: a transaction no node
  accepts (REJECTED) and one whose purpose became invalid are replaced by a cancel (a 0-value
  self-transfer); an empty nonce below our highest open one (a gap) gets a cancel; a
  transaction refused as underpriced, or not mined for ``stuck_after_s``, is re-signed with the
  same call and bumped fees.
- A transaction waiting behind a gap is not bumped: it waits for the gap, not for fees. Nor
  is one the caller names in ``skip_bump`` (held after a reorg, or seen mined by a node whose
  receipt is not visible yet): a bump there could only waste a send.
- A replacement offers at least the replacement minimum over the transaction it replaces and
  never more than the caps (:func:`replacement_fees`); when the caps leave no room it is not
  made, and a warning says so. A replacement that would not change the fees is not made:
  it would be the same transaction again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Final

import structlog
from eth_utils.address import to_checksum_address

from shared.errors import FeeCapExceededError
from shared.tx.broadcast import BroadcastOutcome
from shared.tx.fees import FeePolicy, Fees, Market, bump, price
from shared.tx.ledger import CANCEL, Purpose, TxRecord, TxStatus
from shared.tx.nonces import gaps
from shared.tx.signer import Call

log = structlog.get_logger(__name__)

# Gas of a plain transfer to an EOA: all a cancel (0-value self-transfer) needs.
CANCEL_GAS: Final = 21_000


def cancel_call(sender: str) -> Call:
    """A 0-value transfer to ourselves: the cheapest transaction that uses up a nonce."""
    return Call(to=to_checksum_address(sender), data=b"", value=0, gas_limit=CANCEL_GAS)


@dataclass(frozen=True)
class Replacement:
    old: TxRecord | None  # None: filling an empty nonce
    nonce: int
    purpose: Purpose
    call: Call
    reason: str
    rejected: bool = False

    @property
    def kind(self) -> str:
        """For metrics and logs: gap_filled, cancelled or replaced."""
        if self.old is None:
            return "gap_filled"
        return "cancelled" if self.purpose == CANCEL else "replaced"


def plan(
    waiting: Sequence[TxRecord],
    *,
    sender: str,
    outcomes: Mapping[str, BroadcastOutcome],
    invalid: Mapping[int, str],
    chain_latest: int,
    now: float,
    stuck_after_s: float,
    reprice_after_s: float,
    skip_bump: Set[int] = frozenset(),
) -> list[Replacement]:
    """Replacements for the open transactions ``waiting`` at nonces >= ``chain_latest``
    (the caller's floor: no nonce of ours below it can be a gap)."""
    cancel = cancel_call(sender)
    plans: dict[int, Replacement] = {}
    for tx in waiting:
        if outcomes.get(tx.tx_hash) is BroadcastOutcome.REJECTED:
            plans[tx.nonce] = Replacement(
                tx, tx.nonce, CANCEL, cancel, "rejected by the node", rejected=True
            )
        elif tx.id in invalid:
            plans[tx.nonce] = Replacement(
                tx, tx.nonce, CANCEL, cancel, f"cancelled: {invalid[tx.id]}"
            )
    holes = gaps((tx.nonce for tx in waiting), chain_latest)
    for nonce in holes:
        plans[nonce] = Replacement(None, nonce, CANCEL, cancel, "fills a gap")
    first_hole = holes[0] if holes else None
    for tx in waiting:
        if (
            tx.nonce in plans
            or tx.id in skip_bump
            or (first_hole is not None and tx.nonce > first_hole)
        ):
            continue
        age = now - tx.created_at
        # Re-priced at most once per reprice_after_s, so a node that keeps calling it
        # underpriced for another reason (a full pool) cannot drive fees to the cap in seconds.
        underpriced = (
            outcomes.get(tx.tx_hash) is BroadcastOutcome.UNDERPRICED and age >= reprice_after_s
        )
        stuck = tx.status is TxStatus.BROADCAST and age >= stuck_after_s
        if underpriced or stuck:
            why = "refused as underpriced" if underpriced else f"not mined after {age:.0f} s"
            plans[tx.nonce] = Replacement(tx, tx.nonce, tx.purpose, tx.call, why)
    return [plans[n] for n in sorted(plans)]


def replacement_fees(replacement: Replacement, market: Market, policy: FeePolicy) -> Fees | None:
    """The fees to sign ``replacement`` with, or None when the caps forbid it for now."""
    if replacement.old is None:
        try:
            return price(market, policy)
        except FeeCapExceededError as exc:
            log.warning("tx_gap_fill_waits_for_fees", nonce=replacement.nonce, error=str(exc))
            return None
    fees = bump(replacement.old.fees, market, policy)
    if fees == replacement.old.fees:
        fees = None  # the same fees would sign the same transaction again
    if fees is None:
        log.warning(
            "tx_fee_cap_reached",
            tx_hash=replacement.old.tx_hash,
            nonce=replacement.nonce,
            reason=replacement.reason,
            cap_wei=policy.max_fee_per_gas,
            **replacement.old.fees.describe(),
        )
    return fees
