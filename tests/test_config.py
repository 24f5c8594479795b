"""Settings: errors name the environment variable; secrets are not echoed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import HttpUrl, SecretStr

from shared.config import (
    MAX_SQLITE_INTEGER,
    CoreSettings,
    expand_credentials,
    load_settings,
    redact_url,
    redact_urls_in,
)
from shared.errors import ConfigError
from workers.oracle.settings import OracleSettings


def test_defaults_load_without_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(OracleSettings)
    assert settings.worker_count == 1 and settings.rpc_urls == []


def test_the_core_settings_name_no_executor() -> None:
    # The provider and the inference shards are the oracle's (issue 19): a node without the
    # oracle is not asked for them.
    oracle_only = {"provider_address", "worker_id", "worker_count"}
    assert oracle_only.isdisjoint(CoreSettings.model_fields)
    assert oracle_only <= set(OracleSettings.model_fields)


@pytest.mark.parametrize(
    ("env", "value", "named"),
    [
        ("HODLAI_CONFIRMATIONS", "three", "HODLAI_CONFIRMATIONS"),
        ("HODLAI_CONFIRMATIONS", "-1", "HODLAI_CONFIRMATIONS"),
        ("HODLAI_RPC_URLS", "http://ok:8545,ftp://nope", "HODLAI_RPC_URLS"),
        ("HODLAI_PROVIDER_ADDRESS", "0x1234", "HODLAI_PROVIDER_ADDRESS"),
        ("HODLAI_WORKER_COUNT", "43", "HODLAI_WORKER_COUNT"),
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL"),
        ("HODLAI_START_BLOCK", str(2**63), "HODLAI_START_BLOCK"),
        ("HODLAI_METRICS_PORT", "65536", "HODLAI_METRICS_PORT"),
    ],
)
def test_bad_setting_is_named_in_the_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: str, value: str, named: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as info:
        load_settings(OracleSettings)
    # The variable the user set, exactly: "LOG_LEVEL" is also inside "HODLAI_LOG_LEVEL".
    assert str(info.value).startswith(f"invalid setting(s): {named}: "), str(info.value)


def test_the_highest_start_block_the_database_can_store_is_accepted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HODLAI_START_BLOCK", str(MAX_SQLITE_INTEGER))
    assert load_settings(CoreSettings).start_block == 2**63 - 1


def test_a_shard_whose_metrics_port_would_pass_65535_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HODLAI_METRICS_PORT", "65530")
    assert load_settings(OracleSettings, worker_id=5).metrics_port == 65530  # 65535: fits
    with pytest.raises(ConfigError, match=r"HODLAI_METRICS_PORT \(65530\) \+ HODLAI_WORKER_ID"):
        load_settings(OracleSettings, worker_id=6)
    monkeypatch.setenv("HODLAI_METRICS_PORT", "0")  # metrics off: any shard is fine
    assert load_settings(OracleSettings, worker_id=40).worker_id == 40


def test_a_dotenv_file_that_is_not_utf8_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_bytes(b"HODLAI_START_BLOCK=5\nHODLAI_LLM_API_KEY=\xff\xfe\n")
    with pytest.raises(ConfigError, match=r"\.env is not UTF-8 text \(byte 0xff"):
        load_settings(CoreSettings)


def test_a_credentials_directory_path_is_expanded_only_from_systemd(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/hodlai-fulfiller.service")
    expected = Path("/run/credentials/hodlai-fulfiller.service/oracle-key")
    assert expand_credentials("$CREDENTIALS_DIRECTORY/oracle-key") == expected
    assert expand_credentials("${CREDENTIALS_DIRECTORY}/oracle-key") == expected
    assert expand_credentials("/etc/hodlai/$HOME/key") == "/etc/hodlai/$HOME/key"  # literal
    assert expand_credentials("$CREDENTIALS_DIRECTORYX/k") == "$CREDENTIALS_DIRECTORYX/k"
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(ValueError, match="LoadCredential="):
        expand_credentials("$CREDENTIALS_DIRECTORY/oracle-key")


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
        load_settings(OracleSettings).require("rpc_urls", "provider_address")


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


SECRET_URL = "https://user:pw@host.example/v3/SECRETKEY?key=abc"
SECRETS = ("user", "pw", "SECRETKEY", "key=abc")


def _message(cls: type[CoreSettings]) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(cls)
    return str(info.value)


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("HODLAI_RPC_URLS", f"{SECRET_URL},ftp://user:pw@other.example/SECRETKEY"),
        ("HODLAI_RPC_URLS", f"{SECRET_URL},user:pw@host.example/v3/SECRETKEY?key=abc"),
        ("HODLAI_LLM_BASE_URL", "ftp://user:pw@host.example/v3/SECRETKEY?key=abc"),
        ("HODLAI_LLM_BASE_URL", "user:pw@host.example/v3/SECRETKEY?key=abc"),
        ("HODLAI_IPFS_API_URL", "ipfs://user:pw@host.example/v3/SECRETKEY?key=abc"),
    ],
)
def test_a_bad_url_setting_is_named_without_its_secrets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: str, value: str
) -> None:
    from workers.oracle.inference.settings import InferenceSettings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(env, value)
    message = _message(InferenceSettings)
    assert env in message and "host.example" in message
    assert not [secret for secret in SECRETS if secret in message], message


class _WithRequired(CoreSettings):
    llm_api_key: SecretStr | None = None
    needed_count: int


def test_a_missing_setting_never_echoes_the_other_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # pydantic's "missing" error carries every value it was given as its input.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HODLAI_RPC_URLS", SECRET_URL)
    monkeypatch.setenv("HODLAI_LLM_API_KEY", "sk-live-abcdef")
    message = _message(_WithRequired)
    assert "HODLAI_NEEDED_COUNT" in message
    assert "sk-live" not in message and "SECRETKEY" not in message and "pw@" not in message


class _WithPydanticUrl(CoreSettings):
    webhook: HttpUrl | None = None
    notes: str = ""
    retries: int = 1


def test_a_url_in_any_setting_is_redacted_in_the_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HODLAI_WEBHOOK", "https://user:pw@host.example:99999/v3/SECRETKEY")
    monkeypatch.setenv("HODLAI_RETRIES", SECRET_URL)  # pasted into the wrong setting
    message = _message(_WithPydanticUrl)
    assert "HODLAI_WEBHOOK" in message and "HODLAI_RETRIES" in message
    assert "https://host.example" in message
    assert not [secret for secret in SECRETS if secret in message], message


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (SECRET_URL, "https://host.example"),
        ("http://127.0.0.1:8545", "http://127.0.0.1:8545"),
        ("https://bsc.nodereal.io/v1/0123456789abcdef", "https://bsc.nodereal.io"),
        ("wss://u:p@[::1]:8546/ws?token=t", "wss://[::1]:8546"),
        ("localhost:8545/KEY", "localhost:8545"),
        ("not a url at all", "<url>"),
        ("https://host:notaport/KEY", "<url>"),
    ],
)
def test_redact_url_keeps_only_scheme_host_and_port(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_urls_in_text_leaves_the_rest_of_the_text() -> None:
    text = f"cannot reach {SECRET_URL}: refused; see https://docs.example/page?x=1."
    assert redact_urls_in(text) == (
        "cannot reach https://host.example: refused; see https://docs.example."
    )


def test_cli_never_prints_the_rpc_urls_secrets(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "shared.cli", "status"],
        env={"HODLAI_RPC_URLS": f"{SECRET_URL},ftp://x", "PATH": "/usr/bin:/bin"},
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "HODLAI_RPC_URLS" in proc.stderr
    assert not [secret for secret in SECRETS if secret in proc.stderr], proc.stderr
