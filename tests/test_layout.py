"""The layout says what the node is (issue 19): shared/ is the core and imports nothing from
workers/; the oracle's processes live in its package; every compiled contract is some
executor's, so its reverts are decoded."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from shared.contracts import artifact_names, error_selectors, registered_abis

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "shared"
WORKERS = ROOT / "workers"


def _imports_of_workers(source: str) -> Iterator[tuple[int, str]]:
    """(line, module) of every import of ``workers`` in ``source``: import statements at any
    depth (a function's lazy import counts) and importlib.import_module / __import__ calls
    with a literal name."""
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if called in ("import_module", "__import__") and isinstance(first, ast.Constant):
                names = [str(first.value)]
        for name in names:
            if name == "workers" or name.startswith("workers."):
                yield node.lineno, name


def test_the_import_check_sees_every_form_of_import() -> None:
    # The check below would pass vacuously if it missed a form: each form is caught here.
    source = (
        "import workers.oracle.store\n"
        "from workers.oracle import store\n"
        "def f():\n    from workers import dispatch\n"
        "importlib.import_module('workers.oracle.machine')\n"
        "__import__('workers')\n"
        "import workersfoo\nfrom shared import store\n"
    )
    assert [line for line, _ in _imports_of_workers(source)] == [1, 2, 4, 5, 6]


def test_no_module_under_shared_imports_workers() -> None:
    modules = sorted(CORE.rglob("*.py"))
    assert len(modules) > 50, "the walk found too few modules of the core"
    offences = [
        f"{path.relative_to(ROOT)}:{line}: imports {name}"
        for path in modules
        for line, name in _imports_of_workers(path.read_text(encoding="utf-8"))
    ]
    assert offences == [], "the core imports an executor:\n" + "\n".join(offences)


def test_the_oracle_is_one_package_and_dev_tools_are_apart() -> None:
    for process in ("indexer", "inference", "fulfiller", "replay"):
        assert (WORKERS / "oracle" / process / "__init__.py").is_file()
        assert not (WORKERS / process).exists(), f"workers/{process} is the oracle's"
    for module in ("store", "request_id", "event_data", "contracts", "metrics", "settings"):
        assert (WORKERS / "oracle" / f"{module}.py").is_file()
        assert not (CORE / f"{module}.py").exists() or module in ("contracts", "metrics")
    for tool in ("deploy.py", "anvil.py", "mockllm"):
        assert (WORKERS / "devnet" / tool).exists()
        assert not (CORE / tool).exists() and not (WORKERS / tool).exists()


def test_every_compiled_contract_is_declared_by_an_executor() -> None:
    # A contract no executor declares (pyproject.toml hodlai.abis) would have its custom
    # errors read as "unknown error 0x...".
    declared = {name for _, abis in registered_abis() for name in abis.contracts}
    assert {executor for executor, _ in registered_abis()} >= {"oracle", "devnet"}
    assert declared == set(artifact_names())
    names = {spec.name for spec in error_selectors().values()}
    assert {"CallbackReverted", "AccessControlUnauthorizedAccount"} <= names
