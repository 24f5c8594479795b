"""The task model (seed 003's task JSON, issue 21 §1, §6, §8) and its validation.

A task as the seed writes it::

    {"id": "staking-reward-001", "name": "…", "type": "scheduled",
     "schedule": {"cron": "0 0 * * *", "timezone": "UTC"},
     "distribution": {"recipients": [{"address": "…", "percentage": 50}, …],
                      "totalAmount": 1000, "usePercentage": true},
     "enabled": true, "runCount": 0}

plus, for a conditional task, ``"condition": {"kind": "token_balance" | "native_balance" |
"oracle_fees", "threshold": "1000", …}``.

Guarantees:

- :func:`parse_task` checks everything that needs no chain and raises TaskError (an
  InvalidRequestError: the API answers 400 with the message) naming the first problem: the
  type, the cron (croniter) and its time zone (IANA), the condition, every address valid for
  the network (and normalised: checksummed on EVM), no duplicate recipient, at most
  ``HODLAI_DIST_MAX_RECIPIENTS``, percentages with ≤ 4 places summing to exactly 100, fixed
  amounts > 0, a fixed-amount ``totalAmount`` equal to their sum.
- :func:`manifest_of` checks what needs the token's decimals: no digit beyond them, every
  recipient's amount > 0 in base units (a percentage split of a small total can give 0).
- The stored task keeps the seed's units (whole tokens, percentages) as exact decimal strings;
  the API answers amounts and percentages as decimal strings.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from shared.errors import InvalidRequestError
from workers.distribution import amounts
from workers.distribution.amounts import AmountError, format_decimal

TASK_TYPES: Final = ("scheduled", "conditional", "manual")
CONDITION_KINDS: Final = ("token_balance", "native_balance", "oracle_fees")
#: a client's task id: what is safe in a URL, a log line and a file name
_TASK_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
MAX_NAME: Final = 200
#: decimals of the native coin, by network kind (wei, lamports)
NATIVE_DECIMALS: Final = {"evm": 18, "solana": 9}
_TASK_KEYS: Final = frozenset(
    {"id", "name", "type", "schedule", "condition", "distribution", "enabled", "runCount",
     "lastRunAt", "nextRunAt", "template", "network", "tokenMint", "status", "createdAt",
     "conditionStreak", "cooldownUntil"}
)  # fmt: skip


#: a stored task as sqlite3 gives it, or any mapping of its columns
RowLike = sqlite3.Row | Mapping[str, Any]


class TaskError(InvalidRequestError):
    """A task the node cannot accept; the message says why (answered as 400)."""


@dataclass(frozen=True)
class Recipient:
    address: str
    #: percentage units (1/10,000 %) when the task splits by percentage
    share: int | None
    #: whole tokens when the task pays fixed amounts
    amount: Decimal | None


@dataclass(frozen=True)
class Condition:
    kind: str
    #: whole tokens (token_balance) or whole native coin (native_balance, oracle_fees)
    threshold: Decimal
    #: whose balance is read (default: the network's source)
    owner: str | None = None
    #: oracle_fees: the provider whose treasury is watched (default: HODLAI_DIST_ORACLE_PROVIDER)
    provider: str | None = None
    #: consecutive true checks before it fires (default: HODLAI_DIST_CONDITION_CHECKS)
    checks: int | None = None
    #: seconds after firing before it is checked again (default: HODLAI_DIST_COOLDOWN_S)
    cooldown_s: float | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "threshold": format_decimal(self.threshold)}
        if self.owner is not None:
            out["owner"] = self.owner
        if self.provider is not None:
            out["provider"] = self.provider
        if self.checks is not None:
            out["checks"] = self.checks
        if self.cooldown_s is not None:
            out["cooldownS"] = self.cooldown_s
        return out


@dataclass(frozen=True)
class TaskSpec:
    task_id: str | None
    name: str
    type: str
    cron: str | None
    timezone: str
    condition: Condition | None
    recipients: tuple[Recipient, ...]
    total_amount: Decimal | None
    use_percentage: bool
    enabled: bool
    template: str | None = None

    def recipients_json(self) -> list[dict[str, str]]:
        out = []
        for r in self.recipients:
            if r.share is not None:
                out.append({"address": r.address, "percentage": amounts.percentage_text(r.share)})
            else:
                assert r.amount is not None
                out.append({"address": r.address, "amount": format_decimal(r.amount)})
        return out


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise TaskError(message)


def _object(value: object, what: str) -> Mapping[str, Any]:
    _require(isinstance(value, dict), f"{what} must be a JSON object")
    assert isinstance(value, dict)
    return value


def check_cron(cron: object, timezone: object) -> tuple[str, str]:
    """The cron expression (5 fields) and IANA time zone, or TaskError."""
    _require(isinstance(cron, str) and cron.strip() != "", "schedule.cron is required")
    assert isinstance(cron, str)
    text = " ".join(cron.split())
    _require(len(text.split(" ")) == 5, f"schedule.cron {cron[:80]!r} must have 5 fields")
    _require(croniter.is_valid(text), f"schedule.cron {cron[:80]!r} does not parse")
    zone = "UTC" if timezone in (None, "") else timezone
    _require(isinstance(zone, str), "schedule.timezone must be a string")
    assert isinstance(zone, str)
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise TaskError(f"schedule.timezone {zone[:60]!r} is no IANA time zone") from None
    return text, zone


def _condition(raw: object, normalize: Callable[[str], str | None]) -> Condition:
    body = _object(raw, "condition")
    kind = body.get("kind")
    _require(
        kind in CONDITION_KINDS,
        f"condition.kind must be one of {', '.join(CONDITION_KINDS)}",
    )
    threshold = amounts.parse_decimal(body.get("threshold"), what="condition.threshold")
    _require(threshold > 0, "condition.threshold must be greater than 0")
    addresses: dict[str, str | None] = {}
    for key in ("owner", "provider"):
        value = body.get(key)
        if value is None:
            addresses[key] = None
            continue
        normalized = normalize(value) if isinstance(value, str) else None
        _require(normalized is not None, f"condition.{key} is not a valid address")
        addresses[key] = normalized
    checks = body.get("checks")
    _require(
        checks is None or (isinstance(checks, int) and not isinstance(checks, bool)
                           and 1 <= checks <= 1000),
        "condition.checks must be an integer from 1 to 1000",
    )  # fmt: skip
    cooldown = body.get("cooldownS")
    _require(
        cooldown is None or (isinstance(cooldown, int | float) and not isinstance(cooldown, bool)
                             and 0 <= cooldown <= 365 * 86_400),
        "condition.cooldownS must be a number of seconds from 0 to 31536000",
    )  # fmt: skip
    return Condition(
        kind=str(kind), threshold=threshold, owner=addresses["owner"],
        provider=addresses["provider"], checks=checks,
        cooldown_s=None if cooldown is None else float(cooldown),
    )  # fmt: skip


def parse_task(
    raw: object,
    *,
    normalize: Callable[[str], str | None],
    max_recipients: int,
    network_kind: str = "evm",
) -> TaskSpec:
    """The seed's task JSON checked and normalised (everything that needs no chain)."""
    task = _object(raw, "task")
    task_id = task.get("id")
    if task_id is not None:
        _require(
            isinstance(task_id, str) and bool(_TASK_ID.match(task_id)),
            "task.id must be 1-128 characters of letters, digits, '.', '_', ':' or '-'",
        )
    kind = task.get("type")
    _require(kind in TASK_TYPES, f"task.type must be one of {', '.join(TASK_TYPES)}")
    name = task.get("name", task_id or "")
    _require(isinstance(name, str) and 0 < len(name.strip()) <= MAX_NAME,
             f"task.name must be a string of 1-{MAX_NAME} characters")  # fmt: skip
    assert isinstance(name, str)
    enabled = task.get("enabled", True)
    _require(isinstance(enabled, bool), "task.enabled must be true or false")
    cron: str | None = None
    timezone = "UTC"
    schedule = task.get("schedule")
    if kind == "scheduled":
        body = _object(schedule, "schedule")
        cron, timezone = check_cron(body.get("cron"), body.get("timezone"))
    elif schedule not in (None, {}) and isinstance(schedule, dict) and schedule.get("cron"):
        raise TaskError(f"a {kind} task has no schedule.cron (only a scheduled task runs by cron)")
    condition: Condition | None = None
    if kind == "conditional":
        _require(task.get("condition") is not None, "a conditional task needs a condition")
        condition = _condition(task["condition"], normalize)
        if condition.kind == "oracle_fees":
            _require(network_kind == "evm", "an oracle_fees condition needs an EVM network")
    elif task.get("condition") is not None:
        raise TaskError(f"a {kind} task has no condition (only a conditional task has one)")
    recipients, total, use_percentage = _distribution(
        task.get("distribution"), normalize=normalize, max_recipients=max_recipients
    )
    template = task.get("template")
    _require(template is None or isinstance(template, str), "task.template must be a string")
    return TaskSpec(
        task_id=task_id, name=name.strip(), type=str(kind), cron=cron, timezone=timezone,
        condition=condition, recipients=recipients, total_amount=total,
        use_percentage=use_percentage, enabled=enabled, template=template,
    )  # fmt: skip


