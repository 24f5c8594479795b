"""The mint server's contracts, declared to the core (pyproject.toml ``hodlai.abis``) so that
revert decoding knows their errors: the per-mint token (contracts/MintToken.sol). The USDC it
settles on is the devnet's Eip3009Token (declared by workers/devnet/contracts.py)."""

from __future__ import annotations

from typing import Final

from shared.contracts import ContractAbis

ABIS: Final = ContractAbis(contracts=("MintToken",))
