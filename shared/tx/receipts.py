"""What a purpose learns about a mined transaction: its receipt, decoded once, typed.

Guarantees:

- :func:`parse_receipt` turns a JSON-RPC receipt into a :class:`Receipt` or raises
  RpcTransportError (retryable: a node's malformed answer) naming the field; a purpose never
  sees a half-decoded receipt.
- Quantities are ints, hashes and topics lower-case hex, addresses checksummed, log data
  bytes; logs keep the chain's order (``logIndex``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

from eth_utils.address import to_checksum_address

from shared.chain.rpc import hex_int
from shared.errors import RpcTransportError


class ReceiptLog(TypedDict):
    """One log of a receipt, decoded: what a multisend reads to learn which transfers ran."""

    address: str  # checksummed emitter
    topics: tuple[str, ...]  # 0x-hex, lower case
    data: bytes
    logIndex: int


@dataclass(frozen=True)
class Receipt:
    """A transaction's receipt as a purpose is given it (MINED, REVERTED and FINAL)."""

    tx_hash: str
    status: int  # 1 executed, 0 reverted
    block_number: int
    block_hash: str
    gas_used: int
    #: wei per gas actually paid (base fee + tip); None when the node does not say
    effective_gas_price: int | None
    logs: tuple[ReceiptLog, ...]

    @property
    def ok(self) -> bool:
        return self.status == 1

    @property
    def fee_wei(self) -> int | None:
        """What the transaction cost its sender in gas, when the node gave the price."""
        if self.effective_gas_price is None:
            return None
        return self.gas_used * self.effective_gas_price


def parse_receipt(answer: Mapping[str, Any]) -> Receipt:
    """Decode an ``eth_getTransactionReceipt`` answer."""
    try:
        price = answer.get("effectiveGasPrice")
        return Receipt(
            tx_hash=str(answer["transactionHash"]).lower(),
            status=hex_int(answer.get("status", "0x0")),
            block_number=hex_int(answer["blockNumber"]),
            block_hash=str(answer["blockHash"]).lower(),
            gas_used=hex_int(answer["gasUsed"]),
            effective_gas_price=None if price is None else hex_int(price),
            logs=tuple(_log(entry) for entry in answer.get("logs") or ()),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise RpcTransportError(f"malformed receipt: {exc!r}") from exc


def _log(entry: Mapping[str, Any]) -> ReceiptLog:
    return ReceiptLog(
        address=to_checksum_address(str(entry["address"])),
        topics=tuple(str(topic).lower() for topic in entry.get("topics") or ()),
        data=bytes.fromhex(str(entry.get("data") or "0x").removeprefix("0x")),
        logIndex=hex_int(entry["logIndex"]),
    )
