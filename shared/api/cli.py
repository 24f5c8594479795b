"""``hodlai api``: the HTTP API's subcommand."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``api`` to the ``hodlai`` command line."""
    parser = subparsers.add_parser(
        "api",
        help="serve the HTTP API (OpenAPI at /docs) until SIGINT/SIGTERM",
        description="Serve every executor's routes on HODLAI_API_HOST:HODLAI_API_PORT "
        "(127.0.0.1:8000); reads need a read token and writes an admin token from "
        "HODLAI_API_TOKENS_FILE (unless HODLAI_API_PUBLIC_READS=true for reads). "
        "See docs/API.md.",
    )
    parser.set_defaults(func=_run)


def _run(_args: argparse.Namespace) -> int:
    # Imported here so that `hodlai --help` does not load FastAPI.
    from shared.api.server import main

    return main()
