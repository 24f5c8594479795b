"""Vault wallets against a real anvil: a vault signer's transaction is accepted and mined as
sent by the wallet; a wallet whose row was deleted is recovered from the master key and its
address sends again; the transaction manager sends from a vault wallet through a signer that
is not a LocalSigner (the Signer protocol, as a remote signer would); and an EIP-3009
TransferWithAuthorization signed by the vault recovers to the wallet, both off chain and
through the chain's own ecrecover."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data

from shared.chain.rpc import RpcClient
from shared.db import AsyncDatabase, atomic, connect
from shared.keys.vault import UnknownWalletError, Vault, open_vault, parse_address
from shared.tx.fees import Fees
from shared.tx.ledger import Purpose
from shared.tx.manager import Submission, TxManager
from shared.tx.senders import claim_sender
from shared.tx.signer import Call, LocalSigner, SignedTx, Signer
from tests.test_tx_manager import FAIR, NOTE, POLICY, NotePurpose
from tests.test_vault import decrypt_row, new_vault, transfer_typed_data
from workers.devnet.anvil import Anvil

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


def fund(anvil: Anvil, wallet: str) -> None:
    funder = anvil.accounts[0].address
    funding = rpc(
        anvil, "eth_sendTransaction", [{"from": funder, "to": wallet, "value": hex(10**18)}]
    )
    assert wait_receipt(anvil, funding)["status"] == "0x1"


def send_from(anvil: Anvil, vault: Vault, wallet: str, nonce: int) -> dict[str, Any]:
    base_fee = int(rpc(anvil, "eth_getBlockByNumber", ["latest", False])["baseFeePerGas"], 16)
    fees = Fees(max_fee_per_gas=2 * base_fee + 10**9, max_priority_fee_per_gas=10**9)
    call = Call(to=anvil.accounts[0].address, data=b"", value=1, gas_limit=21_000)
    signed = vault.signer(wallet, chain_id=anvil.chain_id).sign(call, nonce=nonce, fees=fees)
    assert rpc(anvil, "eth_sendRawTransaction", [signed.raw]) == signed.tx_hash
    return wait_receipt(anvil, signed.tx_hash)


def test_a_deleted_wallet_is_recovered_from_the_master_key_and_sends_again(
    anvil: Anvil, tmp_path: Path
) -> None:
    vault, key_file, conn = new_vault(tmp_path)
    wallet = vault.ensure_wallet(label="mint-agent", owner="user-1")
    fund(anvil, wallet)  # the user was told this address and paid into it
    assert send_from(anvil, vault, wallet, nonce=0)["from"].lower() == wallet.lower()
    with atomic(conn):
        conn.execute("DELETE FROM wallets")
        conn.execute("DELETE FROM wallet_derivations")
    with pytest.raises(UnknownWalletError):
        vault.signer(wallet, chain_id=anvil.chain_id)

    # A new process with only the master key file and the (now empty) database.
    recovered = open_vault(connect(tmp_path / "vault.db", durable=True), key_file)
    recovery = recovered.recover(label="mint-agent", owner="user-1", index=0)
    assert recovery.inserted and recovery.wallet.address == wallet
    receipt = send_from(anvil, recovered, wallet, nonce=1)
    assert receipt["status"] == "0x1" and receipt["from"].lower() == wallet.lower()
    assert int(rpc(anvil, "eth_getTransactionCount", [wallet, "latest"]), 16) == 2  # on chain


class SigningService:
    """A Signer that is not a LocalSigner and holds no key: it asks a signing backend (here
    the vault, as a KMS client would ask its service) for each signature, and counts them."""

    def __init__(self, vault: Vault, address: str, chain_id: int) -> None:
        self._vault = vault
        self.address = parse_address(address)
        self.chain_id = chain_id
        self.signed = 0

    def sign(self, call: Call, *, nonce: int, fees: Fees) -> SignedTx:
        self.signed += 1
        return self._vault.signer(self.address, chain_id=self.chain_id).sign(
            call, nonce=nonce, fees=fees
        )


async def test_the_manager_sends_from_a_vault_wallet_through_any_signer(
    anvil: Anvil, tmp_path: Path
) -> None:
    vault, _, _ = new_vault(tmp_path)
    wallet = vault.create_wallet(label="distribution")
    fund(anvil, wallet)
    service = SigningService(vault, wallet, anvil.chain_id)
    assert isinstance(service, Signer) and not isinstance(service, LocalSigner)
    db = AsyncDatabase(connect(tmp_path / "vault.db", durable=True))
    purpose = NotePurpose()
    manager = TxManager(
        db=db, rpc=RpcClient([anvil.rpc_url]), signer=service, policy=POLICY,
        handlers={NOTE: purpose},
        claim=claim_sender(
            tmp_path / "vault.db", db.conn, wallet, owner="test", chain_id=anvil.chain_id
        ),
    )  # fmt: skip
    try:
        await manager.start()
        call = Call(to=anvil.accounts[1].address, data=b"", value=12345, gas_limit=21_000)
        sub = Submission(call, Purpose(NOTE), lambda conn, tx: None, key="vault-note:1")
        recorded = await manager.record([sub], FAIR)
        await manager.broadcast(recorded)
        signed = recorded[0].signed
        assert signed is not None and service.signed == 1
        receipt = wait_receipt(anvil, signed.tx_hash)
        deadline = time.monotonic() + 10
        while not purpose.told:
            assert time.monotonic() < deadline, "the purpose was never told"
            await manager.poll()
            await asyncio.sleep(0.05)
    finally:
        await manager.close()
        db.close()
    assert receipt["status"] == "0x1" and receipt["from"].lower() == wallet.lower()
    assert int(rpc(anvil, "eth_getTransactionCount", [wallet, "latest"]), 16) == 1
