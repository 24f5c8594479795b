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

Optional members the frame uses when a network has them: ``source: str``, the paying address
(recorded on the runs the scheduler and ``execute`` create; :func:`source_of`), and
``async treasury(provider) -> str`` (EVM: the oracle provider's treasury, for an
``oracle_fees`` condition).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from shared.errors import ConfigError

if TYPE_CHECKING:
    from workers.distribution.settings import DistSettings

NetworkKind = Literal["evm", "solana"]


@runtime_checkable
class Network(Protocol):
    @property
    def name(self) -> str:
        """The seed's ``network``: "devnet", "base", "mainnet-beta"…"""
        ...

    @property
    def kind(self) -> NetworkKind: ...

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


def build_networks(settings: DistSettings, *, strict: bool = True) -> dict[str, Network]:
    """Every configured network by name: the EVM ones of ``HODLAI_DIST_NETWORKS`` (each must
    have its RPC URLs: ConfigError naming the setting) and, when the Solana rail is installed
    and configured (``workers.distribution.solana.build_network(settings)`` returns a Network,
    or None when no cluster is configured), the Solana cluster. Two networks of one name are
    a ConfigError. ``strict=False`` (the API) leaves out an EVM network without RPC URLs, so
    a task naming it is refused as "not configured here" rather than failing the request."""
    from workers.distribution.evm import network as evm  # the rails load lazily

    built: dict[str, Network] = {}
    for name in settings.dist_networks:
        try:
            built[name] = evm.build(settings, name)
        except ConfigError:
            if strict:
                raise
    try:
        solana = importlib.import_module("workers.distribution.solana")
    except ModuleNotFoundError as exc:
        if exc.name != "workers.distribution.solana":
            raise
        return built
    cluster = solana.build_network(settings)
    if cluster is not None:
        if cluster.name in built:
            raise ConfigError(
                f"network {cluster.name!r} is both an EVM chain (HODLAI_DIST_NETWORKS) and the"
                " Solana cluster: rename one"
            )
        built[cluster.name] = cluster
    return built


def source_of(network: Network, settings: DistSettings) -> str | None:
    """The paying address of ``network``: the rail's own (``network.source``) or, on EVM,
    HODLAI_DIST_SOURCE_ADDRESS; None when this process does not know it (the payer sets it)."""
    own = getattr(network, "source", None)
    if isinstance(own, str) and own:
        return own
    if network.kind == "evm" and settings.dist_source_address:
        return network.normalize_address(settings.dist_source_address)
    return None
