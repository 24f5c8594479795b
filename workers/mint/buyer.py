"""One mint bought over x402, paid by the agent wallet through the authorization ledger, and
the catalog of what the configured mint servers sell.

A purchase is x402's own client: ``x402Client`` with the exact EVM scheme registered with
:class:`LedgerSigner` (x402's ``ClientEvmSigner`` protocol) and its httpx transport.

Guarantees:

- **Recorded before it is sent.** The payment row (its id is the x402 payment identifier,
  carried by the ``payment-identifier`` extension) is committed before the request; the
  server's requirements are stored before anything is signed; :meth:`LedgerSigner.
  sign_typed_data` signs only through :func:`shared.tx.authorizations.sign_typed_payment`
  (purpose ``mint``, subject the task, unit the mint's index: budget, one live authorization
  per unit, domain read from the contract) and records the authorization on the payment row
  before it returns; the exact ``PAYMENT-SIGNATURE`` header is stored by
  :class:`_RecordingTransport` before it leaves the process.
- **Only mints.** The signer refuses anything but an EIP-3009 TransferWithAuthorization on
  the task's USDC, to the task's ``payTo``, of exactly the task's price, valid for at most
  ``HODLAI_MINT_MAX_AUTHORIZATION_S``, before a key is touched.
- **Sent again, never paid again.** :func:`resend` sends a signed payment's stored header
  again (the server answers a settled payment with its original result); a new
  authorization for the unit is refused by the ledger while the earlier one is SIGNED.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import httpx
import structlog
from eth_utils.address import is_hex_address, to_checksum_address

from shared.db import AsyncDatabase
from shared.keys.vault import Vault
from shared.tx.authorizations import (
    AuthorizationError,
    DomainAllowlist,
    TokenDomain,
    sign_typed_payment,
)
from workers.mint import store
from workers.mint.machine import PaymentStatus
from workers.mint.store import Payment, Task

if TYPE_CHECKING:
    from workers.mint.chat import Offer

log = structlog.get_logger(__name__)

PAYMENT_HEADER: Final = "PAYMENT-SIGNATURE"
ZERO: Final = "0x" + "00" * 20


def mint_url(server_url: str, token: str, recipient: str) -> str:
    return f"{server_url.rstrip('/')}/mint/{to_checksum_address(token)}?to={recipient}"


# --- the catalog ----------------------------------------------------------------------------


class ServerCatalog:
    """:class:`workers.mint.chat.Catalog` against the configured mint servers: a token is on
    offer when a server answers an unpaid ``POST /mint/{token}`` with 402 requirements in
    the configured USDC on the configured chain (and, when payTo addresses are configured,
    to one of them). Offers are cached for ``ttl_s``."""

    def __init__(
        self,
        servers: list[str],
        *,
        usdc: str,
        chain_id: int,
        pay_to: list[str],
        http: httpx.AsyncClient,
        tokens: list[str] | None = None,
        ttl_s: float = 30.0,
    ) -> None:
        self._servers = servers
        self._usdc = usdc.lower()
        self._network = f"eip155:{chain_id}"
        self._pay_to = {a.lower() for a in pay_to}
        self._tokens = {t.lower() for t in tokens or ()}
        self._http = http
        self._ttl_s = ttl_s
        self._cache: dict[str, tuple[float, Offer | None]] = {}

    async def offer(self, token_address: str) -> Offer | None:
        if not is_hex_address(token_address):
            return None
        token = str(to_checksum_address(token_address))
        if self._tokens and token.lower() not in self._tokens:
            return None
        cached = self._cache.get(token)
        if cached is not None and time.monotonic() - cached[0] < self._ttl_s:
            return cached[1]
        found: Offer | None = None
        for server in self._servers:
            found = await self._ask(server, token)
            if found is not None:
                break
        self._cache[token] = (time.monotonic(), found)
        return found

    async def _ask(self, server: str, token: str) -> Offer | None:
        from x402.http import x402HTTPClient
        from x402.schemas import PaymentRequired

        from workers.mint.chat import Offer

        try:
            response = await self._http.post(mint_url(server, token, ZERO))
        except httpx.HTTPError as exc:
            log.warning("mint_server_unreachable", server=server, error=type(exc).__name__)
            return None
        if response.status_code != 402:
            return None
        try:
            body = response.json()
        except ValueError:
            body = None
        try:
            required = x402HTTPClient.__new__(x402HTTPClient).get_payment_required_response(
                response.headers.get, body
            )
        except Exception:  # noqa: BLE001 - a server that does not speak x402 sells nothing
            return None
        if not isinstance(required, PaymentRequired):
            return None
        for accept in required.accepts:
            if (
                accept.scheme == "exact"
                and accept.network == self._network
                and accept.asset.lower() == self._usdc
                and (not self._pay_to or accept.pay_to.lower() in self._pay_to)
            ):
                return Offer(
                    token_address=token,
                    price_per_mint=int(accept.amount),
                    server_url=server,
                    network=accept.network,
                    pay_to=str(to_checksum_address(accept.pay_to)),
                )
        return None


# --- the signer -----------------------------------------------------------------------------


class MintRefused(AuthorizationError):
    """A payment the agent wallet will not sign for a mint (nothing was signed)."""


class LedgerSigner:
    """x402's ``ClientEvmSigner`` for one payment: signs through the authorization ledger
    (module docstring). Its connection is a durable one used only for signing."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        vault: Vault,
        allowlist: DomainAllowlist,
        domain: TokenDomain,
        task: Task,
        payment: Payment,
        *,
        max_validity_s: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._conn = conn
        self._vault = vault
        self._allowlist = allowlist
        self._domain = domain
        self._task = task
        self._payment = payment
        self._max_validity_s = max_validity_s
        self._clock = clock
        self.authorization_id: int | None = None

    @property
    def address(self) -> str:
        return self._task.agent_address

    def sign_typed_data(
        self,
        domain: Any,
        types: dict[str, list[Any]],
        primary_type: str,
        message: dict[str, Any],
    ) -> bytes:
        now = self._clock()
        task = self._task
        proposed = {
            "name": domain.name,
            "version": domain.version,
            "chainId": domain.chain_id,
            "verifyingContract": domain.verifying_contract,
        }
        if str(message.get("to", "")).lower() != task.pay_to.lower():
            raise MintRefused(f"the payment is to {message.get('to')}, not the task's payTo")
        if int(message.get("value", -1)) != task.price_per_mint:
            raise MintRefused(
                f"the payment asks {message.get('value')}, not the price {task.price_per_mint}"
            )
        valid_before = int(message.get("validBefore", 0))
        if valid_before - now > self._max_validity_s:
            raise MintRefused(
                f"the server asks an authorization valid for {valid_before - now:.0f} s; "
                f"at most {self._max_validity_s} s are signed"
            )
        given = {
            name: [
                {"name": f.name, "type": f.type} if hasattr(f, "name") else dict(f) for f in fields
            ]
            for name, fields in types.items()
        }
        record = sign_typed_payment(
            self._conn,
            self._vault,
            self._allowlist,
            self._domain,
            signer=task.agent_address,
            proposed_domain=proposed,
            types=given,
            primary_type=primary_type,
            message=message,
            purpose=store.MINT_PURPOSE,
            subject=task.id,
            unit=str(self._payment.unit),
            now=now,
        )
        self.authorization_id = record.id
        store.move_payment(
            self._conn,
            self._payment,
            PaymentStatus.SIGNED,
            now=now,
            note=f"authorization {record.id}",
            authorization_id=record.id,
        )
        return bytes.fromhex(record.signature[2:])


