"""Which unmined transactions to replace on their nonce, with what, and at what price.

Guarantees (:func:`plan`):

- At most one replacement per nonce per poll, chosen in this order: a transaction no node
  accepts (REJECTED) and one whose purpose became invalid are replaced by a cancel (a 0-value
  self-transfer); an empty nonce below our highest open one (a gap) gets a cancel; a
  transaction refused as underpriced (on this poll, or earlier and not sent since:
  ``price_refused``), or not mined for ``stuck_after_s``, is re-signed with bumped fees.
- A refusal is one node's word: nobody is told REJECTED. The cancel only competes with the
  refused transaction on its nonce (another node may have accepted the original); the purpose
  learns the outcome at settlement, SUPERSEDED when the cancel mined, the original's own
  outcome when it did. The refused row keeps :data:`REJECTED_REASON` as its error.
- A bump re-signs the call the transaction's signed bytes hold, never the row's ``to`` /
  ``calldata`` / ``value`` columns (:func:`signed_call`): whoever can write the database file
  cannot redirect a stuck payment at its next bump. A row whose columns differ from its
  signed bytes, or whose bytes were signed by another key or for another chain, is refused.
- A transaction waiting behind a gap is not bumped: it waits for the gap, not for fees. Nor
  is one the caller names in ``skip_bump`` (held after a reorg, or seen mined by a node whose
  receipt is not visible yet): a bump there could only waste a send.
- A replacement offers at least the replacement minimum over the transaction it replaces and
  never more than the caps (:func:`replacement_fees`); when the caps leave no room it is not
  made (the caller warns, once per transaction), except a cancel, which is then priced at
  the market: it fills the nonce wherever no node holds the original. A replacement that
  would not change the fees is not made: it would be the same transaction again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Final

import rlp  # type: ignore[import-untyped]  # no stubs; the transaction codec of eth-account
from eth_account import Account
from eth_account._utils.legacy_transactions import Transaction as LegacyTransaction
from eth_account._utils.signing import extract_chain_id
from eth_account.typed_transactions.typed_transaction import TypedTransaction
from eth_utils.address import to_checksum_address
from hexbytes import HexBytes

from shared.errors import FeeCapExceededError, LedgerTamperedError
from shared.tx.broadcast import BroadcastOutcome
from shared.tx.fees import FeePolicy, Fees, Market, bump, price
from shared.tx.ledger import CANCEL, Purpose, TxRecord, TxStatus
from shared.tx.nonces import gaps
from shared.tx.signer import Call

# Gas of a plain transfer to an EOA: all a cancel (0-value self-transfer) needs.
CANCEL_GAS: Final = 21_000
#: The error a row refused by a node keeps when a cancel replaces it (a purpose told
#: SUPERSEDED can tell this cancel from one for an invalid purpose).
REJECTED_REASON: Final = "rejected by the node"


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
    price_refused: Set[int] = frozenset(),
) -> list[Replacement]:
    """Replacements for the open transactions ``waiting`` at nonces >= ``chain_latest``
    (the caller's floor: no nonce of ours below it can be a gap). ``price_refused``: ids of
    transactions a node refused for their price and that were not sent again since."""
    cancel = cancel_call(sender)
    plans: dict[int, Replacement] = {}
    for tx in waiting:
        if outcomes.get(tx.tx_hash) is BroadcastOutcome.REJECTED:
            plans[tx.nonce] = Replacement(tx, tx.nonce, CANCEL, cancel, REJECTED_REASON)
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
        refused = outcomes.get(tx.tx_hash) is BroadcastOutcome.UNDERPRICED
        underpriced = (refused or tx.id in price_refused) and age >= reprice_after_s
        stuck = tx.status is TxStatus.BROADCAST and age >= stuck_after_s
        if underpriced or stuck:
            why = "refused as underpriced" if underpriced else f"not mined after {age:.0f} s"
            plans[tx.nonce] = Replacement(tx, tx.nonce, tx.purpose, tx.call, why)
    return [plans[n] for n in sorted(plans)]


def replacement_fees(replacement: Replacement, market: Market, policy: FeePolicy) -> Fees | None:
    """The fees to sign ``replacement`` with, or None when the caps forbid it for now (the
    caller says so, once per transaction)."""
    if replacement.old is None:
        try:
            return price(market, policy)
        except FeeCapExceededError:
            return None
    fees = bump(replacement.old.fees, market, policy)
    if fees is not None and fees != replacement.old.fees:
        return fees
    if replacement.purpose == CANCEL:
        # No valid bump within the caps. A cancel at the market price still fills the nonce
        # wherever no node holds the original (signed but never accepted, or forgotten): an
        # invalid transaction is never sent, so without it the nonce, and every later one,
        # would wait forever. A node that holds the original refuses it; they compete on.
        try:
            fees = price(market, policy)
        except FeeCapExceededError:
            return None
        return None if fees == replacement.old.fees else fees
    return None  # the same fees would sign the same transaction again


def signed_call(tx: TxRecord, *, sender: str, chain_id: int) -> Call:
    """The call ``tx``'s signed bytes hold, checked against its row: signed by ``sender``,
    for ``chain_id``, at the row's nonce, with the row's to / calldata / value / gas. Raises
    LedgerTamperedError naming every difference."""
    raw = HexBytes(tx.raw)
    try:
        signer = Account.recover_transaction(raw)
        if raw[0] <= 0x7F:  # an EIP-2718 typed envelope
            fields = TypedTransaction.from_bytes(raw).as_dict()
            chain = int(fields["chainId"])
        else:
            fields = rlp.decode(bytes(raw), LegacyTransaction).as_dict()
            chain_or_none, _ = extract_chain_id(fields["v"])
            chain = -1 if chain_or_none is None else int(chain_or_none)
    except (ValueError, TypeError, KeyError, rlp.exceptions.RLPException) as exc:
        raise LedgerTamperedError(f"tx {tx.id}: its raw_tx does not decode ({exc})") from None
    to = fields.get("to")
    decoded = Call(
        to=to_checksum_address(bytes(to)) if to else to_checksum_address(b"\0" * 20),
        data=bytes(fields.get("data") or b""),
        value=int(fields["value"]),
        gas_limit=int(fields["gas"]),
    )
    nonce = int(fields["nonce"])
    problems = [
        what
        for what, ok in (
            (f"signed by {signer}, not {sender}", signer.lower() == sender.lower()),
            (f"signed for chain {chain}, not {chain_id}", chain == chain_id),
            (f"nonce {nonce} in raw_tx, {tx.nonce} in the row", nonce == tx.nonce),
            ("to_address differs from raw_tx", decoded.to == tx.call.to),
            ("calldata differs from raw_tx", decoded.data == tx.call.data),
            ("value_wei differs from raw_tx", decoded.value == tx.call.value),
            ("gas_limit differs from raw_tx", decoded.gas_limit == tx.call.gas_limit),
        )
        if not ok
    ]
    if problems:
        raise LedgerTamperedError(f"tx {tx.id} ({tx.tx_hash}): " + "; ".join(problems))
    return decoded
