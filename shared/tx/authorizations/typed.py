"""Signing an EIP-3009 message that someone else built: the seam for an x402 client
(``x402.mechanisms.evm.signer.ClientEvmSigner.sign_typed_data(domain, types, primary_type,
message)``), whose payment requirements come from the server being paid.

Guarantees:

- The proposed domain must equal, field by field, the token's domain as the allowlist read
  it from the contract (:meth:`TokenDomain.require_matches`); the proposed types must be
  exactly EIP-3009's for the primary type; the message's ``from`` must be the wallet asked
  to sign. Anything else is refused before a key is touched.
- What is signed is rebuilt from the checked fields by :func:`sign_authorization`, so it is
  recorded (budget, unit and nonce rules included) before the signature is returned, and the
  signature is over exactly the structure proposed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from shared.tx.authorizations.eip3009 import PAYMENT_KINDS, Kind, typed_data
from shared.tx.authorizations.ledger import (
    Authorization,
    AuthorizationError,
    PaymentOrder,
    sign_authorization,
)

if TYPE_CHECKING:
    from shared.keys.vault import Vault
    from shared.tx.authorizations.domains import DomainAllowlist, TokenDomain


def sign_typed_payment(
    conn: sqlite3.Connection,
    vault: Vault,
    allowlist: DomainAllowlist,
    domain: TokenDomain,
    *,
    signer: str,
    proposed_domain: Mapping[str, Any],
    types: Mapping[str, Any],
    primary_type: str,
    message: Mapping[str, Any],
    purpose: str,
    subject: str,
    unit: str,
    now: float | None = None,
) -> Authorization:
    """Check a proposed Transfer/ReceiveWithAuthorization against the token's domain and
    EIP-3009's types, then sign it through the ledger (recorded, committed, returned)."""
    if primary_type not in {k.value for k in PAYMENT_KINDS}:
        raise AuthorizationError(f"{primary_type!r} is not an EIP-3009 payment kind")
    kind = Kind(primary_type)
    domain.require_matches(proposed_domain)
    expected = typed_data(kind, domain.eip712(), {})["types"]
    given = {name: list(fields) for name, fields in types.items() if name != "EIP712Domain"}
    if given != {kind.value: expected[kind.value]}:
        raise AuthorizationError(f"the proposed types are not EIP-3009's {kind.value}")
    if str(message.get("from", "")).lower() != signer.lower():
        raise AuthorizationError("the proposed message's from is not the signing wallet")
    nonce = message.get("nonce")
    if isinstance(nonce, str):
        try:
            nonce = bytes.fromhex(nonce.removeprefix("0x"))
        except ValueError:
            raise AuthorizationError("the proposed nonce is not hex") from None
    if not isinstance(nonce, bytes):
        raise AuthorizationError("the proposed message has no bytes32 nonce")
    order = PaymentOrder(
        signer=signer,
        to=str(message.get("to", "")),
        value=_uint(message.get("value"), "value"),
        valid_after=_uint(message.get("validAfter"), "validAfter"),
        valid_before=_uint(message.get("validBefore"), "validBefore"),
        purpose=purpose,
        subject=subject,
        unit=unit,
        kind=kind,
        nonce=nonce,
    )
    return sign_authorization(conn, vault, allowlist, domain, order, now=now)


def _uint(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise AuthorizationError(f"the proposed {name} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value, 0)
        except ValueError:
            pass
    raise AuthorizationError(f"the proposed {name} is not an integer")
