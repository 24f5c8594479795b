"""Who may call a write route: an operator, i.e. a caller presenting one of the tokens of
``HODLAI_API_TOKENS_FILE`` as ``Authorization: Bearer <token>``.

Guarantees:

- The presented token is compared with *every* configured token by
  ``secrets.compare_digest``; the time taken does not say which token came close or matched.
- A missing, malformed or wrong token is a 401 JSON error with ``WWW-Authenticate: Bearer``,
  raised before the route's body runs. With no tokens file configured every write is refused.
- No token, presented or configured, is logged: an operator is named by the line of the
  tokens file its token is on (``operator:api#3`` in the audit trail).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import structlog
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.api.tokens import SETTING, OperatorToken

log = structlog.get_logger(__name__)

# Only for the OpenAPI document (the "Authorize" button of /docs); the check is ours.
_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="operator",
    description=f"An operator token: one line of the file named by {SETTING}.",
)


@dataclass(frozen=True)
class OperatorIdentity:
    """The operator a write route acts for, named without its token."""

    token_line: int

    @property
    def actor(self) -> str:
        """How the audit trail (``transitions.actor``) names this operator."""
        return f"operator:api#{self.token_line}"


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


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(status_code=401, detail=message, headers={"WWW-Authenticate": "Bearer"})


def require_operator(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> OperatorIdentity:
    """The dependency of every write route."""
    tokens: OperatorTokens = request.app.state.operator_tokens
    if not tokens:
        log.warning("operator_refused", reason="no_tokens_configured", path=request.url.path)
        raise _unauthorized(f"write routes are disabled: no operator tokens ({SETTING} is unset)")
    if credentials is None:
        log.warning("operator_refused", reason="no_bearer_token", path=request.url.path)
        raise _unauthorized("this route needs an operator token: Authorization: Bearer <token>")
    token = tokens.match(credentials.credentials)
    if token is None:
        log.warning("operator_refused", reason="unknown_token", path=request.url.path)
        raise _unauthorized("the bearer token is not an operator token")
    operator = OperatorIdentity(token.line)
    log.info("operator_authorized", token_line=token.line, path=request.url.path)
    return operator


Operator = Annotated[OperatorIdentity, Depends(require_operator)]
