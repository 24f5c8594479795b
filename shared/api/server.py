"""The composition root of ``hodlai api``: settings, logging, database check, the app with
every installed router, a listening socket, uvicorn until SIGTERM/SIGINT.

- Everything that can be wrong with the configuration (a setting, the tokens file, a
  database of a newer schema, a port in use) stops the process before it serves, with a
  ConfigError that ``hodlai`` prints as one line and exit code 2.
- The socket is bound here, not by uvicorn, so that port 0 works (the chosen port is
  printed as ``hodlai api listening on URL``) and a bind error names the setting.
- SIGTERM and SIGINT stop it cleanly: uvicorn stops accepting, lets requests in flight end
  (up to :data:`GRACEFUL_SHUTDOWN_S`), and the process exits 0.
- uvicorn's own log lines go through structlog (event ``server_log``); its access log is
  replaced by ours (shared.api.app.AccessLog), which never logs headers or query strings.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
from types import FrameType
from typing import Final

import structlog
import uvicorn

from shared.api.app import create_app
from shared.api.routers import discover_routers
from shared.api.settings import ApiSettings
from shared.config import load_settings
from shared.db import connect
from shared.errors import ConfigError
from shared.logs import configure_logging

log = structlog.get_logger(__name__)

# Seconds requests in flight get to finish after SIGTERM before their connections are cut:
# every route answers in milliseconds, so only a wedged database would need more.
GRACEFUL_SHUTDOWN_S: Final = 10
# Pending connections the kernel queues before the server accepts them (uvicorn's default).
LISTEN_BACKLOG: Final = 2048


def main() -> int:
    settings = load_settings(ApiSettings)
    configure_logging(settings.log_level)
    _route_server_logs(settings.log_level)
    # The checks that need nothing else come first, so a refusal is the only line printed.
    sock = bind(settings.api_host, settings.api_port)
    try:
        routers = discover_routers()
        if not routers:
            log.warning("api_no_routers", hint="pip install -e . records the entry points "
                        "of group hodlai.routers; only /healthz and /docs are served")  # fmt: skip
        app = create_app(settings, routers)
        _prepare_database(settings)
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    if not ipaddress.ip_address(host).is_loopback:
        log.warning("api_not_loopback", host=host, port=port,
                    hint="reachable from other machines over plain HTTP")  # fmt: skip
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
    )
    # uvicorn re-raises the signal it stopped on to the handler it found at start; with the
    # default handlers that would kill the process by SIGTERM (or raise KeyboardInterrupt)
    # after the clean shutdown, so the handler it finds is this harmless one.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _after_shutdown)
    log.info("api_listening", url=url)
    print(f"hodlai api listening on {url}", flush=True)  # noqa: T201 -- port 0: callers read it
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    log.info("api_stopped")
    return 0


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (port 0: any free one)."""
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM
        )[0]
    except socket.gaierror as exc:
        raise ConfigError(f"HODLAI_API_HOST: cannot resolve {host!r}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        # A restart can bind while the previous process's connections sit in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"HODLAI_API_HOST/HODLAI_API_PORT: cannot listen on {host}:{port}: {exc.strerror}"
        ) from None
    sock.setblocking(False)
    return sock


def _prepare_database(settings: ApiSettings) -> None:
    """Open the database once before serving: creates and migrates it when absent (the API
    may start before the indexer) and refuses one written by a newer hodlai."""
    existed = settings.db_path.exists()
    connect(settings.db_path).close()
    if not existed:
        log.warning("api_database_created", path=str(settings.db_path),
                    hint="no database was there; is HODLAI_DB_PATH the indexer's?")  # fmt: skip


def _after_shutdown(signum: int, _frame: FrameType | None) -> None:
    log.debug("api_signal_after_shutdown", signal=signal.Signals(signum).name)


class _ToStructlog(logging.Handler):
    """Hands uvicorn's stdlib log records to structlog, so one process writes one format."""

    def emit(self, record: logging.LogRecord) -> None:
        log.log(
            record.levelno,
            "server_log",
            logger=record.name,
            message=record.getMessage(),
            exc_info=record.exc_info or False,
        )


def _route_server_logs(level: str) -> None:
    server_logger = logging.getLogger("uvicorn")
    server_logger.handlers[:] = [_ToStructlog()]
    server_logger.setLevel(level)
    server_logger.propagate = False
