"""``hodlai indexer`` and ``hodlai indexer-resume``: the indexer's subcommands."""

from __future__ import annotations

import argparse
import json

from shared.cli import runs_executor


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
    runs_executor(parser, "oracle")

    resume = subparsers.add_parser(
        "indexer-resume",
        help="clear the indexer's halt (after checking why it halted) so that it carries on",
        description="The indexer halts instead of rolling back when the chain behind "
        "HODLAI_RPC_URLS cannot be an ordinary reorg (another chain id, a reorg deeper than "
        "HODLAI_MAX_REORG_DEPTH or the stored history); the fulfiller signs nothing meanwhile. "
        "Fix the cause (usually the RPC URL), then resume. The running indexer notices within "
        "a poll; nothing needs restarting.",
    )
    resume.add_argument(
        "--allow-rollback",
        action="store_true",
        help="the deep reorg is real: let the indexer's next rollback through once, however "
        "deep (requests of orphaned blocks are taken back, orphaned fulfilments undone)",
    )
    resume.add_argument("--json", action="store_true", help="machine-readable output")
    resume.set_defaults(func=_resume)


def _run(args: argparse.Namespace) -> int:
    # Imported here so that `hodlai --help` does not load web3/eth-abi.
    from workers.oracle.indexer.main import main

    return main(once=bool(args.once))


def _resume(args: argparse.Namespace) -> int:
    # The core's `hodlai poller-resume indexer`, under the name operators already know.
    from shared import halt
    from shared.chain.cli import resume_poller

    cleared, resolution = resume_poller(halt.INDEXER, allow_rollback=bool(args.allow_rollback))
    if args.json:
        print(
            json.dumps(
                {
                    "was_halted": cleared is not None,
                    "reason": cleared.reason if cleared else None,
                    "resolution": resolution.value if cleared else None,
                }
            )
        )
    elif cleared is None:
        print("the indexer is not halted; nothing to do")
    else:
        print(f"indexer resumed ({resolution.value}); it had halted: {cleared.reason}")
    return 0