class _PaymentIdentifier:
    """x402 client extension: the payment row's id as the payment identifier."""

    key = "payment-identifier"
    hooks = None
    transport_hooks = None

    def __init__(self, payment_id: str) -> None:
        self._id = payment_id

    def enrich_payment_payload(self, payment_payload: Any, payment_required: Any) -> Any:
        from x402.extensions.payment_identifier import append_payment_identifier_to_extensions

        extensions = dict(payment_payload.extensions or payment_required.extensions or {})
        append_payment_identifier_to_extensions(extensions, self._id)
        return payment_payload.model_copy(update={"extensions": extensions})


class _RecordingTransport(httpx.AsyncBaseTransport):
    """Stores a paid request's payment header (committed) before passing it on."""

    def __init__(self, inner: httpx.AsyncBaseTransport, db: AsyncDatabase, payment_id: str) -> None:
        self._inner = inner
        self._db = db
        self._payment_id = payment_id

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        header = request.headers.get(PAYMENT_HEADER)
        if header is not None:
            await self._db.run(
                lambda c: _store_header(c, self._payment_id, {PAYMENT_HEADER: header})
            )
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        """The inner transport is shared: closed by its owner."""


def _store_header(conn: sqlite3.Connection, payment_id: str, headers: dict[str, str]) -> None:
    from shared.db import atomic

    with atomic(conn):
        conn.execute(
            "UPDATE mint_payments SET payment_header = ? WHERE id = ? AND payment_header IS NULL",
            (json.dumps(headers), payment_id),
        )


