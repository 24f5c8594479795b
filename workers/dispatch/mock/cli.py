"""``hodlai mock-queue`` and ``hodlai mock-agents``: the test doubles as processes.

Each prints ``… listening on URL`` lines on stdout once it accepts connections (``--port 0``
picks a free port; scripts read the URLs from those lines) and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

from shared.config import CoreSettings, load_settings
from shared.errors import ConfigError
from shared.logs import configure_logging


def register(subparsers: Any) -> None:
    queue = subparsers.add_parser("mock-queue", help="the strict reference remote queue")
    queue.add_argument("--port", type=int, default=8790, help="0 picks a free port")
    queue.add_argument("--host", default="127.0.0.1")
    queue.add_argument("--token-env", default="REMOTE_QUEUE_TOKEN",
                       help="environment variable holding the bearer token")  # fmt: skip
    queue.add_argument("--jobs", type=int, default=0, help="generated jobs to start with")
    queue.add_argument("--invalid", type=int, default=0, help="invalid jobs added to those")
    queue.add_argument("--deadline-s", type=float, default=60.0)
    queue.add_argument("--seed", type=int, default=0)
    queue.set_defaults(func=cmd_mock_queue)

    agents = subparsers.add_parser("mock-agents", help="scripted agents, one server each")
    agents.add_argument("spec", type=Path, help="JSON list of agents: name, port, behaviour")
    agents.add_argument("--host", default="127.0.0.1")
    agents.set_defaults(func=cmd_mock_agents)


async def _serve_until_stopped(servers: list[Any]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        await server.close()


def cmd_mock_queue(args: argparse.Namespace) -> int:
    from workers.dispatch.mock.http import HttpServer
    from workers.dispatch.mock.queue import MockQueue, generate_jobs

    configure_logging(load_settings(CoreSettings).log_level)
    token = os.environ.get(args.token_env, "")
    if not token:
        raise ConfigError(f"{args.token_env}: the mock queue needs a bearer token")

    async def main() -> None:
        queue = MockQueue(token)
        queue.add(generate_jobs(args.jobs, seed=args.seed, deadline_s=args.deadline_s,
                                invalid=args.invalid))  # fmt: skip
        server = HttpServer(queue.handle, args.host, args.port)
        await server.start()
        print(f"mock-queue listening on {server.url}", flush=True)
        await _serve_until_stopped([server])

    asyncio.run(main())
    return 0


def cmd_mock_agents(args: argparse.Namespace) -> int:
    from workers.dispatch.mock.agents import start_agents

    configure_logging(load_settings(CoreSettings).log_level)
    try:
        specs = json.loads(args.spec.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{args.spec}: not a readable JSON list of agents ({exc})") from None

    async def main() -> None:
        started = await start_agents(specs, args.host)
        for agent, server in started:
            print(f"mock-agent {agent.name} listening on {server.url}", flush=True)
        await _serve_until_stopped([s for _, s in started])

    asyncio.run(main())
    return 0
