"""The oracle's request state machine (DESIGN.md section 4), declared for shared.state.

| status | meaning | who moves it on |
|---|---|---|
| PENDING | request indexed; waiting for an answer | inference worker of its shard |
| ANSWERED | an action from actionSet chosen, reasoning stored, CID computed | fulfiller |
| PROCESSED | fulfilment tx signed, recorded, broadcast; not yet seen on chain | indexer |
| FULFILLED | the fulfilled event is indexed; terminal | — |
| FAILED | terminal with a human-readable reason; ``hodlai retry ID`` re-opens it | operator |
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from shared.state import Machine


class Status(StrEnum):
    PENDING = "PENDING"
    ANSWERED = "ANSWERED"
    PROCESSED = "PROCESSED"
    FULFILLED = "FULFILLED"
    FAILED = "FAILED"


TERMINAL: Final = frozenset({Status.FULFILLED, Status.FAILED})
NON_TERMINAL: Final = frozenset(Status) - TERMINAL

S = Status
ALLOWED: Final[frozenset[tuple[str, str]]] = frozenset(
    {
        (S.PENDING, S.ANSWERED),  # inference chose an action
        (S.PENDING, S.FAILED),  # invalid request / attempt budget spent
        (S.ANSWERED, S.PROCESSED),  # fulfiller recorded a signed tx
        (S.ANSWERED, S.FAILED),  # simulation reverted
        (S.PROCESSED, S.ANSWERED),  # tx reverted: one re-simulation
        (S.PROCESSED, S.FAILED),  # tx reverted again / unrecoverable
        # the fulfilled event moves any non-terminal row (and a FAILED one: the chain wins)
        (S.PENDING, S.FULFILLED),
        (S.ANSWERED, S.FULFILLED),
        (S.PROCESSED, S.FULFILLED),
        (S.FAILED, S.FULFILLED),
        # reorgs: replaced content starts again; an orphaned fulfilment returns the row
        (S.ANSWERED, S.PENDING),
        (S.PROCESSED, S.PENDING),
        (S.FULFILLED, S.PENDING),
        (S.FULFILLED, S.ANSWERED),
        (S.FULFILLED, S.PROCESSED),
        (S.FULFILLED, S.FAILED),
        (S.FAILED, S.PENDING),  # operator retry, or replaced content
        (S.PENDING, S.PENDING),  # replaced content while pending: audit the new generation
    }
)

# Columns a transition may set besides status. Anything else is refused (no SQL built from
# caller-chosen names).
SETTABLE: Final = frozenset(
    {
        "generation", "requester", "model", "system_prompt", "state_string", "action_set",
        "content_hash", "block_number", "block_hash", "tx_hash", "log_index",
        "attempts", "answer_action", "answer_cid", "reasoning", "answered_at",
        "fulfilled_block", "fulfilled_tx_hash", "fulfilled_action", "fulfilled_cid",
        "fail_reason", "lease_owner", "lease_until", "content_lossy", "answer_outside_set",
    }
)  # fmt: skip

REQUESTS: Final = Machine(
    name="oracle.request",
    table="requests",
    key="request_id",
    statuses=Status,
    moves=ALLOWED,
    settable=SETTABLE,
    insertable=SETTABLE | {"shard_key"},
    claim_order=("block_number", "log_index"),
    shard_column="shard_key",
    generation_column="generation",
    terminal=frozenset(TERMINAL),
)
