"""The core's view of contracts: compiled artifacts, and revert data decoded for any executor.

Guarantees:

- Artifacts come from ``contracts/out`` of this checkout (the parent of ``shared/``), written
  by ``scripts/compile_contracts.js``, or, in a wheel install, from the copy the wheel puts
  under ``<prefix>/share/hodlai/contracts`` (pyproject.toml ``data-files``); nothing is
  compiled or fetched at run time, and nothing is read at import time.
- The core names no executor's contract. Each executor declares the contracts it calls in
  the entry point group ``hodlai.abis`` (a :class:`ContractAbis`: artifact names and the
  names of the bytes32 roles they check); the oracle's events, topics and roles live in
  ``workers/oracle/contracts.py``.
- :func:`decode_revert` turns any revert data into one readable line and never raises: it
  knows ``Error(string)``, ``Panic(uint256)`` and every custom error of every registered
  executor's contracts, and unfolds revert data nested in a ``bytes`` argument (a vault's
  reason inside the provider's ``CallbackReverted``).
"""

from __future__ import annotations

import functools
import json
import sysconfig
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Final, cast

from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_typing import ABI, ABIComponent, ABIError, ABIEvent, HexStr
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from shared.errors import PermanentError

PROJECT_ROOT: Final = Path(__file__).resolve().parent.parent


def _artifacts_dir() -> Path:
    checkout = PROJECT_ROOT / "contracts" / "out"
    if checkout.is_dir():
        return checkout
    return Path(sysconfig.get_path("data")) / "share" / "hodlai" / "contracts"


ARTIFACTS_DIR: Final = _artifacts_dir()

#: Entry point group through which an executor declares its contracts: the value is
#: ``module:attribute`` naming a :class:`ContractAbis` (the entry point's name is the executor).
ABIS_GROUP: Final = "hodlai.abis"

DEFAULT_ADMIN_ROLE: Final = b"\x00" * 32

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


@dataclass(frozen=True)
class Artifact:
    """One compiled contract as ``scripts/compile_contracts.js`` wrote it."""

    name: str
    abi: ABI
    bytecode: HexStr
    deployed_bytecode: HexStr
    source_hash: str


@dataclass(frozen=True)
class ContractAbis:
    """What an executor declares under ``hodlai.abis``: the compiled contracts it calls (or
    that call it back), whose custom errors :func:`decode_revert` then knows, and the names of
    the bytes32 roles they check, so that ``neededRole=`` reads as a name."""

    contracts: tuple[str, ...]
    role_names: Mapping[bytes, str] = field(default_factory=dict)


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


def event_abi(name: str, contract: str) -> ABIEvent:
    """The ABI entry of event ``name`` of ``contract``."""
    for entry in artifact(contract).abi:
        if entry.get("type") == "event" and entry.get("name") == name:
            return cast(ABIEvent, entry)
    raise ArtifactError(f"{contract} has no event {name}")


@functools.cache
def registered_abis() -> tuple[tuple[str, ContractAbis], ...]:
    """(executor, ContractAbis) of every installed executor (entry points ``hodlai.abis``)."""
    found = sorted(entry_points(group=ABIS_GROUP), key=lambda ep: ep.name)
    out: list[tuple[str, ContractAbis]] = []
    for ep in found:
        loaded = ep.load()
        if not isinstance(loaded, ContractAbis):
            raise TypeError(f"entry point {ep.name} in {ABIS_GROUP} is not a ContractAbis")
        out.append((ep.name, loaded))
    return tuple(out)


def as_bytes(value: bytes | str) -> bytes:
    """``value`` as bytes: bytes as they are, hex text with or without ``0x`` decoded
    (ValueError when it is not hex)."""
    if isinstance(value, bytes):
        return value
    text = value[2:] if value[:2] in ("0x", "0X") else value
    return bytes.fromhex(text)


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
    """Every error the registered executors' contracts can raise, keyed by 4-byte selector."""
    table: dict[bytes, ErrorSpec] = {}
    contracts = dict.fromkeys(name for _, abis in registered_abis() for name in abis.contracts)
    for name in contracts:
        for entry in artifact(name).abi:
            if entry.get("type") == "error":
                spec = _error_spec(cast(ABIError, entry))
                # The same error inherited by several contracts has one selector and one spec.
                table.setdefault(spec.selector, spec)
    return table


def decode_revert(data: bytes | str) -> str:
    """A one-line, human-readable reason for revert ``data``. Never raises."""
    try:
        raw = as_bytes(data)
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


@functools.cache
def role_names() -> Mapping[bytes, str]:
    """The name of every bytes32 role the registered executors declare, and the admin role."""
    names: dict[bytes, str] = {DEFAULT_ADMIN_ROLE: "DEFAULT_ADMIN_ROLE"}
    for _, abis in registered_abis():
        names.update(abis.role_names)
    return names


_SIMPLE_FORMATTERS: Final[dict[str, Callable[[Any], str]]] = {
    "bytes32": lambda v: role_names().get(bytes(v), "0x" + bytes(v).hex()),
    "address": lambda v: str(to_checksum_address(v)),
    "string": lambda v: json.dumps(v, ensure_ascii=False),
}


def _known_selector(raw: bytes) -> bool:
    selector = raw[:4]
    return len(raw) >= 4 and (
        selector in (ERROR_STRING_SELECTOR, PANIC_SELECTOR) or selector in error_selectors()
    )
