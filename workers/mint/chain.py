"""The few contract reads the mint executor makes: USDC balances (at a confirmed block),
EIP-3009 ``authorizationState``, and a minted token's ``tokensPerMint``."""

from __future__ import annotations

from typing import Any, Final

from eth_abi.abi import decode as abi_decode
from eth_utils.crypto import keccak

from shared.chain.rpc import RpcClient, hex_int
from shared.tx.authorizations.eip3009 import (
    AUTHORIZATION_STATE_SELECTOR,
    TRANSFER_TOPIC,
    address_topic,
    encode_call,
)

BALANCE_OF: Final = "0x" + keccak(text="balanceOf(address)").hex()[:8]
TOKENS_PER_MINT: Final = "0x" + keccak(text="tokensPerMint()").hex()[:8]


async def confirmed_block(rpc: RpcClient, confirmations: int) -> int:
    head = hex_int(await rpc.call("eth_blockNumber"))
    return max(0, head - confirmations)


async def balance_of(rpc: RpcClient, token: str, holder: str, *, block: int | str) -> int:
    tag = hex(block) if isinstance(block, int) else block
    data = encode_call(BALANCE_OF, ["address"], [holder])
    raw = await rpc.call("eth_call", [{"to": token, "data": data}, tag])
    return _uint(raw)


async def authorization_used(rpc: RpcClient, token: str, authorizer: str, nonce: str) -> bool:
    """Whether ``nonce`` of ``authorizer`` is used (or cancelled) on ``token``, at the head."""
    data = encode_call(
        AUTHORIZATION_STATE_SELECTOR, ["address", "bytes32"], [authorizer, bytes.fromhex(nonce[2:])]
    )
    raw = await rpc.call("eth_call", [{"to": token, "data": data}, "latest"])
    return _uint(raw) != 0


async def tokens_per_mint(rpc: RpcClient, token: str) -> int:
    raw = await rpc.call("eth_call", [{"to": token, "data": TOKENS_PER_MINT}, "latest"])
    return _uint(raw)


async def mint_logs(rpc: RpcClient, token: str, recipient: str, from_block: int) -> list[Any]:
    """Transfers of ``token`` from the zero address to ``recipient`` (mints), oldest first."""
    logs: list[Any] = await rpc.call(
        "eth_getLogs",
        [
            {
                "address": token,
                "fromBlock": hex(from_block),
                "toBlock": "latest",
                "topics": [TRANSFER_TOPIC, "0x" + "00" * 32, address_topic(recipient)],
            }
        ],
    )
    return logs


def _uint(raw: object) -> int:
    (value,) = abi_decode(["uint256"], bytes.fromhex(str(raw).removeprefix("0x")))
    return int(value)
