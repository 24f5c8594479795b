"""``hodlai dist-solana``: the Solana rail's operator commands.

- ``keygen FILE``: a new source keypair in solana-keygen's format, mode 0600, never over an
  existing file; prints only the public key.
- ``address FILE``: the public key of a keypair file (checked as the distributor checks it).
- ``sends [--run RUN] [--open] [--json]``: the signed transactions the rail recorded (newest
  first), read-only: signature, run, status, recipients, last valid block height, sends.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from shared.cli import inspection_settings, open_for_reading

COLUMNS = (
    "signature", "run_id", "network", "status", "recipients", "last_valid_block_height",
    "blockhash_slot", "broadcasts", "slot", "error", "created_at", "resolved_at",
)  # fmt: skip


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("dist-solana", help="the Solana distribution rail: keys, sends")
    sub = parser.add_subparsers(dest="solana_command", required=True, metavar="ACTION")
    keygen = sub.add_parser("keygen", help="write a new source keypair file (0600)")
    keygen.add_argument("file", type=Path)
    keygen.set_defaults(func=cmd_keygen)
    address = sub.add_parser("address", help="the public key of a keypair file")
    address.add_argument("file", type=Path)
    address.set_defaults(func=cmd_address)
    sends = sub.add_parser("sends", help="recorded Solana transactions, newest first")
    sends.add_argument("--run", default=None, help="only this run's")
    sends.add_argument("--open", action="store_true", help="only those not resolved yet")
    sends.add_argument("--limit", type=int, default=50)
    sends.add_argument("--json", action="store_true")
    sends.set_defaults(func=cmd_sends)


def cmd_keygen(args: argparse.Namespace) -> int:
    from workers.distribution.solana.keyfile import write_keypair

    print(write_keypair(args.file).pubkey())
    return 0


def cmd_address(args: argparse.Namespace) -> int:
    from workers.distribution.solana.keyfile import load_keypair

    print(load_keypair(args.file).pubkey())
    return 0


def cmd_sends(args: argparse.Namespace) -> int:
    settings = inspection_settings()
    conn = open_for_reading(settings)
    try:
        where, params = [], []
        if args.run:
            where.append("run_id = ?")
            params.append(args.run)
        if args.open:
            where.append("status = 'sent'")
        sql = f"SELECT {', '.join(COLUMNS)} FROM distribution_solana_sends"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, signature LIMIT ?"
        rows = [dict(row) for row in conn.execute(sql, (*params, max(1, args.limit)))]
    finally:
        conn.close()
    if args.json:
        print(json.dumps({"sends": rows}))
        return 0
    if not rows:
        print("no Solana sends")
        return 0
    for row in rows:
        print(
            f"{row['signature']}  {row['status']:<8} run {row['run_id']}  "
            f"{row['recipients']} recipients  valid to height {row['last_valid_block_height']}"
            f"  sent {row['broadcasts']}x" + (f"  {row['error']}" if row["error"] else "")
        )
    return 0
