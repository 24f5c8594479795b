"""``hodlai mint-server`` as a process on a real anvil, bought from with x402's own client
(``x402.x402Client`` + its httpx transport): 402 requirements, a paid mint on chain, the
payment identifier's idempotency (replay, 409), and a SIGKILL between settle and mint."""

from __future__ import annotations

import asyncio
import signal
import stat
import threading
import time
from pathlib import Path

import httpx
import pytest
from eth_abi.abi import encode as abi_encode
from eth_utils.crypto import keccak
from x402.extensions.payment_identifier import PAYMENT_IDENTIFIER
from x402.http.clients import x402_httpx_transport
from x402.http.clients.httpx import PaymentError
from x402.http.utils import decode_payment_required_header, decode_payment_response_header
from x402.schemas import PaymentRequired

from tests.mint_server_fixtures import (  # noqa: F401
    PRICE,
    MintDevnet,
    buy,
    buyer,
    deploy_small_token,
    mint_devnet,
    rpc,
    view,
)
from workers.devnet.parts import DevAccountKey, DevnetChain
from workers.mint.devnet import setup
from workers.mint.keyfile import load_mint_keys

MINT_WAIT_S = 30.0


def test_unpaid_requests_get_402_with_the_requirements(mint_devnet: MintDevnet) -> None:  # noqa: F811
    devnet = mint_devnet
    devnet.start()
    listed = httpx.get(devnet.url + "/tokens").json()["tokens"]
    assert listed == [
        {
            "address": devnet.token,
            "pricePerMint": str(PRICE),
            "tokensPerMint": str(devnet.tokens_per_mint()),
            "network": f"eip155:{devnet.anvil.chain_id}",
            "asset": devnet.usdc,
            "payTo": devnet.pay_to,
            "maxSupply": str(devnet.tokens_per_mint() * 1_000_000),
            "minted": "0",
        }
    ]
    answer = httpx.post(f"{devnet.url}/mint/{devnet.token}?to={devnet.anvil.accounts[3].address}")
    assert answer.status_code == 402
    required = decode_payment_required_header(answer.headers["payment-required"])
    assert isinstance(required, PaymentRequired)
    (offer,) = required.accepts
    assert offer.scheme == "exact"
    assert offer.network == f"eip155:{devnet.anvil.chain_id}"
    assert offer.amount == str(PRICE)
    assert offer.asset == devnet.usdc
    assert offer.pay_to == devnet.pay_to
    # The EIP-712 domain as the token reports it, never hard-coded.
    assert offer.extra is not None
    assert (offer.extra["name"], offer.extra["version"]) == ("USD Coin", "2")
    assert required.extensions is not None
    assert required.extensions[PAYMENT_IDENTIFIER]["info"]["required"] is True
    # A token the server does not sell, and a malformed recipient, are refused before x402.
    other = devnet.anvil.accounts[5].address
    assert httpx.post(f"{devnet.url}/mint/{other}").status_code == 404
    bad = httpx.post(f"{devnet.url}/mint/{devnet.token}?to=0x1234")
    assert (bad.status_code, bad.json()["error"]) == (400, "invalid_recipient")
    assert devnet.mints() == []


