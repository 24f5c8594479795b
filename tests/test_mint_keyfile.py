"""The mint key file (the seed's private.key): format, 0600, no key in any message."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from eth_account import Account

from shared.errors import KeyFileError
from workers.mint.keyfile import (
    ANVIL_DEFAULT_ADDRESSES,
    MINT_KEY_FILE_ENV,
    generate_mint_key_file,
    load_mint_keys,
)

SERVER = "0x" + "11" * 32
MINTER = "0x" + "22" * 32
MASTER = "ab" * 32


def _write(path: Path, payload: object, mode: int = 0o600) -> Path:
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    os.chmod(path, mode)
    return path


def test_loads_the_seeds_format(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "private.key",
        {
            "serverPrivateKey": SERVER,
            "minterPrivateKey": MINTER,
            "lpDeployerPrivateKey": "0x" + "33" * 32,
            "agentEncryptionKey": MASTER,
        },
    )
    keys = load_mint_keys(path)
    assert keys.server_key == bytes.fromhex("11" * 32)
    assert keys.minter_key == bytes.fromhex("22" * 32)
    assert keys.agent_master_key == bytes.fromhex(MASTER)
    assert keys.server_address == Account.from_key(SERVER).address
    assert keys.relayer_address == keys.server_address
    assert keys.minter_address == Account.from_key(MINTER).address
    assert keys.master_key().key_id
    shown = repr(keys) + str(keys)
    assert keys.server_address in shown and keys.minter_address in shown
    for secret in ("11" * 32, "22" * 32, MASTER):
        assert secret not in shown.lower()


def test_master_key_with_0x_prefix_and_no_lp_key(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "k",
        {
            "serverPrivateKey": SERVER,
            "minterPrivateKey": MINTER,
            "agentEncryptionKey": "0x" + MASTER,
        },
    )
    assert load_mint_keys(path).agent_master_key == bytes.fromhex(MASTER)


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ({"minterPrivateKey": MINTER, "agentEncryptionKey": MASTER}, "serverPrivateKey"),
        ({"serverPrivateKey": SERVER, "agentEncryptionKey": MASTER}, "minterPrivateKey"),
        ({"serverPrivateKey": SERVER, "minterPrivateKey": MINTER}, "agentEncryptionKey"),
        (
            {
                "serverPrivateKey": SERVER,
                "minterPrivateKey": MINTER,
                "agentEncryptionKey": "ab" * 16,
            },
            "agentEncryptionKey",
        ),
        (
            {
                "serverPrivateKey": SERVER[:-2],
                "minterPrivateKey": MINTER,
                "agentEncryptionKey": MASTER,
            },
            "serverPrivateKey",
        ),
        (
            {
                "serverPrivateKey": SERVER,
                "minterPrivateKey": "0x" + "00" * 32,
                "agentEncryptionKey": MASTER,
            },
            "minterPrivateKey",
        ),
        (
            {"serverPrivateKey": SERVER, "minterPrivateKey": SERVER, "agentEncryptionKey": MASTER},
            "different",
        ),
        ('{"serverPrivateKey": "' + SERVER + '", broken', "not valid JSON"),
        ([SERVER], "not a JSON object"),
    ],
)
def test_refusals_name_the_setting_and_never_quote_a_key(
    tmp_path: Path, payload: object, needle: str
) -> None:
    path = _write(tmp_path / "k", payload)
    with pytest.raises(KeyFileError) as info:
        load_mint_keys(path)
    message = str(info.value)
    assert MINT_KEY_FILE_ENV in message and needle in message
    for secret in ("11" * 32, "22" * 32, MASTER, "ab" * 16):
        assert secret not in message.lower()


def test_group_readable_file_is_refused(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "k",
        {"serverPrivateKey": SERVER, "minterPrivateKey": MINTER, "agentEncryptionKey": MASTER},
        mode=0o640,
    )
    with pytest.raises(KeyFileError, match=f"{MINT_KEY_FILE_ENV}.*chmod 600"):
        load_mint_keys(path)


def test_missing_setting_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=MINT_KEY_FILE_ENV):
        load_mint_keys(None)
    with pytest.raises(KeyFileError, match=f"{MINT_KEY_FILE_ENV}.*does not exist"):
        load_mint_keys(tmp_path / "absent")


def test_generated_file_is_0600_loads_back_and_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "state" / "private.key"
    keys = generate_mint_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_mint_keys(path) == keys
    assert keys.server_address not in ANVIL_DEFAULT_ADDRESSES
    assert keys.minter_address not in ANVIL_DEFAULT_ADDRESSES
    assert keys.server_address != keys.minter_address
    data = json.loads(path.read_text())
    assert set(data) == {
        "serverPrivateKey",
        "minterPrivateKey",
        "lpDeployerPrivateKey",
        "agentEncryptionKey",
    }
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):
        generate_mint_key_file(path)
    assert path.read_bytes() == before


def test_anvil_list_is_anvils() -> None:
    mnemonic = "test test test test test test test test test test test junk"
    Account.enable_unaudited_hdwallet_features()
    derived = {
        Account.from_mnemonic(mnemonic, account_path=f"m/44'/60'/0'/0/{i}").address
        for i in range(10)
    }
    assert derived == ANVIL_DEFAULT_ADDRESSES
