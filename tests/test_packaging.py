"""A wheel of the node, installed into a fresh virtual environment (not editable), creates a
database and answers ``hodlai status``: the migrations and the compiled contracts travel in
the wheel, nothing is looked up through the source checkout."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload, no-any-return]


def test_a_wheel_in_a_fresh_venv_creates_a_database_and_answers_status(tmp_path: Path) -> None:
    # Built from a copy of what a release holds: a build in the checkout would leave build/
    # behind, and a later build could pick stale files out of it.
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("shared", "workers", "contracts"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(source)],
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("hodlai-*.whl")
    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", str(venv)]).returncode == 0
    # The dependencies come from this environment's site-packages as a plain path entry (no
    # .pth processing there, so this checkout's editable install stays out of the new venv).
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = Path(_run([str(venv / "bin" / "python"), "-c", purelib]).stdout.strip())
    (site / "deps-from-the-test-runner.pth").write_text(sysconfig.get_path("purelib") + "\n")
    installed = _run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
         str(wheel)],
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr

    work = tmp_path / "elsewhere"  # no checkout anywhere near
    work.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HODLAI_DB_PATH": str(work / "node.db")}
    where = _run(
        [str(venv / "bin" / "python"), "-c",
         "import shared, shared.contracts as c; print(shared.__file__); print(c.ARTIFACTS_DIR)"],
        cwd=work, env=env,
    )  # fmt: skip
    package_file, artifacts = where.stdout.split()
    assert package_file.startswith(str(venv)) and artifacts.startswith(str(venv)), where
    hodlai = str(venv / "bin" / "hodlai")
    migrated = _run([hodlai, "migrate", "--json"], cwd=work, env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert json.loads(migrated.stdout)["after"]["core"] >= 1
    status = _run([hodlai, "status", "--json"], cwd=work, env=env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["counts"]["PENDING"] == 0
    artifact = _run(
        [str(venv / "bin" / "python"), "-c",
         "from shared.contracts import artifact; print(len(artifact('HoldAIProvider').abi))"],
        cwd=work, env=env,
    )  # fmt: skip
    assert artifact.returncode == 0 and int(artifact.stdout) > 10, artifact.stderr


def test_the_makefile_builds_the_llama_cpp_python_the_model_extra_pins() -> None:
    """`make setup` compiles llama-cpp-python itself (a fixed instruction set, no AMX); the
    version it builds must be the one pyproject's `model` extra pins, or pip would replace
    the safe build with a native one from PyPI's source package."""
    import re
    import tomllib

    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    built = re.search(r"^LLAMA_VERSION := (\S+)$", makefile, re.MULTILINE)
    assert built is not None
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["optional-dependencies"]["model"] == [
        f"llama-cpp-python=={built.group(1)}"
    ]
    flags = re.search(r"^LLAMA_CMAKE_ARGS := (.+?)(?<!\\)$", makefile, re.MULTILINE | re.DOTALL)
    assert flags is not None
    assert "-DGGML_NATIVE=OFF" in flags.group(1) and "-DGGML_AMX_INT8=OFF" in flags.group(1)
