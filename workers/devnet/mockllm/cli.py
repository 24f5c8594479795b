"""``hodlai mock-llm --port P``: serve the mock chat-completions API until SIGTERM/SIGINT.

Prints ``mock-llm listening on URL`` on stdout once it accepts connections (``--port 0``
picks a free port; scripts read the URL from that line).
"""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType
from typing import Any

import structlog

from shared.config import CoreSettings, load_settings
from shared.errors import ConfigError
from shared.logs import configure_logging
from workers.devnet.mockllm.behaviour import Plan, parse_tokens
from workers.devnet.mockllm.server import MockConfig, MockLlmServer

log = structlog.get_logger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "mock-llm", help="deterministic OpenAI-compatible chat server for tests and the demo"
    )
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--latency-ms", type=int, default=0, help="added to every answer")
    parser.add_argument(
        "--behaviour", default="ok", help="default behaviour tokens, e.g. 'markdown' or '500'"
    )
    parser.add_argument("--hang-s", type=float, default=30.0, help="how long 'hang' sleeps")
    parser.add_argument("--retry-after-s", type=float, default=1.0, help="Retry-After of a 429")
    parser.add_argument(
        "--huge-bytes", type=int, default=10_000_000, help="content bytes of a 'huge' answer"
    )
    parser.add_argument(
        "--reject-constraints", action="store_true",
        help="answer 400 to response_format / guided_choice",
    )  # fmt: skip
    parser.add_argument(
        "--reject-json-schema", action="store_true",
        help="answer 400 to response_format json_schema only (json_object passes)",
    )  # fmt: skip
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    configure_logging(load_settings(CoreSettings).log_level)
    try:
        parse_tokens(args.behaviour, Plan(), default_retry_after_s=args.retry_after_s)
    except ValueError as exc:
        raise ConfigError(f"--behaviour: {exc}") from exc
    config = MockConfig(
        behaviour=args.behaviour, latency_ms=args.latency_ms, hang_s=args.hang_s,
        retry_after_s=args.retry_after_s, reject_constraints=args.reject_constraints,
        reject_json_schema=args.reject_json_schema,
        huge_bytes=args.huge_bytes,
    )  # fmt: skip
    server = MockLlmServer(args.host, args.port, config)

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("mock_llm_stopping", signal=signal.Signals(signum).name)
        # shutdown() waits for serve_forever, which runs on this very thread: hand it off.
        threading.Thread(target=server.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("mock_llm_listening", url=server.url, latency_ms=args.latency_ms,
             behaviour=args.behaviour)  # fmt: skip
    print(f"mock-llm listening on {server.url}", flush=True)
    server.serve_forever()
    return 0
