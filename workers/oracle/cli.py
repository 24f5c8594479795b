"""The oracle's ``hodlai`` commands: ``requests``, ``show ID``, ``retry ID``. (Its part of
``hodlai status``, the core's command, is workers/oracle/status.py.)

Inspection opens the database read-only and never migrates it; ``retry`` writes one
transition. Exit codes as for every ``hodlai`` command (shared/cli.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from shared.cli import (
    MAX_LIST_LIMIT,
    inspection_settings,
    list_limit,
    open_for_reading,
    open_for_writing,
)
from shared.errors import TransitionConflict
from workers.oracle import request_id as rid
from workers.oracle import store
from workers.oracle.inspect import request_detail, row_dict
from workers.oracle.store import Status


def register(sub: Any) -> None:
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
