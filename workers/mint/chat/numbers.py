"""The numbers a user wrote, and the addresses: what the model's answer is checked against.

Guarantees:
- :func:`numbers_written` finds every whole number written in a text as digits ("100",
  "1,000", full-width "１００", "5万"), in Chinese numerals ("十", "一百", "两千五",
  "一万零一") or in English words ("one hundred", "twenty-five", "a thousand and one").
  Powers ("10^30", "10**30", "1e30") are one number. Digits inside hexadecimal strings
  (addresses, hashes: "0x1234…") and inside decimals ("2.5") are not numbers the user
  wrote. Values are exact Python ints, however large.
- :func:`addresses_written` finds every 0x-address of exactly 40 hex digits standing on its
  own (not the head of a 64-digit hash), in the order written, compared checksum-
  insensitively (lower case).
"""

from __future__ import annotations

import re
import unicodedata

# An EVM address standing alone: not part of a longer hex run or word.
_ADDRESS = re.compile(r"(?<![0-9A-Za-z])0[xX][0-9a-fA-F]{40}(?![0-9A-Za-z])")
# Any 0x-hex run (addresses, hashes, calldata): removed before numbers are looked for.
_HEX = re.compile(r"(?<![0-9A-Za-z])0[xX][0-9a-fA-F]+")
# Digits, with thousands separators in groups of three, optionally a Chinese multiplier.
# ASCII-delimited so that "100个" counts while "v2", "x86" and "2.5" do not.
_DIGITS = re.compile(
    r"(?<![0-9A-Za-z_.])([0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?![0-9A-Za-z_]|\.[0-9])"
    r"\s*([十百千万亿]?)"
)
# Powers written out ("10^30", "10**30", "1e30"): one number, not its parts (or "10^30"
# would offer the model 10 and 30 as numbers the user wrote). Bounded (20-digit base,
# 3-digit exponent) so that no message costs more than a trivial big-integer power.
_POWER = re.compile(
    r"(?<![0-9A-Za-z_.])([0-9]{1,20})\s*(?:\^|\*\*)\s*([0-9]{1,3})(?![0-9])"
    r"|(?<![0-9A-Za-z_.])([0-9]{1,20})[eE]\+?([0-9]{1,3})(?![0-9A-Za-z_])"
)
_CHINESE = re.compile(r"[零〇一二两三四五六七八九十百千万亿]+")
_CN_DIGIT = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6,
             "七": 7, "八": 8, "九": 9}  # fmt: skip
_CN_SMALL_UNIT = {"十": 10, "百": 100, "千": 1000}
_CN_BIG_UNIT = {"万": 10_000, "亿": 100_000_000}
_CN_MULTIPLIER = {"": 1, "十": 10, "百": 100, "千": 1000, "万": 10_000, "亿": 100_000_000}

_EN_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19,
}  # fmt: skip
_EN_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
            "eighty": 80, "ninety": 90}  # fmt: skip
_EN_SCALES = {"thousand": 1000, "million": 1_000_000, "billion": 1_000_000_000}
_EN_WORD = re.compile(r"[A-Za-z]+|[0-9]+")


def addresses_written(text: str) -> list[str]:
    """The distinct addresses in ``text``, lower case, in the order first written."""
    seen: list[str] = []
    for match in _ADDRESS.finditer(text):
        address = match.group().lower()
        if address not in seen:
            seen.append(address)
    return seen


def numbers_written(text: str) -> set[int]:
    """Every whole number ``text`` writes in digits, Chinese numerals or English words."""
    # NFKC turns full-width digits and commas into ASCII ones; hex runs are not numbers.
    plain = _HEX.sub(" ", unicodedata.normalize("NFKC", text))
    found: set[int] = set()
    for match in _POWER.finditer(plain):
        if match.group(1) is not None:
            found.add(int(match.group(1)) ** int(match.group(2)))
        else:
            found.add(int(match.group(3)) * 10 ** int(match.group(4)))
    plain = _POWER.sub(" ", plain)
    for match in _DIGITS.finditer(plain):
        found.add(int(match.group(1).replace(",", "")) * _CN_MULTIPLIER[match.group(2)])
    for match in _CHINESE.finditer(plain):
        value = chinese_number(match.group())
        if value is not None:
            found.add(value)
    found.update(english_numbers(plain))
    return found


