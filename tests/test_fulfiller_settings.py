"""Fulfiller settings: names, defaults, unit conversions, and secrets kept out of errors."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

import pytest

from shared.config import load_settings
from shared.errors import ConfigError
from workers.oracle.fulfiller.settings import FulfillerSettings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("HODLAI_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env file


def test_defaults_are_the_documented_ones() -> None:
    settings = load_settings(FulfillerSettings)
    assert settings.fulfiller_window == 64
    assert settings.max_fee_wei == 100 * 10**9
    assert settings.max_priority_fee_wei == 5 * 10**9
    assert settings.min_balance_wei == 5 * 10**16
    assert settings.fault_point == ""


def test_settings_come_from_hodlai_variables_with_units_converted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HODLAI_FULFILLER_WINDOW", "16")
    monkeypatch.setenv("HODLAI_FULFILLER_MAX_FEE_GWEI", "0.5")
    monkeypatch.setenv("HODLAI_FULFILLER_MIN_BALANCE", "1.25")
    monkeypatch.setenv("HODLAI_KEY_FILE", "/etc/hodlai/oracle.json")
    monkeypatch.setenv("HODLAI_FAULT_POINT", "after_record")
    settings = load_settings(FulfillerSettings)
    assert settings.fulfiller_window == 16
    assert settings.fulfiller_max_fee_gwei == Decimal("0.5") and settings.max_fee_wei == 5 * 10**8
    assert settings.min_balance_wei == 125 * 10**16
    assert str(settings.key_file) == "/etc/hodlai/oracle.json"
    assert settings.fault_point == "after_record"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HODLAI_FULFILLER_WINDOW", "0"),
        ("HODLAI_FULFILLER_GAS_CAP", "100"),
        ("HODLAI_FULFILLER_MAX_FEE_GWEI", "-1"),
        ("HODLAI_FULFILLER_MAX_FEE_GWEI", "1e30"),
        ("HODLAI_FULFILLER_MAX_FEE_GWEI", "10000.000000001"),
        ("HODLAI_FULFILLER_MAX_FEE_GWEI", "1e-10"),  # below one wei: would round to 0
        ("HODLAI_FULFILLER_MAX_PRIORITY_FEE_GWEI", "1e30"),
        ("HODLAI_FAULT_POINT", "somewhere"),
    ],
)
def test_a_bad_setting_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        load_settings(FulfillerSettings)


def test_the_passphrase_is_a_secret_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HODLAI_KEY_PASSPHRASE", "hunter2-passphrase")
    monkeypatch.setenv("HODLAI_FULFILLER_WINDOW", "zero")
    with pytest.raises(ConfigError) as info:
        load_settings(FulfillerSettings)
    assert "hunter2" not in str(info.value)
    monkeypatch.setenv("HODLAI_FULFILLER_WINDOW", "8")
    settings = load_settings(FulfillerSettings)
    assert "hunter2" not in repr(settings)
    assert settings.key_passphrase is not None
    assert settings.key_passphrase.get_secret_value() == "hunter2-passphrase"


def test_the_highest_fee_cap_is_accepted() -> None:
    settings = load_settings(FulfillerSettings, fulfiller_max_fee_gwei="10000")
    assert settings.max_fee_wei == 10_000 * 10**9


def test_the_key_file_may_name_the_systemd_credentials_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HODLAI_KEY_FILE", "$CREDENTIALS_DIRECTORY/oracle-key")
    monkeypatch.setenv("HODLAI_KEY_PASSPHRASE_FILE", "${CREDENTIALS_DIRECTORY}/oracle-passphrase")
    with pytest.raises(ConfigError, match=r"HODLAI_KEY_FILE: .*CREDENTIALS_DIRECTORY.*not set"):
        load_settings(FulfillerSettings)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/hodlai-fulfiller.service")
    settings = load_settings(FulfillerSettings)
    assert settings.key_file == Path("/run/credentials/hodlai-fulfiller.service/oracle-key")
    assert settings.key_passphrase_file == Path(
        "/run/credentials/hodlai-fulfiller.service/oracle-passphrase"
    )


def test_the_fulfillers_help_names_its_settings_with_their_defaults() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "shared.cli", "fulfiller", "--help"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    for name in ("HODLAI_KEY_FILE", "HODLAI_DB_PATH", "HODLAI_RPC_URLS", "HODLAI_LOCK_DIR"):
        assert name in out
    assert "HODLAI_FULFILLER_WINDOW [64]" in out
