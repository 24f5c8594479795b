"""The mint server's purchases in the state store (table ``mint_purchases``).

Every status change goes through :mod:`shared.state` on :data:`PURCHASES` (with its audit
row); functions here run on the database thread (``AsyncDatabase.run``), each one atomic.

Guarantees:

- :func:`admit` decides, in one transaction, what a paid request is: new (recorded RECEIVED
  before anything is sent), the same payment again (its row), or a conflict: the payment
  identifier with another payload, or the authorization (payer, nonce) under another
  identifier. So one payment is never settled twice, whatever the identifiers say.
- :func:`queue_settle` records the settle call x402's facilitator asked for (RECEIVED ->
  SETTLE_QUEUED) before the sending service can sign it; asked again for the same purchase
  it returns the row as it is (the call must be the same).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any, Final, Literal

from shared import state
from shared.db import atomic
from shared.errors import PermanentError
from workers.mint.server.machine import PURCHASES, RETRYABLE, PurchaseStatus

P = PurchaseStatus
ACTOR: Final = "mint-server"


class PurchaseConflict(PermanentError):
    """The payment identifier or the authorization is already taken by another payment."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class NewPurchase:
    payment_id: str
    fingerprint: str
    payer: str
    auth_nonce: str
    token: str
    recipient: str
    asset: str
    amount: int
    pay_to: str
    network: str

    def row(self) -> dict[str, Any]:
        return {
            "payment_id": self.payment_id,
            "fingerprint": self.fingerprint,
            "payer": self.payer,
            "auth_nonce": self.auth_nonce,
            "token": self.token,
            "recipient": self.recipient,
            "asset": self.asset,
            "amount": str(self.amount),
            "pay_to": self.pay_to,
            "network": self.network,
        }


@dataclass(frozen=True)
class Purchase:
    payment_id: str
    fingerprint: str
    payer: str
    auth_nonce: str
    token: str
    recipient: str
    asset: str
    amount: int
    pay_to: str
    network: str
    status: PurchaseStatus
    settle_call: str | None
    settle_tx_hash: str | None
    mint_tx_hash: str | None
    minted_amount: int | None
    payment_response: str | None
    body: dict[str, Any] | None
    error: str | None
    check_to_block: int | None
    created_at: float

    @classmethod
    def of(cls, row: sqlite3.Row) -> Purchase:
        return cls(
            payment_id=row["payment_id"],
            fingerprint=row["fingerprint"],
            payer=row["payer"],
            auth_nonce=row["auth_nonce"],
            token=row["token"],
            recipient=row["recipient"],
            asset=row["asset"],
            amount=int(row["amount"]),
            pay_to=row["pay_to"],
            network=row["network"],
            status=P(row["status"]),
            settle_call=row["settle_call"],
            settle_tx_hash=row["settle_tx_hash"],
            mint_tx_hash=row["mint_tx_hash"],
            minted_amount=None if row["minted_amount"] is None else int(row["minted_amount"]),
            payment_response=row["payment_response"],
            body=None if row["body"] is None else json.loads(row["body"]),
            error=row["error"],
            check_to_block=row["check_to_block"],
            created_at=float(row["created_at"]),
        )


@dataclass(frozen=True)
class Admission:
    #: proceed: x402 may verify and settle it; known: the row says what happened already
    verdict: Literal["proceed", "known"]
    purchase: Purchase


def get(conn: sqlite3.Connection, payment_id: str) -> Purchase | None:
    row = conn.execute(
        "SELECT * FROM mint_purchases WHERE payment_id = ?", (payment_id,)
    ).fetchone()
    return None if row is None else Purchase.of(row)


def by_authorization(conn: sqlite3.Connection, payer: str, nonce: str) -> Purchase | None:
    row = conn.execute(
        "SELECT * FROM mint_purchases WHERE payer = ? AND auth_nonce = ?", (payer, nonce)
    ).fetchone()
    return None if row is None else Purchase.of(row)


