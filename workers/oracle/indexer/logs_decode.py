"""Raw ``eth_getLogs`` entries of the provider -> decoded requests and fulfilments.

Guarantees:
- The values are exactly what eth-abi decodes: the event data goes through
  :mod:`workers.oracle.event_data`, the fast reader :mod:`shared.contracts` decodes with too.
- A log whose event data cannot be decoded, or whose strings are not UTF-8, does not stop the
  indexer: it becomes a :class:`MalformedRequest` (stored as FAILED with the reason) when its
  request id is readable, and is counted and logged otherwise.
- A log *object* the node got wrong (missing fields, not hex) is the node's fault, not the
  request's: it raises RpcTransportError so that the poll is retried, possibly elsewhere.
- ``content_hash`` = keccak(requester's 20 bytes ++ the event's ABI data): it changes exactly
  when the request's content does, which is how a request replaced by a reorg is recognised.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from Crypto.Hash import keccak as _keccak
from eth_utils.address import to_checksum_address

from shared.errors import RpcTransportError
from workers.oracle.contracts import REASONING_FULFILLED_TOPIC0, REASONING_REQUESTED_TOPIC0
from workers.oracle.event_data import DECODE_ERRORS, decode_fulfilled_data, decode_requested_data
from workers.oracle.store import NewRequest

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class FulfilledLog:
    """A decoded HoldAI_ReasoningFulfilled log with its position on chain."""

    request_id: int
    requester: str
    result_action: str
    reasoning_cid: str
    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int


@dataclass(frozen=True, slots=True)
class MalformedRequest:
    """A request log with a readable id whose content cannot be used; stored as FAILED.

    The text fields hold what could be recovered (invalid UTF-8 replaced by U+FFFD) so that an
    operator can see what was sent; ``request.content_lossy`` is set, because that text is not
    what the vault sent, and such a request must never be answered (store.retry refuses it).
    """

    request: NewRequest
    reason: str


@dataclass(slots=True)
class DecodedLogs:
    """One batch of logs, decoded, in chain order."""

    requests: list[NewRequest] = field(default_factory=list)
    fulfillments: list[FulfilledLog] = field(default_factory=list)
    malformed: list[MalformedRequest] = field(default_factory=list)
    #: logs of our topics whose request id could not even be read (logged, never stored)
    unreadable: int = 0
    #: (block number, block hash) of every log, for the blocks table
    log_blocks: dict[int, str] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.requests) + len(self.fulfillments) + len(self.malformed)


@functools.lru_cache(maxsize=4096)
def _checksum(address_topic: str) -> str:
    # A few vaults send most requests; to_checksum_address costs a keccak per call.
    return to_checksum_address("0x" + address_topic[-40:])


def _hex_bytes(value: object, what: str) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise RpcTransportError(f"log field {what} is not 0x-hex: {value!r}")
    try:
        return bytes.fromhex(value[2:])
    except ValueError:
        raise RpcTransportError(f"log field {what} is not 0x-hex: {value[:80]!r}") from None


def _quantity(value: object, what: str) -> int:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise RpcTransportError(f"log field {what} is not a hex quantity: {value!r}")
    try:
        return int(value, 16)
    except ValueError:
        raise RpcTransportError(f"log field {what} is not a hex quantity: {value!r}") from None


# --- logs -> domain objects ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Position:
    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int


def _position(entry: Mapping[str, Any]) -> _Position:
    block_hash = entry.get("blockHash")
    tx_hash = entry.get("transactionHash")
    if not isinstance(block_hash, str) or len(block_hash) != 66:
        raise RpcTransportError(f"log without a block hash: {block_hash!r}")
    if not isinstance(tx_hash, str) or len(tx_hash) != 66:
        raise RpcTransportError(f"log without a transaction hash: {tx_hash!r}")
    return _Position(
        block_number=_quantity(entry.get("blockNumber"), "blockNumber"),
        block_hash=block_hash.lower(),
        tx_hash=tx_hash.lower(),
        log_index=_quantity(entry.get("logIndex"), "logIndex"),
    )


_FIELDS = ("model", "systemPrompt", "stateString")
_OUR_TOPICS = frozenset({REASONING_REQUESTED_TOPIC0, REASONING_FULFILLED_TOPIC0})


def _not_utf8(values: Sequence[bytes], actions: Sequence[bytes]) -> str:
    """Which field is not UTF-8, and where (only called once decoding all of them failed)."""
    named = [*zip(_FIELDS, values, strict=True)]
    named += [(f"actionSet[{i}]", a) for i, a in enumerate(actions)]
    for field_name, value in named:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"{field_name} is not valid UTF-8 ({exc.reason} at byte {exc.start})"
    return "a string is not valid UTF-8"


def decode_logs(entries: Sequence[Mapping[str, Any]]) -> DecodedLogs:
    """Decode the provider's logs of both events (any other topic is ignored)."""
    out = DecodedLogs()
    # This loop runs for every log of a backfill: checks are written out rather than
    # delegated, because a function call per check is a measurable share of it.
    for entry in entries:
        if entry.get("removed") is True:
            continue  # a node that reports removals: the reorg check handles the block
        topics = entry.get("topics")
        if not isinstance(topics, list) or not topics:
            raise RpcTransportError(f"log without topics: {entry!r:.200}")
        topic0 = topics[0]
        if topic0 not in _OUR_TOPICS:
            topic0 = str(topic0).lower()  # nodes send lowercase hex; tolerate others
            if topic0 not in _OUR_TOPICS:
                continue
        where = _position(entry)
        out.log_blocks[where.block_number] = where.block_hash
        data = _hex_bytes(entry.get("data"), "data")
        if (
            len(topics) != 3
            or not isinstance(topics[1], str)
            or not isinstance(topics[2], str)
            or len(topics[1]) != 66
            or len(topics[2]) != 66
        ):
            out.unreadable += 1
            log.error(
                "log_unreadable",
                reason="expected 3 32-byte topics",
                topics=topics,
                block_number=where.block_number,
                tx_hash=where.tx_hash,
            )
            continue
        request_id = int(topics[1], 16)
        requester = _checksum(topics[2].lower())
        if topic0 == REASONING_REQUESTED_TOPIC0:
            _add_request(out, request_id, requester, data, where)
        else:
            _add_fulfilment(out, request_id, requester, data, where)
    return out


