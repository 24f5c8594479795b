"""What the distribution frame reads from an EVM chain: a token's decimals, balances at a
confirmed block, and the oracle provider's treasury (for the ``oracle_fees`` condition).

Guarantees:

- Balances are read at the confirmed block (head minus the chain's confirmations), never at
  the pending head: a condition or pre-flight never acts on a state a reorganisation can take
  back. ``decimals`` is read at ``latest`` (a token's code does not change; a token deployed a
  block ago is usable at once).
- An answer that is no ABI value of the expected type (a token address without code, a
  contract without ``decimals()``) is an InvalidRequestError naming the address, never a
  guessed value; transport failures stay the core's retryable errors.
- The oracle package is not imported: the provider's ``treasury()`` is called by selector.
"""

from __future__ import annotations

from typing import Any, Final

from eth_utils.crypto import keccak

from shared.chain.rpc import RpcClient, hex_int
from shared.errors import InvalidRequestError


def _selector(signature: str) -> str:
    return "0x" + keccak(text=signature).hex()[:8]


DECIMALS: Final = _selector("decimals()")
BALANCE_OF: Final = _selector("balanceOf(address)")
TREASURY: Final = _selector("treasury()")
#: the largest decimals an ERC-20 returns (uint8)
MAX_ERC20_DECIMALS: Final = 255
_WORD: Final = 64  # hex digits of one ABI word


def _word(answer: Any, *, what: str, address: str) -> int:
    if not isinstance(answer, str) or not answer.startswith("0x") or len(answer) < 2 + _WORD:
        raise InvalidRequestError(f"{address} answered no {what} (is it a contract?)")
    return int(answer[2 : 2 + _WORD], 16)


def _address_arg(owner: str) -> str:
    return owner.lower().removeprefix("0x").rjust(_WORD, "0")


class EvmReads:
    """Reads on one chain through one RpcClient (owned by the caller)."""

    def __init__(self, rpc: RpcClient, *, confirmations: int) -> None:
        self.rpc = rpc
        self.confirmations = confirmations

    async def confirmed_block(self) -> int:
        head = hex_int(await self.rpc.call("eth_blockNumber"))
        return max(0, head - self.confirmations)

    async def _call(self, to: str, data: str, block: int | str) -> Any:
        tag = hex(block) if isinstance(block, int) else block
        return await self.rpc.call("eth_call", [{"to": to, "data": data}, tag])

    async def decimals(self, token: str) -> int:
        value = _word(await self._call(token, DECIMALS, "latest"), what="decimals()",
                      address=token)  # fmt: skip
        if value > MAX_ERC20_DECIMALS:
            raise InvalidRequestError(f"token {token} answered decimals() = {value}")
        return value

    async def token_balance(self, token: str, owner: str, *, block: int | None = None) -> int:
        at = await self.confirmed_block() if block is None else block
        data = BALANCE_OF + _address_arg(owner)
        return _word(await self._call(token, data, at), what="balanceOf()", address=token)

    async def native_balance(self, owner: str, *, block: int | None = None) -> int:
        at = await self.confirmed_block() if block is None else block
        return hex_int(await self.rpc.call("eth_getBalance", [owner, hex(at)]))

    async def treasury(self, provider: str) -> str:
        word = _word(await self._call(provider, TREASURY, "latest"), what="treasury()",
                     address=provider)  # fmt: skip
        return "0x" + f"{word:040x}"[-40:]
