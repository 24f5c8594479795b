"""The oracle's ``hodlai`` commands: ``status``, ``requests``, ``show ID``, ``retry ID``.

Inspection opens the database read-only and never migrates it; ``retry`` writes one
transition. Exit codes as for every ``hodlai`` command (shared/cli.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from shared.cli import (
    MAX_LIST_LIMIT,
    inspection_settings,
    list_limit,
    open_for_reading,
    open_for_writing,
)
from shared.errors import HodlaiError, TransitionConflict
from workers.oracle import request_id as rid
from workers.oracle import store
from workers.oracle.inspect import collect_status, request_detail, row_dict
from workers.oracle.store import Status


def register(sub: Any) -> None:
    status = sub.add_parser("status", help="counts per status, cursor, head, lag, oldest pending")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)

    requests = sub.add_parser("requests", help="list requests, newest first")
    requests.add_argument("--status", type=str.upper, choices=[s.value for s in Status])
    requests.add_argument(
        "--limit", type=list_limit, default=50, help=f"rows to list, 1..{MAX_LIST_LIMIT}"
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


# Seconds `hodlai status` waits for the chain head at most, whatever the RPC does.
STATUS_RPC_DEADLINE_S = 5.0


async def _chain_head(urls: list[str]) -> int | None:
    from shared.chain.rpc import RpcClient, hex_int

    # A short total deadline: `hodlai status` must answer even when an RPC trickles.
    async with RpcClient(urls, timeout=3.0, deadline_s=STATUS_RPC_DEADLINE_S) as client:
        for _ in urls:
            try:
                return hex_int(await client.call("eth_blockNumber"))
            except HodlaiError:
                continue
    return None


def cmd_status(args: argparse.Namespace) -> int:
    settings = inspection_settings()
    conn = open_for_reading(settings)
    head = asyncio.run(_chain_head(settings.rpc_urls)) if settings.rpc_urls else None
    info = collect_status(conn, head, time.time())
    problem = bool(info["deep_reorgs"]) or info["indexer_halted"] is not None
    if args.json:
        print(json.dumps(info, indent=2))
        return 1 if problem else 0
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
    if info["indexer_halted"] is not None:
        print(f"HALTED: the indexer waits for an operator: {info['indexer_halted']}")
        print("        see docs/OPERATIONS.md, then: hodlai indexer-resume")
    if info["deep_reorgs"]:
        print("WARNING: a reorg deeper than HODLAI_CONFIRMATIONS was seen; see docs/OPERATIONS.md")
    return 1 if problem else 0


def cmd_requests(args: argparse.Namespace) -> int:
    conn = open_for_reading(inspection_settings())
    status = Status(args.status) if args.status else None
    rows = [row_dict(r) for r in store.list_requests(conn, status=status, limit=args.limit)]
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
    conn = open_for_reading(inspection_settings())
    request_id = rid.decode(args.request_id)
    detail = request_detail(conn, request_id)
    if detail is None:
        print(f"hodlai: no request {request_id}", file=sys.stderr)
        return 1
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


def cmd_retry(args: argparse.Namespace) -> int:
    conn = open_for_writing(inspection_settings())
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