def content_hash(requester: str, data: bytes) -> str:
    """keccak(requester address bytes ++ ABI event data), 0x-hex. pycryptodome's keccak is
    what eth_utils.keccak runs too, called here without eth_utils' argument checks and
    backend dispatch (~20 % of the hash, which is ~40 % of decoding a request log)."""
    preimage = bytes.fromhex(requester[2:]) + data
    return "0x" + _keccak.new(data=preimage, digest_bits=256).digest().hex()


def _add_request(
    out: DecodedLogs, request_id: int, requester: str, data: bytes, where: _Position
) -> None:
    digest = content_hash(requester, data)
    try:
        model, prompt, state, actions = decode_requested_data(data)
    except DECODE_ERRORS as exc:
        reason = f"undecodable event data: {exc}"
        fields: tuple[bytes, bytes, bytes, list[bytes]] = (b"", b"", b"", [])
    else:
        fields = (model, prompt, state, actions)
        try:
            out.requests.append(
                NewRequest(
                    request_id=request_id,
                    requester=requester,
                    model=model.decode("utf-8"),
                    system_prompt=prompt.decode("utf-8"),
                    state_string=state.decode("utf-8"),
                    action_set=tuple([a.decode("utf-8") for a in actions]),
                    content_hash=digest,
                    block_number=where.block_number,
                    block_hash=where.block_hash,
                    tx_hash=where.tx_hash,
                    log_index=where.log_index,
                )
            )
            return
        except UnicodeDecodeError:
            reason = _not_utf8((model, prompt, state), actions)
    model, prompt, state, actions = fields
    recovered = NewRequest(
        request_id=request_id,
        requester=requester,
        model=model.decode("utf-8", "replace"),
        system_prompt=prompt.decode("utf-8", "replace"),
        state_string=state.decode("utf-8", "replace"),
        action_set=tuple(a.decode("utf-8", "replace") for a in actions),
        content_hash=digest,
        block_number=where.block_number,
        block_hash=where.block_hash,
        tx_hash=where.tx_hash,
        log_index=where.log_index,
        content_lossy=True,
    )
    out.malformed.append(MalformedRequest(request=recovered, reason=reason))
    log.warning(
        "request_malformed",
        request_id=str(request_id),
        reason=reason,
        block_number=where.block_number,
        tx_hash=where.tx_hash,
    )


def _add_fulfilment(
    out: DecodedLogs, request_id: int, requester: str, data: bytes, where: _Position
) -> None:
    # The provider emitted it, so the request *is* fulfilled on chain whatever the strings
    # hold: undecodable parts are kept as readable as possible, never dropped.
    try:
        action, cid = decode_fulfilled_data(data)
    except DECODE_ERRORS as exc:
        log.warning("fulfilment_undecodable", request_id=str(request_id), error=str(exc))
        action, cid = b"", b""
    out.fulfillments.append(
        FulfilledLog(
            request_id=request_id,
            requester=requester,
            result_action=action.decode("utf-8", "replace"),
            reasoning_cid=cid.decode("utf-8", "replace"),
            block_number=where.block_number,
            block_hash=where.block_hash,
            tx_hash=where.tx_hash,
            log_index=where.log_index,
        )
    )
