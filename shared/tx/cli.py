"""``hodlai senders`` and ``hodlai sender-resume``: the sending keys of the node, and the one
operator step a money sender's halt waits for.

A sender halts (shared/tx/manager.py, ``halt_on_foreign_nonce``) when a nonce of its key was
used by a transaction this node did not sign: someone else holds the key. Nothing new is
signed with it until an operator has looked and resumes it here. Resuming does not make a
leaked key safe: move the funds to a new key first when the transaction was not yours.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from typing import Any

from eth_utils.address import is_hex_address, to_checksum_address

from shared import halt
from shared.cli import inspection_settings, open_for_reading, open_for_writing
from shared.errors import ConfigError

#: the halts-table worker name of a sending key (TxManager.halt_worker)
SENDER_WORKER_PREFIX = "sender:"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``senders`` and ``sender-resume`` to the ``hodlai`` command line."""
    listing = subparsers.add_parser(
        "senders",
        help="the node's sending keys: owner process, generation, heartbeat, halt",
        description="One row per sending key that a process of this node has claimed "
        "(table senders): the process that holds it, the claim's generation (every takeover "
        "bumps it; a process whose generation is stale records nothing more and exits), and "
        "whether the key is halted for an operator.",
    )
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=_list)

    resume = subparsers.add_parser(
        "sender-resume",
        help="clear a sending key's halt (after checking why it halted) so that it signs again",
        description="A money sender halts when a nonce of its key was used by a transaction "
        "this node did not sign (log sender_halted, `hodlai senders` shows the reason). Find "
        "that transaction on a block explorer first: if it is not yours, the key has leaked; "
        "move the funds to a new key instead of resuming. The running process notices within "
        "a poll; nothing needs restarting.",
    )
    resume.add_argument("address", help="the halted sending address (0x…)")
    resume.add_argument("--json", action="store_true", help="machine-readable output")
    resume.set_defaults(func=_resume)


def _address(text: str) -> str:
    if not is_hex_address(text):
        # Not quoted back: a private key pasted by mistake would land in a terminal log.
        raise ConfigError("ADDRESS: not a 20-byte hex address (0x followed by 40 hex digits)")
    return to_checksum_address(text)


def senders(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every sender row with its active halt (None when it signs)."""
    rows = conn.execute(
        "SELECT address, chain_id, owner, host, pid, generation, acquired_at, heartbeat_at "
        "FROM senders ORDER BY address, chain_id"
    ).fetchall()
    out: list[dict[str, Any]] = []
    for row in rows:
        active = halt.active(conn, SENDER_WORKER_PREFIX + row["address"])
        out.append(
            {
                **dict(row),
                "halted": None if active is None else active.reason,
            }
        )
    return out


def _list(args: argparse.Namespace) -> int:
    conn = open_for_reading(inspection_settings())
    try:
        found = senders(conn)
    finally:
        conn.close()
    if args.json:
        print(json.dumps(found))
        return 0
    if not found:
        print("no sending key has been claimed in this database")
    for row in found:
        state = f"HALTED: {row['halted']}" if row["halted"] else "signing"
        print(
            f"{row['address']} on chain {row['chain_id']}  {row['owner']} pid {row['pid']} on "
            f"{row['host']}  "
            f"generation {row['generation']}  {state}"
        )
    return 0


def _resume(args: argparse.Namespace) -> int:
    address = _address(args.address)
    conn = open_for_writing(inspection_settings())
    try:
        cleared = halt.resume(conn, worker=SENDER_WORKER_PREFIX + address, by="operator:cli")
    finally:
        conn.close()
    if args.json:
        print(
            json.dumps(
                {
                    "address": address,
                    "was_halted": cleared is not None,
                    "reason": None if cleared is None else cleared.reason,
                }
            )
        )
    elif cleared is None:
        print(f"{address} is not halted; nothing to do")
    else:
        print(f"{address} resumed; it had halted: {cleared.reason}")
    return 0
