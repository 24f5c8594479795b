"""A spend policy per sending key: what the key may sign, checked before anything is signed.

Guarantees:

- :meth:`TxManager.record <shared.tx.manager.TxManager.record>` checks every new submission
  against its key's :class:`SpendPolicy` *before* signing it, inside the database transaction
  that would record it. A violation skips that submission with a
  :class:`~shared.errors.SpendPolicyError` (permanent) whose message and ``rule`` name the
  rule; nothing is signed for it, no row is written and no nonce is used.
- The rules, in the order they are checked (the ``rule`` of the error):

  - ``contract_not_allowed``: the call's ``to`` is not one of ``contracts``. A 0-value call
    to the sender itself without data (the cancel that fills a nonce) is always allowed.
  - ``selector_not_allowed``: the call's function selector (its first 4 bytes; ``0x`` for a
    call without data, a plain transfer) is not one that contract allows.
  - ``calldata_malformed``: the selector is one of :data:`MOVEMENTS` but its arguments do not
    decode, so what it moves cannot be known.
  - ``value_not_allowed``: the call moves a token (or native value) that ``limits`` has no
    entry for. With no ``limits`` at all a key may move nothing (the oracle's fulfiller).
  - ``per_tx_cap``: one call moves more of a token than its ``per_tx``.
  - ``daily_cap``: what the key's transactions recorded in the last ``window_s`` (24 h)
    moved of that token, plus this call, is more than its ``per_day``.
- What a call moves (:func:`movements`): its native value (token :data:`NATIVE`), and the
  amounts of the ERC-20 and multisend calls of the table :data:`MOVEMENTS`: ``transfer``,
  ``transferFrom``, ``approve`` and ``increaseAllowance`` (an allowance counts as spent: the
  spender can take it) on the called contract as the token, and ``disperseToken``'s
  ``uint256[]`` summed for the token it names.
- The rolling cap holds across restarts: every recorded transaction's movements are written
  to ``tx_spends`` (append-only) in the same transaction as its ``txs`` row, each with the
  key's running total of that token, so the window's sum is two index look-ups at check
  time, however many spends it holds. A transaction counts from the moment it is signed, mined
  or not: a cancelled one may still have mined. A fee bump or cancel of it adds nothing.
  Within one batch, each check sees the spends of the submissions recorded before it.
- Fee bumps and cancels of a recorded transaction are not checked again: they are
  alternatives at a nonce the checked call already holds (at most one of them mines), and a
  cancel moves nothing. A tightened policy applies to new submissions.

Configuration. An executor builds its keys' policies from its own settings, e.g. a file named
by ``HODLAI_MINT_SPEND_POLICY_FILE`` read with :func:`load_policies`. The file is JSON, or
TOML when its name ends in ``.toml``; one entry per sending address::

    {"0xSenderAddress": {
        "contracts": {"0xUSDC": ["transfer(address,uint256)"],
                      "0xDisperse": ["0xc73a2d60"], "0xAnything": "*"},
        "limits": {"0xUSDC": {"per_tx": "1000000000", "per_day": "5000000000"},
                   "native": {"per_tx": "0"}}}}

A selector is given as 4 hex bytes or as a function signature; ``"*"`` allows any. Amounts
are integers in the token's base units (decimal strings, since TOML integers stop at 2**63);
a missing ``per_tx`` / ``per_day`` means no such cap for that token. In code:
``SpendPolicy(contracts={provider: selectors(FULFIL_SIGNATURE)})``.
"""

from __future__ import annotations

import json
import sqlite3
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NoReturn

from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_utils.address import is_hex_address, to_checksum_address
from eth_utils.crypto import keccak

from shared.errors import ConfigError, SpendPolicyError
from shared.tx.signer import Call

#: The pseudo-token of the chain's own coin (wei).
NATIVE: Final = "native"
#: Seconds of the rolling window of ``per_day`` caps.
DAY_S: Final = 86_400.0
#: The selector of a call without data (a plain transfer of value).
NO_DATA: Final = b""

RULE_CONTRACT: Final = "contract_not_allowed"
RULE_SELECTOR: Final = "selector_not_allowed"
RULE_MALFORMED: Final = "calldata_malformed"
RULE_VALUE: Final = "value_not_allowed"
RULE_PER_TX: Final = "per_tx_cap"
RULE_DAILY: Final = "daily_cap"


def selector_of(signature: str) -> bytes:
    """The 4-byte selector of a function signature, e.g. ``transfer(address,uint256)``."""
    return keccak(text=signature)[:4]