def _distribution(
    raw: object, *, normalize: Callable[[str], str | None], max_recipients: int
) -> tuple[tuple[Recipient, ...], Decimal | None, bool]:
    body = _object(raw, "distribution")
    use_percentage = body.get("usePercentage", False)
    _require(isinstance(use_percentage, bool), "distribution.usePercentage must be true or false")
    listed = body.get("recipients")
    _require(isinstance(listed, list) and len(listed) > 0,
             "distribution.recipients must be a non-empty list")  # fmt: skip
    assert isinstance(listed, list)
    _require(
        len(listed) <= max_recipients,
        f"distribution.recipients has {len(listed)} recipients; at most {max_recipients}"
        " (HODLAI_DIST_MAX_RECIPIENTS)",
    )
    seen: dict[str, int] = {}
    recipients: list[Recipient] = []
    for index, entry in enumerate(listed):
        where = f"distribution.recipients[{index}]"
        item = _object(entry, where)
        text = item.get("address")
        address = normalize(text) if isinstance(text, str) else None
        _require(address is not None, f"{where}.address {str(text)[:80]!r} is not a valid"
                 " address for the network")  # fmt: skip
        assert address is not None
        key = address.lower() if address.startswith("0x") else address
        _require(key not in seen, f"{where}.address {address} is listed twice")
        seen[key] = index
        if use_percentage:
            _require("percentage" in item, f"{where} needs a percentage (usePercentage)")
            _require("amount" not in item, f"{where} gives an amount in a percentage task")
            share = amounts.parse_percentage(item["percentage"], what=f"{where}.percentage")
            recipients.append(Recipient(address=address, share=share, amount=None))
        else:
            _require("amount" in item, f"{where} needs an amount (usePercentage is false)")
            _require("percentage" not in item,
                     f"{where} gives a percentage in a fixed-amount task")  # fmt: skip
            value = amounts.parse_decimal(item["amount"], what=f"{where}.amount")
            _require(value > 0, f"{where}.amount must be greater than 0")
            recipients.append(Recipient(address=address, share=None, amount=value))
    total_raw = body.get("totalAmount")
    total = None if total_raw is None else amounts.parse_decimal(
        total_raw, what="distribution.totalAmount")  # fmt: skip
    if use_percentage:
        _require(total is not None, "distribution.totalAmount is required with usePercentage")
        assert total is not None
        _require(total > 0, "distribution.totalAmount must be greater than 0")
        shares = sum(r.share or 0 for r in recipients)
        _require(
            shares == amounts.HUNDRED_PERCENT,
            f"the percentages sum to {amounts.percentage_text(shares)}, not 100",
        )
    else:
        fixed = sum((r.amount or Decimal(0) for r in recipients), Decimal(0))
        if total is not None:
            _require(
                total == fixed,
                f"distribution.totalAmount {format_decimal(total)} is not the sum of the"
                f" amounts, {format_decimal(fixed)} (it may be omitted)",
            )
        total = fixed
    return tuple(recipients), total, use_percentage


