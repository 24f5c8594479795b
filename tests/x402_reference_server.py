"""A token-mint server built only from x402's own parts (its FastAPI payment middleware, a
local ``x402Facilitator`` with ``register_exact_evm_facilitator`` and x402's
``FacilitatorWeb3Signer``), for the interoperability test: the mint executor buys from code
nobody here wrote. ``POST /mint/{token}?to=0x…`` answers 402 with the requirements, and once
paid mints one ``tokensPerMint`` to ``to`` with web3 and answers ``{txHash, token, to,
amount, paymentId, payer}``.

Run: ``python -m tests.x402_reference_server`` with REF_RPC_URL, REF_CHAIN_ID, REF_USDC,
REF_TOKEN, REF_FACILITATOR_KEY, REF_MINTER_KEY, REF_PAY_TO, REF_PRICE, REF_PORT.
Requests are served one at a time (web3's nonces of one key are not concurrency-safe).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from typing import Any

import uvicorn
from eth_account import Account
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from web3 import Web3
from x402 import x402Facilitator, x402ResourceServer
from x402.extensions.payment_identifier import (
    PAYMENT_IDENTIFIER,
    declare_payment_identifier_extension,
)
from x402.http.middleware.fastapi import payment_middleware
from x402.http.types import PaymentOption, RouteConfig
from x402.mechanisms.evm import FacilitatorWeb3Signer
from x402.mechanisms.evm.exact.register import (
    register_exact_evm_facilitator,
    register_exact_evm_server,
)
from x402.schemas import AssetAmount

MINT_ABI: list[dict[str, Any]] = [
    {"type": "function", "name": "mint", "stateMutability": "nonpayable",
     "inputs": [{"name": "to", "type": "address"}],
     "outputs": [{"name": "amount", "type": "uint256"}]},
    {"type": "function", "name": "tokensPerMint", "stateMutability": "view", "inputs": [],
     "outputs": [{"name": "", "type": "uint256"}]},
]  # fmt: skip


def build() -> FastAPI:
    env = os.environ
    rpc_url, chain_id = env["REF_RPC_URL"], int(env["REF_CHAIN_ID"])
    network = f"eip155:{chain_id}"
    usdc, token = Web3.to_checksum_address(env["REF_USDC"]), env["REF_TOKEN"]
    w3 = Web3(Web3.HTTPProvider(rpc_url))
    name = w3.eth.contract(
        address=usdc,
        abi=[{"type": "function", "name": n, "stateMutability": "view", "inputs": [],
              "outputs": [{"name": "", "type": "string"}]} for n in ("name", "version")],
    )  # fmt: skip
    token_name, token_version = name.functions.name().call(), name.functions.version().call()
    minter = Account.from_key(env["REF_MINTER_KEY"])
    mint_contract = w3.eth.contract(address=Web3.to_checksum_address(token), abi=MINT_ABI)

    facilitator = x402Facilitator()
    register_exact_evm_facilitator(
        facilitator,
        FacilitatorWeb3Signer(private_key=env["REF_FACILITATOR_KEY"], rpc_url=rpc_url),
        networks=network,
    )
    server = x402ResourceServer(facilitator)  # type: ignore[arg-type]
    register_exact_evm_server(server, networks=network)
    route = RouteConfig(
        accepts=PaymentOption(
            scheme="exact",
            pay_to=env["REF_PAY_TO"],
            price=AssetAmount(
                amount=env["REF_PRICE"], asset=usdc,
                extra={"name": token_name, "version": token_version},
            ),
            network=network,
            max_timeout_seconds=int(env.get("REF_MAX_TIMEOUT_S", "60")),
        ),
        extensions={PAYMENT_IDENTIFIER: declare_payment_identifier_extension(required=True)},
    )  # fmt: skip
    app = FastAPI()
    lock = asyncio.Lock()
    x402 = payment_middleware({f"POST /mint/{token}": route}, server)

    @app.middleware("http")
    async def paid(request: Request, call_next: Any) -> Response:
        async with lock:
            response: Response = await x402(request, call_next)
            return response

    @app.post("/mint/{address}")
    async def mint(address: str, request: Request, to: str = "") -> JSONResponse:
        header = request.headers.get("PAYMENT-SIGNATURE", "")
        payload = json.loads(base64.b64decode(header)) if header else {}
        payer = payload.get("payload", {}).get("authorization", {}).get("from", "")
        recipient = Web3.to_checksum_address(to or payer)
        tx = mint_contract.functions.mint(recipient).build_transaction(
            {"from": minter.address, "nonce": w3.eth.get_transaction_count(minter.address),
             "chainId": chain_id, "gas": 200_000}
        )  # fmt: skip
        signed = minter.sign_transaction(tx)
        tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30, poll_latency=0.02)
        amount = mint_contract.functions.tokensPerMint().call()
        ext = (payload.get("extensions") or {}).get(PAYMENT_IDENTIFIER) or {}
        return JSONResponse(
            {"txHash": "0x" + bytes(receipt["transactionHash"]).hex(), "token": token,
             "to": recipient, "amount": str(amount),
             "paymentId": (ext.get("info") or {}).get("id"), "payer": payer}
        )  # fmt: skip

    return app


if __name__ == "__main__":
    uvicorn.run(build(), host="127.0.0.1", port=int(os.environ["REF_PORT"]), log_level="warning")
