"""The Solana distribution demo runs and checks itself (a small airdrop)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts import demo_distribution_solana


def test_the_solana_demo_pays_everyone_once_through_a_lost_and_expired_batch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        demo_distribution_solana.main(["--recipients", "24", "--db", str(tmp_path / "d.db")]) == 0
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["paid"] == 24 and result["wrong_balances"] == 0
    assert result["double_payments"] == 0
    assert result["transactions"] == {"expired": 1, "landed": 3}
    assert result["late_packets_refused"] is True
