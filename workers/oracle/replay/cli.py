"""``hodlai replay ID [--json]``: the audit of one answered request (see
:mod:`workers.oracle.replay.audit`).

Opens the database read-only and writes nothing. Exit status 0 when the stored trace
matches its CID, the CID on chain matches it and the re-run reproduced the answer; 1 when
any of these fails (or there is no such request); 2 for bad settings, as every command.
The backend is set up from the trace; ``HODLAI_LOCAL_MODEL_PATH`` says where the weights
are on this machine (their SHA-256 must be the trace's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from shared.config import load_settings
from shared.db import open_readonly
from shared.logs import configure_logging
from workers.oracle import request_id as rid
from workers.oracle import store


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="re-run a recorded request; check its trace, its on-chain CID and its answer",
    )
    parser.add_argument("request_id")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from workers.oracle.inference.settings import InferenceSettings
    from workers.oracle.replay.audit import audit

    settings = load_settings(InferenceSettings)
    configure_logging("WARNING" if settings.log_level == "INFO" else settings.log_level)
    request_id = rid.decode(args.request_id)
    conn = open_readonly(settings.db_path)
    try:
        row = store.get_request(conn, request_id)
    finally:
        conn.close()
    if row is None:
        print(f"hodlai: no request {request_id}", file=sys.stderr)
        return 1
    report = asyncio.run(audit(row, settings))
    if args.json:
        print(json.dumps(report.as_json(), indent=2, ensure_ascii=False))
    else:
        print(f"request {request_id}  {report.status}  backend {report.backend or '-'}")
        for check in report.checks:
            print(f"  {'ok  ' if check.ok else 'FAIL'} {check.name:<12} {check.detail}")
            if not check.ok and check.expected is not None:
                print(f"       expected {check.expected}")
                print(f"       found    {check.found}")
        print("replay: reproduced" if report.ok else "replay: NOT reproduced")
    return 0 if report.ok else 1
