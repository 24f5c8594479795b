"""Vault wallets against a real anvil: a vault signer's transaction is accepted and mined as
sent by the wallet, and an EIP-3009 TransferWithAuthorization signed by the vault recovers to
the wallet, both off chain and through the chain's own ecrecover."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
from eth_account import Account
from eth_account.messages import encode_typed_data

from shared.anvil import Anvil
from shared.tx.fees import Fees
from shared.tx.signer import Call
from tests.test_vault import decrypt_row, new_vault, transfer_typed_data

ECRECOVER = "0x" + "00" * 19 + "01"  # the precompile every EIP-3009 token verifies with


def rpc(anvil: Anvil, method: str, params: list[Any]) -> Any:
    answer = httpx.post(
        anvil.rpc_url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    ).json()
    assert "error" not in answer, answer
    return answer["result"]


def wait_receipt(anvil: Anvil, tx_hash: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        receipt = rpc(anvil, "eth_getTransactionReceipt", [tx_hash])
        if receipt is not None:
            result: dict[str, Any] = receipt
            return result
        time.sleep(0.05)
    raise AssertionError(f"no receipt for {tx_hash}")


def test_a_vault_signer_sends_a_transaction_anvil_mines(anvil: Anvil, tmp_path: Path) -> None:
    vault, key_file, conn = new_vault(tmp_path)
    wallet = vault.create_wallet(label="distribution")
    funder = anvil.accounts[0].address
    funding = rpc(
        anvil, "eth_sendTransaction", [{"from": funder, "to": wallet, "value": hex(10**18)}]
    )
    assert wait_receipt(anvil, funding)["status"] == "0x1"

    signer = vault.signer(wallet, chain_id=anvil.chain_id)
    base_fee = int(rpc(anvil, "eth_getBlockByNumber", ["latest", False])["baseFeePerGas"], 16)
    fees = Fees(max_fee_per_gas=2 * base_fee + 10**9, max_priority_fee_per_gas=10**9)
    signed = signer.sign(Call(to=funder, data=b"", value=0, gas_limit=21_000), nonce=0, fees=fees)
    assert rpc(anvil, "eth_sendRawTransaction", [signed.raw]) == signed.tx_hash
    receipt = wait_receipt(anvil, signed.tx_hash)
    assert receipt["status"] == "0x1"
    assert receipt["from"].lower() == wallet.lower()
    assert int(rpc(anvil, "eth_getTransactionCount", [wallet, "latest"]), 16) == 1

    key = decrypt_row(conn, wallet, key_file)
    for shown in (repr(signer), str(signer), repr(vars(signer)), repr(vault), str(vault)):
        assert key.hex() not in shown.lower()
        assert wallet in shown or "Vault(" in shown
    assert not any(isinstance(v, bytes) for v in vars(signer).values())


def test_a_transfer_with_authorization_recovers_to_the_vault_wallet(
    anvil: Anvil, tmp_path: Path
) -> None:
    vault, _, _ = new_vault(tmp_path)
    wallet = vault.ensure_wallet(label="mint-agent", owner="0x" + "ab" * 20)
    typed = transfer_typed_data(wallet, chain_id=anvil.chain_id, nonce=bytes(range(32)))
    # The authorizations ledger's path: sign_typed_data refuses EIP-3009 kinds.
    signature = vault._sign_money_typed_data(wallet, typed)

    signable = encode_typed_data(full_message=typed)
    assert Account.recover_message(signable, signature=signature.signature) == wallet
    assert Account.recover_message(signable, vrs=(signature.v, signature.r, signature.s)) == wallet
    assert signature.signer == wallet and len(signature.signature) == 65
    assert signature.v in (27, 28)

    # What the token contract does: ecrecover(digest, v, r, s) == from.
    call_data = (
        signature.digest
        + signature.v.to_bytes(32, "big")
        + signature.r.to_bytes(32, "big")
        + signature.s.to_bytes(32, "big")
    )
    recovered = rpc(
        anvil, "eth_call", [{"to": ECRECOVER, "data": "0x" + call_data.hex()}, "latest"]
    )
    assert recovered[-40:] == wallet[2:].lower()

    # A changed field is another digest: the signature no longer recovers to the wallet.
    other = transfer_typed_data(wallet, chain_id=anvil.chain_id, nonce=bytes(range(32)), value=1)
    tampered = encode_typed_data(full_message=other)
    assert Account.recover_message(tampered, signature=signature.signature) != wallet
