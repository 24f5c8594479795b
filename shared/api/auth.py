"""Who may call a route: every route declares an access level, and the app enforces it.

Access levels (:class:`Access`), declared by the dependencies a route takes:

- ``admin``: :data:`Operator`, a bearer token of role ``admin`` from ``HODLAI_API_TOKENS_FILE``
  (every write an operator makes);
- ``read``: :data:`Reader` (or ``dependencies=[READ]``), a token of role ``read`` or
  ``admin``, or nothing when ``HODLAI_API_PUBLIC_READS=true``;
- ``user``: :func:`shared.api.siwe.require_user_proof`, an end user's Sign-In with Ethereum
  signature, no token;
- ``public``: :data:`PUBLIC` (``dependencies=[PUBLIC]``), no credential (``/healthz``, the
  SIWE nonce).

Guarantees:

- **Denied by default.** :func:`guard_route` runs before every FastAPI route of the app (an
  app-wide dependency, so routes an executor adds through a router or ``register(app)``
  included). A ``GET``/``HEAD`` route that declares nothing needs ``read``; any other method
  that declares nothing is refused with 403 for everyone, admins included, and logged as
  ``api_route_undeclared``: a write route that forgot :data:`Operator` cannot be called.
- The presented token is compared with *every* configured token by
  ``secrets.compare_digest``; the time taken does not say which token came close or matched.
- A missing, malformed or unknown token is a 401 JSON error with ``WWW-Authenticate:
  Bearer``; a known token whose role is too low is a 403; both before the route's body (and
  its parameters' validation) runs. With no tokens file every admin route, and every read
  route unless reads are public, is refused.
- No token, presented or configured, is logged: an operator is named by the id its token
  has in the tokens file (``operator:api:alice`` in the audit trail), so reordering the file
  renames no one.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Annotated, Any, Final, TypeVar

import structlog
from fastapi import Depends, HTTPException, Request
from fastapi.dependencies.models import Dependant
from fastapi.params import Depends as DependsParam
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.api.errors import Refusal
from shared.api.tokens import SETTING, OperatorToken, Role

log = structlog.get_logger(__name__)

PUBLIC_READS_SETTING: Final = "HODLAI_API_PUBLIC_READS"
# Methods that only read: what an undeclared route may serve (to a reader).
SAFE_METHODS: Final = frozenset({"GET", "HEAD"})
# The attribute that marks a dependency as declaring a route's access level.
ACCESS_MARK: Final = "__hodlai_access__"

# Only for the OpenAPI document (the "Authorize" button of /docs); the check is ours.
_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="operator",
    description=f"An operator token: the last field of a line of the file named by {SETTING}.",
)


class Access(IntEnum):
    """What a route declares it needs; a route declaring several needs the highest."""

    PUBLIC = 0
    USER = 1
    READ = 2
    ADMIN = 3


@dataclass(frozen=True)
class OperatorIdentity:
    """The operator a route acts for, named by its token's id, never by the token."""

    token_id: str
    role: Role

    @property
    def actor(self) -> str:
        """How the audit trail (``transitions.actor``) names this operator."""
        return f"operator:api:{self.token_id}"


class OperatorTokens:
    """The configured tokens; :meth:`match` finds the one presented, in constant time."""

    def __init__(self, tokens: Sequence[OperatorToken]) -> None:
        self._tokens = tuple(tokens)

    def __bool__(self) -> bool:
        return bool(self._tokens)

    def match(self, presented: str) -> OperatorToken | None:
        # Header values arrive decoded as latin-1, so this encoding gives back the bytes sent.
        candidate = presented.encode("latin-1", errors="replace")
        found: OperatorToken | None = None
        for token in self._tokens:  # no early exit: every token is compared every time
            if secrets.compare_digest(candidate, token.value) and found is None:
                found = token
        return found


F = TypeVar("F", bound=Callable[..., Any])


def declares(access: Access) -> Callable[[F], F]:
    """Mark a dependency as declaring its route's access level (see :func:`guard_route`)."""

    def mark(function: F) -> F:
        setattr(function, ACCESS_MARK, access)
        return function

    return mark


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(status_code=401, detail=message, headers={"WWW-Authenticate": "Bearer"})


