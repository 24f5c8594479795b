"""The node's view of the contracts: compiled artifacts, the two events, revert decoding.

Guarantees:

- Artifacts come from ``contracts/out`` of this checkout (the parent of ``shared/``), written
  by ``scripts/compile_contracts.js``, or, in a wheel install, from the copy the wheel puts
  under ``<prefix>/share/hodlai/contracts`` (pyproject.toml ``data-files``); nothing is
  compiled or fetched at run time, and nothing is read at import time.
- The topic0 constants are computed from the event signatures of the integration plan, and
  a test pins them to the compiled ABI, so the indexer never depends on artifacts to filter.
- :func:`decode_reasoning_requested` / :func:`decode_reasoning_fulfilled` decode with the
  indexer's own reader (:mod:`shared.event_data`): one decoder of each event in the node.
- :func:`decode_revert` turns any revert data into one readable line and never raises: it
  knows ``Error(string)``, ``Panic(uint256)`` and every custom error of every compiled
  contract, and unfolds the vault's own revert data nested in ``CallbackReverted``.
"""

from __future__ import annotations

import functools
import json
import sysconfig
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_typing import ABI, ABIComponent, ABIError, ABIEvent, ChecksumAddress, HexStr
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from shared.errors import InvalidRequestError, PermanentError
from shared.event_data import DECODE_ERRORS, decode_fulfilled_data, decode_requested_data

PROJECT_ROOT: Final = Path(__file__).resolve().parent.parent


def _artifacts_dir() -> Path:
    checkout = PROJECT_ROOT / "contracts" / "out"
    if checkout.is_dir():
        return checkout
    return Path(sysconfig.get_path("data")) / "share" / "hodlai" / "contracts"


ARTIFACTS_DIR: Final = _artifacts_dir()

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

DEFAULT_ADMIN_ROLE: Final = b"\x00" * 32
ORACLE_ROLE: Final = keccak(text="ORACLE_ROLE")
_ROLE_NAMES: Final = {DEFAULT_ADMIN_ROLE: "DEFAULT_ADMIN_ROLE", ORACLE_ROLE: "ORACLE_ROLE"}

ERROR_STRING_SELECTOR: Final = keccak(text="Error(string)")[:4]
PANIC_SELECTOR: Final = keccak(text="Panic(uint256)")[:4]

# Solidity's panic codes (docs: "Panic via assert and Error via require").
_PANIC_REASONS: Final = {
    0x00: "generic compiler panic",
    0x01: "assert failed",
    0x11: "arithmetic overflow or underflow",
    0x12: "division or modulo by zero",
    0x21: "invalid enum value",
    0x22: "corrupt storage byte array",
    0x31: "pop on an empty array",
    0x32: "array index out of bounds",
    0x41: "out of memory",
    0x51: "call to an uninitialised function pointer",
}

# Revert data nests (a vault's error inside CallbackReverted); deeper than this is hostile.
_MAX_NESTING: Final = 4


class ArtifactError(PermanentError):
    """A compiled artifact is missing or unreadable; run ``node scripts/compile_contracts.js``."""


class MalformedEventError(InvalidRequestError):
    """A log of one of our events cannot be decoded (bad topics, ABI data or UTF-8)."""

    def __init__(self, message: str, *, request_id: int | None = None) -> None:
        super().__init__(message)
        #: the request the log belongs to, when its topics were readable
        self.request_id = request_id


@dataclass(frozen=True)
class Artifact:
    """One compiled contract as ``scripts/compile_contracts.js`` wrote it."""

    name: str
    abi: ABI
    bytecode: HexStr
    deployed_bytecode: HexStr
    source_hash: str


@functools.cache
def artifact(name: str) -> Artifact:
    """The artifact of contract ``name`` (cached; artifacts do not change while running)."""
    path = ARTIFACTS_DIR / f"{name}.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(
            f"no compiled artifact {path}; run `node scripts/compile_contracts.js` (make contracts)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read artifact {path}: {exc}") from exc
    try:
        return Artifact(
            name=str(raw["contractName"]),
            abi=cast(ABI, raw["abi"]),
            bytecode=HexStr(str(raw["bytecode"])),
            deployed_bytecode=HexStr(str(raw["deployedBytecode"])),
            source_hash=str(raw["sourceHash"]),
        )
    except KeyError as exc:
        raise ArtifactError(f"artifact {path} lacks the field {exc}") from None


def artifact_names() -> tuple[str, ...]:
    """Names of every compiled contract, sorted."""
    return tuple(sorted(p.stem for p in ARTIFACTS_DIR.glob("*.json")))


def event_abi(name: str, contract: str = PROVIDER_CONTRACT) -> ABIEvent:
    """The ABI entry of event ``name`` of ``contract``."""
    for entry in artifact(contract).abi:
        if entry.get("type") == "event" and entry.get("name") == name:
            return cast(ABIEvent, entry)
    raise ArtifactError(f"{contract} has no event {name}")


def reasoning_requested_abi() -> ABIEvent:
    return event_abi(REASONING_REQUESTED_EVENT)


def reasoning_fulfilled_abi() -> ABIEvent:
    return event_abi(REASONING_FULFILLED_EVENT)


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


def _as_bytes(value: bytes | str) -> bytes:
    if isinstance(value, bytes):
        return value
    text = value[2:] if value[:2] in ("0x", "0X") else value
    return bytes.fromhex(text)


