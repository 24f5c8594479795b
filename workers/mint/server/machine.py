"""The mint server's state machine: one row per x402 purchase (``mint_purchases``), keyed by
its payment identifier (x402's ``payment-identifier`` extension), unique by (payer,
authorization nonce).

| status | meaning | who moves it on |
|---|---|---|
| RECEIVED | a paid request was recorded, before anything was sent | the facilitator's settle |
| REFUSED | x402 refused the payment before anything was sent (verify, expired, ...) | a retry |
| SETTLE_QUEUED | the settle call (``transferWithAuthorization``) is recorded | the sender |
| SETTLING | the settle transaction is signed and recorded (txs), in flight | its FINAL outcome |
| SETTLE_CHECK | our settle failed: did another transaction use the authorization? | the check |
| SETTLE_FAILED | no money moved (the check found no use of the authorization) | a retry |
| MINT_QUEUED | the settle is FINAL: paid; the mint is owed | the sender |
| MINTING | the ``mint(to)`` transaction is signed and recorded, in flight | its FINAL outcome |
| MINTED | the mint is FINAL; the answer body is stored | — |
| MINT_FAILED | the mint reverted (role revoked): paid, not minted; an operator refunds | — |

The settle's FINAL outcome moves SETTLING -> MINT_QUEUED in the database transaction that
records it, so the mint is owed durably the moment the payment is final: a process killed
between the settle and the mint finishes the mint when it starts again, whoever asked.

Anyone may submit an EIP-3009 authorization (the payer too). When ours fails (reverted, or
its nonce went to another transaction), the purchase is SETTLE_CHECK until the chain says
whether the authorization was used by someone else: its ``AuthorizationUsed`` with the
matching Transfer to payTo counts as paid (-> MINT_QUEUED); no use at all is SETTLE_FAILED.
A payer is never charged without a mint because someone else submitted first.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from shared.state import Machine


class PurchaseStatus(StrEnum):
    RECEIVED = "RECEIVED"
    REFUSED = "REFUSED"
    SETTLE_QUEUED = "SETTLE_QUEUED"
    SETTLING = "SETTLING"
    SETTLE_CHECK = "SETTLE_CHECK"
    SETTLE_FAILED = "SETTLE_FAILED"
    MINT_QUEUED = "MINT_QUEUED"
    MINTING = "MINTING"
    MINTED = "MINTED"
    MINT_FAILED = "MINT_FAILED"


P = PurchaseStatus
#: nothing was sent for the purchase; the same payment may be presented again
RETRYABLE: Final = frozenset({P.REFUSED, P.SETTLE_FAILED})
TERMINAL: Final = frozenset({P.MINTED, P.MINT_FAILED})
MOVES: Final[frozenset[tuple[str, str]]] = frozenset(
    {
        (P.RECEIVED, P.SETTLE_QUEUED),  # x402's facilitator asked for the settle call
        (P.RECEIVED, P.REFUSED),  # x402 refused the payment, nothing sent
        (P.REFUSED, P.RECEIVED),  # the same payment presented again
        (P.SETTLE_FAILED, P.RECEIVED),  # the same payment presented again
        (P.SETTLE_QUEUED, P.SETTLING),  # the settle transaction is recorded (bind)
        (P.SETTLING, P.MINT_QUEUED),  # the settle is FINAL and moved the money
        (P.SETTLING, P.SETTLE_CHECK),  # reverted, superseded or dropped: was it used?
        (P.SETTLE_CHECK, P.MINT_QUEUED),  # another transaction used it: paid
        (P.SETTLE_CHECK, P.SETTLE_FAILED),  # nobody used it: no money moved
        (P.MINT_QUEUED, P.MINTING),  # the mint transaction is recorded (bind)
        (P.MINTING, P.MINT_QUEUED),  # the mint cannot mine any more (cancelled): send again
        (P.MINTING, P.MINTED),  # the mint is FINAL
        (P.MINTING, P.MINT_FAILED),  # the mint reverted
    }
)

PURCHASES: Final = Machine(
    name="mint.server_purchase",
    table="mint_purchases",
    key="payment_id",
    statuses=PurchaseStatus,
    moves=MOVES,
    settable=frozenset(
        {
            "settle_call", "settle_tx_hash", "mint_tx_hash", "minted_amount", "body",
            "payment_response", "error", "check_to_block", "lease_owner", "lease_until",
        }
    ),
    insertable=frozenset(
        {
            "fingerprint", "payer", "auth_nonce", "token", "recipient", "asset", "amount",
            "pay_to", "network",
        }
    ),
    claim_order=("created_at",),
    terminal=frozenset(TERMINAL),
)  # fmt: skip
