"""The EIP-3009 token (contracts/Eip3009Token.sol) on a real anvil: what FiatTokenV2 promises,
and every way it refuses an authorization."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from eth_abi.abi import encode as abi_encode
from eth_utils.crypto import keccak

from shared.contracts import artifact
from shared.tx.authorizations import eip3009
from shared.tx.authorizations.eip3009 import (
    AUTHORIZATION_CANCELED_TOPIC,
    TRANSFER_WITH_AUTHORIZATION_SELECTOR,
    Kind,
    address_topic,
    domain_separator,
    eip712_domain,
    encode_call,
)
from tests.eip3009_fixtures import (
    NAME,
    PAYMENT_ARGS,
    VERSION,
    Token,
    cancel_calldata,
    deploy_token,
    error_selector,
    latest_timestamp,
    payment_calldata,
    rpc,
    rpc_error,
    send,
    sign,
)
from workers.devnet.anvil import Anvil

CURVE_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
FUNDS = 1_000 * 10**6


@pytest.fixture
def token(anvil: Anvil) -> Token:
    deployed = deploy_token(anvil)
    deployed.mint(anvil.accounts[1].address, FUNDS)
    return deployed


def payment(anvil: Anvil, *, value: int = 10 * 10**6, after: int = 0, before: int | None = None,
            to: str | None = None) -> dict[str, Any]:  # fmt: skip
    now = latest_timestamp(anvil)
    return {
        "from": anvil.accounts[1].address,
        "to": to or anvil.accounts[2].address,
        "value": value,
        "validAfter": after,
        "validBefore": now + 3600 if before is None else before,
        "nonce": secrets.token_bytes(32),
    }


def refused(token: Token, sender: str, data: str, error: str) -> None:
    """``data`` sent by ``sender`` reverts with the custom error ``error``."""
    answer = rpc_error(
        token.anvil, "eth_call", [{"from": sender, "to": token.address, "data": data}, "latest"]
    )
    assert str(answer.get("data", "")).startswith(error_selector(error)), answer


def test_the_token_reports_its_domain_and_six_decimals(token: Token) -> None:
    anvil = token.anvil
    separator = token.call("DOMAIN_SEPARATOR()", [], [])
    expected = domain_separator(
        name=NAME, version=VERSION, chain_id=anvil.chain_id, token=token.address
    )
    assert separator == "0x" + expected.hex()
    assert int(token.call("decimals()", [], []), 16) == 6
    assert token.balance(anvil.accounts[1].address) == FUNDS
    for fn, want in (("name()", NAME), ("version()", VERSION)):
        raw = bytes.fromhex(token.call(fn, [], [])[2:])
        assert raw[64 : 64 + len(want)].decode() == want


def test_a_transfer_by_authorization_moves_the_value_once_whoever_submits_it(token: Token) -> None:
    anvil = token.anvil
    user, payee, relayer = (a.address for a in anvil.accounts[1:4])
    message = payment(anvil, to=payee)
    signed = sign(anvil.accounts[1].private_key, token.domain(), Kind.TRANSFER, message)
    data = payment_calldata(Kind.TRANSFER, message, signed.v, signed.r, signed.s)

    receipt = send(anvil, relayer, token.address, data)

    assert receipt["status"] == "0x1"
    assert token.balance(user) == FUNDS - message["value"]
    assert token.balance(payee) == message["value"]
    assert token.used(user, message["nonce"])
    used = [
        entry
        for entry in receipt["logs"]
        if entry["topics"][1:] == [address_topic(user), "0x" + message["nonce"].hex()]
    ]
    assert len(used) == 1
    refused(token, relayer, data, "AuthorizationUsedOrCanceled(address,bytes32)")
    assert len(token.uses()) == 1


def test_the_65_byte_signature_overload_is_accepted(token: Token) -> None:
    anvil = token.anvil
    message = payment(anvil)
    signed = sign(anvil.accounts[1].private_key, token.domain(), Kind.TRANSFER, message)
    selector = (
        "0x"
        + keccak(
            text="transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)"
        ).hex()[:8]
    )
    args = [message[k] for k in ("from", "to", "value", "validAfter", "validBefore", "nonce")]
    data = encode_call(selector, [*PAYMENT_ARGS, "bytes"], [*args, signed.signature])
    assert send(anvil, anvil.accounts[3].address, token.address, data)["status"] == "0x1"
    assert token.balance(message["to"]) == message["value"]
    short = encode_call(selector, [*PAYMENT_ARGS, "bytes"], [*args, signed.signature[:64]])
    refused(token, anvil.accounts[3].address, short, "InvalidSignature()")


def test_an_authorization_outside_its_window_is_refused(token: Token) -> None:
    anvil = token.anvil
    now = latest_timestamp(anvil)
    relayer = anvil.accounts[3].address
    for message, error in (
        (payment(anvil, after=now + 1000), "AuthorizationNotYetValid(uint256,uint256)"),
        (payment(anvil, before=now - 1), "AuthorizationExpired(uint256,uint256)"),
    ):
        signed = sign(anvil.accounts[1].private_key, token.domain(), Kind.TRANSFER, message)
        refused(
            token,
            relayer,
            payment_calldata(Kind.TRANSFER, message, signed.v, signed.r, signed.s),
            error,
        )
        assert not token.used(message["from"], message["nonce"])


@pytest.mark.parametrize("edge", ["validAfter", "validBefore"])
def test_the_window_is_open_at_both_ends(token: Token, edge: str) -> None:
    """validAfter < block.timestamp < validBefore: a block exactly at either bound refuses."""
    anvil = token.anvil
    at = latest_timestamp(anvil) + 100
    message = (
        payment(anvil, after=at, before=at + 50)
        if edge == "validAfter"
        else payment(anvil, after=0, before=at)
    )
    signed = sign(anvil.accounts[1].private_key, token.domain(), Kind.TRANSFER, message)
    data = payment_calldata(Kind.TRANSFER, message, signed.v, signed.r, signed.s)
    rpc(anvil, "evm_setNextBlockTimestamp", [at])
    assert (
        send(anvil, anvil.accounts[3].address, token.address, data, gas=200_000)["status"] == "0x0"
    )
    assert not token.used(message["from"], message["nonce"])
    if edge == "validAfter":  # one second later it is open
        rpc(anvil, "evm_setNextBlockTimestamp", [at + 1])
        assert (
            send(anvil, anvil.accounts[3].address, token.address, data, gas=200_000)["status"]
            == "0x1"
        )
        assert token.used(message["from"], message["nonce"])


def test_a_signature_of_another_key_or_message_or_domain_is_refused(token: Token) -> None:
    anvil = token.anvil
    relayer = anvil.accounts[3].address
    message = payment(anvil)
    # another key than `from`
    other = sign(anvil.accounts[4].private_key, token.domain(), Kind.TRANSFER, message)
    refused(
        token,
        relayer,
        payment_calldata(Kind.TRANSFER, message, other.v, other.r, other.s),
        "InvalidSignature()",
    )
    # a changed value
    good = sign(anvil.accounts[1].private_key, token.domain(), Kind.TRANSFER, message)
    more = {**message, "value": message["value"] + 1}
    refused(
        token,
        relayer,
        payment_calldata(Kind.TRANSFER, more, good.v, good.r, good.s),
        "InvalidSignature()",
    )
    # another domain (version "1", another chain)
    for domain in (
        eip712_domain(name=NAME, version="1", chain_id=anvil.chain_id, token=token.address),
        eip712_domain(name=NAME, version=VERSION, chain_id=anvil.chain_id + 1, token=token.address),
    ):
        wrong = sign(anvil.accounts[1].private_key, domain, Kind.TRANSFER, message)
        refused(
            token,
            relayer,
            payment_calldata(Kind.TRANSFER, message, wrong.v, wrong.r, wrong.s),
            "InvalidSignature()",
        )
    # a TransferWithAuthorization signature submitted as a ReceiveWithAuthorization
    refused(
        token,
        message["to"],
        payment_calldata(Kind.RECEIVE, message, good.v, good.r, good.s),
        "InvalidSignature()",
    )
    # the malleable twin (s' = n - s, v flipped) of a valid signature
    s_high = (CURVE_ORDER - int.from_bytes(good.s, "big")).to_bytes(32, "big")
    twin = payment_calldata(Kind.TRANSFER, message, 55 - good.v, good.r, s_high)
    refused(token, relayer, twin, "InvalidSignature()")
    assert not token.used(message["from"], message["nonce"])
    # the untouched original still works
    assert (
        send(
            anvil,
            relayer,
            token.address,
            payment_calldata(Kind.TRANSFER, message, good.v, good.r, good.s),
        )["status"]
        == "0x1"
    )


def test_a_receive_authorization_is_accepted_only_from_the_payee(token: Token) -> None:
    anvil = token.anvil
    payee = anvil.accounts[2].address
    message = payment(anvil, to=payee)
    signed = sign(anvil.accounts[1].private_key, token.domain(), Kind.RECEIVE, message)
    data = payment_calldata(Kind.RECEIVE, message, signed.v, signed.r, signed.s)
    refused(token, anvil.accounts[3].address, data, "CallerMustBePayee(address,address)")
    assert send(anvil, payee, token.address, data)["status"] == "0x1"
    assert token.balance(payee) == message["value"]


def test_a_cancel_makes_the_authorization_unusable_and_cannot_follow_a_use(token: Token) -> None:
    anvil = token.anvil
    user_key, relayer = anvil.accounts[1].private_key, anvil.accounts[3].address
    message = payment(anvil)
    signed = sign(user_key, token.domain(), Kind.TRANSFER, message)
    cancel = sign(
        user_key,
        token.domain(),
        Kind.CANCEL,
        {"authorizer": message["from"], "nonce": message["nonce"]},
    )
    cancel_data = cancel_calldata(message["from"], message["nonce"], cancel.v, cancel.r, cancel.s)
    # a cancel signed by someone else is refused
    forged = sign(
        anvil.accounts[4].private_key,
        token.domain(),
        Kind.CANCEL,
        {"authorizer": message["from"], "nonce": message["nonce"]},
    )
    refused(
        token,
        relayer,
        cancel_calldata(message["from"], message["nonce"], forged.v, forged.r, forged.s),
        "InvalidSignature()",
    )

    receipt = send(anvil, relayer, token.address, cancel_data)
    assert receipt["status"] == "0x1"
    assert [e["topics"][0] for e in receipt["logs"]] == [AUTHORIZATION_CANCELED_TOPIC]
    assert token.used(message["from"], message["nonce"])
    refused(
        token,
        relayer,
        payment_calldata(Kind.TRANSFER, message, signed.v, signed.r, signed.s),
        "AuthorizationUsedOrCanceled(address,bytes32)",
    )
    refused(token, relayer, cancel_data, "AuthorizationUsedOrCanceled(address,bytes32)")
    assert token.balance(message["from"]) == FUNDS

    # a used authorization cannot be cancelled
    used = payment(anvil)
    signed = sign(user_key, token.domain(), Kind.TRANSFER, used)
    assert (
        send(
            anvil,
            relayer,
            token.address,
            payment_calldata(Kind.TRANSFER, used, signed.v, signed.r, signed.s),
        )["status"]
        == "0x1"
    )
    late = sign(
        user_key, token.domain(), Kind.CANCEL, {"authorizer": used["from"], "nonce": used["nonce"]}
    )
    refused(
        token,
        relayer,
        cancel_calldata(used["from"], used["nonce"], late.v, late.r, late.s),
        "AuthorizationUsedOrCanceled(address,bytes32)",
    )


def test_more_than_the_balance_is_refused(token: Token) -> None:
    anvil = token.anvil
    message = payment(anvil, value=FUNDS + 1)
    signed = sign(anvil.accounts[1].private_key, token.domain(), Kind.TRANSFER, message)
    data = payment_calldata(Kind.TRANSFER, message, signed.v, signed.r, signed.s)
    refused(token, anvil.accounts[3].address, data, "InsufficientBalance(address,uint256,uint256)")


def test_only_a_minter_mints_and_only_the_owner_appoints_minters(token: Token) -> None:
    anvil = token.anvil
    outsider = anvil.accounts[5].address

    def call(name: str, types: list[str], args: list[Any]) -> str:
        return "0x" + keccak(text=name).hex()[:8] + abi_encode(types, args).hex()

    mint = call("mint(address,uint256)", ["address", "uint256"], [outsider, 1])
    refused(token, outsider, mint, "NotMinter(address)")
    appoint = call("configureMinter(address,bool)", ["address", "bool"], [outsider, True])
    refused(token, outsider, appoint, "NotOwner(address)")
    handover = call("transferOwnership(address)", ["address"], [outsider])
    refused(token, outsider, handover, "NotOwner(address)")
    assert send(anvil, token.owner, token.address, appoint)["status"] == "0x1"
    assert send(anvil, outsider, token.address, mint)["status"] == "0x1"
    assert token.balance(outsider) == 1


def test_allowances_and_the_zero_address(token: Token) -> None:
    anvil = token.anvil
    user, spender = anvil.accounts[1].address, anvil.accounts[2].address

    def call(name: str, types: list[str], args: list[Any]) -> str:
        return "0x" + keccak(text=name).hex()[:8] + abi_encode(types, args).hex()

    pull = call(
        "transferFrom(address,address,uint256)",
        ["address", "address", "uint256"],
        [user, spender, 5],
    )
    refused(token, spender, pull, "InsufficientAllowance(address,address,uint256,uint256)")
    approve = call("approve(address,uint256)", ["address", "uint256"], [spender, 5])
    assert send(anvil, user, token.address, approve)["status"] == "0x1"
    assert send(anvil, spender, token.address, pull)["status"] == "0x1"
    assert token.balance(spender) == 5
    refused(token, spender, pull, "InsufficientAllowance(address,address,uint256,uint256)")
    burn = call("transfer(address,uint256)", ["address", "uint256"], ["0x" + "00" * 20, 1])
    refused(token, user, burn, "ZeroAddress()")


def test_the_selector_constants_match_the_compiled_abi() -> None:
    names = {
        "0x" + keccak(text=f"{e['name']}({','.join(i['type'] for i in e['inputs'])})").hex()[:8]
        for e in artifact("Eip3009Token").abi
        if e["type"] == "function"
    }
    assert {
        TRANSFER_WITH_AUTHORIZATION_SELECTOR,
        eip3009.RECEIVE_WITH_AUTHORIZATION_SELECTOR,
        eip3009.CANCEL_AUTHORIZATION_SELECTOR,
        eip3009.AUTHORIZATION_STATE_SELECTOR,
        eip3009.NAME_SELECTOR,
        eip3009.VERSION_SELECTOR,
        eip3009.DOMAIN_SEPARATOR_SELECTOR,
    } <= names
    events = {
        "0x" + keccak(text=f"{e['name']}({','.join(i['type'] for i in e['inputs'])})").hex()
        for e in artifact("Eip3009Token").abi
        if e["type"] == "event"
    }
    assert {
        eip3009.AUTHORIZATION_USED_TOPIC,
        eip3009.AUTHORIZATION_CANCELED_TOPIC,
        eip3009.TRANSFER_TOPIC,
    } <= events
