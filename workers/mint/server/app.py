"""The mint server's HTTP app: ``GET /tokens``, ``POST /mint/{tokenAddress}?to=0x…`` behind
x402's FastAPI payment middleware, ``GET /healthz``.

Layers, outermost first:

1. The purchase gate (ours). For a paid ``POST /mint/…`` (a ``PAYMENT-SIGNATURE`` header it
   can decode with x402's own decoder) it requires x402's payment-identifier extension (400
   without one) and records the purchase before anything is sent (:func:`store.admit`, under
   a per-identifier lock): the same identifier with another payload, or the authorization
   (payer, nonce) under another identifier, is a 409 ``{error, reason}``; a payment already
   settled answers the original body (and PAYMENT-RESPONSE header) without passing x402
   again, after waiting for its mint if that is still owed. An unknown token is a 404, a
   sold-out one a 409, before any payment is taken.
2. x402's payment middleware, with the requirements: the price per mint in the USDC's base
   units, ``payTo``, the USDC as asset, ``eip155:<chain id>``, the USDC's EIP-712 ``name``
   and ``version`` as read from the chain, and ``paymentFlow: upfront``: x402 settles
   *before* the handler runs, so no token is minted for money not received. The
   payment-identifier extension is declared required.
3. The handler: the settle is FINAL (x402's facilitator waited for it); the mint is owed
   durably (MINT_QUEUED); it waits for the mint's FINAL outcome and answers
   ``{txHash, token, to, amount, paymentId, payer, settleTxHash}``. If the mint is still in
   flight when ``HODLAI_MINT_SERVER_SETTLE_TIMEOUT_S`` runs out it answers 504: the mint
   will land, and the same payment presented again gets the body.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import structlog
from eth_utils.address import is_hex_address, to_checksum_address
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from x402 import x402ResourceServer
from x402.extensions.payment_identifier import (
    PAYMENT_IDENTIFIER,
    declare_payment_identifier_extension,
    extract_payment_identifier,
    payment_identifier_resource_server_extension,
)
from x402.http.constants import PAYMENT_RESPONSE_HEADER
from x402.http.middleware.fastapi import payment_middleware
from x402.http.utils import decode_payment_signature_header, encode_payment_response_header
from x402.mechanisms.evm.exact import register_exact_evm_server
from x402.schemas import PaymentPayload, SettleResponse

from shared.chain.rpc import RpcClient
from shared.db import AsyncDatabase
from shared.errors import HodlaiError
from workers.mint.server import chain, store
from workers.mint.server.facilitator import LocalFacilitatorClient
from workers.mint.server.machine import PurchaseStatus

log = structlog.get_logger(__name__)

P = PurchaseStatus
MINT_PATH: Final = re.compile(r"^/mint/([^/]+)$")
WAIT_POLL_S: Final = 0.05
IN_PROGRESS: Final = frozenset(
    {P.SETTLE_QUEUED, P.SETTLING, P.SETTLE_CHECK, P.MINT_QUEUED, P.MINTING}
)


@dataclass
class MintServerContext:
    """Everything the routes need, built once by the composition root."""

    db: AsyncDatabase
    rpc: RpcClient
    chain_id: int
    usdc: chain.Usdc
    sales: dict[str, chain.Sale]  # checksummed token -> its sale
    pay_to: str
    price_per_mint: int
    max_timeout_s: int
    wait_timeout_s: float
    facilitator: LocalFacilitatorClient
    clock: Callable[[], float] = time.time
    #: payment id -> (its lock, requests holding or waiting for it)
    _locks: dict[str, tuple[asyncio.Lock, int]] = field(default_factory=dict)

    @property
    def network(self) -> str:
        return f"eip155:{self.chain_id}"

    @contextlib.asynccontextmanager
    async def lock(self, payment_id: str) -> AsyncIterator[None]:
        """One request at a time per payment identifier (in this process: one mint server
        per database); the lock is dropped when nobody holds or waits for it."""
        held, users = self._locks.get(payment_id, (asyncio.Lock(), 0))
        self._locks[payment_id] = (held, users + 1)
        try:
            async with held:
                yield
        finally:
            held, users = self._locks[payment_id]
            if users == 1:
                del self._locks[payment_id]
            else:
                self._locks[payment_id] = (held, users - 1)


def error(
    status: int, code: str, reason: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": code, "reason": reason}, status_code=status, headers=headers)


def routes_config(ctx: MintServerContext) -> dict[str, Any]:
    """x402's route configuration: one price for every token this server sells."""
    return {
        "POST /mint/*": {
            "accepts": {
                "scheme": "exact",
                "payTo": ctx.pay_to,
                "price": {
                    "amount": str(ctx.price_per_mint),
                    "asset": ctx.usdc.address,
                    "extra": {
                        "name": ctx.usdc.name,
                        "version": ctx.usdc.version,
                        "paymentFlow": "upfront",
                    },
                },
                "network": ctx.network,
                "maxTimeoutSeconds": ctx.max_timeout_s,
            },
            "description": "one mint: tokensPerMint() tokens to ?to= (else the payer)",
            "mimeType": "application/json",
            "extensions": {PAYMENT_IDENTIFIER: declare_payment_identifier_extension(required=True)},
        }
    }


