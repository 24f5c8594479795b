"""``hodlai fulfiller``: sign and send the fulfilments of ANSWERED requests.

Settings come from the environment / ``.env`` only (see workers/oracle/fulfiller/settings.py), so
neither the key nor its passphrase can appear in ``--help``, the process list or shell history.
"""

from __future__ import annotations

import argparse

from shared.cli import runs_executor


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``fulfiller`` to the ``hodlai`` command line."""
    from shared.config import settings_epilog
    from workers.oracle.fulfiller.settings import FulfillerSettings

    parser = subparsers.add_parser(
        "fulfiller",
        help="sign and send fulfilments of ANSWERED requests (holds the oracle key)",
        description="The only process that signs with the oracle key (HODLAI_KEY_FILE). It "
        "simulates each answered request, records the signed fulfilment before broadcasting "
        "it, keeps up to HODLAI_FULFILLER_WINDOW transactions in flight, and follows them "
        "until mined (re-broadcast, fee bumps, cancels). Stop with SIGTERM / Ctrl-C.",
        epilog=settings_epilog(
            FulfillerSettings,
            also=[("HODLAI_LOCK_DIR", "directory of the sending-key locks [beside the database]")],
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=_run)
    runs_executor(parser, "oracle")


def _run(args: argparse.Namespace) -> int:
    from shared.config import load_settings
    from workers.oracle.fulfiller.main import run
    from workers.oracle.fulfiller.settings import FulfillerSettings

    return run(load_settings(FulfillerSettings))