def test_x402_client_buys_mints_and_retries_are_idempotent(mint_devnet: MintDevnet) -> None:  # noqa: F811
    devnet = mint_devnet
    minter = load_mint_keys(Path(devnet.settings["HODLAI_MINT_KEY_FILE"])).minter_address
    small = deploy_small_token(devnet, mints=1, minter=minter)
    devnet.start(HODLAI_MINT_TOKENS=f"{devnet.token},{small}")
    payer = devnet.anvil.accounts[1].address
    recipient = devnet.anvil.accounts[4].address
    per_mint = devnet.tokens_per_mint()
    before = devnet.usdc_balance(payer)

    # No `to`: the tokens go to the payer.
    first, recorder = asyncio.run(buy(devnet, 1, "pay_mint_test_first_0001"))
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["paymentId"] == "pay_mint_test_first_0001"
    assert (body["token"], body["to"], body["payer"]) == (devnet.token, payer, payer)
    assert body["amount"] == str(per_mint)
    settled = decode_payment_response_header(first.headers["payment-response"])
    assert settled.success and settled.transaction == body["settleTxHash"]
    assert devnet.token_balance(payer) == per_mint
    assert devnet.usdc_balance(payer) == before - PRICE
    assert devnet.usdc_balance(devnet.pay_to) == PRICE
    (minted,) = devnet.mints()
    assert minted["transactionHash"] == body["txHash"]

    # The same payment presented again: the same body and header, nothing new on chain.
    again = httpx.post(
        f"{devnet.url}/mint/{devnet.token}",
        headers={"PAYMENT-SIGNATURE": recorder.payment_header()},
        timeout=30,
    )
    assert again.status_code == 200
    assert again.json() == body
    assert again.headers["payment-response"] == first.headers["payment-response"]
    assert len(devnet.mints()) == 1
    assert len(devnet.authorizations_used()) == 1
    assert devnet.usdc_balance(devnet.pay_to) == PRICE

    # The same identifier with another payment (a new authorization): 409, nothing sent.
    reused, _ = asyncio.run(buy(devnet, 2, "pay_mint_test_first_0001"))
    assert reused.status_code == 409
    assert reused.json()["error"] == "payment_id_reused"
    assert len(devnet.mints()) == 1

    # The same authorization under another identifier: 409 as well.
    header = recorder.payment_header()
    relabelled = _relabel(header, "pay_mint_test_other_0002")
    other = httpx.post(
        f"{devnet.url}/mint/{devnet.token}", headers={"PAYMENT-SIGNATURE": relabelled}, timeout=30
    )
    assert (other.status_code, other.json()["error"]) == (409, "authorization_reused")

    # A purchase naming a recipient mints to it, paid by account 2.
    to_other, _ = asyncio.run(buy(devnet, 2, "pay_mint_test_second_003", to=recipient))
    assert to_other.status_code == 200, to_other.text
    assert to_other.json()["to"] == recipient
    assert devnet.token_balance(recipient) == per_mint
    assert len(devnet.mints()) == 2
    assert devnet.usdc_balance(devnet.pay_to) == 2 * PRICE

    # A payment without an identifier is refused before anything is settled.
    bare = httpx.post(
        f"{devnet.url}/mint/{devnet.token}",
        headers={"PAYMENT-SIGNATURE": _relabel(header, None)},
        timeout=30,
    )
    assert (bare.status_code, bare.json()["error"]) == (400, "payment_identifier_required")
    assert len(devnet.authorizations_used()) == 2

    # A token with one mint left sells it once; the next buyer is refused before paying.
    last, _ = asyncio.run(buy(devnet, 3, "pay_mint_test_small_0004", token=small))
    assert last.status_code == 200, last.text
    late, _ = asyncio.run(buy(devnet, 5, "pay_mint_test_small_0005", token=small))
    assert (late.status_code, late.json()["error"]) == (409, "sold_out")
    assert len(devnet.authorizations_used()) == 3
    assert devnet.usdc_balance(devnet.pay_to) == 3 * PRICE


