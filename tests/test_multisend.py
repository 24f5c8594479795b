"""The multisend (contracts/Multisend.sol) and the distribution's tokens on a real anvil:
one approval pays many recipients exactly, and every way a batch can revert is named by its
decoded reason. Also the devnet's ``distribution`` part."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import httpx
import pytest
from eth_utils.address import to_checksum_address
from web3 import Web3

from shared.contracts import decode_revert
from shared.errors import ExecutionRevertedError
from shared.tx.receipts import parse_receipt
from workers.devnet.anvil import Anvil
from workers.devnet.parts import DevAccountKey, DevnetChain
from workers.distribution import devnet
from workers.distribution.evm.contracts import (
    BLACKLIST_TOKEN_CONTRACT,
    FALSE_TOKEN_CONTRACT,
    FEE_TOKEN_CONTRACT,
    disperse_calldata,
    paid_transfers,
)
from workers.distribution.evm.deploy import Deployer, token_balance

WHOLE = 10**18


def recipients(n: int, salt: int = 1) -> list[str]:
    return [to_checksum_address(f"0x{salt:04x}{i:036x}") for i in range(1, n + 1)]


def eth_call(anvil: Anvil, sender: str, to: str, data: bytes) -> dict[str, object]:
    answer: dict[str, object] = httpx.post(
        anvil.rpc_url,
        json={"jsonrpc": "2.0", "id": 1, "method": "eth_call",
              "params": [{"from": sender, "to": to, "data": "0x" + data.hex()}, "latest"]},
        timeout=30,
    ).json()  # fmt: skip
    return answer


def reverted(anvil: Anvil, sender: str, to: str, data: bytes) -> str:
    """The decoded reason ``data`` from ``sender`` reverts with (it must revert)."""
    answer = eth_call(anvil, sender, to, data)
    assert "error" in answer, answer
    error = answer["error"]
    assert isinstance(error, dict)
    return decode_revert(str(error.get("data", "0x")))


@pytest.fixture
def setup(anvil: Anvil) -> tuple[Deployer, str, str]:
    """A DistToken, a multisend, the source (account 1) funded with 10,000 tokens."""
    admin = Deployer(anvil.rpc_url, anvil.accounts[0].private_key)
    token = admin.deploy_token()
    multisend = admin.deploy_multisend()
    admin.mint(token, [(anvil.accounts[1].address, 10_000 * WHOLE)])
    return admin, token, multisend


def test_one_approval_pays_every_recipient_exactly_with_one_transfer_log_each(
    anvil: Anvil, setup: tuple[Deployer, str, str]
) -> None:
    admin, token, multisend = setup
    source = Deployer(anvil.rpc_url, anvil.accounts[1].private_key)
    source.approve(token, multisend, 10_000 * WHOLE)
    manifest = [(a, (i + 1) * WHOLE + i) for i, a in enumerate(recipients(50))]
    tx = source.transact(multisend, disperse_calldata(token, manifest), what="disperse")
    source.wait([tx])
    raw = httpx.post(
        anvil.rpc_url,
        json={"jsonrpc": "2.0", "id": 1, "method": "eth_getTransactionReceipt",
              "params": [tx.to_0x_hex()]},
        timeout=30,
    ).json()["result"]  # fmt: skip
    receipt = parse_receipt(raw)
    for address, amount in manifest:
        assert token_balance(admin.w3, token, address) == amount
    found = paid_transfers(receipt.logs, token=token, source=multisend)
    assert found == {(a, v): 1 for a, v in manifest}
    total = sum(v for _, v in manifest)
    assert token_balance(admin.w3, token, source.address) == 10_000 * WHOLE - total
    # The allowance shrank by exactly the total: nothing else can be pulled.
    assert int.from_bytes(
        source.call(token, bytes.fromhex("dd62ed3e") + bytes(12) + bytes.fromhex(
            source.address[2:]) + bytes(12) + bytes.fromhex(multisend[2:])), "big"
    ) == 10_000 * WHOLE - total  # fmt: skip


def test_every_revert_path_is_named(anvil: Anvil, setup: tuple[Deployer, str, str]) -> None:
    admin, token, multisend = setup
    source = anvil.accounts[1].address
    two = recipients(2)
    # No approval: the token's own error, bubbled unchanged.
    reason = reverted(anvil, source, multisend, disperse_calldata(token, [(two[0], 1)]))
    assert reason.startswith("ERC20InsufficientAllowance("), reason
    Deployer(anvil.rpc_url, anvil.accounts[1].private_key).approve(token, multisend, 2**255)
    # More than the balance.
    reason = reverted(
        anvil, source, multisend, disperse_calldata(token, [(two[0], 10_001 * WHOLE)])
    )
    assert reason.startswith("ERC20InsufficientBalance("), reason
    # Recipients and values of different lengths.
    data = bytearray(disperse_calldata(token, [(two[0], 1), (two[1], 2)]))
    bad = bytes(data[:4]) + Web3().codec.encode(
        ["address", "address[]", "uint256[]"], [token, two, [1]]
    )
    assert reverted(anvil, source, multisend, bad).startswith("LengthMismatch(recipients=2")
    # A token that returns false.
    broken = admin.deploy_token(FALSE_TOKEN_CONTRACT)
    reason = reverted(anvil, source, multisend, disperse_calldata(broken, [(two[0], 5)]))
    assert reason.startswith("TransferFailed("), reason
    # A token that charges a fee on transfer: the recipient would get less, so nothing moves.
    fee = admin.deploy_token(FEE_TOKEN_CONTRACT)
    admin.mint(fee, [(source, 1_000 * WHOLE)])
    Deployer(anvil.rpc_url, anvil.accounts[1].private_key).approve(fee, multisend, 2**255)
    reason = reverted(anvil, source, multisend, disperse_calldata(fee, [(two[0], 100 * WHOLE)]))
    assert reason.startswith("PullShort("), reason
    assert str(99 * WHOLE) in reason


def test_a_blacklisted_recipient_reverts_the_whole_batch_with_the_tokens_reason(
    anvil: Anvil, setup: tuple[Deployer, str, str]
) -> None:
    admin, _, multisend = setup
    token = admin.deploy_token(BLACKLIST_TOKEN_CONTRACT)
    source = Deployer(anvil.rpc_url, anvil.accounts[1].private_key)
    admin.mint(token, [(source.address, 1_000 * WHOLE)])
    source.approve(token, multisend, 2**255)
    people = recipients(3)
    bad_guy = people[1]
    admin.invoke(BLACKLIST_TOKEN_CONTRACT, token, "setBlacklisted", [bad_guy, True])
    manifest = [(a, WHOLE) for a in people]
    reason = reverted(anvil, source.address, multisend, disperse_calldata(token, manifest))
    assert reason == f"Blacklisted(account={bad_guy})"
    # Without it the others are paid.
    others = [m for m in manifest if m[0] != bad_guy]
    source.wait([source.transact(multisend, disperse_calldata(token, others), what="disperse")])
    assert [token_balance(admin.w3, token, a) for a in people] == [WHOLE, 0, WHOLE]
    with pytest.raises(ExecutionRevertedError, match="Blacklisted"):
        source.transact(multisend, disperse_calldata(token, manifest), what="disperse")


def test_the_devnet_part_deploys_funds_and_names_its_settings(anvil: Anvil, tmp_path: Path) -> None:
    chain = DevnetChain(
        rpc_url=anvil.rpc_url,
        chain_id=anvil.chain_id,
        state_dir=tmp_path,
        db_path=tmp_path / "hodlai.db",
        accounts=tuple(DevAccountKey(a.address, a.private_key) for a in anvil.accounts),
    )
    part = devnet.setup(chain)
    settings = {s.name: s.value for s in part.settings}
    assert set(settings) == {
        "HODLAI_DIST_TOKEN_ADDRESS", "HODLAI_DIST_MULTISEND_ADDRESS",
        "HODLAI_DIST_SOURCE_ADDRESS", "HODLAI_DIST_KEY_FILE",
    }  # fmt: skip
    key_file = Path(settings["HODLAI_DIST_KEY_FILE"])
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    source = settings["HODLAI_DIST_SOURCE_ADDRESS"]
    assert source.lower() not in {a.address.lower() for a in anvil.accounts}
    w3 = Web3(Web3.HTTPProvider(anvil.rpc_url))
    token = settings["HODLAI_DIST_TOKEN_ADDRESS"]
    assert token_balance(w3, token, source) == 10**9 * WHOLE
    for account in anvil.accounts:
        assert token_balance(w3, token, account.address) == 10**6 * WHOLE
    assert w3.eth.get_balance(to_checksum_address(source)) > 0
    decimals = w3.eth.call({"to": to_checksum_address(token), "data": "0x313ce567"})
    assert int.from_bytes(decimals, "big") == 18
    assert w3.eth.get_code(to_checksum_address(settings["HODLAI_DIST_MULTISEND_ADDRESS"]))
    assert "private" not in " ".join(part.summary).lower()
    # A second start reuses the key.
    again = devnet.setup(chain)
    assert {s.name: s.value for s in again.settings}["HODLAI_DIST_SOURCE_ADDRESS"] == source
