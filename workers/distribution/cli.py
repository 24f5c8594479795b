"""The distribution executor's ``hodlai`` subcommands.

- ``hodlai distributor``: the long-running process (scheduler + payers, workers/distribution/
  main.py); ``--help`` names every setting with its default. Switched off by
  ``HODLAI_DIST_ENABLED=false``.
- ``hodlai dist list|show|create|preview|execute|enable|disable|delete|runs|run|templates``:
  the tasks and their run history, as the API offers them (``--json`` prints the API's JSON).

Inspection opens the database read-only; writes go through the store (audited,
``operator:cli`` in the trail) on a database that must exist and be current. Commands that
need the token's decimals (create, preview, execute) read them from the task's network.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from shared.cli import open_for_reading, open_for_writing, runs_executor
from shared.config import load_settings, settings_epilog
from shared.errors import InvalidRequestError
from shared.logs import configure_logging

ACTOR = "operator:cli"

CREATE_EXAMPLE = """FILE holds the API's POST body {"network", "tokenMint", "task"} or a bare task
(the seed's task JSON; then --network and --token are needed). Examples:
  hodlai dist create task.json
  hodlai dist create --template airdrop --network devnet --token 0x… recipients.json
where recipients.json is {"distribution": {"recipients": [{"address": "0x…", "amount": "10"}]}}.
Templates: hodlai dist templates."""


def register(subparsers: Any) -> None:
    from workers.distribution.settings import DistSettings

    distributor = subparsers.add_parser(
        "distributor", help="run the token distributor (scheduler and payers)",
        description="Turn due cron slots and fired conditions into runs, and pay every run of "
        "the configured networks exactly once. Settings come from the environment or .env; "
        "stop with SIGTERM.",
        epilog=settings_epilog(DistSettings), formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    distributor.set_defaults(func=cmd_distributor)
    runs_executor(distributor, "dist")

    dist = subparsers.add_parser("dist", help="token distribution tasks and their runs")
    sub = dist.add_subparsers(dest="dist_command", required=True, metavar="ACTION")
    ls = sub.add_parser("list", help="tasks (the seed's JSON with --json)")
    ls.add_argument("--network", default=None)
    ls.add_argument("--token", default=None, help="the tokenMint")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
    show = sub.add_parser("show", help="one task")
    show.add_argument("task_id")
    show.set_defaults(func=cmd_show)
    create = sub.add_parser(
        "create", help="create a task from a JSON file or a template", epilog=CREATE_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    create.add_argument("file", type=Path, help="the POST body or a task (JSON)")
    create.add_argument("--template", default=None, help="a preset: hodlai dist templates")
    create.add_argument("--network", default=None, help="overrides the body's network")
    create.add_argument("--token", default=None, help="overrides the body's tokenMint")
    create.set_defaults(func=cmd_create)
    preview = sub.add_parser("preview", help="a task's manifest and hash, without sending")
    preview.add_argument("task", help="a task id, or a JSON file as for create")
    preview.set_defaults(func=cmd_preview)
    for name, text in (("execute", "run a task now (a manual run)"), ("enable", "enable a task"),
                       ("disable", "disable a task"), ("delete", "delete a task")):  # fmt: skip
        p = sub.add_parser(name, help=text)
        p.add_argument("task_id")
        p.set_defaults(func=cmd_act, action=name)
    runs = sub.add_parser("runs", help="a task's runs, newest first")
    runs.add_argument("task_id")
    runs.add_argument("--limit", type=int, default=20)
    runs.add_argument("--json", action="store_true")
    runs.set_defaults(func=cmd_runs)
    one = sub.add_parser("run", help="one run with every recipient's outcome")
    one.add_argument("run_id")
    one.add_argument("--json", action="store_true")
    one.set_defaults(func=cmd_run)
    templates = sub.add_parser("templates", help="the seed's four presets")
    templates.set_defaults(func=cmd_templates)


def _settings() -> Any:
    from workers.distribution.settings import DistSettings

    settings = load_settings(DistSettings)
    configure_logging("WARNING" if settings.log_level == "INFO" else settings.log_level)
    return settings


def _print(value: object) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _on_networks(settings: Any, work: Any) -> Any:
    """``work(networks)`` with the configured networks, closed afterwards."""
    from workers.distribution.networks import build_networks

    async def main() -> Any:
        networks = build_networks(settings)
        try:
            return await work(networks)
        finally:
            for network in networks.values():
                await network.aclose()

    return asyncio.run(main())


def _refused(exc: InvalidRequestError) -> int:
    print(f"hodlai: refused: {exc}", file=sys.stderr)
    return 1


def cmd_distributor(_args: argparse.Namespace) -> int:
    from workers.distribution.main import run
    from workers.distribution.settings import DistSettings

    return run(load_settings(DistSettings))


def cmd_list(args: argparse.Namespace) -> int:
    from workers.distribution import store
    from workers.distribution.tasks import task_answer

    conn = open_for_reading(_settings())
    tasks = [task_answer(r) for r in store.task_rows(conn, network=args.network, token=args.token)]
    if args.json:
        _print({"tasks": tasks})
        return 0
    for t in tasks:
        when = t.get("schedule", {}).get("cron") or t.get("condition", {}).get("kind") or "manual"
        print(
            f"{t['id'][:28]:<28} {t['type']:<11} {'on' if t['enabled'] else 'off':<3} "
            f"{t['network'][:12]:<12} {when[:16]:<16} runs={t['runCount']:<4} "
            f"next={t['nextRunAt'] or '-'}"
        )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from workers.distribution import store
    from workers.distribution.tasks import task_answer

    conn = open_for_reading(_settings())
    _print({"task": task_answer(store.task_row(conn, args.task_id, deleted=True))})
    return 0


def _body(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidRequestError(f"cannot read {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidRequestError(f"{path} holds no JSON object")
    body: dict[str, Any] = dict(raw) if "task" in raw else {"task": raw}
    if getattr(args, "network", None):
        body["network"] = args.network
    if getattr(args, "token", None):
        body["tokenMint"] = args.token
    if getattr(args, "template", None):
        body["template"] = args.template
    return body


def cmd_create(args: argparse.Namespace) -> int:
    from workers.distribution import service

    settings = _settings()
    try:
        body = _body(args.file, args)
        conn = open_for_writing(settings)
        task = _on_networks(settings, lambda networks: service.create(
            conn, body, networks, settings, actor=ACTOR))  # fmt: skip
    except InvalidRequestError as exc:
        return _refused(exc)
    _print({"task": task})
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    from workers.distribution import service, store
    from workers.distribution.tasks import task_answer

    settings = _settings()
    try:
        path = Path(args.task)
        if path.suffix == ".json" or path.is_file():
            body = _body(path, args)
        else:
            conn = open_for_reading(settings)
            task = task_answer(store.task_row(conn, args.task))
            body = {"network": task["network"], "tokenMint": task["tokenMint"],
                    "task": {k: task[k] for k in ("id", "name", "type", "schedule", "condition",
                                                  "distribution") if k in task}}  # fmt: skip
        answer = _on_networks(settings, lambda networks: service.preview(body, networks, settings))
    except InvalidRequestError as exc:
        return _refused(exc)
    _print(answer)
    return 0


def cmd_act(args: argparse.Namespace) -> int:
    from workers.distribution import service, store
    from workers.distribution.scheduler import next_slot
    from workers.distribution.tasks import task_answer

    settings = _settings()
    conn = open_for_writing(settings)
    now = time.time()
    if args.action == "execute":
        try:
            run = _on_networks(settings, lambda networks: service.execute(
                conn, args.task_id, networks, settings, actor=ACTOR, now=now))  # fmt: skip
        except InvalidRequestError as exc:
            return _refused(exc)
        _print({"run": run})
        return 0
    if args.action == "delete":
        store.delete_task(conn, args.task_id, actor=ACTOR, now=now)
        print(f"task {args.task_id} deleted")
        return 0
    row = store.task_row(conn, args.task_id)
    following = next_slot(row["cron"], row["timezone"], now) if row["cron"] else None
    store.set_enabled(conn, args.task_id, args.action == "enable", actor=ACTOR, now=now,
                      next_run_at=following)  # fmt: skip
    _print({"task": task_answer(store.task_row(conn, args.task_id))})
    return 0


def _run_line(run: dict[str, Any]) -> str:
    counts: dict[str, int] = {}
    for t in run["transfers"]:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    summary = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    return (f"{run['id'][:32]:<32} {run['slot']:<24} {run['status']:<9} total={run['totalAmount']}"
            f" {summary}{'  ' + run['reason'] if run['reason'] else ''}")  # fmt: skip


def cmd_runs(args: argparse.Namespace) -> int:
    from workers.distribution import store

    conn = open_for_reading(_settings())
    runs = store.runs_answer(conn, args.task_id, limit=args.limit)
    if args.json:
        _print({"runs": runs})
        return 0
    for run in runs:
        print(_run_line(run))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from workers.distribution import store

    conn = open_for_reading(_settings())
    run = store.run_answer(conn, args.run_id)
    if args.json:
        _print({"run": run})
        return 0
    print(_run_line(run))
    print(f"manifest hash {run['manifestHash']}  source {run['source'] or '-'}")
    for t in run["transfers"]:
        print(f"  {t['address']:<44} {t['amount']:>30} {t['status']:<7} {t['txHash'] or '-'}"
              f"{'  ' + t['reason'] if t['reason'] else ''}")  # fmt: skip
    return 0


def cmd_templates(_args: argparse.Namespace) -> int:
    from workers.distribution.templates import list_templates

    _print({"templates": list_templates()})
    return 0
