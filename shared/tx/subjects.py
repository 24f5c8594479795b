"""What the ledger says about one subject's transactions, for every sending source.

A *subject* is what a transaction is for (a request, a payment), named by its purpose's kind
and subject (shared/tx/ledger.py). Guarantees:

- :func:`one_live` refuses, inside the record transaction, a second transaction for a subject
  that has one at a nonce that can still mine (itself, or superseded by a replacement or
  cancel that may yet lose to it): :class:`InFlightError`. The sending service wraps every
  submission's bind with it, so no executor can pay one subject twice in parallel.
- :func:`prior_sends` counts the earlier intents of a subject's current version, so that an
  idempotency key built from it names the next intended transaction (after a revert), and
  gives the newest block one was simulated at (a re-simulation never goes below it).
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from shared.errors import TransitionConflict
from shared.tx.manager import Submission
from shared.tx.signer import SignedTx


class InFlightError(TransitionConflict):
    """The subject already has a transaction in flight; a second one must not be signed."""


def one_live(submission: Submission) -> Submission:
    """``submission`` whose bind first refuses a second live transaction for its subject."""
    kind, subject, bind = submission.purpose.kind, submission.purpose.subject, submission.bind
    if subject is None:
        return submission

    def guarded(conn: sqlite3.Connection, signed: SignedTx) -> None:
        # Any transaction of this subject at a nonce still open (itself, or superseded by a
        # replacement or cancel that may yet lose to it) could still mine.
        other = conn.execute(
            "SELECT t.tx_hash FROM txs t WHERE t.subject = ? AND t.purpose = ?"
            " AND t.tx_hash <> ? AND EXISTS (SELECT 1 FROM txs o WHERE o.sender = t.sender"
            " AND o.chain_id IS t.chain_id AND o.nonce = t.nonce"
            " AND o.status IN ('SIGNED', 'BROADCAST')) LIMIT 1",
            (subject, kind, signed.tx_hash),
        ).fetchone()
        if other is not None:
            raise InFlightError(f"{kind} {subject} still has {other[0]} in flight")
        bind(conn, signed)

    return dataclasses.replace(submission, bind=guarded)


@dataclass(frozen=True)
class PriorSends:
    """What the ledger holds of earlier transactions of one subject's current version."""

    block: int = 0  # the newest block one of them was simulated at
    intents: int = 0  # how many were intended (replacements and cancels not counted)


def prior_sends(
    conn: sqlite3.Connection, kind: str, subjects: Sequence[tuple[str, int | None]]
) -> dict[str, PriorSends]:
    """Per (subject, version) with earlier intents: how many, and the newest simulation
    block. An idempotency key that counts the intents names the next one; a re-simulation
    never goes below the block an earlier send was simulated at."""
    out: dict[str, PriorSends] = {}
    for subject, version in subjects:
        block, intents = conn.execute(
            "SELECT MAX(simulated_block), COUNT(*) FILTER (WHERE replaces_tx_id IS NULL)"
            " FROM txs WHERE purpose = ? AND subject = ? AND version IS ?",
            (kind, subject, version),
        ).fetchone()
        if intents:
            out[subject] = PriorSends(int(block or 0), int(intents))
    return out
