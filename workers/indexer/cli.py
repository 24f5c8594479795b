"""``hodlai indexer``: the indexer's subcommand."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``indexer`` to the ``hodlai`` command line."""
    parser = subparsers.add_parser(
        "indexer",
        help="index reasoning requests and fulfilments from the chain into the database",
        description="Poll HODLAI_RPC_URLS for the provider's events from HODLAI_START_BLOCK on "
        "and store them; runs until SIGINT/SIGTERM.",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="catch up with the chain head (minus HODLAI_CONFIRMATIONS), then exit",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    # Imported here so that `hodlai --help` does not load web3/eth-abi.
    from workers.indexer.main import main

    return main(once=bool(args.once))
