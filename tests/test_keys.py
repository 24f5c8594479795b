"""Key files and keystores: formats, passphrase sources, permission refusals, and that the
key and the passphrase never show up in an error."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from eth_account import Account

from shared.errors import ConfigError, KeyFileError
from shared.keys import (
    generate_key_file,
    generate_keystore_file,
    key_file_address,
    load_private_key,
    read_passphrase,
)
from shared.keys.files import MAX_SECRET_FILE_BYTES
from shared.keys.vault import load_master_key
from tests.test_fulfiller_support import HODLAI

PASSPHRASE = "correct horse battery staple"
# pbkdf2 with few rounds: the format is the real one, the test does not wait a second per key.
FAST = {"kdf": "pbkdf2", "iterations": 2}


def write_private(path: Path, text: str, mode: int = 0o600) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    path.chmod(mode)
    return path


def test_a_keystore_opens_with_its_passphrase_and_matches_its_address(tmp_path: Path) -> None:
    key = bytes(Account.create().key)
    path = tmp_path / "oracle.keystore.json"
    address = generate_keystore_file(path, PASSPHRASE, private_key=key, **FAST)  # type: ignore[arg-type]
    assert load_private_key(path, PASSPHRASE) == key
    assert key_file_address(path, PASSPHRASE) == address
    assert key.hex() not in path.read_text()  # encrypted at rest


def test_a_keystore_written_with_the_default_scrypt_opens_too(tmp_path: Path) -> None:
    path = tmp_path / "oracle.keystore.json"
    address = generate_keystore_file(path, PASSPHRASE)
    assert key_file_address(path, PASSPHRASE) == address


def test_a_wrong_or_missing_passphrase_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = tmp_path / "oracle.keystore.json"
    generate_keystore_file(path, PASSPHRASE, **FAST)  # type: ignore[arg-type]
    with pytest.raises(KeyFileError, match="wrong passphrase") as wrong:
        load_private_key(path, "not it")
    assert "not it" not in str(wrong.value)
    with pytest.raises(KeyFileError, match="HODLAI_KEY_PASSPHRASE or HODLAI_KEY_PASSPHRASE_FILE"):
        load_private_key(path)


def test_the_passphrase_comes_from_the_environment_or_a_private_file(tmp_path: Path) -> None:
    secret_file = write_private(tmp_path / "passphrase", PASSPHRASE + "\n")
    assert read_passphrase(passphrase=PASSPHRASE, passphrase_file=None) == PASSPHRASE
    assert read_passphrase(passphrase=None, passphrase_file=secret_file) == PASSPHRASE
    assert read_passphrase(passphrase=None, passphrase_file=None) is None
    with pytest.raises(ConfigError, match="only one of"):
        read_passphrase(passphrase=PASSPHRASE, passphrase_file=secret_file)


def test_a_passphrase_file_others_can_read_is_refused(tmp_path: Path) -> None:
    secret_file = write_private(tmp_path / "passphrase", PASSPHRASE, mode=0o644)
    with pytest.raises(KeyFileError, match="mode 0644: group/others may read") as info:
        read_passphrase(passphrase=None, passphrase_file=secret_file)
    assert PASSPHRASE not in str(info.value)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o666])
def test_a_key_file_group_or_others_can_access_is_refused_with_the_fix(
    tmp_path: Path, mode: int
) -> None:
    path = tmp_path / "oracle.json"
    generate_key_file(path)
    path.chmod(mode)
    with pytest.raises(KeyFileError, match=f"mode {mode:04o}") as info:
        load_private_key(path)
    assert "chmod 600" in str(info.value)
    assert json.loads(path.read_text())["private_key"][2:] not in str(info.value)


def test_a_keystore_others_can_read_is_refused_although_it_is_encrypted(tmp_path: Path) -> None:
    path = tmp_path / "oracle.keystore.json"
    generate_keystore_file(path, PASSPHRASE, **FAST)  # type: ignore[arg-type]
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="group/others may read"):
        load_private_key(path, PASSPHRASE)


def test_a_broken_key_file_is_refused_without_quoting_its_content(tmp_path: Path) -> None:
    secret = "ab" * 32
    path = write_private(tmp_path / "oracle.json", '{"private_key": "0x' + secret + '",')
    with pytest.raises(KeyFileError, match="not valid JSON") as info:
        load_private_key(path)
    assert secret not in str(info.value)


def test_every_secret_file_is_read_by_one_reader_that_refuses_what_is_no_key_file(
    tmp_path: Path,
) -> None:
    """A directory, a FIFO (which would block a plain read forever), a file of several MB and
    a missing file are each refused with a message naming the file, for key files,
    passphrase files and the vault's master key alike."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    huge = write_private(tmp_path / "huge.json", "x" * (MAX_SECRET_FILE_BYTES + 1))
    cases = {
        tmp_path: "is not a regular file",
        fifo: "is not a regular file",
        huge: f"is larger than {MAX_SECRET_FILE_BYTES} bytes",
        tmp_path / "absent.json": "does not exist",
    }
    for path, reason in cases.items():
        loaders: tuple[Callable[[Path], object], ...] = (
            load_private_key,
            lambda p: read_passphrase(passphrase=None, passphrase_file=p),
            load_master_key,
        )
        for load in loaders:
            with pytest.raises((KeyFileError, ConfigError)) as info:
                load(path)
            assert str(path) in str(info.value), info.value
            if path.name != "absent.json":  # the vault has its own wording for a missing key
                assert reason in str(info.value), info.value


def test_a_keystore_whose_address_does_not_match_its_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "oracle.keystore.json"
    generate_keystore_file(path, PASSPHRASE, **FAST)  # type: ignore[arg-type]
    keystore = json.loads(path.read_text())
    keystore["address"] = "11" * 20
    path.unlink()
    write_private(path, json.dumps(keystore))
    with pytest.raises(KeyFileError, match="does not match its key"):
        load_private_key(path, PASSPHRASE)


def test_fulfiller_help_shows_neither_key_nor_passphrase(tmp_path: Path) -> None:
    key_file = tmp_path / "oracle.json"
    generate_key_file(key_file)
    env = {**os.environ, "HODLAI_KEY_FILE": str(key_file), "HODLAI_KEY_PASSPHRASE": PASSPHRASE}
    output = subprocess.run(
        [HODLAI, "fulfiller", "--help"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "HODLAI_KEY_FILE" in output
    assert PASSPHRASE not in output
    assert json.loads(key_file.read_text())["private_key"][2:] not in output
