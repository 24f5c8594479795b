"""The Solana rail's state machine: one row per signed transaction (``distribution_solana_sends``).

A send row is written, with the transaction's signature, its blockhash's last valid block
height and its signed bytes, in the same database transaction that moves its transfers
``pending → sent`` — before the bytes can reach the cluster. Its status says what the
cluster made of it:

| status | meaning | who moves it on |
|---|---|---|
| sent | signed and recorded; it may be on the wire or have landed | the payer (cluster) |
| landed | found, executed without error, finalized: its transfers are paid | — |
| failed | found, finalized with an error: nothing of it happened (a transaction is atomic) | — |
| expired | not found, the finalized height past its last valid height: can never land | — |

Only ``expired`` lets its transfers be sent again (``sent → pending``, then a new send row
with a new blockhash and a new signature). ``sent`` is never judged from one missing status:
until the height has passed, an unknown outcome stays unknown and the same bytes are re-sent,
which can land at most once.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from shared.state import Machine


class SendStatus(StrEnum):
    SENT = "sent"
    LANDED = "landed"
    FAILED = "failed"
    EXPIRED = "expired"


S = SendStatus
SEND_FINAL: Final = frozenset({S.LANDED, S.FAILED, S.EXPIRED})
SEND_MOVES: Final[frozenset[tuple[str, str]]] = frozenset(
    {
        (S.SENT, S.LANDED),  # finalized without error
        (S.SENT, S.FAILED),  # finalized with an error (decoded into `error`)
        (S.SENT, S.EXPIRED),  # not found, and the finalized height passed its last valid height
    }
)

SENDS: Final = Machine(
    name="distribution.solana_send",
    table="distribution_solana_sends",
    key="signature",
    statuses=SendStatus,
    moves=SEND_MOVES,
    # Claimable like every machine (shared.state's contract suite), though the payer leases
    # runs, not sends: a send is worked on only under its run's lease.
    settable=frozenset({"error", "slot", "resolved_at", "lease_owner", "lease_until"}),
    insertable=frozenset(
        {
            "run_id", "network", "source", "blockhash", "last_valid_block_height", "blockhash_slot",
            "signed_tx", "recipients", "broadcasts", "last_broadcast_at",
        }
    ),
    claim_order=("created_at",),
    terminal=frozenset(SEND_FINAL),
)  # fmt: skip
