"""An EVM network of the distribution executor: one of the node's named chains
(``HODLAI_DIST_NETWORKS``; ``devnet`` is the default chain unless named), as the frame reads
it (:class:`workers.distribution.networks.Network`).

Guarantees: addresses are EIP-55 checksummed (a mixed-case address with a wrong checksum is
invalid, as wallets treat it); the zero address is no recipient; reads are those of
:mod:`workers.distribution.evm.reads` (balances at the confirmed block).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final, Literal

from eth_abi.abi import encode as abi_encode
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from shared.chain.rpc import RpcClient
from shared.errors import ConfigError
from workers.distribution.evm.reads import EvmReads
from workers.distribution.settings import DistSettings

_HEX_ADDRESS: Final = re.compile(r"^0x[0-9a-fA-F]{40}$")
ZERO_ADDRESS: Final = "0x" + "00" * 20
DISPERSE_TOKEN: Final = "0x" + keccak(text="disperseToken(address,address[],uint256[])").hex()[:8]
TRANSFER: Final = "0x" + keccak(text="transfer(address,uint256)").hex()[:8]


def normalize_evm_address(text: str) -> str | None:
    """The checksummed address, or None: not 0x + 40 hex digits, a mixed-case text whose
    checksum is wrong, or the zero address."""
    if not isinstance(text, str) or not _HEX_ADDRESS.match(text):
        return None
    checksummed = to_checksum_address(text)
    body = text[2:]
    if body != body.lower() and body != body.upper() and text != checksummed:
        return None
    if checksummed == to_checksum_address(ZERO_ADDRESS):
        return None
    return checksummed


class EvmNetwork:
    kind: Literal["evm"] = "evm"

    def __init__(
        self, name: str, rpc: RpcClient, *, confirmations: int, chain_id: int | None,
        multisend: str = "",
    ) -> None:  # fmt: skip
        self.name = name
        self.rpc = rpc
        self.reads = EvmReads(rpc, confirmations=confirmations)
        self.chain_id = chain_id
        self.multisend = normalize_evm_address(multisend) if multisend else None

    def normalize_address(self, text: str) -> str | None:
        return normalize_evm_address(text)

    async def decimals(self, token: str) -> int:
        return await self.reads.decimals(token)

    async def token_balance(self, token: str, owner: str) -> int:
        return await self.reads.token_balance(token, owner)

    async def native_balance(self, owner: str) -> int:
        return await self.reads.native_balance(owner)

    async def treasury(self, provider: str) -> str:
        """The oracle provider's treasury (an ``oracle_fees`` condition watches its balance)."""
        return await self.reads.treasury(provider)

    async def build_unsigned(
        self, token: str, source: str, manifest: Sequence[tuple[str, int]]
    ) -> dict[str, Any]:
        """The seed's buildTokenDistributionTransaction on EVM: ``{to, data, value, chainId,
        from}``. One recipient: the token's ``transfer``; more: the multisend contract's
        ``disperseToken(token, recipients, values)`` (after the source approved it)."""
        chain_id = self.chain_id
        if chain_id is None:
            chain_id = int(await self.rpc.call("eth_chainId"), 16)
        if len(manifest) == 1:
            ((address, amount),) = manifest
            data = TRANSFER + abi_encode(["address", "uint256"], [address, amount]).hex()
            to = token
        else:
            if self.multisend is None:
                raise ConfigError(
                    "an unsigned batch needs the multisend contract: HODLAI_DIST_MULTISEND_ADDRESS"
                )
            data = (
                DISPERSE_TOKEN
                + abi_encode(
                    ["address", "address[]", "uint256[]"],
                    [token, [a for a, _ in manifest], [v for _, v in manifest]],
                ).hex()
            )
            to = self.multisend
        return {"from": source, "to": to, "data": data, "value": "0x0", "chainId": chain_id}

    async def aclose(self) -> None:
        await self.rpc.aclose()


def build(settings: DistSettings, chain_name: str) -> EvmNetwork:
    """The network ``chain_name`` of ``settings`` (ConfigError naming the setting if it is not
    configured)."""
    chain = settings.evm_chain(chain_name)
    rpc = RpcClient(chain.rpc_urls, chain_id=chain.chain_id)
    return EvmNetwork(
        chain.name, rpc, confirmations=chain.confirmations, chain_id=chain.chain_id,
        multisend=settings.dist_multisend_address,
    )  # fmt: skip