@pytest.mark.parametrize("fault", ["after_settle", "after_record"])
def test_killed_between_settle_and_mint_mints_once_after_restart(
    mint_devnet: MintDevnet,  # noqa: F811
    fault: str,
) -> None:
    """``after_settle``: the settle is final, the mint not yet recorded; ``after_record``: the
    settle is recorded and never broadcast by this life."""
    devnet = mint_devnet
    payer = devnet.anvil.accounts[6].address
    process = devnet.start(HODLAI_MINT_SERVER_FAULT_POINT=fault)
    client, recorder = buyer(devnet, 6, "pay_mint_test_killed_0001")

    async def purchase() -> None:
        async with httpx.AsyncClient(
            transport=x402_httpx_transport(client, recorder), timeout=60
        ) as http:
            await http.post(f"{devnet.url}/mint/{devnet.token}")

    with pytest.raises((httpx.HTTPError, PaymentError)):
        asyncio.run(purchase())  # the server dies under the request
    assert process.wait(timeout=30) == -signal.SIGKILL, devnet.log()
    # Paid (the settle is final) or not yet (only recorded); not minted either way.
    assert devnet.usdc_balance(devnet.pay_to) == (PRICE if fault == "after_settle" else 0)
    assert devnet.mints() == []

    devnet.start()
    deadline = time.monotonic() + MINT_WAIT_S
    while not devnet.mints() and time.monotonic() < deadline:
        time.sleep(0.2)
    (minted,) = devnet.mints()
    assert int(minted["topics"][2], 16) == int(payer, 16)
    assert devnet.token_balance(payer) == devnet.tokens_per_mint()
    # The buyer presents the same payment again: the body of the one mint, nothing new.
    again = httpx.post(
        f"{devnet.url}/mint/{devnet.token}",
        headers={"PAYMENT-SIGNATURE": recorder.payment_header()},
        timeout=30,
    )
    assert again.status_code == 200, again.text
    assert again.json()["txHash"] == minted["transactionHash"]
    assert decode_payment_response_header(again.headers["payment-response"]).success
    # Counted on chain: one settle, one mint, the USDC moved once.
    assert len(devnet.mints()) == 1
    assert len(devnet.authorizations_used()) == 1
    assert devnet.usdc_balance(devnet.pay_to) == PRICE


def _relabel(header: str, payment_id: str | None) -> str:
    """The same signed payment with another payment identifier (or none)."""
    from x402.http.utils import decode_payment_signature_header, encode_payment_signature_header

    payload = decode_payment_signature_header(header)
    extensions = dict(payload.extensions or {})
    if payment_id is None:
        extensions.pop(PAYMENT_IDENTIFIER, None)
    else:
        entry = dict(extensions[PAYMENT_IDENTIFIER])
        entry["info"] = {**entry["info"], "id": payment_id}
        extensions[PAYMENT_IDENTIFIER] = entry
    return encode_payment_signature_header(payload.model_copy(update={"extensions": extensions}))


def test_devnet_part_deploys_credits_funds_and_names_everything(
    mint_devnet: MintDevnet,  # noqa: F811
) -> None:
    devnet = mint_devnet
    assert set(devnet.settings) == {
        "HODLAI_MINT_USDC_ADDRESS", "HODLAI_MINT_SERVER_URL", "HODLAI_MINT_TOKENS",
        "HODLAI_MINT_RELAYER_ADDRESS", "HODLAI_MINT_PAY_TO", "HODLAI_MINT_KEY_FILE",
        "HODLAI_MINT_SERVER_PORT", "HODLAI_MINT_SERVER_CONFIRMATIONS",
    }  # fmt: skip
    port = devnet.settings["HODLAI_MINT_SERVER_PORT"]
    assert devnet.url == f"http://127.0.0.1:{port}"
    key_file = Path(devnet.settings["HODLAI_MINT_KEY_FILE"])
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    keys = load_mint_keys(key_file)
    anvil_accounts = {a.address for a in devnet.anvil.accounts}
    node_keys = {keys.relayer_address, keys.minter_address, devnet.pay_to}
    assert not node_keys & anvil_accounts
    assert devnet.settings["HODLAI_MINT_RELAYER_ADDRESS"] == keys.relayer_address
    for account in devnet.anvil.accounts:
        assert devnet.usdc_balance(account.address) == 1_000_000 * 10**6
    for funded in (keys.relayer_address, keys.minter_address):
        assert int(rpc(devnet.anvil, "eth_getBalance", [funded, "latest"]), 16) >= 10**20
    assert view(devnet.anvil, devnet.token, "isMinter(address)", ["address"],
                [keys.minter_address]) == 1  # fmt: skip
    assert view(devnet.anvil, devnet.usdc, "decimals()") == 6
    # A second run on the same state directory reuses the keys.
    again = setup(
        DevnetChain(
            rpc_url=devnet.anvil.rpc_url, chain_id=devnet.anvil.chain_id,
            state_dir=devnet.tmp / "state", db_path=devnet.tmp / "mint.db",
            accounts=tuple(DevAccountKey(a.address, a.private_key) for a in devnet.anvil.accounts),
        )
    )  # fmt: skip
    again_settings = {s.name: s.value for s in again.settings}
    assert again_settings["HODLAI_MINT_RELAYER_ADDRESS"] == keys.relayer_address
    assert again_settings["HODLAI_MINT_PAY_TO"] == devnet.pay_to


