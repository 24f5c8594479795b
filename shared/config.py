"""Settings: environment variables with the ``HODLAI_`` prefix and a ``.env`` file.

Every process loads its settings once in its composition root through ``load_settings``.
A malformed or missing setting stops the process with a :class:`ConfigError` whose message
names the environment variable, never with a traceback from pydantic. Secret values
(``SecretStr`` fields) are never echoed back in those messages, and neither is any part of a
URL beyond its scheme, host and port (:func:`redact_url`): providers put API keys in the
userinfo, the path and the query. A missing setting never echoes the other settings.

A ``.env`` file that is not UTF-8 is refused the same way (naming the file). Settings that
name a file may start with ``$CREDENTIALS_DIRECTORY`` (see :func:`expand_credentials`), the
directory where systemd's ``LoadCredential=`` puts a service's secrets.

Each worker extends :class:`CoreSettings` with its own fields; the core ones are shared so
that one ``.env`` file configures the whole node. An executor's anchor (the oracle's
provider address, its shard count) is the executor's setting, not the core's
(workers/oracle/settings.py).

Chains are named: ``HODLAI_CHAINS__<name>__RPC_URLS`` (and ``__CHAIN_ID``,
``__CONFIRMATIONS``) define the chain ``<name>`` (pydantic-settings' nested delimiter ``__``;
names are case-insensitive and read in lower case), and an executor refers to a chain by its
name (:meth:`CoreSettings.chain`). ``HODLAI_RPC_URLS``, ``HODLAI_CHAIN_ID`` and
``HODLAI_CONFIRMATIONS`` are the chain named ``default``, so a node that uses one chain
configures it as before.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.errors import ConfigError

ENV_PREFIX = "HODLAI_"
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]

_URL = re.compile(r"^https?://[^\s/]+(/\S*)?$")
# Anything that looks like "scheme://..." inside a message, up to a quote, space or bracket.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>\[\](){},]+")
# What a host may look like: a DNS name, an IPv4 address or an IPv6 address (unbracketed).
_HOST = re.compile(r"[a-z0-9._-]+|[0-9a-f:.]+")
# A quoted value inside a validator's message ('...' or "..."), as repr() writes one.
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
# Settings whose values are URLs (or lists of them): HODLAI_RPC_URLS, HODLAI_LLM_BASE_URL,
# HODLAI_IPFS_API_URL, a future HODLAI_DB_URL or ..._ENDPOINT. Matched by name, so every
# executor's URL settings are covered without registering them.
_URL_FIELD = re.compile(r"(^|_)(urls?|uris?|dsn|endpoints?)($|_)")
# The largest value an SQLite INTEGER holds: block numbers are stored as INTEGER.
MAX_SQLITE_INTEGER: Final = 2**63 - 1
MAX_PORT: Final = 65535
# Set by systemd for a unit with LoadCredential=: the directory holding its credentials.
CREDENTIALS_ENV: Final = "CREDENTIALS_DIRECTORY"
_CREDENTIALS_REF = re.compile(
    r"^\$(\{CREDENTIALS_DIRECTORY\}|CREDENTIALS_DIRECTORY(?![A-Za-z0-9_]))"
)


#: The name of the chain that HODLAI_RPC_URLS, HODLAI_CHAIN_ID and HODLAI_CONFIRMATIONS set.
DEFAULT_CHAIN: Final = "default"
# What a chain's name may be: it is part of environment variable names and of log lines.
_CHAIN_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def _split_comma_list(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _check_url_list(value: list[str]) -> list[str]:
    for url in value:
        if not _URL.match(url):
            raise ValueError(f"not an http(s) URL: {redact_url(url)!r}")
    return value


class ChainSettings(BaseModel):
    """One named chain (``HODLAI_CHAINS__<name>__…``): where to read it, what to expect."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Comma-separated; the first healthy one is used and the others are failovers.
    rpc_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # When set, checked against eth_chainId (and the database); when unset, taken from the RPC.
    chain_id: int | None = Field(default=None, ge=1)
    # Blocks below the head before a log is accepted; None: HODLAI_CONFIRMATIONS.
    confirmations: int | None = Field(default=None, ge=0, le=10_000)

    @field_validator("rpc_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        return _split_comma_list(value)

    @field_validator("rpc_urls")
    @classmethod
    def _check_urls(cls, value: list[str]) -> list[str]:
        return _check_url_list(value)


@dataclass(frozen=True, slots=True)
class Chain:
    """A named chain as an executor uses it (:meth:`CoreSettings.chain`)."""

    name: str
    rpc_urls: tuple[str, ...]
    #: the chain id the RPC must report; None: whatever it reports (checked against the
    #: database's identity of the executor)
    chain_id: int | None
    confirmations: int
    #: the environment variable an operator sets for its RPC URLs (named in errors)
    rpc_setting: str


class CoreSettings(BaseSettings):
    """Settings every process understands."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
        # HODLAI_CHAINS__base__RPC_URLS -> chains["base"].rpc_urls
        env_nested_delimiter="__",
    )

    db_path: Path = Field(default=Path("hodlai.db"), description="SQLite database file")
    # A database file the node creates is 0600: it holds signed transactions and encrypted
    # wallets. True makes it 0660, for processes that run as separate users of one group
    # (the systemd units set it; docs/OPERATIONS.md).
    db_group_writable: bool = False
    # Comma-separated; the first healthy one is used and the others are failovers.
    rpc_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # When set, checked against eth_chainId and the database; when unset, taken from the RPC.
    chain_id: int | None = Field(default=None, ge=1)
    # Bounded by what the database can store (block numbers are SQLite INTEGERs).
    start_block: int = Field(default=0, ge=0, le=MAX_SQLITE_INTEGER)
    # Blocks below the head before a log is accepted; BSC reorgs are rarely deeper than a few.
    confirmations: int = Field(default=3, ge=0, le=10_000)
    # 0 disables; each long-running process serves /metrics and /healthz on this port.
    metrics_port: int = Field(default=0, ge=0, le=MAX_PORT)
    log_level: LogLevel = Field(default="INFO", validation_alias="LOG_LEVEL")
    # Named chains, HODLAI_CHAINS__<name>__RPC_URLS etc. (see the module docstring).
    chains: dict[str, ChainSettings] = Field(default_factory=dict)

    @field_validator("rpc_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        return _split_comma_list(value)

    @field_validator("rpc_urls")
    @classmethod
    def _check_urls(cls, value: list[str]) -> list[str]:
        return _check_url_list(value)

    @field_validator("chains")
    @classmethod
    def _check_chain_names(cls, value: dict[str, ChainSettings]) -> dict[str, ChainSettings]:
        for name in value:
            if not _CHAIN_NAME.match(name):
                raise ValueError(
                    f"chain name {name!r} must be a letter followed by up to 31 letters, "
                    "digits, '_' or '-'"
                )
        return value

    def chain(self, name: str = DEFAULT_CHAIN) -> Chain:
        """The chain an executor names: ``HODLAI_CHAINS__<name>__…``; ``default`` (unless
        defined that way too) is HODLAI_RPC_URLS, HODLAI_CHAIN_ID and HODLAI_CONFIRMATIONS.
        Raises ConfigError naming the setting when the chain is unknown or has no RPC URL."""
        key = name.lower()
        named = self.chains.get(key)
        if named is not None:
            setting = f"{ENV_PREFIX}CHAINS__{key}__RPC_URLS"
            chain = Chain(
                name=key,
                rpc_urls=tuple(named.rpc_urls),
                chain_id=named.chain_id,
                confirmations=(
                    self.confirmations if named.confirmations is None else named.confirmations
                ),
                rpc_setting=setting,
            )
        elif key == DEFAULT_CHAIN:
            chain = Chain(
                name=key,
                rpc_urls=tuple(self.rpc_urls),
                chain_id=self.chain_id,
                confirmations=self.confirmations,
                rpc_setting=env_name(type(self), "rpc_urls"),
            )
        else:
            known = ", ".join(sorted({DEFAULT_CHAIN, *self.chains})) or DEFAULT_CHAIN
            raise ConfigError(
                f"no chain named {key!r} (known: {known}): define it with "
                f"{ENV_PREFIX}CHAINS__{key}__RPC_URLS"
            )
        if not chain.rpc_urls:
            raise ConfigError(f"missing required setting(s): {chain.rpc_setting}")
        return chain

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


def settings_epilog(cls: type[BaseSettings], *, also: Sequence[tuple[str, str]] = ()) -> str:
    """The settings of a command, for its ``--help``: every field of ``cls`` as its
    environment variable with its default (and its description where it has one), then
    ``also`` (name, meaning) for what is read outside the settings class. Secrets show no
    default (they have none)."""
    lines = ["settings (environment or .env) [default]:"]
    for field, info in cls.model_fields.items():
        if field == "chains":
            continue  # HODLAI_CHAINS__<name>__…: named chains, docs/OPERATIONS.md
        default = info.get_default(call_default_factory=True)
        shown = "" if default in (None, "", [], {}) else f" [{default}]"
        meaning = f"  {info.description}" if info.description else ""
        lines.append(f"  {env_name(cls, field)}{shown}{meaning}")
    lines += [f"  {name}  {meaning}" for name, meaning in also]
    lines.append("More: docs/OPERATIONS.md.")
    return "\n".join(lines)


def env_name(cls: type[BaseSettings], field: str) -> str:
    """The environment variable that sets ``field`` of ``cls``."""
    info = cls.model_fields.get(field)
    if info is not None and isinstance(info.validation_alias, str):
        return info.validation_alias
    prefix = str(cls.model_config.get("env_prefix", ""))
    return f"{prefix}{field}".upper()


def expand_credentials(value: object) -> object:
    """A path setting that starts with ``$CREDENTIALS_DIRECTORY`` (or ``${...}``) with that
    part replaced by the directory systemd's ``LoadCredential=`` made for this service.

    Only this one variable is expanded, and only at the start: every other path is taken
    literally. Inside a unit ``%d/NAME`` does the same and systemd expands it itself; this is
    for an environment file or ``.env``, where systemd expands nothing."""
    text = str(value) if isinstance(value, str | Path) else None
    if text is None or not _CREDENTIALS_REF.match(text):
        return value
    directory = os.environ.get(CREDENTIALS_ENV, "")
    if not directory:
        raise ValueError(
            f"{text!r} refers to ${CREDENTIALS_ENV}, which is not set: only a systemd unit "
            "with LoadCredential= has it"
        )
    return Path(_CREDENTIALS_REF.sub(lambda _: directory, text, count=1))


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build ``cls`` from the environment and ``.env``; translate errors into ConfigError."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(cls, exc)) from None
    except UnicodeDecodeError as exc:
        # Only the .env file is decoded here (the environment arrives as str).
        env_file = Path(str(cls.model_config.get("env_file") or ".env")).absolute()
        raise ConfigError(
            f"{env_file} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
            f"{exc.start}); save it as UTF-8"
        ) from None


def _describe(cls: type[BaseSettings], exc: ValidationError) -> str:
    by_alias = {
        info.validation_alias: name
        for name, info in cls.model_fields.items()
        if isinstance(info.validation_alias, str)
    }
    lines = []
    for error in exc.errors():
        if not error["loc"]:  # a check across several settings: its message names them
            lines.append(error["msg"].removeprefix("Value error, "))
            continue
        # pydantic reports a field with an alias under the alias (LOG_LEVEL), others by name.
        loc = str(error["loc"][0])
        field = by_alias.get(loc, loc)
        if field == "chains" and len(error["loc"]) >= 2:
            # A named chain's setting: HODLAI_CHAINS__<name>__<FIELD>, its URLs redacted.
            where = "__".join(
                [f"{ENV_PREFIX}CHAINS", str(error["loc"][1])]
                + [str(part).upper() for part in error["loc"][2:3]]
            )
            message = redact_urls_in(str(error["msg"]))
            shown = f" (got {_redacted_value(error.get('input'))!r})"
            lines.append(f"{where}: {message}{shown}")
            continue
        info = cls.model_fields.get(field)
        secret = info is not None and "Secret" in str(info.annotation)
        url_like = _is_url_setting(field, info.annotation if info is not None else None)
        message = redact_urls_in(str(error["msg"]))
        if url_like:
            message = _QUOTED.sub(lambda m: repr(redact_url(m.group()[1:-1])), message)
        # A missing setting's "input" is every other setting pydantic was given: never echo it.
        if secret or error.get("type") == "missing":
            shown = ""
        elif url_like:
            shown = f" (got {_redacted_value(error.get('input'))!r})"
        else:
            shown = f" (got {redact_urls_in(repr(error.get('input')))})"
        lines.append(f"{env_name(cls, field)}: {message}{shown}")
    return "invalid setting(s): " + "; ".join(lines)


def _is_url_setting(field: str, annotation: object) -> bool:
    return bool(_URL_FIELD.search(field.lower())) or "Url" in str(annotation)


def _redacted_value(value: object) -> object:
    """A URL setting's raw value with every URL in it redacted (a comma list counts as one)."""
    if isinstance(value, str):
        return ",".join(redact_url(part) for part in value.split(","))
    if isinstance(value, list | tuple):
        return [_redacted_value(item) for item in value]
    return redact_urls_in(repr(value))


def redact_url(url: str) -> str:
    """``url`` as ``scheme://host:port``: no userinfo, path, query or fragment, which is where
    providers put API keys (``https://user:pw@host/v3/KEY?key=...`` -> ``https://host``).
    A value without a scheme keeps only its host and port; one without a host is ``<url>``."""
    text = url.strip()
    try:
        parts = urlsplit(text if "://" in text else "//" + text)
        host, port = parts.hostname, parts.port
    except ValueError:
        return "<url>"
    if not host or not _HOST.fullmatch(host):
        return "<url>"
    scheme = f"{parts.scheme}://" if parts.scheme else ""
    shown_host = f"[{host}]" if ":" in host else host
    return f"{scheme}{shown_host}{'' if port is None else f':{port}'}"


def redact_urls_in(text: str) -> str:
    """``text`` with every ``scheme://...`` in it redacted by :func:`redact_url`."""

    def redact(match: re.Match[str]) -> str:
        url = match.group().rstrip(".,:;!?")  # sentence punctuation after a URL stays
        return redact_url(url) + match.group()[len(url) :]

    return _URL_IN_TEXT.sub(redact, text)
