"""The committed contract artifacts are exactly what the pinned compiler makes of the sources."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from shared.contracts import ARTIFACTS_DIR, PROJECT_ROOT, artifact, artifact_names

SCRIPT = PROJECT_ROOT / "scripts" / "compile_contracts.js"
DEPLOYABLE = (
    "HoldAIProvider",
    "ExampleDecisionVault",
    "RevertingVault",
    "CustomErrorVault",
    "GasBurningVault",
    "GasMeteringVault",
)


def run_check(root: Path) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    assert node is not None, "node is not installed; run make setup"
    return subprocess.run(
        [node, str(root / "scripts" / "compile_contracts.js"), "--check"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_committed_artifacts_match_a_fresh_compile() -> None:
    result = run_check(PROJECT_ROOT)
    assert result.returncode == 0, result.stderr


def test_check_names_every_artifact_that_is_stale_missing_or_orphaned(tmp_path: Path) -> None:
    # A copy of a few small sources with their artifacts, sharing node_modules: the real
    # artifacts stay untouched and the compile takes a moment instead of seconds.
    sources = ("IHoldAIProvider", "IVaultSchemasV1", "VaultBase", "VaultBaseV2")
    out = tmp_path / "contracts" / "out"
    out.mkdir(parents=True)
    for name in sources:
        shutil.copy(PROJECT_ROOT / "contracts" / f"{name}.sol", tmp_path / "contracts")
    for name in ("IHoldAIProvider", "VaultBase", "VaultBaseV2"):
        shutil.copy(ARTIFACTS_DIR / f"{name}.json", out)
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPT, tmp_path / "scripts")
    (tmp_path / "node_modules").symlink_to(PROJECT_ROOT / "node_modules")
    assert run_check(tmp_path).returncode == 0, "the copied artifacts should match"

    tampered = json.loads((out / "VaultBase.json").read_text())
    tampered["abi"] = []
    (out / "VaultBase.json").write_text(json.dumps(tampered, indent=2, sort_keys=True) + "\n")
    (out / "IHoldAIProvider.json").unlink()
    (out / "Orphan.json").write_text("{}\n")
    result = run_check(tmp_path)

    assert result.returncode == 1
    assert "VaultBase (differs)" in result.stderr
    assert "IHoldAIProvider (missing)" in result.stderr
    assert "Orphan (no longer has a source)" in result.stderr
    assert "VaultBaseV2" not in result.stderr


def test_every_deployable_contract_has_bytecode_and_a_source_hash() -> None:
    assert set(DEPLOYABLE) <= set(artifact_names())
    for name in DEPLOYABLE:
        compiled = artifact(name)
        assert compiled.name == name
        assert compiled.bytecode.startswith("0x60") and len(compiled.bytecode) > 1000
        assert compiled.deployed_bytecode.startswith("0x")
        assert compiled.source_hash.startswith("0x") and len(compiled.source_hash) == 66


@pytest.mark.parametrize("path", sorted(ARTIFACTS_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_artifact_files_are_canonical_json_with_sorted_keys(path: Path) -> None:
    text = path.read_text()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
