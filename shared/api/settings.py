"""Settings of ``hodlai api``: the core ones plus ``HODLAI_API_*``."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from shared.config import CoreSettings

# What a browser sends as Origin: scheme://host[:port], no path and no trailing slash (an
# origin written with one never matches, and CORS would fail without saying why).
_ORIGIN = re.compile(
    r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$"
)
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$")


class ApiSettings(CoreSettings):
    """Settings of ``hodlai api``."""

    # Interface to listen on. Loopback by default: the API speaks plain HTTP and its write
    # routes change requests' state; expose it through a TLS reverse proxy, or set 0.0.0.0
    # knowingly.
    api_host: str = Field(default="127.0.0.1")
    # TCP port. 8000 is uvicorn's usual port; 0 picks a free one (printed at start, for tests).
    api_port: int = Field(default=8000, ge=0, le=65535)
    # File of operator bearer tokens, one per line, mode 0600. Unset: every write route
    # answers 401 (the API is read-only).
    api_tokens_file: Path | None = None
    # Comma-separated origins a browser may call the API from (a console served elsewhere);
    # empty: no CORS headers at all, so browsers allow same-origin pages only.
    api_cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

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

    @field_validator("api_cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("api_cors_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "*" and not _ORIGIN.match(origin):
                raise ValueError(
                    f"not an origin (scheme://host[:port], no path or trailing slash): {origin!r}"
                )
        return value