def admit(conn: sqlite3.Connection, new: NewPurchase, *, now: float) -> Admission:
    """What to do with a paid request (see the module docstring). Raises PurchaseConflict."""
    with atomic(conn):
        existing = get(conn, new.payment_id)
        if existing is not None:
            if existing.fingerprint != new.fingerprint:
                raise PurchaseConflict(
                    "payment_id_reused",
                    f"payment identifier {new.payment_id} was used with another payment",
                )
            if existing.status in RETRYABLE:
                state.transition(
                    conn, PURCHASES, new.payment_id, existing.status, P.RECEIVED, actor=ACTOR,
                    note="the same payment presented again", set_columns={"error": None},
                    now=now,
                )  # fmt: skip
                again = get(conn, new.payment_id)
                assert again is not None
                return Admission("proceed", again)
            if existing.status is P.RECEIVED:
                return Admission("proceed", existing)
            return Admission("known", existing)
        taken = by_authorization(conn, new.payer, new.auth_nonce)
        if taken is not None:
            raise PurchaseConflict(
                "authorization_reused",
                f"the authorization of {new.payer} with nonce {new.auth_nonce} belongs to "
                f"payment {taken.payment_id}",
            )
        state.insert(
            conn, PURCHASES, new.row(), status=P.RECEIVED, actor=ACTOR,
            note=f"mint of {new.token} to {new.recipient}", now=now,
        )  # fmt: skip
        created = get(conn, new.payment_id)
        assert created is not None
        return Admission("proceed", created)


def queue_settle(
    conn: sqlite3.Connection, payment_id: str, calldata: str, *, now: float
) -> Purchase:
    """Record the settle call of a RECEIVED purchase (-> SETTLE_QUEUED); a purchase already
    past RECEIVED is returned as it is. PermanentError when it holds another call."""
    with atomic(conn):
        found = get(conn, payment_id)
        if found is None:
            raise PermanentError(f"no purchase {payment_id} to settle")
        if found.status is P.RECEIVED:
            state.transition(
                conn, PURCHASES, payment_id, P.RECEIVED, P.SETTLE_QUEUED, actor=ACTOR,
                note="x402 facilitator settles", set_columns={"settle_call": calldata}, now=now,
            )  # fmt: skip
            queued = get(conn, payment_id)
            assert queued is not None
            return queued
        if found.settle_call is not None and found.settle_call != calldata:
            raise PermanentError(f"purchase {payment_id} already holds another settle call")
        return found


def refuse(conn: sqlite3.Connection, payment_id: str, reason: str, *, now: float) -> bool:
    """RECEIVED -> REFUSED (x402 refused it; nothing was sent). False if not RECEIVED."""
    with atomic(conn):
        found = get(conn, payment_id)
        if found is None or found.status is not P.RECEIVED:
            return False
        state.transition(
            conn, PURCHASES, payment_id, P.RECEIVED, P.REFUSED, actor=ACTOR,
            note="x402 refused the payment", set_columns={"error": reason[:500]}, now=now,
        )  # fmt: skip
        return True


def keep_payment_response(conn: sqlite3.Connection, payment_id: str, header: str) -> None:
    """The PAYMENT-RESPONSE header of the first answer, replayed to retries (kept once)."""
    with atomic(conn):
        conn.execute(
            "UPDATE mint_purchases SET payment_response = ? "
            "WHERE payment_id = ? AND payment_response IS NULL",
            (header, payment_id),
        )


def sold(conn: sqlite3.Connection, token: str) -> int:
    """Purchases of ``token`` paid or being paid and not yet minted (they will mint)."""
    row = conn.execute(
        "SELECT COUNT(*) FROM mint_purchases WHERE token = ? AND status IN "
        "('RECEIVED', 'SETTLE_QUEUED', 'SETTLING', 'SETTLE_CHECK', 'MINT_QUEUED', 'MINTING')",
        (token,),
    ).fetchone()
    return int(row[0])
