"""``hodlai mint-executor`` (the background service) and ``hodlai mint show TASK`` (a task,
its money account, its payments and transfers).

Settings come from the environment / ``.env`` only (workers/mint/settings.py): the key file
is named by ``HODLAI_MINT_KEY_FILE`` and never appears on the command line.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from shared.cli import runs_executor


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from shared.config import settings_epilog
    from workers.mint.settings import MintSettings

    parser = subparsers.add_parser(
        "mint-executor",
        help="run the AI mint executor (funding checks, batched x402 mints)",
        description="The seed's AI Mint Executor: one per database. It checks pending tasks "
        "every HODLAI_MINT_CHECK_INTERVAL_S, submits users' funding authorizations with the "
        "relayer key, and buys each funded task's mints over x402 in batches, every mint paid "
        "exactly once. Stop with SIGTERM / Ctrl-C.",
        epilog=settings_epilog(MintSettings),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=_run)
    runs_executor(parser, "mint")

    mint = subparsers.add_parser("mint", help="inspect the mint executor's tasks")
    sub = mint.add_subparsers(dest="mint_command", required=True, metavar="ACTION")
    show = sub.add_parser("show", help="a task: status, money account, payments, transfers")
    show.add_argument("task_id", metavar="TASK")
    show.add_argument("--json", action="store_true", help="the whole detail as JSON")
    show.set_defaults(func=_show)


def _run(args: argparse.Namespace) -> int:
    from shared.config import load_settings
    from workers.mint.executor import run
    from workers.mint.settings import MintSettings

    return run(load_settings(MintSettings))


def _show(args: argparse.Namespace) -> int:
    from shared.cli import open_for_reading
    from shared.config import load_settings
    from workers.mint.settings import MintSettings
    from workers.mint.views import task_detail

    conn = open_for_reading(load_settings(MintSettings))
    try:
        detail = task_detail(conn, args.task_id)
    finally:
        conn.close()
    if args.json:
        print(json.dumps(detail, indent=2))
        return 0
    print(_render(detail))
    return 0


def _render(d: dict[str, Any]) -> str:
    a = d["account"]
    lines = [
        f"task {d['id']}  {d['status']}",
        f"  user {d['userAddress']}  agent wallet {d['agentAddress']}",
        f"  token {d['tokenAddress']}  quantity {d['quantity']}  price/mint {d['pricePerMint']}"
        f"  total {d['totalCost']}",
        f"  mints completed {d['mintsCompleted']}  failed attempts {d['mintsFailed']}",
        f"  created {d['createdAt']}  deadline {d['paymentDeadline']}  started"
        f" {d['startedAt']}  completed {d['completedAt']}",
        "  money account (USDC base units):",
        f"    funded          {a['funded']:>20}",
        f"    spent on mints  {a['spentOnMints']:>20}",
        f"    held            {a['held']:>20}",
        f"    refunded        {a['refunded']:>20}",
    ]
    if d["errorMessage"]:
        lines.append(f"  error: {d['errorMessage']}")
    for t in d["transfers"]:
        lines.append(
            f"  {t['kind']} {t['value']} {t['from']} -> {t['to']}: {t['status']}"
            f" {t['txHash'] or ''}"
        )
    return "\n".join(lines)
