"""The dispatcher's ``hodlai`` subcommands.

- ``hodlai dispatcher``: the long-running dispatcher (workers/dispatch/main.py).
- ``hodlai agents list|register|update|disable|enable``: the agent registry.
- ``hodlai dispatch jobs|show|stats|cancel``: inspection and the operator's cancel.
- ``hodlai mock-queue`` / ``hodlai mock-agents``: the test doubles (workers/dispatch/mock).

Inspection opens the database read-only; writes go through the registry's and store's
functions (audited, ``operator:cli`` in the trail). ``--json`` on every inspection command.
``hodlai agents register`` creates the database when there is none yet (a newcomer registers
agents before the first start); an existing one must be current (``hodlai migrate``).
``hodlai dispatcher --help`` lists every setting with its default, the required ones first.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from shared.cli import runs_executor
from shared.config import CoreSettings, load_settings
from shared.db import connect, open_readonly
from shared.errors import ConfigError
from shared.logs import configure_logging

ACTOR = "operator:cli"


# Under the table of ``hodlai agents list``: what its columns mean.
AGENTS_LEGEND = """health: ok (the last check passed), failing, unknown (not checked yet: no
calls until a check passes). breaker: closed (calls go through), open (left out until its
cool-down), half_open (one probe call). Figures since registration (all of them, explained:
hodlai dispatch stats): calls: calls sent that ended for the job, not those cut off by a
restart; wins: jobs its result completed; succ%: valid results / (valid + errors +
timeouts); p50ms, p95ms: latency of its valid results."""

REGISTER_EXAMPLE = """example:
  hodlai agents register --id summarizer-1 --name "Summarizer 1" \\
      --endpoint http://127.0.0.1:9101 --category summarize --tags en,fr \\
      --skill-level 5 --reputation 0.8

