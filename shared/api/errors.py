"""The API's one error boundary: every failure leaves as ``{"error": code, "message": text}``.

The core's errors (shared/errors.py) are translated here by type, as httpx maps transport
errors at its boundary, so routes raise the core's errors and never build error responses:

=====================  ======  =====================  =========================================
error                  status  code                   message
=====================  ======  =====================  =========================================
NotFoundError          404     ``not_found``          the error's own (names the missing key)
TransitionConflict     409     ``conflict``           the error's own (the row's actual state)
InvalidRequestError    422     ``invalid_request``    the error's own (what is wrong with it)
request validation     422     ``invalid_request``    each bad parameter and why
StoreBusyError         503     ``busy``               generic, with Retry-After
other RetryableError   503     ``unavailable``        generic, with Retry-After
ConfigError            500     ``misconfigured``      generic: the log names the setting
anything else          500     ``internal``           generic: the log has the traceback
HTTP errors (401/404…) same    by status              the route's or the router's own
Refusal                same    its own code           its own (e.g. ``user_proof_expired``)
=====================  ======  =====================  =========================================

Only messages built from the caller's own input are echoed; a generic message never carries
a setting, a path or an upstream answer, which could hold a secret.
"""

from __future__ import annotations

import math
from typing import Any, Final

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.errors import (
    ConfigError,
    HodlaiError,
    InvalidRequestError,
    NotFoundError,
    RetryableError,
    StoreBusyError,
    TransitionConflict,
)

log = structlog.get_logger(__name__)

# Seconds a client is told to wait after a 503 when the error did not say: SQLite's busy
# timeout already waited 10 s, so a second's pause is enough to not hammer a wedged store.
DEFAULT_RETRY_AFTER_S: Final = 1

# (type, status, code, echo the error's message); the first match wins: subclasses first.
_CORE_ERRORS: Final[tuple[tuple[type[HodlaiError], int, str, bool], ...]] = (
    (NotFoundError, 404, "not_found", True),
    (TransitionConflict, 409, "conflict", True),
    (InvalidRequestError, 422, "invalid_request", True),
    (StoreBusyError, 503, "busy", False),
    (RetryableError, 503, "unavailable", False),
    (ConfigError, 500, "misconfigured", False),
    (HodlaiError, 500, "internal", False),
)
_GENERIC: Final = {
    "busy": "the database is busy; retry shortly",
    "unavailable": "a dependency is unavailable; retry shortly",
    "misconfigured": "the node is misconfigured; the operator's log says which setting",
    "internal": "internal error; the operator's log has the details",
}
_HTTP_CODES: Final = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    422: "invalid_request",
    503: "unavailable",
}


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: str
    message: str


def _doc(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


# For a route's ``responses=``: documents the error shape (and replaces FastAPI's own 422
# schema, which is not the shape this API sends).
Responses = dict[int | str, dict[str, Any]]
INVALID: Final[Responses] = {422: _doc("invalid parameter (`invalid_request`)")}
NOT_FOUND: Final[Responses] = {404: _doc("no such entity (`not_found`)")}
CONFLICT: Final[Responses] = {409: _doc("not in a state that allows this (`conflict`)")}
UNAUTHORIZED: Final[Responses] = {
    401: _doc("no or wrong operator token (`unauthorized`)"),
    403: _doc("the token's role is `read`; this route needs `admin` (`forbidden`)"),
}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        ErrorBody(error=code, message=message).model_dump(), status_code=status, headers=headers
    )


def install_error_handlers(app: FastAPI) -> None:
    """Route every failure of ``app`` through this module."""
    app.add_exception_handler(HodlaiError, _core_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # Anything else is caught by shared.api.app.RequestBoundary (see unexpected_error): an
    # Exception handler here would run in Starlette's outermost middleware, which re-raises
    # after answering, and uvicorn then resets the client's kept-alive connection.


def _classify(exc: Exception) -> tuple[int, str, bool]:
    for kind, status, code, echo in _CORE_ERRORS:
        if isinstance(exc, kind):
            return status, code, echo
    return 500, "internal", False  # not reached: HodlaiError is the last entry


async def _core_error(request: Request, exc: Exception) -> JSONResponse:
    status, code, echo = _classify(exc)
    fields = {"path": request.url.path, "status": status, "kind": type(exc).__name__}
    if status >= 500:
        log.error("api_request_failed", **fields, error=str(exc))
    else:
        log.info("api_request_refused", **fields, error=str(exc))
    headers = None
    if status == 503:
        wait = exc.retry_after if isinstance(exc, RetryableError) else None
        headers = {"Retry-After": str(math.ceil(wait) if wait else DEFAULT_RETRY_AFTER_S)}
    return error_response(status, code, str(exc) if echo else _GENERIC[code], headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [
        f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors()
    ]
    return error_response(422, "invalid_request", "; ".join(problems) or "invalid request")


class Refusal(StarletteHTTPException):
    """An HTTP error with its own ``error`` code (``user_proof_expired``, …) rather than the
    status's generic one: for refusals a client acts on differently (sign again, or not)."""

    def __init__(
        self, status_code: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status_code=status_code, detail=message, headers=headers)
        self.code = code


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    if isinstance(exc, Refusal):
        code = exc.code
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, message, dict(exc.headers or {}) or None)


def unexpected_error() -> JSONResponse:
    """The answer to an error no handler knows: generic, whatever the error said."""
    return error_response(500, "internal", _GENERIC["internal"])
