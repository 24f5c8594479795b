"""A network of the distribution frame held in memory (balances the test sets), for the
scheduler's and the model's tests that need no chain; the EVM reads are tested on anvil."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from shared.config import load_settings
from workers.distribution.evm.network import normalize_evm_address
from workers.distribution.settings import DistSettings

TOKEN = "0x" + "7a" * 20
SOURCE = "0x" + "5c" * 20
PROVIDER = "0x" + "0d" * 20
TREASURY = "0x" + "7e" * 20


def addr(n: int) -> str:
    return normalize_evm_address(f"0x{n + 1:040x}") or ""


class MemoryNetwork:
    """The Network protocol over dictionaries; ``reads`` counts the balance reads."""

    kind: Literal["evm"] = "evm"

    def __init__(self, name: str = "devnet", *, decimals: int = 18) -> None:
        self.name = name
        self.token_decimals = decimals
        self.tokens: dict[tuple[str, str], int] = {}
        self.native: dict[str, int] = {}
        self.treasuries: dict[str, str] = {PROVIDER.lower(): TREASURY}
        self.reads = 0
        self.source = SOURCE
        self.fail = False

    def normalize_address(self, text: str) -> str | None:
        return normalize_evm_address(text)

    async def decimals(self, token: str) -> int:
        return self.token_decimals

    async def token_balance(self, token: str, owner: str) -> int:
        self.reads += 1
        return self.tokens.get((token.lower(), owner.lower()), 0)

    async def native_balance(self, owner: str) -> int:
        self.reads += 1
        return self.native.get(owner.lower(), 0)

    async def treasury(self, provider: str) -> str:
        return self.treasuries[provider.lower()]

    async def build_unsigned(
        self, token: str, source: str, manifest: Sequence[tuple[str, int]]
    ) -> dict[str, Any]:
        return {"to": token, "data": "0x", "value": "0x0", "chainId": 31337}

    async def aclose(self) -> None:
        return None


def dist_settings(**values: Any) -> DistSettings:
    return load_settings(DistSettings, **values)


def seed_task(
    task_id: str = "staking-reward-001",
    *,
    type: str = "scheduled",
    cron: str = "0 0 * * *",
    recipients: int = 2,
    **extra: Any,
) -> dict[str, Any]:
    """The seed's example task (two recipients at 50 %, 1000 tokens)."""
    task: dict[str, Any] = {
        "id": task_id,
        "name": "质押奖励每日分发",
        "type": type,
        "distribution": {
            "recipients": [
                {"address": addr(i), "percentage": 100 / recipients} for i in range(recipients)
            ],
            "totalAmount": 1000,
            "usePercentage": True,
        },
        "enabled": True,
        "runCount": 0,
    }
    if type == "scheduled":
        task["schedule"] = {"cron": cron}
    task.update(extra)
    return task