def test_an_authorization_someone_else_submits_first_counts_as_paid(
    mint_devnet: MintDevnet,  # noqa: F811
) -> None:
    """Anyone may submit an EIP-3009 authorization. With mining paused, a front-runner sends
    the buyer's authorization with a higher tip after the server broadcast its settle: the
    front-runner's transaction mines first and ours reverts. The buyer paid, so the mint is
    owed: exactly one mint, the USDC moved once, the answer names the front-runner's
    transaction as the settle."""
    devnet = mint_devnet
    anvil = devnet.anvil
    payer = anvil.accounts[7].address
    devnet.start()
    client, recorder = buyer(devnet, 7, "pay_mint_test_frontrun_01")
    outcome: dict[str, httpx.Response] = {}

    async def purchase() -> None:
        async with httpx.AsyncClient(
            transport=x402_httpx_transport(client, recorder), timeout=90
        ) as http:
            outcome["response"] = await http.post(f"{devnet.url}/mint/{devnet.token}")

    rpc(anvil, "evm_setAutomine", [False])
    thread = threading.Thread(target=lambda: asyncio.run(purchase()))
    thread.start()
    deadline = time.monotonic() + 60
    while not _pending(devnet) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _pending(devnet), devnet.log()
    front = _front_run(devnet, recorder.payment_header())
    rpc(anvil, "evm_mine", [])
    rpc(anvil, "evm_setAutomine", [True])
    thread.join(timeout=90)
    response = outcome["response"]
    assert response.status_code == 200, response.text
    assert response.json()["settleTxHash"] == front
    mined = rpc(anvil, "eth_getTransactionReceipt", [front])
    assert mined["status"] == "0x1"
    (minted,) = devnet.mints()
    assert int(minted["topics"][2], 16) == int(payer, 16)
    assert len(devnet.authorizations_used()) == 1
    assert devnet.usdc_balance(devnet.pay_to) == PRICE


def _pending(devnet: MintDevnet) -> bool:
    block = rpc(devnet.anvil, "eth_getBlockByNumber", ["pending", False])
    return bool(block and block["transactions"])


def _front_run(devnet: MintDevnet, header: str) -> str:
    """The buyer's signed authorization, submitted by anvil's account 0 with a high tip."""
    from x402.http.utils import decode_payment_signature_header

    payload = decode_payment_signature_header(header).payload
    auth = payload["authorization"]
    selector = keccak(
        text="transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)"
    )[:4]
    args = abi_encode(
        ["address", "address", "uint256", "uint256", "uint256", "bytes32", "bytes"],
        [auth["from"], auth["to"], int(auth["value"]), int(auth["validAfter"]),
         int(auth["validBefore"]), bytes.fromhex(auth["nonce"][2:]),
         bytes.fromhex(payload["signature"][2:])],
    )  # fmt: skip
    tx = {
        "from": devnet.anvil.accounts[0].address,
        "to": devnet.usdc,
        "data": "0x" + (selector + args).hex(),
        "gas": hex(200_000),
        "maxPriorityFeePerGas": hex(500 * 10**9),
        "maxFeePerGas": hex(1_000 * 10**9),
    }
    return str(rpc(devnet.anvil, "eth_sendTransaction", [tx]))
