"""The ``authorizations`` ledger: every EIP-3009 authorization a vault wallet signs, written
in the transaction that makes the signature.

Guarantees:

- **Recorded before it leaves.** :func:`sign_authorization` and :func:`sign_cancel` sign
  inside one :func:`shared.db.atomic` transaction, insert the row (with its creation audit
  row) and commit; the signature is returned only after that commit. They refuse a
  connection that is already inside a transaction (its commit would be the caller's, later)
  and one below ``synchronous=FULL`` (:func:`shared.db.require_durable`), so no power cut
  can forget a signature that a caller already handed on.
- **Only allowed domains.** The token domain must be one the process's
  :class:`~shared.tx.authorizations.domains.DomainAllowlist` resolved from the contract
  itself (name(), version() and DOMAIN_SEPARATOR() read on chain).
- **A budget per subject.** A payment is signed only for a (purpose, subject) that has a
  budget (:func:`set_budget`) in the same token and chain, and only while the values of the
  subject's SIGNED and USED payments plus the new one stay within it; checked in the signing
  transaction, so two processes cannot both pass the check.
- **One live authorization per unit.** A payment for (purpose, subject, unit) is refused while
  an earlier one is SIGNED (it could still be submitted: wait for EXPIRED, or cancel it on
  chain with :func:`sign_cancel` and wait for CANCELLED) and when one is USED (the unit is
  paid).
- **Append-only.** Rows are never deleted, and the columns that make the signature (signer,
  token, chain, kind, from, to, value, validity, nonce, signature, ...) never change: the
  migration's triggers refuse it in the database itself. Every status change goes through
  :func:`shared.state.transition` on :data:`AUTHORIZATION_MACHINE` (``core.authorization``),
  so each has an audit row.

Statuses: SIGNED (could be submitted), USED (mined: a payment moved value; a cancel
cancelled its target), EXPIRED (can never be used and was not: validBefore passed unused at
a confirmed block; for a cancel, its nonce was used by the payment it would have cancelled),
CANCELLED (a payment whose nonce a mined cancelAuthorization consumed).

Amounts are integers in the token's base units, stored as decimal TEXT (a uint256 does not
fit an SQLite INTEGER); sums are computed in Python.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final

import structlog
from eth_utils.address import is_hex_address, to_checksum_address

from shared import state
from shared.db import atomic, require_durable
from shared.errors import NotFoundError, PermanentError
from shared.state import Machine
from shared.tx.authorizations.eip3009 import (
    MAX_TIMESTAMP,
    PAYMENT_KINDS,
    UINT256_MAX,
    Kind,
    typed_data,
)

if TYPE_CHECKING:
    from shared.keys.vault import Vault
    from shared.tx.authorizations.domains import DomainAllowlist, TokenDomain

log = structlog.get_logger(__name__)

#: the actor of the ledger's audit rows
ACTOR: Final = "authorizations"
NONCE_BYTES: Final = 32
_WHO: Final = "the authorizations ledger"


class AuthorizationStatus(StrEnum):
    SIGNED = "SIGNED"
    USED = "USED"
    EXPIRED = "EXPIRED"
    CANCELLED = "CANCELLED"


#: The ``authorizations`` table as a state machine: not claimable (the reconciler reads every
#: SIGNED row), and every status but SIGNED is final.
AUTHORIZATION_MACHINE: Final = Machine(
    name="core.authorization",
    table="authorizations",
    key="id",
    statuses=AuthorizationStatus,
    moves=frozenset(
        (AuthorizationStatus.SIGNED.value, s.value)
        for s in AuthorizationStatus
        if s is not AuthorizationStatus.SIGNED
    ),
    settable=frozenset({"used_block", "used_tx_hash", "note"}),
    claimable=False,
    terminal=frozenset(
        {
            AuthorizationStatus.USED.value,
            AuthorizationStatus.EXPIRED.value,
            AuthorizationStatus.CANCELLED.value,
        }
    ),
)

#: statuses whose value counts against a budget: it moved, or still could
_SPENDING: Final = (AuthorizationStatus.SIGNED.value, AuthorizationStatus.USED.value)


# --- errors ---------------------------------------------------------------------------------
# Kept next to the ledger until the integrator files them into shared/errors.py's tree.


class AuthorizationError(PermanentError):
    """An authorization the ledger will not sign; nothing was signed."""


class DomainNotAllowedError(AuthorizationError):
    """The (token, chain) is not on the allowlist."""


class DomainMismatchError(AuthorizationError):
    """A domain (name, version, chain, separator) differs from what the token contract says."""


class BudgetExceededError(AuthorizationError):
    """Signing would take a subject's authorizations past its budget (or it has none)."""


