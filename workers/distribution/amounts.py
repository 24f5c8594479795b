"""Amounts of a distribution (issue 21 §2, §8): whole tokens in, base units out, exactly.

Guarantees:

- A task keeps the seed's units: ``totalAmount`` and a recipient's ``amount`` are whole
  tokens, given as a JSON number or a decimal string. :func:`to_base_units` converts them with
  the token's decimals (read from the token) without floating point: a JSON number is read
  through its shortest decimal text (``0.1`` is 0.1, not 0.1000000000000000055…). A non-zero
  digit beyond the token's decimals is refused (:class:`AmountError`), never rounded.
- A percentage is an exact decimal with at most 4 places (``PERCENT_PLACES``), held as an
  integer count of 1/10,000 %; the percentages of a task sum to exactly 100.
- The split (:func:`split`) is the largest-remainder method: each recipient gets
  ``floor(total * p / 100)``; the base units left over (fewer than the recipients) go one each
  to the recipients with the largest remainders, ties broken by list order (earlier first).
  The amounts sum to ``total`` exactly, are never negative, and depend only on the list (the
  same list gives the same manifest on every node and in every run).
- A manifest is the list of (address, base units) in the task's order; its hash
  (:func:`manifest_hash`) is the one issue 21 §8 defines, so anyone can recompute it:
  ``0x`` + lower-case hex sha256 of the UTF-8 JSON array ``[{"address":…,"amount":…},…]``,
  addresses lower-case, sorted by them, amounts as decimal strings in base units, keys in
  that order, separators ``,`` and ``:`` with no spaces.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Final

from shared.errors import InvalidRequestError

#: decimal places a percentage may have
PERCENT_PLACES: Final = 4
#: 100 % in units of 10^-PERCENT_PLACES %
HUNDRED_PERCENT: Final = 100 * 10**PERCENT_PLACES
#: decimals a token may declare (ERC-20 uint8; SPL u8); more is no token we can pay
MAX_DECIMALS: Final = 255
# A decimal string as the seed writes amounts: digits, an optional fraction; no sign, no
# exponent, no spaces (a string is someone's exact text: we take it exactly or not at all).
_DECIMAL_TEXT: Final = re.compile(r"^[0-9]+(\.[0-9]+)?$")
# Digits an amount may have at most (before the decimals): beyond uint256 anyway.
_MAX_DIGITS: Final = 100

Manifest = list[tuple[str, int]]


class AmountError(InvalidRequestError):
    """An amount or percentage the task cannot use (the message says which and why)."""


def parse_decimal(value: object, *, what: str) -> Decimal:
    """A JSON number or decimal string as an exact, non-negative Decimal."""
    if isinstance(value, bool):
        raise AmountError(f"{what} must be a number or a decimal string, not {value!r}")
    if isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise AmountError(f"{what} must be a finite number")
        text = repr(value)  # the shortest text that reads back as this float
    elif isinstance(value, Decimal):
        text = str(value)
    elif isinstance(value, str):
        text = value
        if not _DECIMAL_TEXT.match(text):
            raise AmountError(
                f"{what} must be a decimal string of digits with an optional fraction"
                f" (e.g. '1000' or '0.5'), not {value[:40]!r}"
            )
    else:
        raise AmountError(f"{what} must be a number or a decimal string")
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise AmountError(f"{what} is not a number: {text[:40]!r}") from None
    if not number.is_finite():
        raise AmountError(f"{what} must be a finite number")
    if number < 0:
        raise AmountError(f"{what} must not be negative")
    if number.adjusted() >= _MAX_DIGITS:
        raise AmountError(f"{what} is too large")
    return number


def to_base_units(value: object, decimals: int, *, what: str = "amount") -> int:
    """Whole tokens (JSON number or decimal string) as base units of a token with
    ``decimals``. A non-zero digit beyond ``decimals`` is an AmountError."""
    if not 0 <= decimals <= MAX_DECIMALS:
        raise AmountError(f"the token declares {decimals} decimals")
    number = parse_decimal(value, what=what)
    scaled = number.scaleb(decimals)
    integral = scaled.to_integral_value()
    if scaled != integral:
        raise AmountError(
            f"{what} {format_decimal(number)} has a non-zero digit beyond the token's"
            f" {decimals} decimals"
        )
    return int(integral)


def from_base_units(amount: int, decimals: int) -> str:
    """Base units as whole tokens, a decimal string without trailing zeros."""
    return format_decimal(Decimal(amount).scaleb(-decimals))


def format_decimal(number: Decimal) -> str:
    """A Decimal as plain text (no exponent, no trailing fractional zeros)."""
    text = format(number, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def parse_percentage(value: object, *, what: str = "percentage") -> int:
    """A percentage (number or decimal string, at most 4 places, > 0, ≤ 100) in units of
    1/10,000 %."""
    number = parse_decimal(value, what=what)
    scaled = number.scaleb(PERCENT_PLACES)
    if scaled != scaled.to_integral_value():
        raise AmountError(
            f"{what} {format_decimal(number)} has more than {PERCENT_PLACES} decimal places"
        )
    units = int(scaled)
    if units <= 0:
        raise AmountError(f"{what} must be greater than 0")
    if units > HUNDRED_PERCENT:
        raise AmountError(f"{what} {format_decimal(number)} is more than 100")
    return units


def percentage_text(units: int) -> str:
    """Percentage units (1/10,000 %) as the decimal string the task shows."""
    return format_decimal(Decimal(units).scaleb(-PERCENT_PLACES))


def split(total: int, shares: Sequence[int]) -> list[int]:
    """``total`` base units split by ``shares`` (percentage units summing to 100 %) with the
    largest-remainder method, ties by list order. Sums to ``total`` exactly."""
    if total < 0:
        raise AmountError("the total must not be negative")
    if any(s < 0 for s in shares):
        raise AmountError("a share must not be negative")
    if sum(shares) != HUNDRED_PERCENT:
        raise AmountError(f"the percentages sum to {percentage_text(sum(shares))}, not 100")
    amounts: list[int] = []
    remainders: list[tuple[int, int]] = []
    for index, share in enumerate(shares):
        whole, rest = divmod(total * share, HUNDRED_PERCENT)
        amounts.append(whole)
        remainders.append((-rest, index))  # largest remainder first, then list order
    left = total - sum(amounts)
    for _, index in sorted(remainders)[:left]:
        amounts[index] += 1
    return amounts


def manifest_json(manifest: Sequence[tuple[str, int]]) -> str:
    """The canonical JSON the manifest hash is taken of (issue 21 §8)."""
    entries = sorted(((address.lower(), amount) for address, amount in manifest))
    return json.dumps(
        [{"address": address, "amount": str(amount)} for address, amount in entries],
        separators=(",", ":"),
        ensure_ascii=False,
    )


def manifest_hash(manifest: Sequence[tuple[str, int]]) -> str:
    """``0x`` + lower-case hex sha256 of :func:`manifest_json`."""
    return "0x" + hashlib.sha256(manifest_json(manifest).encode("utf-8")).hexdigest()


def manifest_answer(manifest: Sequence[tuple[str, int]]) -> list[dict[str, str]]:
    """The manifest as the API shows it: ``[{address, amount}]`` in the task's order, amounts
    as decimal strings in base units."""
    return [{"address": address, "amount": str(amount)} for address, amount in manifest]