@dataclass(frozen=True)
class Movement:
    """A call that moves a token: ``token_arg`` is the argument naming the token (None: the
    called contract is the token), ``amount_arg`` the argument holding the amount (a
    ``uint256[]`` is summed)."""

    signature: str
    token_arg: int | None
    amount_arg: int

    @property
    def selector(self) -> bytes:
        return selector_of(self.signature)

    @property
    def types(self) -> list[str]:
        inner = self.signature[self.signature.index("(") + 1 : -1]
        return inner.split(",") if inner else []


#: The calls whose amounts count against a key's caps, by selector.
MOVEMENTS: Final = {
    m.selector: m
    for m in (
        Movement("transfer(address,uint256)", None, 1),
        Movement("transferFrom(address,address,uint256)", None, 2),
        Movement("approve(address,uint256)", None, 1),
        Movement("increaseAllowance(address,uint256)", None, 1),
        Movement("disperseToken(address,address[],uint256[])", 0, 2),
    )
}


def movements(call: Call, *, strict: bool = True) -> dict[str, int]:
    """What ``call`` moves, per token (:data:`NATIVE` or a checksummed address); amounts above
    zero only. A known selector whose arguments do not decode raises SpendPolicyError
    (``calldata_malformed``), or with ``strict=False`` (a key without a policy) counts as
    moving no token."""
    out: dict[str, int] = {}
    if call.value > 0:
        out[NATIVE] = call.value
    movement = MOVEMENTS.get(call.data[:4])
    if movement is None:
        return out
    try:
        args = abi_decode(movement.types, call.data[4:])
    except (DecodingError, ValueError, OverflowError) as exc:
        if not strict:
            return out
        raise SpendPolicyError(
            f"spend policy rule {RULE_MALFORMED}: a {movement.signature} call to {call.to} "
            f"whose arguments do not decode ({exc})",
            rule=RULE_MALFORMED,
        ) from None
    raw_amount = args[movement.amount_arg]
    amount = sum(raw_amount) if isinstance(raw_amount, tuple | list) else int(raw_amount)
    token = call.to if movement.token_arg is None else to_checksum_address(args[movement.token_arg])
    if amount > 0:
        out[token] = out.get(token, 0) + amount
    return out


@dataclass(frozen=True)
class Limit:
    """Caps on one token, in its base units; None: no such cap."""

    per_tx: int | None = None
    per_day: int | None = None