class OpenAuthorizationError(AuthorizationError):
    """The unit already has an authorization that could still be used (SIGNED) or was (USED)."""


# --- values ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PaymentOrder:
    """What to authorize: ``value`` base units from ``signer`` (a vault wallet) to ``to``,
    valid while ``valid_after < block time < valid_before``, paying for ``unit`` of
    (``purpose``, ``subject``). ``nonce`` is drawn at random unless given (an x402 client
    builds its own message)."""

    signer: str
    to: str
    value: int
    valid_after: int
    valid_before: int
    purpose: str
    subject: str
    unit: str
    kind: Kind = Kind.TRANSFER
    nonce: bytes | None = None


@dataclass(frozen=True)
class Authorization:
    """One row of ``authorizations``: a signed EIP-3009 message and where it stands."""

    id: int
    kind: Kind
    signer: str
    token: str
    chain_id: int
    domain_name: str
    domain_version: str
    from_address: str | None
    to_address: str | None
    value: int
    valid_after: int | None
    valid_before: int | None
    nonce: str  # 0x + 64 hex
    purpose: str
    subject: str
    unit: str
    cancels_id: int | None
    status: AuthorizationStatus
    digest: str
    signature: str  # 0x + 130 hex: r || s || v
    created_at: float
    updated_at: float
    used_block: int | None
    used_tx_hash: str | None
    note: str | None

    @property
    def vrs(self) -> tuple[int, bytes, bytes]:
        raw = bytes.fromhex(self.signature[2:])
        return raw[64], raw[:32], raw[32:64]

    def message(self) -> dict[str, Any]:
        """The EIP-712 message as signed."""
        if self.kind is Kind.CANCEL:
            return {"authorizer": self.signer, "nonce": bytes.fromhex(self.nonce[2:])}
        return {
            "from": self.from_address,
            "to": self.to_address,
            "value": self.value,
            "validAfter": self.valid_after,
            "validBefore": self.valid_before,
            "nonce": bytes.fromhex(self.nonce[2:]),
        }


_COLUMNS: Final = (
    "id, kind, signer, token, chain_id, domain_name, domain_version, from_address, to_address,"
    " value, valid_after, valid_before, nonce, purpose, subject, unit, cancels_id, status,"
    " digest, signature, created_at, updated_at, used_block, used_tx_hash, note"
)


def _record(row: sqlite3.Row | tuple[Any, ...]) -> Authorization:
    values = list(tuple(row))
    values[1] = Kind(values[1])
    values[9] = int(values[9])
    values[17] = AuthorizationStatus(values[17])
    return Authorization(*values)


# --- reading --------------------------------------------------------------------------------


def get(conn: sqlite3.Connection, authorization_id: int) -> Authorization:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM authorizations WHERE id = ?", (authorization_id,)
    ).fetchone()
    if row is None:
        raise NotFoundError(f"no authorization {authorization_id}")
    return _record(row)


def for_unit(
    conn: sqlite3.Connection, *, purpose: str, subject: str, unit: str
) -> list[Authorization]:
    """Every authorization for one unit (cancels included), oldest first."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM authorizations WHERE purpose = ? AND subject = ? AND unit = ?"
        " ORDER BY id",
        (purpose, subject, unit),
    )
    return [_record(r) for r in rows]


def signed(conn: sqlite3.Connection, *, chain_id: int | None = None) -> list[Authorization]:
    """The SIGNED rows (what the reconciler watches), optionally of one chain."""
    sql = f"SELECT {_COLUMNS} FROM authorizations WHERE status = 'SIGNED'"
    params: tuple[object, ...] = ()
    if chain_id is not None:
        sql += " AND chain_id = ?"
        params = (chain_id,)
    return [_record(r) for r in conn.execute(sql + " ORDER BY id", params)]


def spent(conn: sqlite3.Connection, *, purpose: str, subject: str) -> int:
    """Base units the subject's payments moved or still could move (SIGNED + USED)."""
    rows = conn.execute(
        "SELECT value FROM authorizations WHERE purpose = ? AND subject = ? AND status IN (?, ?)"
        " AND kind <> ?",
        (purpose, subject, *_SPENDING, Kind.CANCEL.value),
    )
    return sum(int(r[0]) for r in rows)