def manifest_of(spec: TaskSpec, decimals: int) -> tuple[int, amounts.Manifest]:
    """The total and the manifest in base units (AmountError / TaskError if the token's
    decimals cannot hold an amount, or a recipient would get nothing)."""
    assert spec.total_amount is not None
    total = amounts.to_base_units(spec.total_amount, decimals, what="distribution.totalAmount")
    if spec.use_percentage:
        values = amounts.split(total, [r.share or 0 for r in spec.recipients])
    else:
        values = [
            amounts.to_base_units(r.amount, decimals, what=f"distribution.recipients[{i}].amount")
            for i, r in enumerate(spec.recipients)
        ]
    for index, (recipient, value) in enumerate(zip(spec.recipients, values, strict=True)):
        if value <= 0:
            raise AmountError(
                f"distribution.recipients[{index}] ({recipient.address}) would get 0 base units"
                f" of {format_decimal(spec.total_amount)} tokens with {decimals} decimals"
            )
    return total, [(r.address, v) for r, v in zip(spec.recipients, values, strict=True)]


def spec_from_row(row: RowLike) -> TaskSpec:
    """The stored task as a TaskSpec (trusted: it was validated when created)."""
    recipients = tuple(
        Recipient(
            address=r["address"],
            share=amounts.parse_percentage(r["percentage"]) if "percentage" in r else None,
            amount=Decimal(r["amount"]) if "amount" in r else None,
        )
        for r in json.loads(row["recipients"])
    )
    condition = None
    if row["condition"]:
        c = json.loads(row["condition"])
        condition = Condition(
            kind=c["kind"], threshold=Decimal(c["threshold"]), owner=c.get("owner"),
            provider=c.get("provider"), checks=c.get("checks"), cooldown_s=c.get("cooldownS"),
        )  # fmt: skip
    return TaskSpec(
        task_id=row["task_id"], name=row["name"], type=row["type"], cron=row["cron"],
        timezone=row["timezone"], condition=condition, recipients=recipients,
        total_amount=None if row["total_amount"] is None else Decimal(row["total_amount"]),
        use_percentage=bool(row["use_percentage"]), enabled=bool(row["enabled"]),
        template=row["template"],
    )  # fmt: skip