@dataclass(frozen=True)
class SpendPolicy:
    """What one sending key may sign (see the module docstring for the rules).

    ``contracts``: allowed contract -> its allowed selectors (None: any selector).
    ``limits``: token (:data:`NATIVE` or a checksummed address) -> its caps; a token without
    an entry may not be moved at all."""

    contracts: Mapping[str, frozenset[bytes] | None]
    limits: Mapping[str, Limit] = field(default_factory=dict)
    window_s: float = DAY_S

    def __post_init__(self) -> None:
        # Addresses compared checksummed, whatever case the caller wrote them in.
        object.__setattr__(
            self, "contracts", {to_checksum_address(a): s for a, s in self.contracts.items()}
        )
        object.__setattr__(self, "limits", {_token(t): lim for t, lim in self.limits.items()})

    def check(
        self, conn: sqlite3.Connection, call: Call, *, sender: str, now: float
    ) -> dict[str, int]:
        """Raise SpendPolicyError naming the first rule ``call`` breaks; else return what it
        moves (to record with :func:`record_spends` once it is signed)."""
        if call.to == sender and call.value == 0 and not call.data:
            return {}  # the cancel: fills a nonce, moves nothing
        if call.to not in self.contracts:
            _refuse(RULE_CONTRACT, f"{call.to} is not a contract this key may call")
        allowed = self.contracts[call.to]
        selector = call.data[:4]
        if allowed is not None and selector not in allowed:
            _refuse(
                RULE_SELECTOR,
                f"function 0x{selector.hex()} of {call.to} is not one this key may call",
            )
        moved = movements(call)
        for token, amount in moved.items():
            limit = self.limits.get(token)
            if limit is None:
                _refuse(RULE_VALUE, f"this key may not move {_name(token)} ({amount})")
            if limit.per_tx is not None and amount > limit.per_tx:
                _refuse(
                    RULE_PER_TX,
                    f"{amount} of {_name(token)} in one transaction is over its cap {limit.per_tx}",
                )
            if limit.per_day is not None:
                spent = spent_since(conn, sender, token, since=now - self.window_s)
                if spent + amount > limit.per_day:
                    _refuse(
                        RULE_DAILY,
                        f"{amount} of {_name(token)} on top of {spent} in the last "
                        f"{self.window_s / 3600:g} h is over its cap {limit.per_day}",
                    )
        return moved

    @classmethod
    def from_config(cls, entry: Mapping[str, Any], *, where: str) -> SpendPolicy:
        """A policy from one entry of a policy file (module docstring); ConfigError naming
        ``where`` for anything malformed."""
        try:
            contracts: dict[str, frozenset[bytes] | None] = {}
            for address, chosen in dict(entry.get("contracts", {})).items():
                contracts[_address(address)] = None if chosen == "*" else _selectors(chosen)
            limits = {
                _token(token): Limit(
                    per_tx=_amount(caps.get("per_tx")), per_day=_amount(caps.get("per_day"))
                )
                for token, caps in dict(entry.get("limits", {})).items()
            }
            unknown = set(entry) - {"contracts", "limits"}
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)}")
        except (ValueError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
        return cls(contracts=contracts, limits=limits)


def load_policies(path: Path, *, setting: str) -> dict[str, SpendPolicy]:
    """Sending address (checksummed) -> its policy, from a JSON or TOML file (module
    docstring). ConfigError naming ``setting`` and the file when it cannot be used."""
    try:
        text = path.read_text(encoding="utf-8")
        raw = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{setting}: cannot read the spend policy file {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{setting}: {path} must hold an object keyed by sending address")
    out: dict[str, SpendPolicy] = {}
    for sender, entry in raw.items():
        where = f"{setting}: {path}, key {sender}"
        if not is_hex_address(sender) or not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected an address and an object")
        out[to_checksum_address(sender)] = SpendPolicy.from_config(entry, where=where)
    return out


def record_spends(
    conn: sqlite3.Connection, tx_id: int, *, sender: str, moved: Mapping[str, int], now: float
) -> None:
    """Write what transaction ``tx_id`` moves (call in the transaction that inserts it), each
    token's row with the key's running total of that token."""
    for token, amount in moved.items():
        if amount <= 0:
            continue
        last = _latest(conn, sender, token)
        total, at = (amount, now) if last is None else (int(last[0]) + amount, max(now, last[1]))
        conn.execute(
            "INSERT INTO tx_spends (tx_id, sender, token, amount, total, at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (tx_id, sender, token, str(amount), str(total), at),
        )


def spent_since(conn: sqlite3.Connection, sender: str, token: str, *, since: float) -> int:
    """What ``sender``'s recorded transactions moved of ``token`` after ``since``: the latest
    running total minus the last one at or before ``since`` (two index look-ups)."""
    last = _latest(conn, sender, token)
    if last is None or last[1] <= since:
        return 0
    before = conn.execute(
        "SELECT total FROM tx_spends WHERE sender = ? AND token = ? AND at <= ?"
        " ORDER BY at DESC, id DESC LIMIT 1",
        (sender, token, since),
    ).fetchone()
    return int(last[0]) - (0 if before is None else int(before[0]))


def _latest(conn: sqlite3.Connection, sender: str, token: str) -> tuple[str, float] | None:
    row = conn.execute(
        "SELECT total, at FROM tx_spends WHERE sender = ? AND token = ?"
        " ORDER BY at DESC, id DESC LIMIT 1",
        (sender, token),
    ).fetchone()
    return None if row is None else (str(row[0]), float(row[1]))


def selectors(*signatures: str) -> frozenset[bytes]:
    """Selectors from function signatures or 4-byte hex (``0x`` alone: a call without data)."""
    return _selectors(signatures)


def _selectors(chosen: Iterable[str]) -> frozenset[bytes]:
    if isinstance(chosen, str):
        raise ValueError(f"selectors must be a list or '*', not {chosen!r}")
    out: set[bytes] = set()
    for item in chosen:
        if "(" in item:
            out.add(selector_of(item.replace(" ", "")))
            continue
        raw = bytes.fromhex(item.removeprefix("0x"))
        if len(raw) not in (0, 4):
            raise ValueError(f"a selector is 4 bytes, not {item!r}")
        out.add(raw)
    return frozenset(out)


def _address(value: str) -> str:
    if not is_hex_address(value):
        raise ValueError(f"not an address: {value!r}")
    return to_checksum_address(value)


def _token(value: str) -> str:
    return NATIVE if value == NATIVE else _address(value)


def _amount(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"an amount is an integer in base units, not {value!r}")
    amount = int(value)
    if amount < 0:
        raise ValueError(f"an amount cannot be negative: {value!r}")
    return amount


def _name(token: str) -> str:
    return "native value (wei)" if token == NATIVE else f"token {token}"


def _refuse(rule: str, detail: str) -> NoReturn:
    raise SpendPolicyError(f"spend policy rule {rule}: {detail}", rule=rule)
