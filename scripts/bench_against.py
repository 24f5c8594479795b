"""Run one benchmark script on this tree and on an earlier commit's tree, alternately, in one
run, and print the ratios (this tree / the earlier one) of every number both report.

The earlier tree is a temporary ``git worktree`` of REV (removed afterwards) that shares this
checkout's ``node_modules``. It gets a virtualenv of its own (``.venv`` in that tree, so its
scripts find ``.venv/bin/hodlai`` as here) that reaches this checkout's installed packages
through a ``.pth`` file and installs the earlier tree itself in editable mode: its entry
points (commands, migration sets, ...) are the earlier tree's, not this one's. Each benchmark
runs as its own process with its tree's interpreter. Rounds
alternate (earlier, this, earlier, this, ...), so a machine that gets slower or faster during
the run shifts both sides alike.

``--apply PATCH`` (repeatable) applies a patch to the earlier tree before it runs: a
benchmark's own fix, so that both trees run the same measurement (the patch touches the
benchmark script only; scripts/patches/ holds those used in docs/BENCHMARKS.md).

    .venv/bin/python -m scripts.bench_against REV [--rounds 2] [--apply PATCH] -- MODULE [ARGS...]
    e.g. .venv/bin/python -m scripts.bench_against 8c99a0f -- scripts.bench_fulfiller --lagging

Last line: {"baseline": REV, "module": ..., "rounds": N, "applied": [...], "baseline_runs": [...],
"current_runs": [...], "ratio": {key: median(current) / median(baseline), ...}}
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _last_json(output: str) -> dict[str, Any]:
    for raw in reversed(output.strip().splitlines()):
        line = raw.strip()
        if line.startswith("{") and line.endswith("}"):
            parsed: dict[str, Any] = json.loads(line)
            return parsed
    raise SystemExit(f"the benchmark printed no JSON object on its last lines:\n{output[-2000:]}")


def _baseline_venv(tree: Path) -> Path:
    """A virtualenv in ``tree`` with this checkout's packages and ``tree`` installed editable;
    returns its interpreter."""
    venv = tree / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    # Every site-packages directory this interpreter sees, in its order: a worktree's venv
    # reaches the integrator's packages through a .pth file of its own, which a path listed
    # in another .pth file would not process.
    sites = [p for p in sys.path if Path(p).name == "site-packages"]
    sites = sites or [sysconfig.get_paths()["purelib"]]
    Path(site, "hodlai-bench-deps.pth").write_text("".join(f"{p}\n" for p in sites))
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "-e", str(tree)],
        check=True, capture_output=True,
    )  # fmt: skip
    return python


def _run(tree: Path, python: Path, module: str, args: list[str]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [str(python), "-m", module, *args],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{module} in {tree} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return _last_json(done.stdout)


def _numbers(result: dict[str, Any]) -> dict[str, float]:
    return {
        key: float(value)
        for key, value in result.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rev", help="the earlier commit to compare with")
    parser.add_argument("--rounds", type=int, default=2, help="alternations (default 2)")
    parser.add_argument("--apply", action="append", default=[], type=Path, metavar="PATCH",
                        help="a patch for the earlier tree (a benchmark fix)")  # fmt: skip
    parser.add_argument("module", help="the benchmark module, e.g. scripts.bench_fulfiller")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hodlai-baseline-") as scratch:
        baseline = Path(scratch) / "tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(baseline), options.rev],
            check=True,
            capture_output=True,
        )
        try:
            for patch in options.apply:
                subprocess.run(["git", "-C", str(baseline), "apply", str(patch.resolve())],
                               check=True)  # fmt: skip
            (baseline / "node_modules").symlink_to(ROOT / "node_modules")
            old_python = _baseline_venv(baseline)
            new_python = Path(sys.executable)
            before: list[dict[str, Any]] = []
            after: list[dict[str, Any]] = []
            for n in range(options.rounds):
                before.append(_run(baseline, old_python, options.module, options.args))
                print(f"round {n + 1} baseline: {json.dumps(before[-1])}", flush=True)
                after.append(_run(ROOT, new_python, options.module, options.args))
                print(f"round {n + 1} current:  {json.dumps(after[-1])}", flush=True)
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline)],
                check=False,
                capture_output=True,
            )
    ratio: dict[str, float] = {}
    for key in _numbers(before[0]).keys() & _numbers(after[0]).keys():
        old = statistics.median(_numbers(r)[key] for r in before)
        new = statistics.median(_numbers(r)[key] for r in after)
        if old:
            ratio[key] = round(new / old, 3)
    print(
        json.dumps(
            {
                "baseline": options.rev,
                "module": options.module,
                "rounds": options.rounds,
                "applied": [str(patch) for patch in options.apply],
                "baseline_runs": before,
                "current_runs": after,
                "ratio": dict(sorted(ratio.items())),
            }
        )
    )


if __name__ == "__main__":
    main()
