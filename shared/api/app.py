"""The app factory: one FastAPI app, the core's routes (``/healthz``, ``/docs``, the SIWE
nonce) and every executor's router, behind one error boundary, one access log, the
trusted-host check, the access guard (shared/api/auth.py) and (when set) CORS.

``/docs`` is Swagger UI served from the node itself (``fastapi-offline`` ships its
JavaScript and CSS): FastAPI's own page loads them from a CDN, and a node on a network with
no way out would show an operator a blank page."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

import structlog
from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.telemetry import TelemetryConfig
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import __version__
from shared.api import siwe
from shared.api.auth import PUBLIC, SAFE_METHODS, OperatorTokens, guard_route
from shared.api.errors import ErrorBody, error_response, install_error_handlers, unexpected_error
from shared.api.hosts import TrustedHosts
from shared.api.routers import NamedRouter, RouterSource, add_router
from shared.api.settings import ApiSettings
from shared.api.tokens import load_tokens
from shared.db import connect
from shared.errors import ConfigError, HodlaiError

log = structlog.get_logger(__name__)

# Seconds a browser may cache a CORS preflight answer: 10 minutes, so a console does not
# send an OPTIONS before every call, and a changed setting is seen within that time.
CORS_MAX_AGE_S = 600

# Where /docs finds Swagger UI's files; under /docs so that a proxy that forwards /docs
# forwards them too.
DOCS_STATIC_URL = "/docs/static"


# FastAPI's OpenTelemetry, off: the node has its own logs and metrics, and it would export
# request data (exception messages included) wherever OTEL_* environment variables point.
NO_TELEMETRY: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
    "auto_configure": False,
}


class Health(BaseModel):
    ok: bool


def create_app(
    settings: ApiSettings, routers: Sequence[NamedRouter | RouterSource] = ()
) -> FastAPI:
    """The API with ``routers`` added (see shared.api.routers.discover_routers).

    Reads the operator tokens file now, so a bad one stops the process before it listens
    (ConfigError naming HODLAI_API_TOKENS_FILE)."""
    tokens = load_tokens(settings.api_tokens_file) if settings.api_tokens_file else ()
    app = FastAPIOffline(
        title="hodlai node API",
        version=__version__,
        description="The node's executors: their state, and operator actions. "
        "Errors are JSON {error, message}; reads need a read or admin token (unless "
        "HODLAI_API_PUBLIC_READS), writes an admin token, end-user routes a Sign-In with "
        "Ethereum proof.",
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
        static_url=DOCS_STATIC_URL,
        telemetry=NO_TELEMETRY,
        # Before every route's own dependencies: undeclared writes are refused (auth.py).
        dependencies=[Depends(guard_route)],
    )
    app.state.settings = settings
    app.state.operator_tokens = OperatorTokens(tokens)
    app.state.route_access = {}
    install_error_handlers(app)
    if settings.api_cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.api_cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            # Bearer tokens travel in a header, never in cookies: no credentialed requests.
            allow_credentials=False,
            max_age=CORS_MAX_AGE_S,
        )
    # Inside the boundary (a refused host is logged like any request), outside CORS.
    app.add_middleware(TrustedHosts, allowed=settings.allowed_hosts())
    app.add_middleware(RequestBoundary)
    app.add_api_route(
        "/healthz",
        healthz,
        methods=["GET"],
        dependencies=[PUBLIC],  # a load balancer or watchdog holds no token
        response_model=Health,
        responses={503: {"model": ErrorBody, "description": "the database cannot be opened"}},
        tags=["core"],
        summary="200 while the database opens",
    )
    app.include_router(siwe.router)
    for router in routers:
        add_router(app, router)
    _refuse_unguarded_routes(app)
    log.info(
        "api_created",
        routers=[r.name for r in routers if isinstance(r, NamedRouter)],
        operator_tokens=len(tokens),
        public_reads=settings.api_public_reads,
        allowed_hosts=[f"{h.host}:{h.port or '*'}" for h in settings.allowed_hosts()],
        cors_origins=settings.api_cors_origins,
    )
    return app


def _refuse_unguarded_routes(app: FastAPI) -> None:
    """The access guard runs for FastAPI's routes only: a plain Starlette route that writes
    (``app.add_route``) would bypass it, so such a route stops the process at start."""
    for route in app.router.routes:
        if isinstance(route, APIRoute) or not isinstance(route, Route):
            continue
        unsafe = (route.methods or set()) - SAFE_METHODS
        if unsafe:
            raise ConfigError(
                f"route {route.path} ({', '.join(sorted(unsafe))}) is not a FastAPI route, so "
                "its access cannot be checked: add it with add_api_route or an APIRouter"
            )


def healthz(request: Request) -> Health | JSONResponse:
    try:
        conn = connect(request.app.state.settings.db_path)
        try:
            conn.execute("SELECT 1 FROM schema_migrations LIMIT 1").fetchall()
        finally:
            conn.close()
    except (sqlite3.Error, HodlaiError) as exc:
        log.error("api_health_failed", kind=type(exc).__name__, error=str(exc))
        return error_response(503, "unavailable", "the database cannot be opened")
    return Health(ok=True)


class RequestBoundary:
    """The boundary of every HTTP request: one ``api_request`` event (method, path, status,
    milliseconds; never the query string or headers, where tokens travel), and the one place
    that catches broadly: an error no handler translated becomes the generic 500 of
    shared.api.errors, logged with its traceback, and the server goes on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: int | None = None

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception as exc:  # the request boundary: log, answer 500, go on
            log.error("api_request_crashed", path=scope["path"], kind=type(exc).__name__,
                      exc_info=exc)  # fmt: skip
            if status is not None:
                raise  # the answer has begun: only cutting the connection is left
            await unexpected_error()(scope, receive, send_and_note)
        finally:
            log.info(
                "api_request",
                method=scope["method"],
                path=scope["path"],
                status=status,
                ms=round((time.perf_counter() - started) * 1000, 1),
            )
