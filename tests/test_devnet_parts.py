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