def budget_of(conn: sqlite3.Connection, *, purpose: str, subject: str) -> int | None:
    row = conn.execute(
        "SELECT budget FROM authorization_budgets WHERE purpose = ? AND subject = ?",
        (purpose, subject),
    ).fetchone()
    return None if row is None else int(row[0])


# --- budgets --------------------------------------------------------------------------------


def set_budget(
    conn: sqlite3.Connection,
    *,
    purpose: str,
    subject: str,
    token: str,
    chain_id: int,
    budget: int,
    now: float | None = None,
) -> None:
    """Allow (purpose, subject) to authorize at most ``budget`` base units of ``token`` on
    ``chain_id`` in total (e.g. a task's funded amount). Setting it again replaces the figure
    (never the token or chain); a budget below what is already spent stops further signing."""
    require_durable(conn, who=_WHO)
    _check_amount(budget, what="a budget")
    token = _address(token, what="token")
    at = time.time() if now is None else now
    with atomic(conn):
        row = conn.execute(
            "SELECT token, chain_id FROM authorization_budgets WHERE purpose = ? AND subject = ?",
            (purpose, subject),
        ).fetchone()
        if row is not None and (row[0] != token or row[1] != chain_id):
            raise BudgetExceededError(
                f"the budget of {purpose} {subject} is in token {row[0]} on chain {row[1]}, "
                f"not {token} on chain {chain_id}"
            )
        conn.execute(
            "INSERT INTO authorization_budgets (purpose, subject, token, chain_id, budget,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (purpose, subject) DO UPDATE SET budget = excluded.budget,"
            " updated_at = excluded.updated_at",
            (purpose, subject, token, chain_id, str(budget), at, at),
        )
    log.info("authorization_budget_set", purpose=purpose, subject=subject, budget=str(budget))


# --- signing --------------------------------------------------------------------------------


def sign_authorization(
    conn: sqlite3.Connection,
    vault: Vault,
    allowlist: DomainAllowlist,
    domain: TokenDomain,
    order: PaymentOrder,
    *,
    now: float | None = None,
) -> Authorization:
    """Sign ``order`` as a TransferWithAuthorization (or ReceiveWithAuthorization) of
    ``domain``'s token, record it and commit; return the committed row."""
    at = time.time() if now is None else now
    _check_connection(conn)
    allowlist.check(domain, now=at)
    if order.kind not in PAYMENT_KINDS:
        raise AuthorizationError(f"{order.kind} is not a payment; use sign_cancel")
    signer = _address(order.signer, what="signer")
    to = _address(order.to, what="to")
    _check_amount(order.value, what="a value", positive=True)
    _check_window(order.valid_after, order.valid_before, now=at)
    for name in ("purpose", "subject", "unit"):
        if not isinstance(getattr(order, name), str) or not getattr(order, name):
            raise AuthorizationError(f"an authorization's {name} must be a non-empty string")
    nonce = secrets.token_bytes(NONCE_BYTES) if order.nonce is None else order.nonce
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
        raise AuthorizationError(f"an EIP-3009 nonce is {NONCE_BYTES} bytes")
    message = {
        "from": signer,
        "to": to,
        "value": order.value,
        "validAfter": order.valid_after,
        "validBefore": order.valid_before,
        "nonce": nonce,
    }
    typed = typed_data(order.kind, domain.eip712(), message)
    nonce_hex = "0x" + nonce.hex()
    row: dict[str, Any] = {
        "kind": order.kind.value,
        "signer": signer,
        "from_address": signer,
        "to_address": to,
        "value": str(order.value),
        "valid_after": order.valid_after,
        "valid_before": order.valid_before,
        "nonce": nonce_hex,
        "purpose": order.purpose,
        "subject": order.subject,
        "unit": order.unit,
        "cancels_id": None,
    }
    with atomic(conn):
        _check_budget(conn, domain, order)
        _check_unit(conn, order)
        if _nonce_taken(conn, domain, signer, nonce_hex):
            raise AuthorizationError(f"nonce {nonce_hex} of {signer} is already in the ledger")
        authorization_id = _insert_signed(conn, vault, domain, typed, row, at=at)
    record = get(conn, authorization_id)
    log.info(
        "authorization_signed",
        id=record.id,
        kind=record.kind.value,
        signer=record.signer,
        token=record.token,
        to=record.to_address,
        value=str(record.value),
        valid_before=record.valid_before,
        purpose=record.purpose,
        subject=record.subject,
        unit=record.unit,
    )
    return record


