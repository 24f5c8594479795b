"""The EIP-3009 token on a real anvil: deploy it, mint, sign authorizations as a wallet would
(eth-account, outside the node), submit them, read balances and logs, decode reverts."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx
from eth_abi.abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from shared.contracts import artifact
from shared.tx.authorizations.eip3009 import (
    AUTHORIZATION_USED_TOPIC,
    CANCEL_AUTHORIZATION_SELECTOR,
    RECEIVE_WITH_AUTHORIZATION_SELECTOR,
    TRANSFER_TOPIC,
    TRANSFER_WITH_AUTHORIZATION_SELECTOR,
    Kind,
    eip712_domain,
    encode_call,
    typed_data,
)
from workers.devnet.anvil import Anvil

TOKEN_CONTRACT = "Eip3009Token"
NAME, VERSION, SYMBOL = "USD Coin", "2", "USDC"
PAYMENT_ARGS = ["address", "address", "uint256", "uint256", "uint256", "bytes32"]
VRS = ["uint8", "bytes32", "bytes32"]


def rpc(anvil: Anvil, method: str, params: list[Any]) -> Any:
    answer = httpx.post(
        anvil.rpc_url,
        json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
        timeout=30,
    ).json()
    assert "error" not in answer, answer
    return answer["result"]


def rpc_error(anvil: Anvil, method: str, params: list[Any]) -> dict[str, Any]:
    answer = httpx.post(
        anvil.rpc_url,
        json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
        timeout=30,
    ).json()
    assert "error" in answer, answer
    error: dict[str, Any] = answer["error"]
    return error


def wait_receipt(anvil: Anvil, tx_hash: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        receipt = rpc(anvil, "eth_getTransactionReceipt", [tx_hash])
        if receipt is not None:
            result: dict[str, Any] = receipt
            return result
        time.sleep(0.02)
    raise AssertionError(f"no receipt for {tx_hash}")


def send(
    anvil: Anvil, sender: str, to: str | None, data: str, *, gas: int | None = None
) -> dict[str, Any]:
    """A transaction from an unlocked dev account, mined (auto-mine); its receipt."""
    tx: dict[str, Any] = {"from": sender, "data": data}
    if to is not None:
        tx["to"] = to
    if gas is not None:
        tx["gas"] = hex(gas)
    return wait_receipt(anvil, rpc(anvil, "eth_sendTransaction", [tx]))


def error_selector(name: str) -> str:
    return "0x" + keccak(text=name).hex()[:8]


@dataclass(frozen=True)
class Token:
    anvil: Anvil
    address: str
    owner: str

    def domain(self) -> dict[str, Any]:
        return eip712_domain(
            name=NAME, version=VERSION, chain_id=self.anvil.chain_id, token=self.address
        )

    def call(self, signature: str, types: list[str], args: list[Any]) -> str:
        selector = "0x" + keccak(text=signature).hex()[:8]
        result: str = rpc(
            self.anvil,
            "eth_call",
            [{"to": self.address, "data": encode_call(selector, types, args)}, "latest"],
        )
        return result

    def balance(self, account: str) -> int:
        return int(self.call("balanceOf(address)", ["address"], [account]), 16)

    def used(self, authorizer: str, nonce: bytes) -> bool:
        state = self.call(
            "authorizationState(address,bytes32)", ["address", "bytes32"], [authorizer, nonce]
        )
        return int(state, 16) != 0

    def mint(self, to: str, value: int) -> None:
        data = (
            "0x"
            + keccak(text="mint(address,uint256)").hex()[:8]
            + abi_encode(["address", "uint256"], [to, value]).hex()
        )
        assert send(self.anvil, self.owner, self.address, data)["status"] == "0x1"

    def logs(self, topic0: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = rpc(
            self.anvil,
            "eth_getLogs",
            [
                {
                    "address": self.address,
                    "fromBlock": "0x0",
                    "toBlock": "latest",
                    "topics": [topic0],
                }
            ],
        )
        return found

    def transfers(self) -> list[dict[str, Any]]:
        return self.logs(TRANSFER_TOPIC)

    def uses(self) -> list[dict[str, Any]]:
        return self.logs(AUTHORIZATION_USED_TOPIC)


def deploy_token(anvil: Anvil, *, name: str = NAME, version: str = VERSION) -> Token:
    owner = anvil.accounts[0].address
    compiled = artifact(TOKEN_CONTRACT)
    data = (
        compiled.bytecode
        + abi_encode(["string", "string", "string"], [name, version, SYMBOL]).hex()
    )
    receipt = send(anvil, owner, None, data)
    assert receipt["status"] == "0x1"
    return Token(anvil, to_checksum_address(receipt["contractAddress"]), owner)


@dataclass(frozen=True)
class Signed:
    kind: Kind
    message: dict[str, Any]
    v: int
    r: bytes
    s: bytes

    @property
    def signature(self) -> bytes:
        return self.r + self.s + bytes([self.v])


def sign(key: str, domain: dict[str, Any], kind: Kind, message: dict[str, Any]) -> Signed:
    """Sign as a wallet would (the user's funding authorization, a test's forgery)."""
    signed = Account.sign_message(
        encode_typed_data(full_message=typed_data(kind, domain, message)), key
    )
    return Signed(
        kind, message, signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")
    )


def payment_calldata(
    kind: Kind,
    message: dict[str, Any],
    v: int,
    r: bytes,
    s: bytes,
) -> str:
    selector = (
        TRANSFER_WITH_AUTHORIZATION_SELECTOR
        if kind is Kind.TRANSFER
        else RECEIVE_WITH_AUTHORIZATION_SELECTOR
    )
    args = [message[k] for k in ("from", "to", "value", "validAfter", "validBefore", "nonce")]
    return encode_call(selector, PAYMENT_ARGS + VRS, [*args, v, r, s])


def cancel_calldata(authorizer: str, nonce: bytes, v: int, r: bytes, s: bytes) -> str:
    return encode_call(
        CANCEL_AUTHORIZATION_SELECTOR, ["address", "bytes32", *VRS], [authorizer, nonce, v, r, s]
    )


def latest_timestamp(anvil: Anvil) -> int:
    return int(rpc(anvil, "eth_getBlockByNumber", ["latest", False])["timestamp"], 16)


def mine(anvil: Anvil, blocks: int = 1, *, seconds: int = 0) -> None:
    if seconds:
        rpc(anvil, "evm_increaseTime", [seconds])
    for _ in range(blocks):
        rpc(anvil, "evm_mine", [])
