"""``hodlai inference --worker-id I --worker-count N``: one shard's LLM answering worker.

``--worker-id`` / ``--worker-count`` override ``HODLAI_WORKER_ID`` / ``HODLAI_WORKER_COUNT``.
Runs until SIGTERM/SIGINT, then finishes or releases its in-flight work and exits 0.
"""

from __future__ import annotations

import argparse
from typing import Any

from shared.cli import runs_executor
from shared.config import load_settings
from shared.errors import ConfigError
from shared.logs import configure_logging
from workers.oracle.inference.settings import InferenceSettings


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "inference", help="answer PENDING requests of one shard with the LLM (long-running)"
    )
    parser.add_argument("--worker-id", type=int, default=None, help="this shard (0-based)")
    parser.add_argument("--worker-count", type=int, default=None, help="number of shards")
    parser.set_defaults(func=run)
    runs_executor(parser, "oracle")


def run(args: argparse.Namespace) -> int:
    overrides = {
        name: value
        for name, value in (("worker_id", args.worker_id), ("worker_count", args.worker_count))
        if value is not None
    }
    settings = load_settings(InferenceSettings, **overrides)
    configure_logging(settings.log_level)
    if settings.worker_id >= settings.worker_count:
        raise ConfigError(
            f"HODLAI_WORKER_ID ({settings.worker_id}) must be below "
            f"HODLAI_WORKER_COUNT ({settings.worker_count})"
        )
    settings.require("provider_address")
    settings.check_backend()
    from workers.oracle.inference.main import serve_inference

    return serve_inference(settings)
