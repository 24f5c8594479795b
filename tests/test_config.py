"""Settings: errors name the environment variable; secrets are not echoed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from shared.config import CoreSettings, load_settings
from shared.errors import ConfigError


def test_defaults_load_without_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(CoreSettings)
    assert settings.worker_count == 1 and settings.rpc_urls == []


@pytest.mark.parametrize(
    ("env", "value", "named"),
    [
        ("HODLAI_CONFIRMATIONS", "three", "HODLAI_CONFIRMATIONS"),
        ("HODLAI_CONFIRMATIONS", "-1", "HODLAI_CONFIRMATIONS"),
        ("HODLAI_RPC_URLS", "http://ok:8545,ftp://nope", "HODLAI_RPC_URLS"),
        ("HODLAI_PROVIDER_ADDRESS", "0x1234", "HODLAI_PROVIDER_ADDRESS"),
        ("HODLAI_WORKER_COUNT", "43", "HODLAI_WORKER_COUNT"),
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL"),
    ],
)
def test_bad_setting_is_named_in_the_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: str, value: str, named: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError, match=named):
        load_settings(CoreSettings)


def test_rpc_urls_are_split_on_commas(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HODLAI_RPC_URLS", " http://a:1 ,https://b/key ,")
    assert load_settings(CoreSettings).rpc_urls == ["http://a:1", "https://b/key"]


def test_dotenv_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("HODLAI_START_BLOCK=1234\nLOG_LEVEL=debug\n")
    settings = load_settings(CoreSettings)
    assert settings.start_block == 1234 and settings.log_level == "DEBUG"


def test_require_names_every_missing_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="HODLAI_RPC_URLS, HODLAI_PROVIDER_ADDRESS"):
        load_settings(CoreSettings).require("rpc_urls", "provider_address")


class _WithSecret(CoreSettings):
    llm_api_key: SecretStr
    llm_timeout_s: float = 5.0


def test_secret_values_are_not_echoed_in_errors(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HODLAI_LLM_TIMEOUT_S", "sk-live-abcdef")
    with pytest.raises(ConfigError) as info:
        load_settings(_WithSecret)
    assert "HODLAI_LLM_API_KEY" in str(info.value)  # missing, named
    assert "HODLAI_LLM_TIMEOUT_S" in str(info.value)


def test_cli_reports_bad_setting_by_name_with_exit_code_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "shared.cli", "status"],
        env={"HODLAI_CONFIRMATIONS": "many", "PATH": "/usr/bin:/bin"},
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "HODLAI_CONFIRMATIONS" in proc.stderr
    assert "Traceback" not in proc.stderr
