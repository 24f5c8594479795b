"""The operator tokens file (HODLAI_API_TOKENS_FILE) on real files: what is accepted, what is
refused, and that no refusal quotes the file."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from shared.api.auth import OperatorTokens
from shared.api.tokens import MIN_TOKEN_CHARS, load_tokens
from shared.errors import ConfigError

GOOD = secrets.token_hex(32)
OTHER = secrets.token_urlsafe(32) + "=="


def _file(tmp_path: Path, text: str | bytes, mode: int = 0o600) -> Path:
    path = tmp_path / "tokens"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    path.chmod(mode)
    return path


def test_tokens_are_read_one_per_line_skipping_comments_and_blank_lines(tmp_path: Path) -> None:
    path = _file(tmp_path, f"# ops\n\n  {GOOD}  \n# old one removed\n{OTHER}\r\n", mode=0o400)
    tokens = load_tokens(path)
    assert [(t.value.decode(), t.line) for t in tokens] == [(GOOD, 3), (OTHER, 5)]
    assert GOOD not in repr(tokens)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_a_file_others_may_read_or_write_is_refused_naming_the_fix(
    tmp_path: Path, mode: int
) -> None:
    path = _file(tmp_path, GOOD + "\n", mode=mode)
    with pytest.raises(ConfigError) as refused:
        load_tokens(path)
    message = str(refused.value)
    assert message.startswith("HODLAI_API_TOKENS_FILE: ")
    assert f"mode {mode:04o}" in message and f"chmod 600 {path}" in message
    assert GOOD not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("short-token\n", f"line 1 is shorter than {MIN_TOKEN_CHARS}"),
        (f"{GOOD[:20]} {GOOD[20:]}\n", "line 1 is not one bearer token"),
        (f"# a\nBearer {GOOD}\n", "line 2 is not one bearer token"),
        (f"{GOOD}\n{GOOD}@x\n", "line 2 is not one bearer token"),
        ("# only a comment\n\n", "holds no token"),
        ("", "holds no token"),
        (f"{GOOD}é\n".encode(), "is not ASCII"),
    ],
)
def test_a_malformed_file_is_refused_without_quoting_it(
    tmp_path: Path, text: str | bytes, expected: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load_tokens(_file(tmp_path, text))
    assert expected in str(refused.value)
    assert GOOD[:20] not in str(refused.value) and "short-token" not in str(refused.value)


def test_a_missing_file_or_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_tokens(tmp_path / "absent")
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_tokens(directory)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)  # a blocking open would wait for a writer forever
    with pytest.raises(ConfigError, match=r"HODLAI_API_TOKENS_FILE: .* not a regular file"):
        load_tokens(fifo)


def test_a_presented_token_matches_only_exactly(tmp_path: Path) -> None:
    tokens = OperatorTokens(load_tokens(_file(tmp_path, f"{GOOD}\n{OTHER}\n")))
    found = tokens.match(OTHER)
    assert found is not None and found.line == 2
    for near in (GOOD[:-1], GOOD + "0", "", GOOD + "\n", "ß" + GOOD[1:], GOOD.upper()):
        assert tokens.match(near) is None
    assert not OperatorTokens(())
