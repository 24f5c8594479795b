"""The per-mint token (contracts/MintToken.sol) on a real anvil: each mint is one Transfer of
tokensPerMint from the zero address, the supply never passes maxSupply, and every revert path.
The USDC-like token's own checks (issue 20 §1) are in tests/test_eip3009_token.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from eth_abi.abi import encode as abi_encode
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from shared.contracts import artifact
from shared.tx.authorizations.eip3009 import TRANSFER_TOPIC, encode_call
from tests.eip3009_fixtures import error_selector, rpc, rpc_error, send
from workers.devnet.anvil import Anvil

PER_MINT = 1_000 * 10**18
MAX_MINTS = 3
ZERO = "0x" + "00" * 20


@dataclass(frozen=True)
class MintTokenHandle:
    anvil: Anvil
    address: str
    owner: str

    def data(self, signature: str, types: list[str], args: list[Any]) -> str:
        return encode_call("0x" + keccak(text=signature).hex()[:8], types, args)

    def view(
        self, signature: str, types: list[str] | None = None, args: list[Any] | None = None
    ) -> int:
        answer = rpc(
            self.anvil,
            "eth_call",
            [{"to": self.address, "data": self.data(signature, types or [], args or [])}, "latest"],
        )
        return int(answer, 16)

    def send(
        self, sender: str, signature: str, types: list[str], args: list[Any]
    ) -> dict[str, Any]:
        return send(self.anvil, sender, self.address, self.data(signature, types, args))

    def refused(
        self, sender: str, signature: str, types: list[str], args: list[Any], error: str
    ) -> None:
        answer = rpc_error(
            self.anvil,
            "eth_call",
            [
                {"from": sender, "to": self.address, "data": self.data(signature, types, args)},
                "latest",
            ],
        )
        assert str(answer.get("data", "")).startswith(error_selector(error)), answer


def deploy(
    anvil: Anvil, per_mint: int = PER_MINT, max_supply: int = PER_MINT * MAX_MINTS
) -> MintTokenHandle:
    owner = anvil.accounts[0].address
    code = (
        artifact("MintToken").bytecode
        + abi_encode(
            ["string", "string", "uint256", "uint256"], ["Mint Me", "MINT", per_mint, max_supply]
        ).hex()
    )
    receipt = send(anvil, owner, None, code)
    assert receipt["status"] == "0x1"
    return MintTokenHandle(anvil, to_checksum_address(receipt["contractAddress"]), owner)


@pytest.fixture(scope="module")
def chain() -> Any:
    with Anvil() as node:
        yield node


def test_each_mint_is_one_transfer_of_tokens_per_mint_up_to_max_supply(chain: Anvil) -> None:
    token = deploy(chain)
    minter, user = chain.accounts[1].address, chain.accounts[2].address
    assert token.view("tokensPerMint()") == PER_MINT
    assert token.view("maxSupply()") == PER_MINT * MAX_MINTS
    assert token.view("decimals()") == 18
    assert token.view("mintsLeft()") == MAX_MINTS
    token.refused(minter, "mint(address)", ["address"], [user], "NotMinter(address)")
    assert (
        token.send(
            token.owner, "configureMinter(address,bool)", ["address", "bool"], [minter, True]
        )["status"]
        == "0x1"
    )
    assert token.view("isMinter(address)", ["address"], [minter]) == 1
    for index in range(MAX_MINTS):
        receipt = token.send(minter, "mint(address)", ["address"], [user])
        assert receipt["status"] == "0x1"
        transfers = [log for log in receipt["logs"] if log["topics"][0] == TRANSFER_TOPIC]
        assert len(transfers) == 1
        assert int(transfers[0]["topics"][1], 16) == 0
        assert int(transfers[0]["topics"][2], 16) == int(user, 16)
        assert int(transfers[0]["data"], 16) == PER_MINT
        assert token.view("mintCount()") == index + 1
    assert token.view("balanceOf(address)", ["address"], [user]) == PER_MINT * MAX_MINTS
    assert token.view("totalSupply()") == PER_MINT * MAX_MINTS
    assert token.view("mintsLeft()") == 0
    token.refused(
        minter, "mint(address)", ["address"], [user], "MaxSupplyExceeded(uint256,uint256,uint256)"
    )


def test_revert_paths(chain: Anvil) -> None:
    token = deploy(chain)
    owner, minter, other = token.owner, chain.accounts[1].address, chain.accounts[3].address
    # Only the owner configures minters and hands over ownership; never to the zero address.
    token.refused(
        other,
        "configureMinter(address,bool)",
        ["address", "bool"],
        [other, True],
        "NotOwner(address)",
    )
    token.refused(
        owner, "configureMinter(address,bool)", ["address", "bool"], [ZERO, True], "ZeroAddress()"
    )
    token.refused(other, "transferOwnership(address)", ["address"], [other], "NotOwner(address)")
    token.refused(owner, "transferOwnership(address)", ["address"], [ZERO], "ZeroAddress()")
    # The deployer is not a minter until it appoints itself.
    token.refused(owner, "mint(address)", ["address"], [other], "NotMinter(address)")
    token.send(owner, "configureMinter(address,bool)", ["address", "bool"], [minter, True])
    token.refused(minter, "mint(address)", ["address"], [ZERO], "ZeroAddress()")
    # A removed minter mints no more.
    token.send(owner, "configureMinter(address,bool)", ["address", "bool"], [minter, False])
    token.refused(minter, "mint(address)", ["address"], [other], "NotMinter(address)")
    token.send(owner, "configureMinter(address,bool)", ["address", "bool"], [minter, True])
    assert token.send(minter, "mint(address)", ["address"], [minter])["status"] == "0x1"
    # ERC-20 refusals.
    token.refused(
        other,
        "transfer(address,uint256)",
        ["address", "uint256"],
        [owner, 1],
        "InsufficientBalance(address,uint256,uint256)",
    )
    token.refused(
        minter, "transfer(address,uint256)", ["address", "uint256"], [ZERO, 1], "ZeroAddress()"
    )
    token.refused(
        minter, "approve(address,uint256)", ["address", "uint256"], [ZERO, 1], "ZeroAddress()"
    )
    token.refused(
        other,
        "transferFrom(address,address,uint256)",
        ["address", "address", "uint256"],
        [minter, other, 1],
        "InsufficientAllowance(address,address,uint256,uint256)",
    )
    token.send(minter, "approve(address,uint256)", ["address", "uint256"], [other, 5])
    token.refused(
        other,
        "transferFrom(address,address,uint256)",
        ["address", "address", "uint256"],
        [minter, other, 6],
        "InsufficientAllowance(address,address,uint256,uint256)",
    )
    assert (
        token.send(
            other,
            "transferFrom(address,address,uint256)",
            ["address", "address", "uint256"],
            [minter, other, 5],
        )["status"]
        == "0x1"
    )
    assert token.view("allowance(address,address)", ["address", "address"], [minter, other]) == 0
    # Ownership moves, and the old owner loses the role.
    token.send(owner, "transferOwnership(address)", ["address"], [other])
    token.refused(
        owner,
        "configureMinter(address,bool)",
        ["address", "bool"],
        [owner, True],
        "NotOwner(address)",
    )
    assert (
        token.send(other, "configureMinter(address,bool)", ["address", "bool"], [owner, True])[
            "status"
        ]
        == "0x1"
    )


@pytest.mark.parametrize(("per_mint", "max_supply"), [(0, 10), (10, 9)])
def test_constructor_refuses_a_nonsense_sale(chain: Anvil, per_mint: int, max_supply: int) -> None:
    code = (
        artifact("MintToken").bytecode
        + abi_encode(
            ["string", "string", "uint256", "uint256"], ["X", "X", per_mint, max_supply]
        ).hex()
    )
    answer = rpc_error(
        chain, "eth_call", [{"from": chain.accounts[0].address, "data": code}, "latest"]
    )
    assert str(answer.get("data", "")).startswith(
        error_selector("InvalidMintConfig(uint256,uint256)")
    ), answer