def _indexed_head(topics: Sequence[bytes | str], topic0: str) -> tuple[int, ChecksumAddress]:
    if len(topics) != 3:
        raise MalformedEventError(f"expected 3 topics, got {len(topics)}")
    try:
        raw = [_as_bytes(t) for t in topics]
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
    is read as ``bytes`` (shared/event_data.py), so that invalid UTF-8 in a request (calldata
    strings are not validated on chain) is a MalformedEventError, not a decoder crash."""
    request_id, requester = _indexed_head(topics, REASONING_REQUESTED_TOPIC0)
    try:
        model, prompt, state, actions = decode_requested_data(_as_bytes(data))
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
        action, cid = decode_fulfilled_data(_as_bytes(data))
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


# --- revert data ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorSpec:
    """A custom error: its name and its arguments' names and canonical ABI types."""

    name: str
    arg_names: tuple[str, ...]
    arg_types: tuple[str, ...]

    @property
    def signature(self) -> str:
        return f"{self.name}({','.join(self.arg_types)})"

    @property
    def selector(self) -> bytes:
        return keccak(text=self.signature)[:4]


def _canonical_type(component: ABIComponent) -> str:
    kind = component["type"]
    if not kind.startswith("tuple"):
        return kind
    inner = ",".join(_canonical_type(c) for c in component.get("components", []))
    return f"({inner}){kind[len('tuple') :]}"


def _error_spec(entry: ABIError) -> ErrorSpec:
    inputs = entry.get("inputs", [])
    return ErrorSpec(
        name=entry["name"],
        arg_names=tuple(i.get("name", "") or f"arg{n}" for n, i in enumerate(inputs)),
        arg_types=tuple(_canonical_type(i) for i in inputs),
    )


@functools.cache
def error_selectors() -> Mapping[bytes, ErrorSpec]:
    """Every error the compiled contracts can raise, keyed by 4-byte selector."""
    table: dict[bytes, ErrorSpec] = {}
    for name in artifact_names():
        for entry in artifact(name).abi:
            if entry.get("type") == "error":
                spec = _error_spec(cast(ABIError, entry))
                # The same error inherited by several contracts has one selector and one spec.
                table.setdefault(spec.selector, spec)
    return table


def decode_revert(data: bytes | str) -> str:
    """A one-line, human-readable reason for revert ``data``. Never raises."""
    try:
        raw = _as_bytes(data)
    except ValueError:
        return f"malformed revert data {data!r}"
    return _describe_revert(raw, depth=0)


def _describe_revert(raw: bytes, depth: int) -> str:
    if not raw:
        return "reverted without data (out of gas, invalid opcode or a bare revert)"
    if len(raw) < 4:
        return f"malformed revert data 0x{raw.hex()}"
    selector, body = raw[:4], raw[4:]
    builtin = _BUILTIN_ERRORS.get(selector)
    if builtin is not None:
        return _describe_builtin(*builtin, body)
    spec = error_selectors().get(selector)
    if spec is None:
        return f"unknown error 0x{selector.hex()} with {len(body)} bytes of arguments"
    return _describe_custom(spec, body, depth)


def _describe_custom(spec: ErrorSpec, body: bytes, depth: int) -> str:
    try:
        values = abi_decode(spec.arg_types, body)
    except (DecodingError, ValueError):
        return f"{spec.name}(<undecodable {len(body)} bytes>)"
    args = ", ".join(
        f"{arg_name}={_format_value(arg_type, value, depth)}"
        for arg_name, arg_type, value in zip(spec.arg_names, spec.arg_types, values, strict=True)
    )
    return f"{spec.name}({args})"


def _describe_builtin(name: str, abi_type: str, fmt: Callable[[Any], str], body: bytes) -> str:
    try:
        (value,) = abi_decode((abi_type,), body)
    except (DecodingError, ValueError):
        # CallbackReverted carries at most 1024 bytes of the vault's data, so a very long
        # message arrives truncated.
        return f"{name}(<undecodable {len(body)} bytes>)"
    return f"{name}({fmt(value)})"


def _format_error_message(message: Any) -> str:
    return json.dumps(message, ensure_ascii=False)


def _format_panic_code(code: Any) -> str:
    return f"0x{code:02x}: {_PANIC_REASONS.get(code, 'unknown panic code')}"


_BUILTIN_ERRORS: Final[dict[bytes, tuple[str, str, Callable[[Any], str]]]] = {
    ERROR_STRING_SELECTOR: ("Error", "string", _format_error_message),
    PANIC_SELECTOR: ("Panic", "uint256", _format_panic_code),
}


def _format_nested_revert(value: Any, depth: int) -> str:
    # A bytes argument of an error is revert data passed on (CallbackReverted's reason):
    # unfold it when it is recognisably that.
    raw = bytes(value)
    if depth < _MAX_NESTING and (not raw or _known_selector(raw)):
        return _describe_revert(raw, depth + 1)
    return "0x" + raw.hex()


def _format_value(abi_type: str, value: Any, depth: int) -> str:
    if abi_type == "bytes":
        return _format_nested_revert(value, depth)
    simple = _SIMPLE_FORMATTERS.get(abi_type)
    if simple is not None:
        return simple(value)
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_format_value("", item, depth) for item in value) + "]"
    return str(value)


_SIMPLE_FORMATTERS: Final[dict[str, Callable[[Any], str]]] = {
    "bytes32": lambda v: _ROLE_NAMES.get(bytes(v), "0x" + bytes(v).hex()),
    "address": lambda v: str(to_checksum_address(v)),
    "string": lambda v: json.dumps(v, ensure_ascii=False),
}


def _known_selector(raw: bytes) -> bool:
    selector = raw[:4]
    return len(raw) >= 4 and (
        selector in (ERROR_STRING_SELECTOR, PANIC_SELECTOR) or selector in error_selectors()
    )