The agent serves POST {endpoint}/execute, POST {endpoint}/cancel and GET {endpoint}/health
(docs/API.md, "The agent API"). It takes calls only after one passing health check."""


def register(subparsers: Any) -> None:
    from workers.dispatch.settings import settings_help

    dispatcher = subparsers.add_parser(
        "dispatcher", help="run the agent job dispatcher",
        description="Take jobs from the remote queue, call the matching agents, deliver each "
        "job's one outcome. Settings come from the environment or .env; stop with SIGTERM.",
        epilog=settings_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    dispatcher.set_defaults(func=cmd_dispatcher)
    runs_executor(dispatcher, "dispatch")

    agents_p = subparsers.add_parser("agents", help="the dispatcher's agent registry")
    sub = agents_p.add_subparsers(dest="agents_command", required=True, metavar="ACTION")
    ls = sub.add_parser("list", help="registered agents with their figures")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_agents_list)
    reg = sub.add_parser(
        "register", help="register an agent (creates the database if there is none)",
        epilog=REGISTER_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    reg.add_argument("--name", required=True, help="shown in listings and statistics")
    reg.add_argument("--endpoint", required=True, help="base URL of its API (http or https)")
    reg.add_argument("--category", required=True, help="the one job category it takes")
    reg.add_argument("--tags", default="", help="comma-separated; a job's tags must all be here")
    reg.add_argument(
        "--skill-level",
        type=int,
        default=0,
        help="0..100; it takes jobs asking for this level or less (default 0)",
    )
    reg.add_argument(
        "--reputation",
        type=float,
        default=0.5,
        help="0..1, your prior on it, part of its score (default 0.5)",
    )
    reg.add_argument(
        "--id",
        dest="agent_id",
        default=None,
        help="its id in the trail and the API (default: a new UUID)",
    )
    reg.add_argument("--json", action="store_true")
    reg.set_defaults(func=cmd_agents_register)
    upd = sub.add_parser("update", help="change an agent's fields")
    upd.add_argument("agent_id")
    for flag in ("--name", "--endpoint", "--category", "--tags"):
        upd.add_argument(flag, default=None)
    upd.add_argument("--skill-level", type=int, default=None)
    upd.add_argument("--reputation", type=float, default=None)
    upd.set_defaults(func=cmd_agents_update)
    for name, enabled in (("disable", False), ("enable", True)):
        p = sub.add_parser(name, help=f"{name} an agent")
        p.add_argument("agent_id")
        p.set_defaults(func=cmd_agents_enable, enabled=enabled)

    dispatch = subparsers.add_parser("dispatch", help="the dispatcher's jobs and statistics")
    dsub = dispatch.add_subparsers(dest="dispatch_command", required=True, metavar="ACTION")
    jobs = dsub.add_parser("jobs", help="jobs, newest first")
    jobs.add_argument("--status", type=str.upper, default=None)
    jobs.add_argument("--limit", type=int, default=50)
    jobs.add_argument("--json", action="store_true")
    jobs.set_defaults(func=cmd_jobs)
    show = dsub.add_parser("show", help="one job: agents, timings, explanation, history")
    show.add_argument("job_id")
    show.set_defaults(func=cmd_show)
    stats = dsub.add_parser(
        "stats", help="per agent and per category statistics",
        description="Exact figures from the call rows; what each one means is printed under "
        "the table (and under 'meanings' with --json).",
    )  # fmt: skip
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=cmd_stats)
    cancel = dsub.add_parser("cancel", help="cancel a job (the dispatcher acts within a second)")
    cancel.add_argument("job_id")
    cancel.set_defaults(func=cmd_cancel)

    from workers.dispatch.mock import cli as mock_cli

    mock_cli.register(subparsers)


def _settings() -> CoreSettings:
    settings = load_settings(CoreSettings)
    configure_logging("WARNING" if settings.log_level == "INFO" else settings.log_level)
    return settings


def cmd_dispatcher(_args: argparse.Namespace) -> int:
    from workers.dispatch.main import main

    return main()


def cmd_agents_list(args: argparse.Namespace) -> int:
    from workers.dispatch import agents

    conn = open_readonly(_settings().db_path)
    rows = [agents.public(r) for r in agents.list_agents(conn)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'agent':<20} {'status':<9} {'category':<10} {'health':<8} {'breaker':<9} "
          f"{'calls':>6} {'wins':>5} {'succ%':>6} {'p50ms':>7} {'p95ms':>7}")  # fmt: skip
    for r in rows:
        rate = "-" if r["success_rate"] is None else f"{100 * r['success_rate']:.1f}"
        p50 = "-" if r["latency_p50_ms"] is None else f"{r['latency_p50_ms']:.0f}"
        p95 = "-" if r["latency_p95_ms"] is None else f"{r['latency_p95_ms']:.0f}"
        print(f"{r['agent_id'][:20]:<20} {r['status']:<9} {r['category'][:10]:<10} "
              f"{r['health']:<8} {r['breaker']:<9} {r['calls']:>6} {r['wins']:>5} {rate:>6} "
              f"{p50:>7} {p95:>7}")  # fmt: skip
    print(f"\n{AGENTS_LEGEND}")
    return 0


def _writable(*, create: bool = False) -> Any:
    """The database for a write: it must exist and be current, unless ``create`` and there is
    no file yet (then it is created at the current schema, and said so on stderr)."""
    settings = _settings()
    if create and not Path(settings.db_path).exists():
        conn = connect(settings.db_path)
        print(f"created the database {settings.db_path}", file=sys.stderr)
        return conn
    open_readonly(settings.db_path).close()
    return connect(settings.db_path)


def _tags(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def _validated(model: Any, fields: dict[str, Any]) -> Any:
    from pydantic import ValidationError

    try:
        return model(**fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(problems) from None


def cmd_agents_register(args: argparse.Namespace) -> int:
    from workers.dispatch import agents

    spec = _validated(agents.AgentSpec, {
        "agent_id": args.agent_id, "name": args.name, "endpoint": args.endpoint,
        "category": args.category, "tags": _tags(args.tags) or [],
        "skill_level": args.skill_level, "reputation": args.reputation,
    })  # fmt: skip
    agent_id = agents.register(_writable(create=True), spec, actor=ACTOR)
    print(json.dumps({"agent_id": agent_id}) if args.json else f"registered agent {agent_id}")
    return 0


def cmd_agents_update(args: argparse.Namespace) -> int:
    from workers.dispatch import agents

    changes = _validated(agents.AgentChanges, {
        "name": args.name, "endpoint": args.endpoint, "category": args.category,
        "tags": _tags(args.tags), "skill_level": args.skill_level, "reputation": args.reputation,
    })  # fmt: skip
    agents.update(_writable(), args.agent_id, changes, actor=ACTOR)
    print(f"updated agent {args.agent_id}")
    return 0


def cmd_agents_enable(args: argparse.Namespace) -> int:
    from workers.dispatch import agents

    agents.set_enabled(_writable(), args.agent_id, args.enabled, actor=ACTOR)
    print(f"{'enabled' if args.enabled else 'disabled'} agent {args.agent_id}")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from workers.dispatch import views

    conn = open_readonly(_settings().db_path)
    rows = views.list_jobs(conn, status=args.status, limit=args.limit)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(
            f"{r['job_id'][:28]:<28} {r['status']:<11} {r['category'][:10]:<10} "
            f"{(r['winner_agent_id'] or r['fail_code'] or '-')[:20]:<20} "
            f"{'delivered' if r['delivered_at'] else 'pending' if r['delivery_key'] else '-'}"
        )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from workers.dispatch import views

    conn = open_readonly(_settings().db_path)
    print(json.dumps(views.job_detail(conn, args.job_id), indent=2))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from workers.dispatch import stats

    conn = open_readonly(_settings().db_path)
    figures = stats.collect(conn)
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(stats.render_table(figures))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from workers.dispatch import store

    status = store.request_cancel(_writable(), args.job_id, actor=ACTOR, now=time.time())
    print(f"cancel requested for job {args.job_id} ({status})")
    return 0
