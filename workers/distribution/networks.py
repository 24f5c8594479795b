"""One configured network a task can name (issue 21 §8 ``network``): an EVM named chain or a
Solana cluster, as the frame (validation, conditions, preview, the unsigned transaction)
reads it. The rails implement it: ``workers.distribution.evm.network.build(settings,
chain_name)`` and ``workers.distribution.solana.build_network(settings)``.

Guarantees an implementation gives:

- ``normalize_address`` is pure and offline: the checksummed (EVM) or base58 (Solana)
  address, or None when the text is not a valid address of the network.
- balances are read at a confirmed block (EVM: head minus the chain's confirmations) or a
  finalized/confirmed slot (Solana), never at the pending head, so a condition or a
  pre-flight never acts on a state that a reorganisation can take back.
- ``decimals`` is read from the token (ERC-20 ``decimals()``, the SPL mint); an error is a
  shared.errors error, never a guess.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

NetworkKind = Literal["evm", "solana"]


@runtime_checkable
class Network(Protocol):
    #: the seed's ``network``: "devnet", "base", "mainnet-beta"…
    name: str
    kind: NetworkKind

    def normalize_address(self, text: str) -> str | None:
        """Checksum / base58 form of ``text``; None if it is not a valid address."""
        ...

    async def decimals(self, token: str) -> int:
        """The token's decimals, read from the chain."""
        ...

    async def token_balance(self, token: str, owner: str) -> int:
        """``owner``'s balance of ``token`` in base units, at a confirmed block/slot."""
        ...

    async def native_balance(self, owner: str) -> int:
        """``owner``'s native balance (wei / lamports), at a confirmed block/slot."""
        ...

    async def build_unsigned(
        self, token: str, source: str, manifest: Sequence[tuple[str, int]]
    ) -> dict[str, Any]:
        """The seed's ``buildTokenDistributionTransaction()``: an unsigned transaction paying
        ``manifest`` (address, base units) from ``source``, for a wallet to sign. EVM:
        ``{to, data, value, chainId}``; Solana: ``{message (base64), …}``."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
