"""The few HoldAIProvider calls the fulfiller makes, encoded and decoded with eth-abi.

Built by hand rather than through a web3 contract object: the fulfiller batches these calls
as raw JSON-RPC (one HTTP round trip for a whole batch of requests), which web3 cannot do for
eth_call + eth_estimateGas mixtures, and hand encoding is ~10x cheaper per call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_abi.exceptions import DecodingError
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from shared.chain.rpc import RpcCall
from shared.errors import RpcTransportError
from shared.tx.policy import SpendPolicy
from workers.oracle.contracts import ORACLE_ROLE

FULFIL_SIGNATURE: Final = "fulfillNodeReasoning(uint256,string,string)"
FULFIL_SELECTOR: Final = keccak(text=FULFIL_SIGNATURE)[:4]
_REQUEST_INFO_SELECTOR: Final = keccak(text="getRequestInfo(uint256)")[:4]
_HAS_ROLE_SELECTOR: Final = keccak(text="hasRole(bytes32,address)")[:4]
ZERO_ADDRESS: Final = "0x" + "00" * 20


@dataclass(frozen=True)
class RequestInfo:
    """``getRequestInfo``: who asked (the zero address for an unknown id) and whether the
    request is already fulfilled on chain."""

    requester: str
    model: str
    fulfilled: bool

    @property
    def exists(self) -> bool:
        return self.requester != to_checksum_address(ZERO_ADDRESS)


def spend_policy(provider: str) -> SpendPolicy:
    """What the oracle key may sign: ``fulfillNodeReasoning`` on the provider, with no value
    (no ``limits``), and nothing else (shared/tx/policy.py)."""
    return SpendPolicy(contracts={provider: frozenset({FULFIL_SELECTOR})})


def fulfil_calldata(request_id: int, action: str, cid: str) -> bytes:
    return FULFIL_SELECTOR + abi_encode(["uint256", "string", "string"], [request_id, action, cid])


def _hex(data: bytes) -> str:
    return "0x" + data.hex()


def _block_tag(block: int | None) -> str:
    """An explicit block number: a node behind it answers an error (StaleNodeError) instead
    of an older state, so a lagging backend can never pass for the current chain."""
    return "latest" if block is None else hex(block)


def eth_call(
    provider: str, data: bytes, *, sender: str | None = None, block: int | None = None
) -> RpcCall:
    tx: dict[str, str] = {"to": provider, "data": _hex(data)}
    if sender is not None:
        tx["from"] = sender
    return RpcCall("eth_call", [tx, _block_tag(block)])


def estimate_gas(provider: str, data: bytes, *, sender: str, block: int | None = None) -> RpcCall:
    tx = {"from": sender, "to": provider, "data": _hex(data)}
    return RpcCall("eth_estimateGas", [tx, _block_tag(block)])


def request_info_call(provider: str, request_id: int, *, block: int | None = None) -> RpcCall:
    data = _REQUEST_INFO_SELECTOR + abi_encode(["uint256"], [request_id])
    return eth_call(provider, data, block=block)


def decode_request_info(result: Any) -> RequestInfo:
    requester, model, fulfilled = _decode(["address", "string", "bool"], result)
    return RequestInfo(to_checksum_address(requester), str(model), bool(fulfilled))


def has_oracle_role_call(provider: str, account: str, *, block: int | None = None) -> RpcCall:
    data = _HAS_ROLE_SELECTOR + abi_encode(["bytes32", "address"], [ORACLE_ROLE, account])
    return eth_call(provider, data, block=block)


def decode_bool(result: Any) -> bool:
    (value,) = _decode(["bool"], result)
    return bool(value)


def _decode(types: list[str], result: Any) -> tuple[Any, ...]:
    if not isinstance(result, str) or not result.startswith("0x"):
        raise RpcTransportError(f"eth_call returned {result!r}, not hex data")
    if result == "0x":
        raise RpcTransportError(
            "eth_call returned no data: is HODLAI_PROVIDER_ADDRESS a HoldAIProvider on this chain?"
        )
    try:
        return tuple(abi_decode(types, bytes.fromhex(result[2:])))
    except (DecodingError, ValueError) as exc:
        raise RpcTransportError(
            f"cannot decode eth_call result as ({', '.join(types)}): {result[:66]!r}"
        ) from exc
