"""The operator tokens file (HODLAI_API_TOKENS_FILE) on real files: ids and roles, the legacy
one-token lines, what is refused, and that no refusal quotes the file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from shared.api.auth import OperatorTokens
from shared.api.tokens import MIN_TOKEN_CHARS, Role, legacy_id, load_tokens
from shared.errors import ConfigError

# Fixed, not random: they appear in parametrized test ids, which every pytest-xdist worker
# must collect identically.
GOOD = "5f0c" * 16
OTHER = "Qm-9_z" * 8 + "=="
THIRD = "a17e" * 10


def _file(tmp_path: Path, text: str | bytes, mode: int = 0o600) -> Path:
    path = tmp_path / "tokens"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    path.chmod(mode)
    return path


def test_tokens_are_read_with_their_id_and_role_skipping_comments_and_blank_lines(
    tmp_path: Path,
) -> None:
    text = (
        f"# id role token\n\n  alice\tadmin  {GOOD}  \n# old one removed\nci.bot-2 read {OTHER}\r\n"
    )
    tokens = load_tokens(_file(tmp_path, text, mode=0o400))
    assert [(t.value.decode(), t.token_id, t.role) for t in tokens] == [
        (GOOD, "alice", Role.ADMIN),
        (OTHER, "ci.bot-2", Role.READ),
    ]
    assert GOOD not in repr(tokens) and OTHER not in repr(tokens)


def test_reordering_the_file_renames_no_operator(tmp_path: Path) -> None:
    lines = [f"alice admin {GOOD}", f"bob read {OTHER}", THIRD]
    first = {t.value: t.token_id for t in load_tokens(_file(tmp_path, "\n".join(lines)))}
    again = {
        t.value: t.token_id
        for t in load_tokens(_file(tmp_path, "# moved\n\n" + "\n".join(reversed(lines))))
    }
    assert first == again and first[THIRD.encode()] == legacy_id(THIRD)


def test_a_line_with_only_a_token_is_an_admin_named_by_a_digest_with_a_warning(
    tmp_path: Path,
) -> None:
    with capture_logs() as logs:
        (token,) = load_tokens(_file(tmp_path, f"{GOOD}\n"))
    assert token.role is Role.ADMIN and token.token_id == legacy_id(GOOD)
    assert token.token_id.startswith("legacy-") and len(token.token_id) == len("legacy-") + 12
    assert token.token_id[7:] not in GOOD  # a digest of the token, not a piece of it
    (warning,) = [e for e in logs if e["event"] == "api_token_legacy"]
    assert warning["token_id"] == token.token_id and GOOD not in str(logs)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_a_file_others_may_read_or_write_is_refused_naming_the_fix(
    tmp_path: Path, mode: int
) -> None:
    path = _file(tmp_path, f"alice admin {GOOD}\n", mode=mode)
    with pytest.raises(ConfigError) as refused:
        load_tokens(path)
    message = str(refused.value)
    assert message.startswith("HODLAI_API_TOKENS_FILE: ")
    assert f"mode {mode:04o}" in message and f"chmod 600 {path}" in message
    assert GOOD not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("short-token\n", f"line 1: the token is shorter than {MIN_TOKEN_CHARS}"),
        (f"alice admin {GOOD[:20]}\n", f"line 1: the token is shorter than {MIN_TOKEN_CHARS}"),
        (f"{GOOD[:20]} {GOOD[20:]}\n", "line 1 is not `<id> <role> <token>`"),
        (f"# a\nBearer {GOOD}\n", "line 2 is not `<id> <role> <token>`"),
        (f"alice admin {GOOD} extra\n", "line 1 is not `<id> <role> <token>`"),
        (f"{GOOD}\n{GOOD}@x\n", "line 2: the token is not one bearer token"),
        (f"alice root {GOOD}\n", "line 1: the role is neither read nor admin"),
        (f"alice Admin {GOOD}\n", "line 1: the role is neither read nor admin"),
        (f"al:ice admin {GOOD}\n", "line 1: the id is not"),
        (f"-alice admin {GOOD}\n", "line 1: the id is not"),
        (f"legacy-1 admin {GOOD}\n", "line 1: the id is not"),
        (f"{'a' * 65} admin {GOOD}\n", "line 1: the id is not"),
        (f"alice admin {GOOD}\nalice read {OTHER}\n", "line 2: id alice is on line 1"),
        (f"alice admin {GOOD}\nbob read {GOOD}\n", "line 2: the same token is on line 1"),
        (f"{GOOD}\nbob read {GOOD}\n", "line 2: the same token is on line 1"),
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
    tokens = OperatorTokens(load_tokens(_file(tmp_path, f"a admin {GOOD}\nb read {OTHER}\n")))
    found = tokens.match(OTHER)
    assert found is not None and (found.token_id, found.role) == ("b", Role.READ)
    for near in (GOOD[:-1], GOOD + "0", "", GOOD + "\n", "ß" + GOOD[1:], GOOD.upper()):
        assert tokens.match(near) is None
    assert not OperatorTokens(())


def test_an_admin_role_allows_reads_and_a_read_role_allows_no_writes() -> None:
    assert Role.ADMIN.allows(Role.ADMIN) and Role.ADMIN.allows(Role.READ)
    assert Role.READ.allows(Role.READ) and not Role.READ.allows(Role.ADMIN)
