"""The development tools' contracts, declared to the core (pyproject.toml ``hodlai.abis``)
so that revert decoding knows their errors: the EIP-3009 token (contracts/Eip3009Token.sol,
a USDC stand-in) that the devnet and the money core's tests deploy."""

from __future__ import annotations

from typing import Final

from shared.contracts import ContractAbis

ABIS: Final = ContractAbis(contracts=("Eip3009Token",))
