"""The devnet's executor parts (workers/devnet/parts.py): order, settings, refusal of a clash."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.devnet.parts import (
    DevnetChain,
    DevnetPart,
    DevnetPartError,
    EnvSetting,
    part_settings,
    run_parts,
)


def _chain(tmp_path: Path) -> DevnetChain:
    return DevnetChain(
        rpc_url="http://127.0.0.1:1",
        chain_id=31337,
        state_dir=tmp_path,
        db_path=tmp_path / "hodlai.db",
        accounts=(),
        settings={"HODLAI_RPC_URLS": "http://127.0.0.1:1"},
    )


def test_parts_run_in_order_and_their_settings_follow(tmp_path: Path) -> None:
    seen: list[str] = []

    def first(chain: DevnetChain) -> DevnetPart:
        seen.append("a")
        return DevnetPart(settings=[EnvSetting("token", "HODLAI_A_TOKEN", "0x1")])

    def second(chain: DevnetChain) -> DevnetPart:
        seen.append("b")
        assert chain.settings["HODLAI_RPC_URLS"] == chain.rpc_url
        return DevnetPart(settings=[EnvSetting("x", "HODLAI_B_X", "2")], deployment={"x": 2})

    parts = run_parts(_chain(tmp_path), [("a", first), ("b", second)])
    assert seen == ["a", "b"]
    assert [s.name for s in part_settings(parts)] == ["HODLAI_A_TOKEN", "HODLAI_B_X"]
    assert parts["b"].deployment == {"x": 2}


def test_a_setting_defined_twice_is_refused(tmp_path: Path) -> None:
    def clash(chain: DevnetChain) -> DevnetPart:
        return DevnetPart(settings=[EnvSetting("again", "HODLAI_RPC_URLS", "http://x")])

    with pytest.raises(DevnetPartError, match="HODLAI_RPC_URLS, already set by oracle"):
        run_parts(_chain(tmp_path), [("clash", clash)])


def test_the_api_part_writes_private_token_files_and_names_them(tmp_path: Path) -> None:
    import stat

    from shared.api.tokens import load_tokens
    from workers.devnet.api_part import setup

    chain = DevnetChain(
        rpc_url="http://127.0.0.1:1",
        chain_id=31337,
        state_dir=tmp_path,
        db_path=tmp_path / "hodlai.db",
        accounts=(),
        api_port=18080,
    )
    part = setup(chain)
    settings = {s.name: s.value for s in part.settings}
    assert settings["HODLAI_API_URL"] == "http://127.0.0.1:18080"
    assert settings["HODLAI_API_PORT"] == "18080"
    admin_file = Path(settings["HODLAI_DEVNET_ADMIN_TOKEN_FILE"])
    tokens_file = Path(settings["HODLAI_API_TOKENS_FILE"])
    for path in (admin_file, tokens_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    admin = admin_file.read_text().strip()
    roles = {t.token_id: (t.role, t.value) for t in load_tokens(tokens_file)}
    assert roles["devnet-admin"][0] == "admin" and roles["devnet-admin"][1] == admin.encode()
    assert roles["devnet-read"][0] == "read"
    assert admin not in " ".join(part.summary) + str(part.deployment)
