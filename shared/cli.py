"""The ``hodlai`` command line: the long-running workers and the inspection commands.

Each worker package under ``workers/`` contributes its subcommands through a ``register``
function in its ``cli`` module (see WORKER_COMMANDS); this module owns only the inspection
commands, so adding an executor never means editing a growing switch here.

Exit codes: 0 success, 1 a command that ran but found a problem, 2 bad usage or settings
(including a database that is not the right one: another chain's, a schema this hodlai does
not run on, a path where no database can be). Every refusal is one line on stderr.

The inspection commands (``status``, ``requests``, ``show``) open the database read-only
and never migrate it; ``retry`` writes one transition; ``migrate`` applies the migrations.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sqlite3
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from shared import __version__, store
from shared import request_id as rid
from shared.config import CoreSettings, load_settings
from shared.db import connect, open_readonly, schema_versions, stored_identity
from shared.errors import ConfigError, DatabaseMismatchError, HodlaiError, TransitionConflict
from shared.logs import configure_logging

# Rows ``hodlai requests`` lists at most: a screenful is 50; more than this is a job for
# sqlite3 or --json piped elsewhere, and an unbounded LIMIT would read the whole table.
MAX_LIST_LIMIT = 100_000

# Worker packages that add subcommands; each module has ``register(subparsers) -> None``.
WORKER_COMMANDS = (
    "workers.devnet.cli",
    "workers.indexer.cli",
    "workers.inference.cli",
    "workers.fulfiller.cli",
    "workers.mockllm.cli",
    "workers.replay.cli",
    "shared.api.cli",
)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the full usage is one ``--help`` away).
    Subcommand parsers are made of the same class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _list_limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= MAX_LIST_LIMIT:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_LIST_LIMIT}, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hodlai", description="HodlAI oracle node: index, answer and fulfil AI requests."
    )
    parser.add_argument("--version", action="version", version=f"hodlai {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    status = sub.add_parser("status", help="counts per status, cursor, head, lag, oldest pending")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)

    requests = sub.add_parser("requests", help="list requests, newest first")
    requests.add_argument("--status", type=str.upper, choices=[s.value for s in store.Status])
    requests.add_argument(
        "--limit", type=_list_limit, default=50, help=f"rows to list, 1..{MAX_LIST_LIMIT}"
    )
    requests.add_argument("--json", action="store_true")
    requests.set_defaults(func=cmd_requests)

    show = sub.add_parser("show", help="one request with its full history")
    show.add_argument("request_id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_show)

    retry = sub.add_parser("retry", help="re-open a FAILED request (back to PENDING)")
    retry.add_argument("request_id")
    retry.add_argument("--json", action="store_true")
    retry.set_defaults(func=cmd_retry)

    migrate = sub.add_parser(
        "migrate", help="create the database or apply pending migrations, then exit"
    )
    migrate.add_argument("--json", action="store_true")
    migrate.set_defaults(func=cmd_migrate)

    for module_name in WORKER_COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module_name.startswith(exc.name):
                raise  # a real import error inside the worker, not an absent worker
            continue  # that worker is not part of this build
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        print(f"hodlai: configuration error: {exc}", file=sys.stderr)
        return 2
    except DatabaseMismatchError as exc:  # also a schema this hodlai does not run on
        print(f"hodlai: {exc}", file=sys.stderr)
        return 2
    except HodlaiError as exc:
        print(f"hodlai: {exc}", file=sys.stderr)
        return 1
    except sqlite3.Error as exc:  # e.g. "database or disk is full": the real error, one line
        print(f"hodlai: database error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return result


def _open(settings: CoreSettings) -> sqlite3.Connection:
    """The database for an inspection command: read-only, current schema, never migrated."""
    return open_readonly(settings.db_path)


def _open_for_writing(settings: CoreSettings) -> sqlite3.Connection:
    """The database for a command that writes: it must exist and be current (checked
    read-only first, so that a command cannot create or migrate it as a side effect)."""
    open_readonly(settings.db_path).close()
    return connect(settings.db_path)


def _settings() -> CoreSettings:
    settings = load_settings(CoreSettings)
    configure_logging("WARNING" if settings.log_level == "INFO" else settings.log_level)
    return settings


def collect_status(conn: sqlite3.Connection, head: int | None, now: float) -> dict[str, Any]:
    """Everything ``hodlai status`` shows, as a plain dict (also used by metrics)."""
    cursor_row = conn.execute("SELECT block_number FROM cursors WHERE name = 'indexer'").fetchone()
    cursor = int(cursor_row[0]) if cursor_row else None
    # The first PENDING row in chain order, through the status index: O(log n).
    oldest_row = conn.execute(
        "SELECT created_at FROM requests WHERE status = 'PENDING' "
        "ORDER BY block_number, log_index LIMIT 1"
    ).fetchone()
    oldest = oldest_row[0] if oldest_row else None
    deep = conn.execute(
        "SELECT COUNT(*), MAX(detected_at) FROM reorgs WHERE deeper_than_confirmations = 1"
    ).fetchone()
    reorgs = conn.execute("SELECT COUNT(*) FROM reorgs").fetchone()[0]
    identity = stored_identity(conn)
    return {
        "counts": store.status_counts(conn),
        "chain_id": identity[0] if identity else None,
        "provider": identity[1] if identity else None,
        "indexer_cursor": cursor,
        "chain_head": head,
        "lag_blocks": (head - cursor) if head is not None and cursor is not None else None,
        "oldest_pending_age_s": round(now - oldest, 1) if oldest is not None else None,
        "reorgs": reorgs,
        "deep_reorgs": deep[0],
        "last_deep_reorg_at": deep[1],
    }


async def _chain_head(urls: list[str]) -> int | None:
    from shared.rpc import RpcClient, hex_int

    async with RpcClient(urls, timeout=3.0) as client:
        for _ in urls:
            try:
                return hex_int(await client.call("eth_blockNumber"))
            except HodlaiError:
                continue
    return None


def cmd_status(args: argparse.Namespace) -> int:
    settings = _settings()
    conn = _open(settings)
    head = asyncio.run(_chain_head(settings.rpc_urls)) if settings.rpc_urls else None
    info = collect_status(conn, head, time.time())
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"database      {settings.db_path}")
    print(f"chain         {info['chain_id']}  provider {info['provider']}")
    for name, count in info["counts"].items():
        print(f"  {name:<10} {count:>10}")
    print(f"indexer at    block {info['indexer_cursor']}")
    print(f"chain head    {info['chain_head'] if head is not None else 'unknown (no RPC)'}")
    print(f"lag           {info['lag_blocks']} blocks")
    age = info["oldest_pending_age_s"]
    print(f"oldest pending {'-' if age is None else f'{age} s'}")
    print(f"reorgs        {info['reorgs']} ({info['deep_reorgs']} deeper than confirmations)")
    if info["deep_reorgs"]:
        print("WARNING: a reorg deeper than HODLAI_CONFIRMATIONS was seen; see docs/OPERATIONS.md")
        return 1
    return 0


def _row_dict(row: sqlite3.Row) -> dict[str, Any]:
    return {key: row[key] for key in row.keys()}  # noqa: SIM118 -- sqlite3.Row is not a Mapping


def cmd_requests(args: argparse.Namespace) -> int:
    conn = _open(_settings())
    sql = (
        "SELECT request_id, status, model, answer_action, attempts, block_number, "
        "fail_reason, updated_at FROM requests"
    )
    params: list[object] = []
    if args.status:
        sql += " WHERE status = ?"
        params.append(args.status)
    sql += " ORDER BY block_number DESC, log_index DESC LIMIT ?"
    params.append(args.limit)
    rows = [_row_dict(r) for r in conn.execute(sql, params)]
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    print(f"{'REQUEST':>10}  {'STATUS':<10} {'BLOCK':>8}  {'ACTION':<16} REASON")
    for r in rows:
        print(
            f"{r['request_id']:>10}  {r['status']:<10} {r['block_number']:>8}  "
            f"{(r['answer_action'] or '-'):<16} {r['fail_reason'] or ''}"
        )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    conn = _open(_settings())
    request_id = rid.decode(args.request_id)
    row = store.get_request(conn, request_id)
    if row is None:
        print(f"hodlai: no request {request_id}", file=sys.stderr)
        return 1
    detail = _row_dict(row)
    detail["action_set"] = json.loads(detail["action_set"])
    trace = detail.pop("reasoning")
    detail["reasoning"] = json.loads(trace) if trace else None
    detail["history"] = [_row_dict(t) for t in store.history(conn, request_id)]
    detail["txs"] = [
        _row_dict(t)
        for t in conn.execute(
            "SELECT id, nonce, tx_hash, status, error, created_at, broadcast_at, mined_block "
            "FROM txs WHERE purpose = 'fulfil' AND subject = ? ORDER BY id",
            (rid.encode(request_id),),
        )
    ]
    if args.json:
        print(json.dumps(detail, indent=2, ensure_ascii=False))
        return 0
    for key in ("request_id", "status", "generation", "requester", "model", "action_set",
                "answer_action", "answer_cid", "attempts", "fail_reason", "block_number",
                "tx_hash", "fulfilled_tx_hash", "lease_owner"):  # fmt: skip
        print(f"{key:<18} {detail[key]}")
    print(f"{'system_prompt':<18} {detail['system_prompt'][:200]!r}")
    print(f"{'state_string':<18} {detail['state_string'][:200]!r}")
    print("history:")
    start = detail["history"][0]["at"] if detail["history"] else 0.0
    for t in detail["history"]:
        print(
            f"  +{t['at'] - start:8.3f}s  {t['from_status'] or '-':>9} -> {t['to_status']:<9} "
            f"{t['actor']:<22} {t['note'] or ''}"
        )
    for tx in detail["txs"]:
        print(f"  tx nonce={tx['nonce']} {tx['tx_hash']} {tx['status']} {tx['error'] or ''}")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings()
    before = schema_versions(settings.db_path)
    connect(settings.db_path).close()
    after = schema_versions(settings.db_path)
    if args.json:
        print(json.dumps({"database": str(settings.db_path), "before": before, "after": after}))
        return 0
    for name, version in sorted(after.items()):
        was = before.get(name)
        change = "unchanged" if was == version else f"migrated from {was or 'nothing'}"
        print(f"{settings.db_path}: {name} at schema version {version} ({change})")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    conn = _open_for_writing(_settings())
    request_id = rid.decode(args.request_id)
    try:
        store.retry(conn, request_id)
    except TransitionConflict as exc:
        print(f"hodlai: cannot retry: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"request_id": str(request_id), "status": "PENDING"}))
    else:
        print(f"request {request_id} re-opened: FAILED -> PENDING")
    return 0


if __name__ == "__main__":
    sys.exit(main())