def sign_cancel(
    conn: sqlite3.Connection,
    vault: Vault,
    allowlist: DomainAllowlist,
    domain: TokenDomain,
    authorization_id: int,
    *,
    now: float | None = None,
) -> Authorization:
    """Sign (and record, and commit) a CancelAuthorization of the SIGNED payment
    ``authorization_id``; whoever submits ``cancelAuthorization`` with it makes the payment
    unusable, and the reconciler then moves the payment to CANCELLED."""
    at = time.time() if now is None else now
    _check_connection(conn)
    allowlist.check(domain, now=at)
    with atomic(conn):
        target = get(conn, authorization_id)
        if target.kind not in PAYMENT_KINDS:
            raise AuthorizationError(f"authorization {authorization_id} is itself a cancel")
        if target.status is not AuthorizationStatus.SIGNED:
            raise AuthorizationError(
                f"authorization {authorization_id} is {target.status}: nothing to cancel"
            )
        if (target.token, target.chain_id) != (domain.token, domain.chain_id):
            raise DomainMismatchError(
                f"authorization {authorization_id} is for {target.token} on chain "
                f"{target.chain_id}, not {domain.token} on chain {domain.chain_id}"
            )
        message = {"authorizer": target.signer, "nonce": bytes.fromhex(target.nonce[2:])}
        typed = typed_data(Kind.CANCEL, domain.eip712(), message)
        row: dict[str, Any] = {
            "kind": Kind.CANCEL.value,
            "signer": target.signer,
            "from_address": None,
            "to_address": None,
            "value": "0",
            "valid_after": None,
            "valid_before": None,
            "nonce": target.nonce,
            "purpose": target.purpose,
            "subject": target.subject,
            "unit": target.unit,
            "cancels_id": target.id,
        }
        cancel_id = _insert_signed(conn, vault, domain, typed, row, at=at)
    record = get(conn, cancel_id)
    log.info("authorization_cancel_signed", id=record.id, cancels=authorization_id)
    return record


# --- internals ------------------------------------------------------------------------------


def _insert_signed(
    conn: sqlite3.Connection,
    vault: Vault,
    domain: TokenDomain,
    typed: dict[str, Any],
    row: dict[str, Any],
    *,
    at: float,
) -> int:
    """Sign and insert, in the caller's transaction; return the new row's id."""
    # The vault's private path: the one way a money kind is signed (Vault.sign_typed_data
    # refuses them), taken only here, inside the transaction that records the signature.
    signature = vault._sign_money_typed_data(row["signer"], typed)
    values = {
        **row,
        "token": domain.token,
        "chain_id": domain.chain_id,
        "domain_name": domain.name,
        "domain_version": domain.version,
        "status": AuthorizationStatus.SIGNED.value,
        "digest": "0x" + signature.digest.hex(),
        "signature": "0x" + signature.signature.hex(),
        "created_at": at,
        "updated_at": at,
    }
    names = list(values)
    cursor = conn.execute(
        f"INSERT INTO authorizations ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
        " RETURNING id",
        [values[n] for n in names],
    )
    authorization_id = int(cursor.fetchone()[0])
    state.audit(
        conn,
        AUTHORIZATION_MACHINE,
        str(authorization_id),
        None,
        AuthorizationStatus.SIGNED.value,
        actor=ACTOR,
        note=f"{row['kind']} {row['value']} to {row['to_address']}"
        if row["cancels_id"] is None
        else f"cancels {row['cancels_id']}",
        at=at,
    )
    return authorization_id


