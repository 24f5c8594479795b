"""The mint executor's state machines (seeds 000 and 001), declared for shared.state.

Tasks (``ai_agent_tasks``), the seed's statuses, lower-case as the seed writes them:

| status | meaning | who moves it on |
|---|---|---|
| pending_payment | created by the chat; waiting for USDC | executor: balance, timeout; cancel |
| funded | the agent wallet holds the total cost at a confirmed block | executor: first batch |
| processing | mints are being bought | executor: done, or a unit out of retries |
| completed | every mint landed | — (refund moves its remainder) |
| failed | a mint ran out of retries, with the reason | retry (back to funded), refund |
| cancelled | the user cancelled, or the payment timed out (v1.1) | — |

Payments (``mint_payments``): one x402 purchase of one mint (a *unit* of the task):
``prepared`` (recorded, nothing signed) → ``signed`` (the agent wallet's authorization is
in the ledger: it could settle) → ``minted`` (the server answered with the mint) or
``failed`` (nothing moved: refused before signing, or the authorization can never be used
any more: EXPIRED or CANCELLED in the ledger).

Transfers (``mint_transfers``): a funding authorization the user signed, or a refund the
agent wallet signed, submitted by the relayer: ``recorded`` → ``submitted`` (its
transaction is in the core ledger) → ``confirmed`` (the authorization was used on chain, by
us or anyone) or ``failed``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from shared.state import Machine


class TaskStatus(StrEnum):
    PENDING_PAYMENT = "pending_payment"
    FUNDED = "funded"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class PaymentStatus(StrEnum):
    PREPARED = "prepared"
    SIGNED = "signed"
    MINTED = "minted"
    FAILED = "failed"


class TransferStatus(StrEnum):
    RECORDED = "recorded"
    SUBMITTED = "submitted"
    CONFIRMED = "confirmed"
    FAILED = "failed"


T = TaskStatus
TASK_TERMINAL: Final = frozenset({T.COMPLETED, T.FAILED, T.CANCELLED})
#: the statuses a task's funds can still be spent in
TASK_SPENDING: Final = frozenset({T.FUNDED, T.PROCESSING})
TASK_MOVES: Final[frozenset[tuple[str, str]]] = frozenset(
    {
        (T.PENDING_PAYMENT, T.FUNDED),  # the balance covers the total at a confirmed block
        (T.PENDING_PAYMENT, T.CANCELLED),  # payment timeout (v1.1) or the user cancelled
        (T.FUNDED, T.PROCESSING),  # the first batch begins
        (T.FUNDED, T.CANCELLED),  # the user cancelled before any mint
        (T.PROCESSING, T.PROCESSING),  # resumed after a restart
        (T.PROCESSING, T.COMPLETED),  # every mint landed
        (T.PROCESSING, T.FAILED),  # a mint ran out of retries
        (T.PROCESSING, T.CANCELLED),  # the user cancelled mid-way (open payments resolve)
        (T.FAILED, T.FUNDED),  # retry (the seed's SQL), only while funds remain
    }
)

P = PaymentStatus
PAYMENT_MOVES: Final[frozenset[tuple[str, str]]] = frozenset(
    {
        (P.PREPARED, P.SIGNED),
        (P.PREPARED, P.FAILED),  # refused before anything was signed
        (P.SIGNED, P.MINTED),
        (P.SIGNED, P.FAILED),  # the authorization expired or was cancelled unused
    }
)

X = TransferStatus
TRANSFER_MOVES: Final[frozenset[tuple[str, str]]] = frozenset(
    {
        (X.RECORDED, X.SUBMITTED),
        (X.RECORDED, X.CONFIRMED),  # someone else submitted it first
        (X.RECORDED, X.FAILED),
        (X.SUBMITTED, X.CONFIRMED),
        (X.SUBMITTED, X.FAILED),
        (X.SUBMITTED, X.RECORDED),  # its transaction can no longer mine: submit again
    }
)

# The executor is one per database (shared.instance), so it takes no leases; the columns are
# there because every machine of the node keeps the storage contract (claims included).
_LEASE: Final = frozenset({"lease_owner", "lease_until"})

TASKS: Final = Machine(
    name="mint.task",
    table="ai_agent_tasks",
    key="id",
    statuses=TaskStatus,
    moves=TASK_MOVES,
    settable=frozenset(
        {
            "mints_completed", "mints_failed", "funding_tx_hash", "error_message",
            "started_at", "completed_at", "funded_amount", "retry_round",
        }
    ) | _LEASE,
    insertable=frozenset(
        {
            "user_address", "agent_wallet_id", "agent_address", "token_address", "quantity",
            "price_per_mint", "total_cost", "chain_id", "usdc_address", "server_url",
            "pay_to", "payment_deadline",
        }
    ),
    claim_order=("created_at",),
    terminal=frozenset(TASK_TERMINAL),
)  # fmt: skip

PAYMENTS: Final = Machine(
    name="mint.payment",
    table="mint_payments",
    key="id",
    statuses=PaymentStatus,
    moves=PAYMENT_MOVES,
    settable=frozenset(
        {
            "authorization_id", "accepted", "resource", "extensions", "payment_header",
            "mint_tx_hash", "settle_tx_hash", "minted_amount", "error",
        }
    ) | _LEASE,
    insertable=frozenset({"task_id", "unit", "attempt", "retry_round", "value", "server_url"}),
    claim_order=("created_at",),
    terminal=frozenset({P.MINTED, P.FAILED}),
)  # fmt: skip

TRANSFERS: Final = Machine(
    name="mint.transfer",
    table="mint_transfers",
    key="id",
    statuses=TransferStatus,
    moves=TRANSFER_MOVES,
    settable=frozenset({"tx_hash", "error", "answer"}) | _LEASE,
    insertable=frozenset(
        {
            "kind", "task_id", "token", "chain_id", "from_address", "to_address", "value",
            "valid_after", "valid_before", "nonce", "signature", "authorization_id",
            "answer",
        }
    ),
    claim_order=("created_at",),
    terminal=frozenset({X.CONFIRMED, X.FAILED}),
)  # fmt: skip
