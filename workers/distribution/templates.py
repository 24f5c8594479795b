"""The seed's four presets (``createStakingRewardTask()``, ``createTradingFeeRewardTask()``,
``createGovernanceRewardTask()``, ``createAirdropTask()``) as task templates, in the API
(``GET …/templates``, ``POST`` with ``template``) and the CLI (``hodlai dist templates``,
``hodlai dist create --template``).

A template gives a task's type, name, schedule or condition and split mode; the caller gives
the recipients and amounts (and may override any field). The result is validated like any
task: a template never bypasses a check.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Final

from workers.distribution.tasks import TaskError

TEMPLATES: Final[dict[str, dict[str, Any]]] = {
    # 质押奖励: a daily split of a reward pool among stakers by their share.
    "staking-reward": {
        "name": "Staking reward (daily)",
        "type": "scheduled",
        "schedule": {"cron": "0 0 * * *", "timezone": "UTC"},
        "distribution": {"usePercentage": True},
        "description": "every day at 00:00 UTC, totalAmount split among stakers by percentage",
    },
    # 交易手续费分红: when collected trading fees reach a threshold, share them out.
    "trading-fee-reward": {
        "name": "Trading-fee reward",
        "type": "conditional",
        "condition": {"kind": "token_balance", "threshold": "1000"},
        "distribution": {"usePercentage": True},
        "description": (
            "when the source holds at least condition.threshold tokens (collected fees),"
            " totalAmount split by percentage"
        ),
    },
    # 治理投票奖励: after a vote, fixed rewards to the voters, run by an operator.
    "governance-reward": {
        "name": "Governance voting reward",
        "type": "manual",
        "distribution": {"usePercentage": False},
        "description": "a fixed amount to each voter, run on execute after the vote",
    },
    # 空投: a one-off airdrop of fixed amounts.
    "airdrop": {
        "name": "Airdrop",
        "type": "manual",
        "distribution": {"usePercentage": False},
        "description": "fixed amounts to a list of addresses, run on execute",
    },
}


def list_templates() -> list[dict[str, Any]]:
    return [{"template": name, **copy.deepcopy(body)} for name, body in TEMPLATES.items()]


def apply_template(name: str, task: Mapping[str, Any]) -> dict[str, Any]:
    """The template ``name`` with ``task``'s fields over it (``distribution`` merged key by
    key); TaskError for an unknown template."""
    base = TEMPLATES.get(name)
    if base is None:
        raise TaskError(f"no template {name[:60]!r} (known: {', '.join(TEMPLATES)})")
    merged = {k: copy.deepcopy(v) for k, v in base.items() if k != "description"}
    for key, value in task.items():
        if key == "distribution" and isinstance(value, Mapping):
            merged["distribution"] = {**merged.get("distribution", {}), **value}
        elif key in ("condition", "schedule") and isinstance(value, Mapping):
            merged[key] = {**merged.get(key, {}), **value}
        else:
            merged[key] = value
    merged["template"] = name
    return merged