def create_app(ctx: MintServerContext) -> FastAPI:
    app = FastAPI(title="hodlai mint-server", docs_url=None, redoc_url=None, openapi_url=None)
    server = x402ResourceServer(ctx.facilitator)
    register_exact_evm_server(server, networks=ctx.network)
    # x402 types the parameter with its own protocol, which its extension object satisfies.
    server.register_extension(payment_identifier_resource_server_extension)  # type: ignore[arg-type]
    x402_layer = payment_middleware(routes_config(ctx), server)

    @app.middleware("http")
    async def x402_payments(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        return await x402_layer(request, call_next)

    @app.middleware("http")
    async def purchase_gate(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        match = MINT_PATH.match(request.url.path)
        if request.method != "POST" or match is None:
            return await call_next(request)
        return await _gate(ctx, request, match.group(1), call_next)

    @app.get("/tokens", response_model=None)
    async def tokens() -> dict[str, Any] | JSONResponse:
        addresses = list(ctx.sales)
        try:
            supplies = await chain.supply(ctx.rpc, addresses) if addresses else {}
        except HodlaiError as exc:
            return error(503, "chain_unavailable", f"cannot read the tokens' supply: {exc}")
        return {
            "tokens": [
                {
                    "address": token,
                    "pricePerMint": str(ctx.price_per_mint),
                    "tokensPerMint": str(sale.tokens_per_mint),
                    "network": ctx.network,
                    "asset": ctx.usdc.address,
                    "payTo": ctx.pay_to,
                    "maxSupply": str(sale.max_supply),
                    "minted": str(supplies[token][0]),
                }
                for token, sale in ctx.sales.items()
            ]
        }

    @app.post("/mint/{token_address}")
    async def mint(token_address: str, request: Request) -> Response:
        payload = getattr(request.state, "payment_payload", None)
        payment_id = None if payload is None else extract_payment_identifier(payload)
        if payment_id is None:  # the gate and x402 let nothing unpaid through
            return error(402, "payment_required", "pay with x402")
        return await _answer(ctx, payment_id, replay=False)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


async def _gate(
    ctx: MintServerContext,
    request: Request,
    token_text: str,
    call_next: Callable[[Request], Awaitable[Response]],
) -> Response:
    parsed = _purchase_of(ctx, request, token_text)
    if isinstance(parsed, Response):
        return parsed
    if parsed is None:
        return await call_next(request)  # x402 answers 402 with the requirements
    payment_id = parsed.payment_id
    async with ctx.lock(payment_id):
        try:
            admission = await ctx.db.run(store.admit, parsed, now=ctx.clock())
        except store.PurchaseConflict as exc:
            log.warning("mint_server_conflict", payment_id=payment_id, reason=exc.reason)
            return error(409, exc.reason, str(exc))
        if admission.verdict == "known":
            status = str(admission.purchase.status)
            log.info("mint_server_replayed", payment_id=payment_id, status=status)
            return await _answer(ctx, payment_id, replay=True)
        refusal = await _sold_out(ctx, parsed.token, payment_id)
        if refusal is not None:
            await ctx.db.run(store.refuse, payment_id, "sold out", now=ctx.clock())
            return refusal
        response = await call_next(request)
        await _after_x402(ctx, payment_id, response)
        return response


def _purchase_of(  # noqa: PLR0911 -- one return per refusal
    ctx: MintServerContext, request: Request, token_text: str
) -> store.NewPurchase | Response | None:
    """The purchase a paid request presents; a refusal; or None for x402 to answer (no
    payment, or one its decoder cannot read)."""
    if not is_hex_address(token_text):
        return error(404, "unknown_token", "the path names no token address")
    token = str(to_checksum_address(token_text))
    if token not in ctx.sales:
        return error(404, "unknown_token", f"this server does not sell {token}")
    to_text = request.query_params.get("to")
    if to_text is not None and not is_hex_address(to_text):
        return error(400, "invalid_recipient", "to must be a 0x-prefixed 20-byte address")
    header = request.headers.get("payment-signature") or request.headers.get("x-payment")
    if not header:
        return None
    try:
        payload = decode_payment_signature_header(header)
    except Exception:  # noqa: BLE001 -- x402 answers an undecodable payment itself
        return None
    if not isinstance(payload, PaymentPayload):
        return None
    payment_id = extract_payment_identifier(payload)
    if payment_id is None:
        return error(
            400, "payment_identifier_required",
            f"this server requires x402's {PAYMENT_IDENTIFIER} extension with a valid id",
        )  # fmt: skip
    authorization = payload.payload.get("authorization")
    if not isinstance(authorization, dict) or not is_hex_address(
        str(authorization.get("from", ""))
    ):
        return error(400, "unsupported_payment", "only EIP-3009 authorizations are accepted")
    payer = str(to_checksum_address(str(authorization["from"])))
    recipient = payer if to_text is None else str(to_checksum_address(to_text))
    return store.NewPurchase(
        payment_id=payment_id,
        fingerprint=fingerprint(payload, token=token, recipient=recipient),
        payer=payer,
        auth_nonce=str(authorization.get("nonce", "")).lower(),
        token=token,
        recipient=recipient,
        asset=ctx.usdc.address,
        amount=ctx.price_per_mint,
        pay_to=ctx.pay_to,
        network=ctx.network,
    )


async def _after_x402(ctx: MintServerContext, payment_id: str, response: Response) -> None:
    """Keep the PAYMENT-RESPONSE header of a success; a purchase x402 refused before
    anything was sent becomes REFUSED (the same payment may be presented again)."""
    if response.status_code == 200:
        header_value = response.headers.get(PAYMENT_RESPONSE_HEADER)
        if header_value:
            await ctx.db.run(store.keep_payment_response, payment_id, header_value)
        return
    reason = f"x402 answered {response.status_code}"
    refused = await ctx.db.run(store.refuse, payment_id, reason, now=ctx.clock())
    log.info(
        "mint_server_payment_not_taken" if refused else "mint_server_answer_failed",
        payment_id=payment_id,
        status=response.status_code,
    )


async def _sold_out(ctx: MintServerContext, token: str, payment_id: str) -> JSONResponse | None:
    """A 409 when every mint the token has left is already owed to a purchase."""
    try:
        left = (await chain.supply(ctx.rpc, [token]))[token][1]
    except HodlaiError as exc:
        return error(503, "chain_unavailable", f"cannot read the token's supply: {exc}")
    owed = await ctx.db.run(store.sold, token)  # includes this purchase (RECEIVED)
    if owed > left:
        log.warning("mint_server_sold_out", token=token, payment_id=payment_id, left=left)
        return error(409, "sold_out", f"{token} has {left} mints left, all of them sold")
    return None


async def _answer(ctx: MintServerContext, payment_id: str, *, replay: bool) -> Response:
    """The purchase's answer once its mint is final (or why not)."""
    deadline = time.monotonic() + ctx.wait_timeout_s
    while True:
        purchase = await ctx.db.run(store.get, payment_id)
        if purchase is None:
            return error(404, "unknown_payment", f"no purchase {payment_id}")
        if purchase.status is P.MINTED and purchase.body is not None:
            headers = {}
            if replay:
                headers[PAYMENT_RESPONSE_HEADER] = purchase.payment_response or _settled_header(
                    ctx, purchase
                )
            return JSONResponse(purchase.body, headers=headers)
        if purchase.status is P.MINT_FAILED:
            return error(502, "mint_failed", purchase.error or "the mint reverted")
        if purchase.status in (P.SETTLE_FAILED, P.REFUSED):
            return error(402, "payment_failed", purchase.error or "the payment was not settled")
        if purchase.status not in IN_PROGRESS and not (replay and purchase.status is P.RECEIVED):
            return error(409, "unexpected_state", f"purchase {payment_id} is {purchase.status}")
        if time.monotonic() > deadline:
            return error(
                504, "mint_pending",
                f"purchase {payment_id} is {purchase.status}; present the same payment again",
            )  # fmt: skip
        await asyncio.sleep(WAIT_POLL_S)


def _settled_header(ctx: MintServerContext, purchase: store.Purchase) -> str:
    """PAYMENT-RESPONSE for a purchase finished without its first answer (a restart)."""
    return encode_payment_response_header(
        SettleResponse(
            success=True,
            transaction=purchase.settle_tx_hash or "",
            network=purchase.network,
            payer=purchase.payer,
        )
    )


def fingerprint(payload: PaymentPayload, *, token: str, recipient: str) -> str:
    """What makes two presentations the same payment: the signed authorization, the
    requirements it accepts, the token and the recipient."""
    canonical = json.dumps(
        {
            "payload": payload.payload,
            "accepted": payload.accepted.model_dump(by_alias=True, mode="json"),
            "token": token,
            "to": recipient,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