# --- a purchase -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What a purchase (or a re-send) got: minted, or why not and whether money may have
    moved (``signed``: an authorization exists that could still settle)."""

    minted: bool
    signed: bool
    status_code: int | None = None
    mint_tx_hash: str | None = None
    settle_tx_hash: str | None = None
    amount: int | None = None
    error: str | None = None


@dataclass
class Purchaser:
    db: AsyncDatabase
    sign_conn: sqlite3.Connection
    vault: Vault
    allowlist: DomainAllowlist
    base: httpx.AsyncBaseTransport
    max_validity_s: int
    timeout_s: float

    async def buy(self, task: Task, payment: Payment, domain: TokenDomain) -> Outcome:
        """One x402 purchase of one mint for ``payment`` (prepared, committed)."""
        from x402 import x402Client
        from x402.http.clients.httpx import x402AsyncTransport
        from x402.mechanisms.evm.exact.register import register_exact_evm_client

        signer = LedgerSigner(
            self.sign_conn,
            self.vault,
            self.allowlist,
            domain,
            task,
            payment,
            max_validity_s=self.max_validity_s,
        )
        client = x402Client()
        register_exact_evm_client(client, signer, networks=f"eip155:{task.chain_id}")
        client.register_extension(_PaymentIdentifier(payment.id))
        client.set_spend_controls(False)

        async def before(context: Any) -> None:
            required = context.payment_required
            await self.db.run(
                lambda c: store.set_requirements(
                    c,
                    payment.id,
                    accepted=context.selected_requirements.model_dump(by_alias=True, mode="json"),
                    resource=None
                    if required.resource is None
                    else required.resource.model_dump(by_alias=True, mode="json"),
                    extensions=required.extensions,
                    now=time.time(),
                )
            )

        client.on_before_payment_creation(before)
        transport = x402AsyncTransport(client, _RecordingTransport(self.base, self.db, payment.id))
        http = httpx.AsyncClient(transport=transport, timeout=self.timeout_s)
        url = mint_url(task.server_url, task.token_address, task.user_address)
        try:
            response = await http.post(url)
        except Exception as exc:  # noqa: BLE001 - any failure: the ledger says if money could move
            return Outcome(
                False,
                signer.authorization_id is not None,
                error=f"{type(exc).__name__}: {exc}"[:500],
            )
        return _outcome(response, signed=signer.authorization_id is not None)

    async def reachable(self, server_url: str) -> bool:
        """Whether the server answers HTTP at all (any status)."""
        try:
            async with httpx.AsyncClient(transport=_Shared(self.base), timeout=2.0) as http:
                await http.get(server_url.rstrip("/") + "/")
        except httpx.HTTPError:
            return False
        return True

    async def resend(self, task: Task, payment: Payment) -> Outcome:
        """Send a signed payment's recorded header again (the server is idempotent per
        payment identifier); without a recorded header, rebuild it from the ledger's
        authorization and the stored requirements."""
        headers = await self.db.run(lambda c: _header_of(c, payment.id))
        if headers is None:
            headers = await self.db.run(lambda c: _rebuild_header(c, payment))
        if headers is None:
            return Outcome(False, True, error="no requirements recorded to send it again")
        url = mint_url(task.server_url, task.token_address, task.user_address)
        try:
            async with httpx.AsyncClient(
                transport=_Shared(self.base), timeout=self.timeout_s
            ) as http:
                response = await http.post(url, headers=headers)
        except httpx.HTTPError as exc:
            return Outcome(False, True, error=f"{type(exc).__name__}: {exc}"[:500])
        return _outcome(response, signed=True)


class _Shared(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        return None


def _outcome(response: httpx.Response, *, signed: bool) -> Outcome:
    if response.status_code == 200:
        try:
            body = response.json()
        except ValueError:
            body = {}
        tx_hash = body.get("txHash") if isinstance(body, dict) else None
        if isinstance(tx_hash, str):
            amount = body.get("amount")
            return Outcome(
                True,
                signed,
                200,
                mint_tx_hash=tx_hash,
                settle_tx_hash=body.get("settleTxHash"),
                amount=int(amount) if isinstance(amount, str | int) else None,
            )
    text = response.text[:300]
    return Outcome(
        False, signed, response.status_code, error=f"HTTP {response.status_code}: {text}"
    )


def _header_of(conn: sqlite3.Connection, payment_id: str) -> dict[str, str] | None:
    row = conn.execute(
        "SELECT payment_header FROM mint_payments WHERE id = ?", (payment_id,)
    ).fetchone()
    if row is None or row[0] is None:
        return None
    headers: dict[str, str] = json.loads(row[0])
    return headers


def _rebuild_header(conn: sqlite3.Connection, payment: Payment) -> dict[str, str] | None:
    from x402.extensions.payment_identifier import append_payment_identifier_to_extensions
    from x402.http import x402HTTPClient
    from x402.schemas import PaymentPayload, PaymentRequirements, ResourceInfo

    from shared.tx import authorizations as ledger

    if payment.accepted is None or payment.authorization_id is None:
        return None
    auth = ledger.get(conn, payment.authorization_id)
    extensions = dict(payment.extensions or {})
    append_payment_identifier_to_extensions(extensions, payment.id)
    payload = PaymentPayload(
        x402_version=2,
        payload={
            "authorization": {
                "from": auth.from_address,
                "to": auth.to_address,
                "value": str(auth.value),
                "validAfter": str(auth.valid_after),
                "validBefore": str(auth.valid_before),
                "nonce": auth.nonce,
            },
            "signature": auth.signature,
        },
        accepted=PaymentRequirements.model_validate(payment.accepted),
        resource=None
        if payment.resource is None
        else ResourceInfo.model_validate(payment.resource),
        extensions=extensions or None,
    )
    encoded: dict[str, str] = x402HTTPClient.__new__(
        x402HTTPClient
    ).encode_payment_signature_header(payload)
    return encoded