def iso(ts: float | None) -> str | None:
    """Unix seconds as ISO 8601 UTC to the millisecond (``2026-01-01T00:00:00.000Z``)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")  # fmt: skip


def task_answer(row: RowLike) -> dict[str, Any]:
    """A stored task in the seed's task JSON (the seed's units, decimal strings)."""
    out: dict[str, Any] = {
        "id": row["task_id"],
        "name": row["name"],
        "type": row["type"],
        "network": row["network"],
        "tokenMint": row["token"],
        "distribution": {
            "recipients": json.loads(row["recipients"]),
            "totalAmount": row["total_amount"],
            "usePercentage": bool(row["use_percentage"]),
        },
        "enabled": bool(row["enabled"]),
        "runCount": row["run_count"],
        "lastRunAt": iso(row["last_run_at"]),
        "nextRunAt": iso(row["next_run_at"]),
        "status": row["status"],
        "createdAt": iso(row["created_at"]),
    }
    if row["cron"]:
        out["schedule"] = {"cron": row["cron"], "timezone": row["timezone"]}
    if row["condition"]:
        out["condition"] = json.loads(row["condition"])
        out["conditionStreak"] = row["condition_streak"]
        out["cooldownUntil"] = iso(row["cooldown_until"])
    if row["template"]:
        out["template"] = row["template"]
    return out


def check_keys(task: Mapping[str, Any], *, allowed: Sequence[str] = ()) -> None:
    """Refuse keys a task cannot carry (a typo must not be ignored); the keys the node adds
    to its answers are accepted and ignored, so a task read back can be posted again."""
    unknown = set(task) - _TASK_KEYS - set(allowed)
    _require(not unknown, f"task has unknown field(s): {', '.join(sorted(unknown))[:200]}")
