"""The provider's string limits as the inference worker applies them: read from the contract,
never stricter than the contract was.

Guarantees:
- The limits come from ``getStringLimits()`` of the provider over ``HODLAI_RPC_URLS``: read
  at start, then every ``refresh_s``. Without an RPC, or while it cannot be read, the last
  known limits apply (the contract's defaults before the first read), and the log says so
  (``string_limits_default``, ``string_limits_unavailable``).
- The applied limits only ever widen: each is the largest the contract has been seen to
  have. A request on chain passed the contract's limits *at its block*; limits lowered since
  must not fail it. So a request above the applied limits is checked once more against the
  limits at its own block (an ``eth_call`` at that block) before it is refused; if those
  cannot be read, the applied limits decide, and the log says so.
- Reading never raises: RPC trouble is logged and the known limits stay in force.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Final

import structlog
from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_utils.crypto import keccak

from shared.chain.rpc import RpcClient
from shared.errors import HodlaiError, RpcResponseError
from shared.llm.validate import DEFAULT_LIMITS, StringLimits

log = structlog.get_logger(__name__)

GET_STRING_LIMITS_SIGNATURE: Final = "getStringLimits()"
GET_STRING_LIMITS_SELECTOR: Final = keccak(text=GET_STRING_LIMITS_SIGNATURE)[:4]
# (maxModelLen, maxPromptLen, maxStateLen, maxActionItems, maxActionLen)
_LIMIT_TYPES: Final = ("uint256",) * 5


def decode_string_limits(result: Any) -> StringLimits:
    """The five words of ``getStringLimits()``; RpcResponseError for anything else (an
    address without the provider's code answers ``0x``)."""
    try:
        raw = bytes.fromhex(str(result).removeprefix("0x"))
        values = abi_decode(_LIMIT_TYPES, raw)
    except (DecodingError, ValueError) as exc:
        raise RpcResponseError(
            f"getStringLimits() returned {str(result)[:80]!r}: not a HoldAIProvider?"
        ) from exc
    return StringLimits(*(int(value) for value in values))


class ContractStringLimits:
    """The limits a worker validates requests against; see the module docstring."""

    def __init__(
        self,
        rpc: RpcClient | None,
        provider: str,
        *,
        refresh_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._rpc = rpc
        self._provider = provider
        self._refresh_s = refresh_s
        self._clock = clock
        self._known = DEFAULT_LIMITS
        self._read_once = False
        self._next_refresh = 0.0
        if rpc is None:
            log.warning(
                "string_limits_default", reason="HODLAI_RPC_URLS is not set",
                limits=asdict(self._known),
            )  # fmt: skip

    @property
    def current(self) -> StringLimits:
        return self._known

    def due(self, now: float) -> bool:
        return self._rpc is not None and now >= self._next_refresh

    async def refresh(self) -> None:
        """Read the limits at the chain's head and widen the known ones with them."""
        self._next_refresh = self._clock() + self._refresh_s
        if self._rpc is None:
            return
        try:
            read = await self._read("latest")
        except HodlaiError as exc:
            log.warning(
                "string_limits_unavailable", error=str(exc), kind=type(exc).__name__,
                using="last read" if self._read_once else "contract defaults",
                limits=asdict(self._known),
            )  # fmt: skip
            return
        self._apply(read, at="latest")

    async def at_block(self, block: int | None) -> StringLimits:
        """The known limits widened by those at ``block`` (where a request was emitted)."""
        if self._rpc is None or block is None:
            return self._known
        try:
            read = await self._read(hex(block))
        except HodlaiError as exc:
            log.warning(
                "string_limits_at_block_unavailable", block=block, error=str(exc),
                kind=type(exc).__name__, limits=asdict(self._known),
            )  # fmt: skip
            return self._known
        self._apply(read, at=str(block))
        return self._known

    def _apply(self, read: StringLimits, *, at: str) -> None:
        widened = self._known.widened(read)
        if widened != self._known or not self._read_once:
            log.info("string_limits_read", at=at, contract=asdict(read), applied=asdict(widened))
        self._known = widened
        self._read_once = True

    async def _read(self, block_tag: str) -> StringLimits:
        assert self._rpc is not None
        call = {"to": self._provider, "data": "0x" + GET_STRING_LIMITS_SELECTOR.hex()}
        return decode_string_limits(await self._rpc.call("eth_call", [call, block_tag]))
