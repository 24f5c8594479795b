"""Settings: environment variables with the ``HODLAI_`` prefix and a ``.env`` file.

Every process loads its settings once in its composition root through ``load_settings``.
A malformed or missing setting stops the process with a :class:`ConfigError` whose message
names the environment variable, never with a traceback from pydantic. Secret values
(``SecretStr`` fields) are never echoed back in those messages.

Each worker extends :class:`CoreSettings` with its own fields; the core ones are shared so
that one ``.env`` file configures the whole node.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from eth_utils.address import is_hex_address, to_checksum_address
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.errors import ConfigError

ENV_PREFIX = "HODLAI_"
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]

_URL = re.compile(r"^https?://[^\s/]+(/\S*)?$")


class CoreSettings(BaseSettings):
    """Settings every process understands."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    db_path: Path = Field(default=Path("hodlai.db"), description="SQLite database file")
    # Comma-separated; the first healthy one is used and the others are failovers.
    rpc_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    provider_address: str | None = Field(default=None, description="HoldAIProvider address")
    # When set, checked against eth_chainId and the database; when unset, taken from the RPC.
    chain_id: int | None = Field(default=None, ge=1)
    start_block: int = Field(default=0, ge=0)
    # Blocks below the head before a log is accepted; BSC reorgs are rarely deeper than a few.
    confirmations: int = Field(default=3, ge=0, le=10_000)
    worker_id: int = Field(default=0, ge=0)
    # At most 42: shards are computed from request_id mod lcm(1..42) (see shared.request_id).
    worker_count: int = Field(default=1, ge=1, le=42)
    # 0 disables; each long-running process serves /metrics and /healthz on this port.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    log_level: LogLevel = Field(default="INFO", validation_alias="LOG_LEVEL")

    @field_validator("rpc_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("rpc_urls")
    @classmethod
    def _check_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not _URL.match(url):
                raise ValueError(f"not an http(s) URL: {url!r}")
        return value

    @field_validator("provider_address")
    @classmethod
    def _check_address(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not is_hex_address(value):
            raise ValueError(f"not a 20-byte hex address: {value!r}")
        return to_checksum_address(value)

    @field_validator("chain_id", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    def require(self, *fields: str) -> None:
        """Raise ConfigError naming every listed setting that is empty."""
        missing = [env_name(type(self), f) for f in fields if getattr(self, f) in (None, "", [])]
        if missing:
            raise ConfigError("missing required setting(s): " + ", ".join(missing))


S = TypeVar("S", bound=BaseSettings)


def env_name(cls: type[BaseSettings], field: str) -> str:
    """The environment variable that sets ``field`` of ``cls``."""
    info = cls.model_fields.get(field)
    if info is not None and isinstance(info.validation_alias, str):
        return info.validation_alias
    prefix = str(cls.model_config.get("env_prefix", ""))
    return f"{prefix}{field}".upper()


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build ``cls`` from the environment and ``.env``; translate errors into ConfigError."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(cls, exc)) from None


def _describe(cls: type[BaseSettings], exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "?"
        info = cls.model_fields.get(field)
        secret = info is not None and "Secret" in str(info.annotation)
        shown = "" if secret else f" (got {error.get('input')!r})"
        lines.append(f"{env_name(cls, field)}: {error['msg']}{shown}")
    return "invalid setting(s): " + "; ".join(lines)
