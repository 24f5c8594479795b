"""A newcomer starts the dispatcher from the docs alone: ``hodlai dispatcher --help`` lists the
required settings and every other with its default; ``hodlai agents register`` creates the
database when there is none; docs/OPERATIONS.md's register example is complete and runs as
written. The commands run in-process through the parser ``hodlai`` builds."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from shared.cli import build_parser
from shared.db import connect, schema_versions
from shared.errors import SchemaVersionError
from workers.dispatch.settings import DispatchSettings

ROOT = Path(__file__).resolve().parent.parent


def _hodlai(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run a ``hodlai`` command in this process: (exit code, stdout, stderr)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        code = int(args.func(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory without a database, set as HODLAI_DB_PATH's home (and without a .env)."""
    monkeypatch.chdir(tmp_path)
    for name in ("HODLAI_DB_PATH", "LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    db = tmp_path / "node" / "hodlai.db"
    db.parent.mkdir()
    monkeypatch.setenv("HODLAI_DB_PATH", str(db))
    return db


def test_dispatcher_help_lists_the_required_settings_first_then_every_other_with_its_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = _hodlai(["dispatcher", "--help"], capsys)
    assert code == 0
    required = out.index("required settings")
    assert out.index("HODLAI_DISPATCH_QUEUE_URL (or REMOTE_QUEUE_URL)") > required
    assert out.index("HODLAI_DISPATCH_QUEUE_TOKEN (or REMOTE_QUEUE_TOKEN)") > required
    assert "HODLAI_DB_PATH [hodlai.db]" in out
    listed = 0
    for name, field in DispatchSettings.model_fields.items():
        if not name.startswith("dispatch_") or "queue" in name:
            continue
        assert field.description, f"{name} has no description for --help"
        default = field.get_default(call_default_factory=True)
        shown = (",".join(default) or "none") if isinstance(default, list) else default
        assert f"HODLAI_{name.upper()} [{shown}]" in out, name
        listed += 1
    assert listed >= 20
    assert "HODLAI_DISPATCH_DEFAULT_AGENT_TIMEOUT_S [30.0]" in out
    assert "HODLAI_DISPATCH_MAX_INPUT_BYTES [262144]" in out


def _docs_register_example() -> list[str]:
    text = (ROOT / "docs" / "OPERATIONS.md").read_text(encoding="utf-8")
    section = text[text.index("## The dispatcher (`hodlai dispatcher`") :]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "no sh example in the dispatcher section"
    command = shlex.split(block.group(1).replace("\\\n", " "))
    assert command[:3] == ["hodlai", "agents", "register"]
    return command[1:]


def test_the_docs_register_example_is_complete_and_creates_the_database(
    node: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _docs_register_example()
    for flag in ("--id", "--name", "--endpoint", "--category", "--tags", "--skill-level",
                 "--reputation"):  # fmt: skip
        assert flag in argv, f"the docs' example omits {flag}"
    assert not node.exists()
    code, out, err = _hodlai(argv, capsys)
    assert code == 0, err
    assert out == "registered agent summarizer-1\n"
    assert err == f"created the database {node}\n"
    assert schema_versions(node).keys() >= {"core", "dispatch"}
    code, out, _ = _hodlai(["agents", "list", "--json"], capsys)
    (agent,) = json.loads(out)
    assert {k: agent[k] for k in ("agent_id", "name", "category", "tags", "skill_level",
                                  "reputation", "health", "status")} == {
        "agent_id": "summarizer-1", "name": "Summarizer 1", "category": "summarize",
        "tags": ["en", "fr"], "skill_level": 5, "reputation": 0.8, "health": "unknown",
        "status": "ACTIVE",
    }  # fmt: skip


def test_register_on_an_existing_database_says_nothing_about_creating_it(
    node: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    connect(node).close()
    code, _, err = _hodlai(["agents", "register", "--name", "a", "--endpoint",
                            "http://127.0.0.1:9", "--category", "summarize"], capsys)  # fmt: skip
    assert (code, err) == (0, "")


def test_register_does_not_migrate_an_older_database_behind_the_operators_back(
    node: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conn = connect(node)
    conn.execute("DELETE FROM schema_migrations WHERE set_name = 'dispatch' AND version = 2")
    conn.close()  # as a database of the previous release records itself
    with pytest.raises(SchemaVersionError, match="hodlai migrate"):
        _hodlai(["agents", "register", "--name", "a", "--endpoint", "http://127.0.0.1:9",
                 "--category", "summarize"], capsys)  # fmt: skip
    assert schema_versions(node)["dispatch"] == 1  # left as it was


def test_the_stats_table_prints_what_each_figure_means(
    node: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    connect(node).close()
    code, out, _ = _hodlai(["dispatch", "stats"], capsys)
    assert code == 0
    meanings = (
        "cut_off: calls cut off by a dispatcher restart",
        "crossed_cancel: results already under way when we cancelled",
        "late_results: results given after the agent had acknowledged our cancel",
    )
    for line in meanings:
        assert line in out
    code, out, _ = _hodlai(["agents", "list"], capsys)
    assert "unknown (not checked yet: no" in out and "not those cut off by a" in out
