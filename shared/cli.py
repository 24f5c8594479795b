"""The ``hodlai`` command line. The core owns only ``migrate`` and the shape every command
shares (one-line refusals, exit codes, read-only inspection); each executor and tool adds its
subcommands through a ``register(subparsers)`` function declared as an entry point in the
group ``hodlai.commands`` (shared/registry.py), so the core names no executor.

Exit codes: 0 success, 1 a command that ran but found a problem, 2 bad usage or settings
(including a database that is not the right one: another chain's, a schema this hodlai does
not run on, a path where no database can be). Every refusal is one line on stderr.

Inspection commands open the database read-only and never migrate it
(:func:`open_for_reading`); commands that write check it read-only first
(:func:`open_for_writing`); ``migrate`` applies the migrations. ``status`` is the core's too:
every executor's health, counts and pollers (shared/status.py).

A long-running command names the executor it belongs to (:func:`runs_executor`); when that
executor is switched off (``HODLAI_<EXECUTOR>_ENABLED=false``) ``main`` runs nothing of it,
before the process's own settings are loaded (shared.runtime.stand_down): one log line and
exit code 0, or with ``hodlai --wait-if-disabled`` (the Procfile's) a wait for SIGTERM first.
When such a command misses a required setting, the refusal says how to switch the executor
off.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import shared
from shared import __version__, registry
from shared.config import CoreSettings, load_settings
from shared.db import connect, open_readonly, schema_versions
from shared.errors import ConfigError, DatabaseMismatchError, HodlaiError
from shared.logs import configure_logging

# Rows ``hodlai requests`` lists at most: a screenful is 50; more than this is a job for
# sqlite3 or --json piped elsewhere, and an unbounded LIMIT would read the whole table.
MAX_LIST_LIMIT = 100_000


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the full usage is one ``--help`` away).
    Subcommand parsers are made of the same class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def list_limit(text: str) -> int:
    """An argparse type for ``--limit`` options of listing commands."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= MAX_LIST_LIMIT:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_LIST_LIMIT}, got {value}")
    return value


def build_parser(
    registrars: Sequence[tuple[str, Callable[[Any], None]]] | None = None,
) -> argparse.ArgumentParser:
    """The parser: ``migrate`` plus every installed executor's commands (or ``registrars``,
    as a test passes them for an executor that is not installed)."""
    parser = _Parser(
        prog="hodlai", description="HodlAI node: on-chain work for its executors' users."
    )
    parser.add_argument("--version", action="version", version=f"hodlai {__version__}")
    parser.add_argument(
        "--wait-if-disabled",
        action="store_true",
        help="a long-running command whose executor is switched off (HODLAI_<EXECUTOR>_ENABLED"
        "=false) waits for SIGTERM before it exits 0, instead of exiting at once: for a "
        "supervisor that stops every process when one exits (honcho; the Procfile sets it)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    migrate = sub.add_parser(
        "migrate", help="create the database or apply pending migrations, then exit"
    )
    migrate.add_argument("--json", action="store_true")
    migrate.set_defaults(func=cmd_migrate)
    from shared.status import register_status

    register_status(sub)
    for _, register in registry.command_registrars() if registrars is None else registrars:
        register(sub)
    return parser


def main(
    argv: Sequence[str] | None = None,
    registrars: Sequence[tuple[str, Callable[[Any], None]]] | None = None,
) -> int:
    check_installation()
    parser = build_parser(registrars)
    args = parser.parse_args(argv)
    executor: str | None = getattr(args, "executor", None)
    try:
        result = _run(args, executor)
    except ConfigError as exc:
        hint = ""
        if executor is not None and str(exc).startswith("missing required setting"):
            from shared.runtime import enabled_setting

            switch = enabled_setting(executor)
            hint = f" (a node that does not run the {executor} executor sets {switch}=false)"
        print(f"hodlai: configuration error: {exc}{hint}", file=sys.stderr)
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


def _run(args: argparse.Namespace, executor: str | None) -> int:
    """The command, unless it is a process of a switched-off executor (the module docstring)."""
    if executor is not None:
        from shared.runtime import executor_enabled, stand_down

        if not executor_enabled(executor):
            return stand_down(executor, args.command, wait=args.wait_if_disabled)
    result: int = args.func(args)
    return result


def runs_executor(parser: argparse.ArgumentParser, executor: str) -> None:
    """Mark ``parser``'s command as a long-running process of ``executor``: ``main`` runs it
    only while ``HODLAI_<EXECUTOR>_ENABLED`` is true (the module docstring)."""
    parser.set_defaults(executor=executor)


def open_for_reading(settings: CoreSettings) -> sqlite3.Connection:
    """The database for an inspection command: read-only, current schema, never migrated."""
    return open_readonly(settings.db_path)


def open_for_writing(settings: CoreSettings) -> sqlite3.Connection:
    """The database for a command that writes: it must exist and be current (checked
    read-only first, so that a command cannot create or migrate it as a side effect)."""
    open_readonly(settings.db_path).close()
    return connect(settings.db_path)


def inspection_settings() -> CoreSettings:
    """The core settings, with logging quiet enough for a command's own output."""
    settings = load_settings(CoreSettings)
    configure_logging("WARNING" if settings.log_level == "INFO" else settings.log_level)
    return settings


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = inspection_settings()
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


def check_installation() -> None:
    """PyPI has unrelated distributions that install top-level packages named ``shared`` and
    ``workers``: in a shared environment one could shadow or overwrite ours. Refuse to run
    unless the ``shared`` imported is the one the ``hodlai`` distribution installed
    (docs/OPERATIONS.md: install the node into a virtual environment of its own)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("hodlai")
    except PackageNotFoundError:
        return  # not installed (a source checkout on PYTHONPATH): nothing to clash with
    ours = Path(shared.__file__).resolve()
    listed = [f for f in dist.files or () if f.as_posix() == "shared/__init__.py"]
    if listed:  # a wheel install: the file it put there must be the one imported
        ok = Path(str(dist.locate_file(listed[0]))).resolve() == ours
    else:  # an editable install: direct_url.json names the checkout it points to
        url = str(json.loads(dist.read_text("direct_url.json") or "{}").get("url", ""))
        ok = url.startswith("file://") and ours.is_relative_to(Path(url[7:]).resolve())
    if not ok:
        print(
            f"hodlai: the package 'shared' imported from {ours.parent} is not the one hodlai "
            "installed (another distribution named 'shared'?); install hodlai into a virtual "
            "environment of its own",
            file=sys.stderr,
        )
        raise SystemExit(2)


if __name__ == "__main__":
    sys.exit(main())