def chinese_number(text: str) -> int | None:
    """The value of a run of Chinese numerals ("两千五" = 2500, "十五" = 15, "一万零一" =
    10001), or None when the run is not a number (e.g. "百" alone after nothing)."""
    if all(ch in _CN_DIGIT for ch in text):
        if len(text) == 1 or not text.startswith(("零", "〇")):
            return int("".join(str(_CN_DIGIT[ch]) for ch in text))  # 一〇〇 = 100
        return None
    total = 0  # complete sections (times 万 / 亿)
    section = 0  # the value below the current big unit
    digit: int | None = None
    last_unit = 0  # the unit just applied: "两千五" means 2000 + 5 * 100
    zero = False  # a 零 since that unit: "一千零五" means 1000 + 5
    for ch in text:
        if ch in ("零", "〇"):
            zero = True
        elif ch in _CN_DIGIT:
            if digit is not None:
                return None  # two digits without a unit between them: "二三百"
            digit = _CN_DIGIT[ch]
        elif ch in _CN_SMALL_UNIT:
            unit = _CN_SMALL_UNIT[ch]
            section += (1 if digit is None else digit) * unit  # "十" = 10, "十五" = 15
            digit, last_unit, zero = None, unit, False
        else:
            unit = _CN_BIG_UNIT[ch]
            section += digit or 0
            if section == 0:
                return None  # "万一" is "in case", not a number
            total = (total + section) * unit if unit > 10_000 else total + section * unit
            section, digit, last_unit, zero = 0, None, unit, False
    if digit is not None:
        # A digit closing the run right after a unit is that unit's tenth ("两千五", "一万五");
        # after a zero it is units ("一千零五").
        section += digit * (last_unit // 10) if last_unit >= 10 and not zero else digit
    return total + section


def english_numbers(text: str) -> set[int]:
    """The numbers written in English words ("one hundred", "twenty-five", "a thousand and
    one", "2 million")."""
    found: set[int] = set()
    words = [w.lower() for w in _EN_WORD.findall(text.replace("-", " "))]
    i = 0
    while i < len(words):
        value, used = _english_run(words, i)
        if used:
            found.add(value)
            i += used
        else:
            i += 1
    return found


def _english_run(words: list[str], start: int) -> tuple[int, int]:
    """(value, words used) of the number starting at ``words[start]``; used 0 if none."""
    total = current = 0
    used = 0
    last = ""  # the kind of the previous number word: "unit", "tens", "scale" or ""
    i = start
    while i < len(words):
        word = words[i]
        if word in _EN_UNITS and last not in ("unit",):
            if last == "tens" and _EN_UNITS[word] >= 10:
                break  # "twenty twelve" is two numbers
            current += _EN_UNITS[word]
            last = "unit"
        elif word in _EN_TENS and last not in ("unit", "tens"):
            current += _EN_TENS[word]
            last = "tens"
        elif word == "hundred" and (last in ("unit", "tens") or _article_before(words, i)):
            current = (current or 1) * 100
            last = "scale"
        elif word in _EN_SCALES and (
            last in ("unit", "tens", "scale") or _article_before(words, i)
        ):
            total += (current or 1) * _EN_SCALES[word]
            current = 0
            last = "scale"
        elif word.isdigit() and not last and _scale_follows(words, i):
            current = int(word)  # "2 million", "5 thousand"
            last = "tens"
        elif word == "a" and not last and _scale_follows(words, i):
            pass  # "a hundred"
        elif (
            word == "and"
            and last == "scale"
            and i + 1 < len(words)
            and _is_number_word(words[i + 1])
        ):
            last = ""  # "a thousand and one"
            i += 1
            continue
        else:
            break
        i += 1
        if word != "a":
            used = i - start
    return total + current, used


def _is_number_word(word: str) -> bool:
    return word in _EN_UNITS or word in _EN_TENS or word == "hundred" or word in _EN_SCALES


def _scale_follows(words: list[str], i: int) -> bool:
    return i + 1 < len(words) and (words[i + 1] == "hundred" or words[i + 1] in _EN_SCALES)


def _article_before(words: list[str], i: int) -> bool:
    return i > 0 and words[i - 1] == "a"
