"""The oracle's contracts: the HoldAI provider's two events, its role, and their decoders.

Guarantees:

- The topic0 constants are computed from the event signatures of the integration plan, and
  a test pins them to the compiled ABI, so the indexer never depends on artifacts to filter.
- :func:`decode_reasoning_requested` / :func:`decode_reasoning_fulfilled` decode with the
  indexer's own reader (:mod:`workers.oracle.event_data`): one decoder of each event in the
  node.
- :data:`ABIS` is what the oracle declares to the core (pyproject.toml ``hodlai.abis``), so
  that the core's revert decoding (shared.contracts.decode_revert) knows the provider's and
  the vaults' custom errors and names ``ORACLE_ROLE``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from eth_typing import ABIEvent, ChecksumAddress
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from shared.contracts import ContractAbis, as_bytes, event_abi
from shared.errors import InvalidRequestError
from workers.oracle.event_data import DECODE_ERRORS, decode_fulfilled_data, decode_requested_data

PROVIDER_CONTRACT: Final = "HoldAIProvider"
VAULT_CONTRACT: Final = "ExampleDecisionVault"

REASONING_REQUESTED_EVENT: Final = "HoldAI_ReasoningRequested"
REASONING_FULFILLED_EVENT: Final = "HoldAI_ReasoningFulfilled"
REASONING_REQUESTED_SIGNATURE: Final = (
    "HoldAI_ReasoningRequested(uint256,address,string,string,string,string[])"
)
REASONING_FULFILLED_SIGNATURE: Final = "HoldAI_ReasoningFulfilled(uint256,address,string,string)"
#: topic0 of the request event, 0x-prefixed lowercase hex as eth_getLogs takes it
REASONING_REQUESTED_TOPIC0: Final = "0x" + keccak(text=REASONING_REQUESTED_SIGNATURE).hex()
#: topic0 of the fulfilment event
REASONING_FULFILLED_TOPIC0: Final = "0x" + keccak(text=REASONING_FULFILLED_SIGNATURE).hex()

ORACLE_ROLE: Final = keccak(text="ORACLE_ROLE")

#: The compiled contracts of the oracle: the provider, its interface and bases, the vaults a
#: requester builds on, and the test vaults the devnet and the tests deploy as requesters
#: (contracts/test), whose errors a fulfilment's simulation may meet.
ORACLE_CONTRACTS: Final = (
    PROVIDER_CONTRACT,
    "IHoldAIProvider",
    "HoldAIRequesterBase",
    "HoldAIEnabledVaultBase",
    "VaultBase",
    "VaultBaseV2",
    VAULT_CONTRACT,
    "CustomErrorVault",
    "GasBurningVault",
    "GasMeteringVault",
    "RevertingVault",
)

ABIS: Final = ContractAbis(contracts=ORACLE_CONTRACTS, role_names={ORACLE_ROLE: "ORACLE_ROLE"})


class MalformedEventError(InvalidRequestError):
    """A log of one of our events cannot be decoded (bad topics, ABI data or UTF-8)."""

    def __init__(self, message: str, *, request_id: int | None = None) -> None:
        super().__init__(message)
        #: the request the log belongs to, when its topics were readable
        self.request_id = request_id


def reasoning_requested_abi() -> ABIEvent:
    return event_abi(REASONING_REQUESTED_EVENT, PROVIDER_CONTRACT)


def reasoning_fulfilled_abi() -> ABIEvent:
    return event_abi(REASONING_FULFILLED_EVENT, PROVIDER_CONTRACT)


# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReasoningRequested:
    """A decoded ``HoldAI_ReasoningRequested`` log."""

    request_id: int
    requester: ChecksumAddress
    model: str
    system_prompt: str
    state_string: str
    action_set: tuple[str, ...]


@dataclass(frozen=True)
class ReasoningFulfilled:
    """A decoded ``HoldAI_ReasoningFulfilled`` log."""

    request_id: int
    requester: ChecksumAddress
    result_action: str
    reasoning_cid: str


def _indexed_head(topics: Sequence[bytes | str], topic0: str) -> tuple[int, ChecksumAddress]:
    if len(topics) != 3:
        raise MalformedEventError(f"expected 3 topics, got {len(topics)}")
    try:
        raw = [as_bytes(t) for t in topics]
    except ValueError:
        raise MalformedEventError(f"topics are not hex: {list(topics)!r}") from None
    if "0x" + raw[0].hex() != topic0:
        raise MalformedEventError(f"topic0 0x{raw[0].hex()} is not {topic0}")
    if len(raw[1]) != 32 or len(raw[2]) != 32:
        raise MalformedEventError("indexed topics must be 32 bytes")
    return int.from_bytes(raw[1], "big"), to_checksum_address(raw[2][12:])


def _utf8(value: bytes, field: str, request_id: int) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedEventError(
            f"request {request_id}: {field} is not valid UTF-8", request_id=request_id
        ) from None


def decode_reasoning_requested(
    topics: Sequence[bytes | str], data: bytes | str
) -> ReasoningRequested:
    """Decode a request log from its raw topics and data (hex strings or bytes). The data
    is read as ``bytes`` (workers/oracle/event_data.py), so that invalid UTF-8 in a request
    (calldata strings are not validated on chain) is a MalformedEventError, not a decoder
    crash."""
    request_id, requester = _indexed_head(topics, REASONING_REQUESTED_TOPIC0)
    try:
        model, prompt, state, actions = decode_requested_data(as_bytes(data))
    except DECODE_ERRORS as exc:
        raise MalformedEventError(
            f"request {request_id}: undecodable event data: {exc}", request_id=request_id
        ) from exc
    return ReasoningRequested(
        request_id=request_id,
        requester=requester,
        model=_utf8(model, "model", request_id),
        system_prompt=_utf8(prompt, "systemPrompt", request_id),
        state_string=_utf8(state, "stateString", request_id),
        action_set=tuple(
            _utf8(action, f"actionSet[{i}]", request_id) for i, action in enumerate(actions)
        ),
    )


def decode_reasoning_fulfilled(
    topics: Sequence[bytes | str], data: bytes | str
) -> ReasoningFulfilled:
    """Decode a fulfilment log from its raw topics and data (hex strings or bytes)."""
    request_id, requester = _indexed_head(topics, REASONING_FULFILLED_TOPIC0)
    try:
        action, cid = decode_fulfilled_data(as_bytes(data))
    except DECODE_ERRORS as exc:
        raise MalformedEventError(
            f"request {request_id}: undecodable event data: {exc}", request_id=request_id
        ) from exc
    return ReasoningFulfilled(
        request_id=request_id,
        requester=requester,
        result_action=_utf8(action, "resultAction", request_id),
        reasoning_cid=_utf8(cid, "reasoningIpfsCid", request_id),
    )
