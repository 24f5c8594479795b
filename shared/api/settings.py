"""Settings of ``hodlai api``: the core ones plus ``HODLAI_API_*``."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from shared.api.hosts import HostPattern, default_hosts, is_wildcard, parse_host
from shared.config import CoreSettings

# What a browser sends as Origin: scheme://host[:port], no path and no trailing slash (an
# origin written with one never matches, and CORS would fail without saying why).
_ORIGIN = re.compile(
    r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$"
)
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$")


def _split(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class ApiSettings(CoreSettings):
    """Settings of ``hodlai api``."""

    # Interface to listen on. Loopback by default: the API speaks plain HTTP and its write
    # routes change requests' state; expose it through a TLS reverse proxy, or set 0.0.0.0
    # knowingly.
    api_host: str = Field(default="127.0.0.1")
    # TCP port. 8000 is uvicorn's usual port; 0 picks a free one (printed at start, for tests).
    api_port: int = Field(default=8000, ge=0, le=65535)
    # File of operator tokens, `<id> <role> <token>` per line, mode 0600. Unset: every admin
    # route answers 401, and every read route too unless HODLAI_API_PUBLIC_READS is true.
    api_tokens_file: Path | None = None
    # true: read routes (GET) need no token. false (the default): a `read` or `admin` token;
    # the node's state (requests, agents, jobs) is not everyone's to read.
    api_public_reads: bool = False
    # Comma-separated values the Host header may take (host, host:port, [v6]:port); without a
    # port any port. Empty: HODLAI_API_HOST and localhost. Refuses DNS rebinding (hosts.py).
    api_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Comma-separated origins a browser may call the API from (a console served elsewhere);
    # empty: no CORS headers at all, so browsers allow same-origin pages only.
    api_cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Comma-separated domains (host[:port], as a wallet shows them) an end user's Sign-In
    # with Ethereum message may name. Empty: the Host header of the request it comes with.
    api_siwe_domains: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Comma-separated chain ids an end user's message may name (a route may narrow them).
    # Empty: HODLAI_CHAIN_ID when set; with neither, user-proof routes answer 500.
    api_siwe_chain_ids: Annotated[list[int], NoDecode] = Field(default_factory=list)

    @field_validator("api_host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        text = value.strip()
        try:
            ipaddress.ip_address(text)
        except ValueError:
            if not _HOSTNAME.match(text):
                raise ValueError(f"not an IP address or host name: {value!r}") from None
        return text

    @field_validator("api_tokens_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator(
        "api_cors_origins", "api_allowed_hosts", "api_siwe_domains", "api_siwe_chain_ids",
        mode="before",
    )  # fmt: skip
    @classmethod
    def _split_lists(cls, value: object) -> object:
        return _split(value)

    @field_validator("api_cors_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "*" and not _ORIGIN.match(origin):
                raise ValueError(
                    f"not an origin (scheme://host[:port], no path or trailing slash): {origin!r}"
                )
        if "*" in value and len(value) > 1:
            raise ValueError("'*' (any origin) together with listed origins: choose one")
        return value

    @field_validator("api_allowed_hosts", "api_siwe_domains")
    @classmethod
    def _check_hosts(cls, value: list[str]) -> list[str]:
        for host in value:
            parse_host(host)  # its ValueError names the bad entry
        return value

    @field_validator("api_siwe_chain_ids")
    @classmethod
    def _check_chain_ids(cls, value: list[int]) -> list[int]:
        if any(chain_id < 1 for chain_id in value):
            raise ValueError("a chain id is a positive integer")
        return value

    @model_validator(mode="after")
    def _check_exposure(self) -> Self:
        # `*` would let any web page's script send what it holds to the API; with tokens
        # configured that is an operator's token pasted into the wrong page away from a leak.
        if "*" in self.api_cors_origins and self.api_tokens_file is not None:
            raise ValueError(
                "HODLAI_API_CORS_ORIGINS: '*' (any origin) is refused together with "
                "credentials (HODLAI_API_TOKENS_FILE is set): list the console's origins"
            )
        if is_wildcard(self.api_host) and not self.api_allowed_hosts:
            raise ValueError(
                f"HODLAI_API_ALLOWED_HOSTS: must be set when HODLAI_API_HOST is {self.api_host} "
                "(a wildcard address names no host): list the names clients use, "
                "e.g. node.example.com"
            )
        return self

    def allowed_hosts(self) -> list[HostPattern]:
        """The Host header values the API answers (HODLAI_API_ALLOWED_HOSTS or its default)."""
        if self.api_allowed_hosts:
            return [parse_host(host) for host in self.api_allowed_hosts]
        return default_hosts(self.api_host)

    def siwe_chain_ids(self) -> list[int]:
        """The chain ids an end user's message may name, before a route narrows them."""
        if self.api_siwe_chain_ids:
            return list(self.api_siwe_chain_ids)
        return [self.chain_id] if self.chain_id is not None else []