def authenticate(
    request: Request, needed: Role, credentials: HTTPAuthorizationCredentials | None
) -> OperatorIdentity | None:
    """The operator presenting ``credentials``, if its role allows ``needed``; None for a read
    when reads are public. Raises 401 (no or unknown token) or 403 (role too low)."""
    if needed is Role.READ and request.app.state.settings.api_public_reads:
        return None
    path = request.url.path
    tokens: OperatorTokens = request.app.state.operator_tokens
    if not tokens:
        log.warning("operator_refused", reason="no_tokens_configured", path=path)
        if needed is Role.READ:
            raise _unauthorized(
                f"reads need a token: {SETTING} is unset and {PUBLIC_READS_SETTING} is false"
            )
        raise _unauthorized(f"write routes are disabled: no operator tokens ({SETTING} is unset)")
    if credentials is None:
        log.warning("operator_refused", reason="no_bearer_token", path=path)
        raise _unauthorized("this route needs an operator token: Authorization: Bearer <token>")
    token = tokens.match(credentials.credentials)
    if token is None:
        log.warning("operator_refused", reason="unknown_token", path=path)
        raise _unauthorized("the bearer token is not an operator token")
    if not token.role.allows(needed):
        log.warning("operator_refused", reason="role", token_id=token.token_id,
                    role=token.role.value, needed=needed.value, path=path)  # fmt: skip
        raise Refusal(
            403, "forbidden", f"this route needs the {needed.value} role; "
            f"token {token.token_id} has role {token.role.value}",
        )  # fmt: skip
    # Reads are many and change nothing: at debug level; every admin call at info.
    note = log.info if needed is Role.ADMIN else log.debug
    note("operator_authorized", token_id=token.token_id, role=token.role.value, path=path)
    return OperatorIdentity(token.token_id, token.role)


@declares(Access.ADMIN)
def require_admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> OperatorIdentity:
    """The dependency of every write route an operator calls."""
    operator = authenticate(request, Role.ADMIN, credentials)
    assert operator is not None  # only reads can be public
    return operator


@declares(Access.READ)
def require_read(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> OperatorIdentity | None:
    """A read route's dependency, for one that wants the reader's identity (or to say so)."""
    return authenticate(request, Role.READ, credentials)


@declares(Access.PUBLIC)
def public() -> None:
    """Declares a route open to anyone who reaches the port (``dependencies=[PUBLIC]``)."""


Operator = Annotated[OperatorIdentity, Depends(require_admin)]
Reader = Annotated[OperatorIdentity | None, Depends(require_read)]
PUBLIC: Final[DependsParam] = Depends(public)
# A read route's declaration when it does not need the reader's identity:
# ``@router.get(..., dependencies=[READ])``.
READ: Final[DependsParam] = Depends(require_read)


def declared_access(route: APIRoute) -> Access | None:
    """The highest access level any dependency of ``route`` declares; None if none does."""
    found: list[Access] = []
    _collect(route.dependant, found)
    return max(found) if found else None


def _collect(dependant: Dependant, found: list[Access]) -> None:
    mark = getattr(dependant.call, ACCESS_MARK, None)
    if isinstance(mark, Access):
        found.append(mark)
    for child in dependant.dependencies:
        _collect(child, found)


async def guard_route(request: Request) -> None:
    """The app-wide dependency that makes access declared-or-denied (module docstring)."""
    route = request.scope.get("route")
    access: Access | None = None
    if isinstance(route, APIRoute):
        cache: dict[int, Access | None] = request.app.state.route_access
        key = id(route)  # routes live as long as the app, so an id is never reused under it
        if key not in cache:
            cache[key] = declared_access(route)
        access = cache[key]
    # else (a FastAPI that no longer names the route): nothing is declared, so fail closed
    if access is not None:
        return  # the declaring dependency checks it, next
    if request.method in SAFE_METHODS:
        authenticate(request, Role.READ, await _bearer(request))
        return
    path = route.path if isinstance(route, APIRoute) else request.url.path
    log.warning("api_route_undeclared", method=request.method, path=path)
    raise Refusal(
        403, "forbidden", f"{request.method} {path} declares no access level, so no one may "
        "call it (the route needs an Operator, Reader or user-proof dependency)",
    )  # fmt: skip
