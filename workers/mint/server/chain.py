"""What the mint server reads from the chain, through the core's RPC client: the USDC's
EIP-712 domain (``name()``/``version()``, never hard-coded: Base USDC is "USD Coin"/"2",
Base Sepolia "USDC"/"2") and each MintToken's sale (``tokensPerMint()``, ``maxSupply()``,
``totalSupply()``, ``mintsLeft()``, the minter role)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_utils.crypto import keccak

from shared.chain.rpc import RpcCall, RpcClient
from shared.errors import ConfigError, RpcTransportError


def _selector(signature: str) -> bytes:
    return keccak(text=signature)[:4]


def call(address: str, signature: str, types: list[str] | None = None,
         args: list[Any] | None = None) -> RpcCall:  # fmt: skip
    data = _selector(signature) + (abi_encode(types, args or []) if types else b"")
    return RpcCall("eth_call", [{"to": address, "data": "0x" + data.hex()}, "latest"])


def decode(types: list[str], result: Any, *, what: str) -> tuple[Any, ...]:
    if not isinstance(result, str) or not result.startswith("0x") or result == "0x":
        raise RpcTransportError(f"{what}: eth_call returned no data (is it the right contract?)")
    try:
        return tuple(abi_decode(types, bytes.fromhex(result[2:])))
    except Exception as exc:  # any decoding failure is the same answer
        raise RpcTransportError(f"{what}: cannot decode {result[:66]!r}") from exc


@dataclass(frozen=True)
class Usdc:
    address: str
    name: str
    version: str
    decimals: int


@dataclass(frozen=True)
class Sale:
    token: str
    tokens_per_mint: int
    max_supply: int


async def read_usdc(rpc: RpcClient, address: str) -> Usdc:
    answers = await rpc.batch(
        [call(address, "name()"), call(address, "version()"), call(address, "decimals()")]
    )
    what = f"HODLAI_MINT_USDC_ADDRESS {address}"
    try:
        (name,) = decode(["string"], answers[0], what=what)
        (version,) = decode(["string"], answers[1], what=what)
        (decimals,) = decode(["uint8"], answers[2], what=what)
    except RpcTransportError as exc:
        raise ConfigError(f"{exc}: not an EIP-3009 token with name() and version()") from None
    return Usdc(address, str(name), str(version), int(decimals))


async def read_sale(rpc: RpcClient, token: str) -> Sale:
    answers = await rpc.batch([call(token, "tokensPerMint()"), call(token, "maxSupply()")])
    what = f"HODLAI_MINT_TOKENS {token}"
    try:
        (per_mint,) = decode(["uint256"], answers[0], what=what)
        (max_supply,) = decode(["uint256"], answers[1], what=what)
    except RpcTransportError as exc:
        raise ConfigError(f"{exc}: not a MintToken (tokensPerMint(), maxSupply())") from None
    return Sale(token, int(per_mint), int(max_supply))


async def is_minter(rpc: RpcClient, token: str, account: str) -> bool:
    answer = await rpc.call(*_args(call(token, "isMinter(address)", ["address"], [account])))
    (allowed,) = decode(["bool"], answer, what=f"isMinter on {token}")
    return bool(allowed)


async def supply(rpc: RpcClient, tokens: list[str]) -> dict[str, tuple[int, int]]:
    """token -> (totalSupply, mintsLeft), in one batch."""
    calls = [c for t in tokens for c in (call(t, "totalSupply()"), call(t, "mintsLeft()"))]
    answers = await rpc.batch(calls)
    out: dict[str, tuple[int, int]] = {}
    for i, token in enumerate(tokens):
        (total,) = decode(["uint256"], answers[2 * i], what=f"totalSupply of {token}")
        (left,) = decode(["uint256"], answers[2 * i + 1], what=f"mintsLeft of {token}")
        out[token] = (int(total), int(left))
    return out


def _args(rpc_call: RpcCall) -> tuple[str, list[Any]]:
    return rpc_call.method, list(rpc_call.params)
