"""End users prove themselves with Sign-In with Ethereum (EIP-4361) messages, parsed and
verified by the maintained ``siwe`` library (PyPI ``signinwithethereum``; its ABNF grammar,
not ours).

How a wallet front end uses it:

1. ``GET /api/auth/nonce`` gives a fresh nonce (and the domains and chain ids accepted).
2. The user's wallet signs (``personal_sign``, EIP-191) an EIP-4361 message naming that
   nonce, with the statement ``<action>: <subject>`` the route asks for (e.g.
   ``Cancel mint task: 42``) and an ``Expiration Time`` at most 5 minutes after its
   ``Issued At``.
3. The front end sends ``Sign-In-With-Ethereum: <base64 of {"message": …, "signature": …}>``
   with the call of a route that depends on :func:`require_user_proof`.

Guarantees of :func:`require_user_proof` (every refusal is a JSON error whose ``error`` is a
``user_proof_*`` code, 401 for a proof that proves nothing, 403 for a valid proof of
something else, and one ``user_proof_refused`` event):

- The message parses as EIP-4361; its domain is one of ``HODLAI_API_SIWE_DOMAINS`` (default:
  the request's ``Host``, itself checked by shared/api/hosts.py) and its chain id one of the
  route's (default ``HODLAI_API_SIWE_CHAIN_IDS``, else ``HODLAI_CHAIN_ID``).
- Its statement is exactly ``<action>: <subject>`` of the route (a proof for another action
  or another subject is refused), so a wallet shows the user what they authorise.
- It carries an expiry at most :data:`MAX_LIFETIME_S` after it was issued; it is not used
  after it, nor before ``Not Before``, nor when issued more than :data:`CLOCK_SKEW_S` in the
  future.
- The signature recovers (EOA, EIP-191) to the message's address: that address is the user.
- The nonce was issued by this node, is unexpired, and is **spent** by this verification, in
  one conditional UPDATE: two requests with one signed message never both pass, whichever
  processes they reach. A nonce is spent only by a proof that passed every other check, and
  it stays spent whatever the route then answers (e.g. 403: this user does not own the
  subject): a new attempt signs a new message.

Not covered: smart-contract wallets (EIP-1271/6492 need an RPC call per proof; a later
change can pass a provider to the library).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final

import structlog
from eth_utils.address import to_checksum_address
from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, Field, ValidationError
from siwe import InvalidSignature, SiweMessage, VerificationError

from shared.api.auth import PUBLIC, Access, declares
from shared.api.deps import Database
from shared.api.errors import Refusal
from shared.api.settings import ApiSettings
from shared.db import atomic
from shared.errors import ConfigError

log = structlog.get_logger(__name__)

# The header that carries a proof: base64 (standard or URL-safe, padding optional) of the
# JSON object {"message": the EIP-4361 text, "signature": "0x…" 65 bytes}.
HEADER: Final = "Sign-In-With-Ethereum"
# Seconds a nonce stays valid after it is issued, and the longest a signed message may live
# (Expiration Time - Issued At): 5 minutes, long enough to read a wallet's prompt.
NONCE_TTL_S: Final = 300
MAX_LIFETIME_S: Final = 300
# Seconds a message's Issued At may be ahead of this node's clock: wallets' clocks drift.
CLOCK_SKEW_S: Final = 30
# Nonces issued and not yet expired, at most: ~100 bytes each, so ~10 MB of rows; beyond it
# the nonce route answers 503 rather than let anonymous callers grow the database.
MAX_OUTSTANDING_NONCES: Final = 100_000
# Bytes of the proof header at most: a message with a few resources is under 1 KB.
MAX_PROOF_CHARS: Final = 8192
# EIP-4361's statement rule: *( reserved / unreserved / " " ), and the action's own shape
# (no ':' so that "<action>: <subject>" splits one way only).
_STATEMENT = re.compile(r"^[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;= ]*$")
_ACTION = re.compile(r"^[A-Za-z][A-Za-z0-9 _-]*$")
_HEADER_DOC: Final = 'base64 of {"message": EIP-4361 text, "signature": "0x..."}'


@dataclass(frozen=True)
class IssuedNonce:
    nonce: str
    issued_at: float
    expires_at: float


def issue_nonce(conn: sqlite3.Connection, *, now: float) -> IssuedNonce:
    """Store and return a fresh nonce; prunes expired ones in the same transaction."""
    issued = IssuedNonce(secrets.token_hex(16), now, now + NONCE_TTL_S)
    with atomic(conn):
        conn.execute("DELETE FROM siwe_nonces WHERE expires_at <= ?", (now,))
        (outstanding,) = conn.execute("SELECT count(*) FROM siwe_nonces").fetchone()
        if outstanding >= MAX_OUTSTANDING_NONCES:
            log.warning("siwe_nonces_exhausted", outstanding=outstanding)
            raise Refusal(503, "unavailable", "too many sign-in nonces outstanding; retry "
                          "shortly", {"Retry-After": "10"})  # fmt: skip
        conn.execute(
            "INSERT INTO siwe_nonces (nonce, issued_at, expires_at) VALUES (?, ?, ?)",
            (issued.nonce, issued.issued_at, issued.expires_at),
        )
    return issued


def spend_nonce(
    conn: sqlite3.Connection, nonce: str, *, address: str, statement: str, now: float
) -> bool:
    """Mark ``nonce`` used by ``address``; False when it is unknown, expired or used."""
    with atomic(conn):
        spent = conn.execute(
            "UPDATE siwe_nonces SET used_at = ?, used_by = ?, used_for = ? "
            "WHERE nonce = ? AND used_at IS NULL AND expires_at > ?",
            (now, address, statement, nonce, now),
        ).rowcount
    return spent == 1


@dataclass(frozen=True)
class EndUser:
    """An end user who proved control of ``address`` for ``statement`` on ``chain_id``."""

    address: str  # EIP-55 checksummed
    chain_id: int
    statement: str

    @property
    def actor(self) -> str:
        """How the audit trail (``transitions.actor``) names this user."""
        return f"user:{self.address}"


def statement_for(action: str, subject: str) -> str:
    """The statement a user signs to authorise ``action`` on ``subject``."""
    return f"{action}: {subject}"


def _refuse(status: int, reason: str, message: str, **fields: Any) -> Refusal:
    log.warning("user_proof_refused", reason=reason, **fields)
    headers = {"WWW-Authenticate": HEADER} if status == 401 else None
    return Refusal(status, f"user_proof_{reason}", message, headers)


def _decode(proof: str) -> tuple[str, str]:
    """(message, signature) from the header value; Refusal when it is not one."""
    if len(proof) > MAX_PROOF_CHARS:
        raise _refuse(401, "malformed", f"the {HEADER} header is longer than {MAX_PROOF_CHARS}")
    text = proof.strip().replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        body = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):  # RecursionError: [[[[… nesting
        raise _refuse(401, "malformed", f"the {HEADER} header is not base64 of JSON") from None
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("message"), str)
        or not isinstance(body.get("signature"), str)
    ):
        raise _refuse(401, "malformed", 'the proof is not {"message": text, "signature": hex}')
    return body["message"], body["signature"]


def _instant(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def verify_user_proof(
    conn: sqlite3.Connection,
    proof: str | None,
    *,
    statement: str,
    domains: Sequence[str],
    chain_ids: Sequence[int],
    now: float,
) -> EndUser:
    """The user ``proof`` proves, after every check of the module docstring; the nonce is
    spent on success. Raises Refusal (401/403) otherwise."""
    if proof is None:
        raise _refuse(401, "missing", f"this route needs an end user's proof: the {HEADER} "
                      "header (see GET /api/auth/nonce)")  # fmt: skip
    text, signature = _decode(proof)
    try:
        message = SiweMessage.from_message(text)
    except (ValueError, ValidationError):
        raise _refuse(401, "malformed", "the message is not an EIP-4361 message") from None
    if message.domain.lower() not in {d.lower() for d in domains}:
        raise _refuse(401, "domain", f"the message is for {message.domain}, not this node "
                      f"({', '.join(domains)})", domain=message.domain)  # fmt: skip
    if message.chain_id not in chain_ids:
        raise _refuse(401, "chain", f"the message is for chain {message.chain_id}; this route "
                      f"accepts {', '.join(map(str, chain_ids))}",
                      chain_id=message.chain_id)  # fmt: skip
    if message.statement != statement:
        raise _refuse(403, "statement", f"the message's statement is not {statement!r}")
    issued_at = _instant(message.issued_at)
    if message.expiration_time is None:
        raise _refuse(401, "lifetime", f"the message needs an Expiration Time at most "
                      f"{MAX_LIFETIME_S} s after its Issued At")  # fmt: skip
    expires_at = _instant(message.expiration_time)
    if expires_at - issued_at > MAX_LIFETIME_S:
        raise _refuse(401, "lifetime", f"the message lives {expires_at - issued_at:.0f} s; "
                      f"at most {MAX_LIFETIME_S} s are accepted")  # fmt: skip
    if now >= expires_at:
        raise _refuse(401, "expired", "the message has expired: sign a new one")
    not_before = _instant(message.not_before) if message.not_before else issued_at - CLOCK_SKEW_S
    if issued_at - CLOCK_SKEW_S > now or not_before > now:
        raise _refuse(401, "not_yet_valid", "the message is not valid yet (check the clock)")
    try:
        message.verify(
            signature, domain=message.domain, nonce=message.nonce, chain_id=message.chain_id,
            timestamp=datetime.fromtimestamp(now, UTC),
        )  # fmt: skip
    except InvalidSignature:
        raise _refuse(401, "signature", "the signature is not the message's address's") from None
    except VerificationError as exc:  # a check above should have caught it first
        raise _refuse(
            401, "invalid", f"the message does not verify ({type(exc).__name__})"
        ) from None
    address = to_checksum_address(message.address)
    if not spend_nonce(conn, message.nonce, address=address, statement=statement, now=now):
        raise _refuse(401, "nonce", "the nonce is unknown, expired or already used: get a new "
                      "one from GET /api/auth/nonce and sign again", address=address)  # fmt: skip
    log.info("user_proof_accepted", address=address, chain_id=message.chain_id,
             statement=statement)  # fmt: skip
    return EndUser(address, message.chain_id, statement)


def _expected_domains(request: Request, settings: ApiSettings) -> list[str]:
    if settings.api_siwe_domains:
        return list(settings.api_siwe_domains)
    return [request.headers.get("host", "")]


def require_user_proof(
    action: str, subject: str, *, chain_ids: Sequence[int] | None = None
) -> Callable[..., EndUser]:
    """A dependency proving the end user behind a request (module docstring).

    ``subject`` may name path parameters in braces (``"mint task {task_id}"``); the statement
    the user signs is ``"<action>: <subject>"``. ``chain_ids`` narrows the accepted chains
    (a mint route on Base: ``[8453]``); by default HODLAI_API_SIWE_CHAIN_IDS. Use it as
    ``user: Annotated[EndUser, Depends(require_user_proof("Cancel mint task", "{task_id}"))]``;
    the route then checks that ``user.address`` may act on the subject."""
    if not _ACTION.match(action):
        raise ValueError(f"an action is words without ':' (got {action!r})")

    @declares(Access.USER)
    def prove_user(
        request: Request,
        conn: Database,
        proof: Annotated[str | None, Header(alias=HEADER, description=_HEADER_DOC)] = None,
    ) -> EndUser:
        settings: ApiSettings = request.app.state.settings
        accepted = list(chain_ids) if chain_ids is not None else settings.siwe_chain_ids()
        if not accepted:
            raise ConfigError(
                "HODLAI_API_SIWE_CHAIN_IDS (or HODLAI_CHAIN_ID) is unset: end-user routes "
                "cannot say which chain a proof is for"
            )
        expected = statement_for(action, subject.format_map(request.path_params))
        if not _STATEMENT.match(expected):
            raise _refuse(403, "statement", "this subject cannot be signed in a statement")
        return verify_user_proof(
            conn, proof, statement=expected, domains=_expected_domains(request, settings),
            chain_ids=accepted, now=time.time(),
        )  # fmt: skip

    return prove_user


class NonceIssued(BaseModel):
    nonce: str = Field(description="put it in the message's Nonce field; valid once")
    issued_at: float
    expires_at: float = Field(description="the nonce is refused from then on")
    domains: list[str] = Field(description="what the message's domain may be")
    chain_ids: list[int] = Field(description="what its Chain ID may be (a route may narrow)")
    max_lifetime_s: int = Field(description="Expiration Time - Issued At, at most")
    header: str = Field(description="the header that carries the signed proof")


router = APIRouter(prefix="/api/auth", tags=["auth"])


@router.get(
    "/nonce", response_model=NonceIssued, dependencies=[PUBLIC],
    summary="a single-use nonce for an end user's Sign-In with Ethereum message",
)  # fmt: skip
def get_nonce(request: Request, conn: Database) -> NonceIssued:
    settings: ApiSettings = request.app.state.settings
    issued = issue_nonce(conn, now=time.time())
    return NonceIssued(
        nonce=issued.nonce, issued_at=issued.issued_at, expires_at=issued.expires_at,
        domains=_expected_domains(request, settings), chain_ids=settings.siwe_chain_ids(),
        max_lifetime_s=MAX_LIFETIME_S, header=HEADER,
    )  # fmt: skip
