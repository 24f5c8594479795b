"""``hodlai mint-server``: the x402 token-mint server (issue 20 §2).

Settings come from the environment / ``.env`` only (workers/mint/server/settings.py), so the
key file's path is the only secret-related thing named, never a key.
"""

from __future__ import annotations

import argparse

from shared.cli import runs_executor


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``mint-server`` to the ``hodlai`` command line."""
    from shared.config import settings_epilog
    from workers.mint.server.settings import MintServerSettings

    parser = subparsers.add_parser(
        "mint-server",
        help="sell mints of MintTokens over x402 (settles and mints with the minter key)",
        description="Serves GET /tokens and POST /mint/{tokenAddress}?to=0x... behind x402 "
        "(exact scheme, EIP-3009 on HODLAI_MINT_USDC_ADDRESS, payment-identifier required). "
        "Its local facilitator settles each payment through the core's sending service from "
        "the minter key (HODLAI_MINT_KEY_FILE), then mints; each payment is settled and "
        "minted at most once, and a mint owed when it was killed is sent after a restart. "
        "Stop with SIGTERM / Ctrl-C.",
        epilog=settings_epilog(
            MintServerSettings,
            also=[("HODLAI_LOCK_DIR", "directory of the sending-key locks [beside the database]")],
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=_run)
    runs_executor(parser, "mint")


def _run(args: argparse.Namespace) -> int:
    from shared.config import load_settings
    from workers.mint.server.main import run
    from workers.mint.server.settings import MintServerSettings

    return run(load_settings(MintServerSettings))
