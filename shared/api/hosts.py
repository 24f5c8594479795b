"""Trusted-host checking: a request whose ``Host`` header is not one of
``HODLAI_API_ALLOWED_HOSTS`` is answered 400 before any route runs.

Why: a page on ``http://evil.example`` whose name an attacker re-points at 127.0.0.1 (DNS
rebinding) makes the victim's browser call the node's loopback port as a same-origin page,
past CORS; the one thing it cannot forge is the ``Host`` header, which still says
``evil.example``.

Guarantees:

- Every HTTP request (every route, ``/healthz`` and ``/docs`` included) passes through
  :class:`TrustedHosts`; a missing, malformed or unlisted ``Host`` is a 400 JSON error
  (``bad_request``) that does not echo the header, and one ``api_host_refused`` event.
- Names compare case-insensitively, a trailing dot ignored. An allowed entry without a
  port allows any port (behind a proxy the port the browser used is not the one bound); an
  entry with a port allows that port only.
- The default is the bind address (``HODLAI_API_HOST``) and ``localhost``; a wildcard bind
  address (``0.0.0.0``, ``::``) names no host, so it needs the setting (ApiSettings refuses
  to start without it).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import Final, NamedTuple

import structlog
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.api.errors import error_response

log = structlog.get_logger(__name__)

SETTING: Final = "HODLAI_API_ALLOWED_HOSTS"
# A host name as it appears in a Host header: labels of letters, digits and hyphens, and
# underscores, which DNS forbids but container service names (hodlai_api) use.
_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*$")
# Characters of a refused Host header kept in the log: enough to recognise, not a flood.
LOGGED_HOST_CHARS: Final = 100


class HostPattern(NamedTuple):
    """An allowed host: a lower-case name or IP address (IPv6 without brackets), and the one
    port allowed with it, or None for any."""

    host: str
    port: int | None

    def allows(self, host: str, port: int | None) -> bool:
        return host == self.host and (self.port is None or port == self.port)


def parse_host(text: str) -> HostPattern:
    """``name``, ``name:port``, ``1.2.3.4[:port]`` or ``[v6][:port]``; ValueError otherwise."""
    value = text.strip().lower()
    port: int | None = None
    if value.startswith("["):
        address, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"not a host[:port]: {text!r}")
        port_text = rest[1:] if rest else None
        try:
            host = str(ipaddress.IPv6Address(address))
        except ValueError:
            raise ValueError(f"not an IPv6 address in brackets: {text!r}") from None
    else:
        host, colon, port_text_or_empty = value.partition(":")
        port_text = port_text_or_empty if colon else None
        host = host.removesuffix(".")
        try:
            host = str(ipaddress.IPv4Address(host))
        except ValueError:
            if not _NAME.match(host):
                raise ValueError(f"not a host name or address: {text!r}") from None
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
            raise ValueError(f"not a port: {text!r}")
        port = int(port_text)
    return HostPattern(host, port)


def default_hosts(bind_host: str) -> list[HostPattern]:
    """What HODLAI_API_ALLOWED_HOSTS means when unset: the bind address and localhost."""
    bound = bind_host.strip()
    pattern = parse_host(f"[{bound}]" if ":" in bound else bound)
    return [pattern, HostPattern("localhost", None)]


def is_wildcard(bind_host: str) -> bool:
    try:
        return ipaddress.ip_address(bind_host.strip()).is_unspecified
    except ValueError:
        return False


class TrustedHosts:
    """ASGI middleware: refuse requests for a host not in ``allowed`` (module docstring)."""

    def __init__(self, app: ASGIApp, allowed: Sequence[HostPattern]) -> None:
        self.app = app
        self.allowed = tuple(allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # the API serves no websockets: those find no route
            await self.app(scope, receive, send)
            return
        presented = next(
            (value.decode("latin-1") for name, value in scope["headers"] if name == b"host"), None
        )
        if presented is not None and self._allows(presented):
            await self.app(scope, receive, send)
            return
        log.warning("api_host_refused", path=scope["path"],
                    host=None if presented is None else presented[:LOGGED_HOST_CHARS])  # fmt: skip
        answer = error_response(
            400, "bad_request", f"the Host header names no host this node serves ({SETTING})"
        )
        await answer(scope, receive, send)

    def _allows(self, presented: str) -> bool:
        try:
            host, port = parse_host(presented)
        except ValueError:
            return False
        return any(pattern.allows(host, port) for pattern in self.allowed)