def _check_connection(conn: sqlite3.Connection) -> None:
    require_durable(conn, who=_WHO)
    if conn.in_transaction:
        raise AuthorizationError(
            "the authorizations ledger signs only outside an open transaction: the row must "
            "be committed before the signature is returned, and an enclosing transaction "
            "would commit it later (or roll it back)"
        )


def _check_budget(conn: sqlite3.Connection, domain: TokenDomain, order: PaymentOrder) -> None:
    row = conn.execute(
        "SELECT token, chain_id, budget FROM authorization_budgets WHERE purpose = ? AND"
        " subject = ?",
        (order.purpose, order.subject),
    ).fetchone()
    if row is None:
        raise BudgetExceededError(
            f"{order.purpose} {order.subject} has no budget: set_budget() first (e.g. with the "
            "task's funded amount)"
        )
    if (row[0], row[1]) != (domain.token, domain.chain_id):
        raise BudgetExceededError(
            f"the budget of {order.purpose} {order.subject} is in token {row[0]} on chain "
            f"{row[1]}, not {domain.token} on chain {domain.chain_id}"
        )
    budget = int(row[2])
    already = spent(conn, purpose=order.purpose, subject=order.subject)
    if already + order.value > budget:
        raise BudgetExceededError(
            f"budget of {order.purpose} {order.subject} exceeded: {already} already signed or "
            f"used + {order.value} > budget {budget}"
        )


def _check_unit(conn: sqlite3.Connection, order: PaymentOrder) -> None:
    row = conn.execute(
        "SELECT id, status FROM authorizations WHERE purpose = ? AND subject = ? AND unit = ?"
        " AND status IN (?, ?) AND kind <> ? ORDER BY id LIMIT 1",
        (order.purpose, order.subject, order.unit, *_SPENDING, Kind.CANCEL.value),
    ).fetchone()
    if row is None:
        return
    if row[1] == AuthorizationStatus.USED.value:
        raise OpenAuthorizationError(
            f"{order.purpose} {order.subject} unit {order.unit} is already paid by "
            f"authorization {row[0]} (USED)"
        )
    raise OpenAuthorizationError(
        f"{order.purpose} {order.subject} unit {order.unit} has authorization {row[0]} that "
        "could still be used (SIGNED): wait until it is EXPIRED, or cancel it on chain "
        "(sign_cancel) and wait until it is CANCELLED"
    )


def _nonce_taken(conn: sqlite3.Connection, domain: TokenDomain, signer: str, nonce: str) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM authorizations WHERE chain_id = ? AND token = ? AND signer = ? AND"
            " nonce = ?",
            (domain.chain_id, domain.token, signer, nonce),
        ).fetchone()
        is not None
    )


def _address(value: object, *, what: str) -> str:
    if not isinstance(value, str) or not is_hex_address(value):
        raise AuthorizationError(f"{what} is not a 20-byte hex address")
    return str(to_checksum_address(value))


def _check_amount(value: object, *, what: str, positive: bool = False) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise AuthorizationError(f"{what} is an integer number of base units")
    if value < (1 if positive else 0) or value > UINT256_MAX:
        raise AuthorizationError(f"{what} must be in {int(positive)}..2^256-1, got {value}")


def _check_window(valid_after: object, valid_before: object, *, now: float) -> None:
    for name, value in (("validAfter", valid_after), ("validBefore", valid_before)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_TIMESTAMP:
            raise AuthorizationError(f"{name} must be Unix seconds in 0..2^63-1")
    assert isinstance(valid_after, int) and isinstance(valid_before, int)
    if valid_before <= valid_after:
        raise AuthorizationError(
            f"validBefore {valid_before} is not after validAfter {valid_after}"
        )
    if valid_before <= now:
        raise AuthorizationError(f"validBefore {valid_before} has already passed (now {now:.0f})")
