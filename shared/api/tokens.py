"""The operator tokens file (``HODLAI_API_TOKENS_FILE``): bearer tokens, one per line.

Guarantees:

- A file the group or others may read or write is refused, by the reader of every secret
  file of the node (shared/keys/files.py ``read_private``): its tokens must be assumed
  leaked. The mode is checked on the open file descriptor that is then read, so the file
  cannot be swapped between check and read.
- Every refusal is a ConfigError naming the setting, the file and the fix; none quotes a
  line of the file, which may hold a token.
- Blank lines and lines starting with ``#`` are ignored; every other line must be one
  RFC 6750 bearer token of at least :data:`MIN_TOKEN_CHARS` characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from shared.errors import ConfigError, KeyFileError
from shared.keys.files import read_private

SETTING: Final = "HODLAI_API_TOKENS_FILE"
# Characters per token at least: `openssl rand -hex 16` (128 bits) is the shortest accepted,
# so a guessable word like "admin" or "test" is refused.
MIN_TOKEN_CHARS: Final = 32
# Bytes of the tokens file at most: a few hundred tokens; anything larger is not this file.
MAX_FILE_BYTES: Final = 64 * 1024
# The token68 syntax of RFC 6750 section 2.1: what may follow "Bearer " in the header.
_TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")


@dataclass(frozen=True)
class OperatorToken:
    """One token and the line of the file it came from (how logs and the audit trail name
    it: never by its value)."""

    value: bytes
    line: int

    def __repr__(self) -> str:  # a token in a traceback or a debug print shows no value
        return f"OperatorToken(line={self.line})"


def load_tokens(path: Path) -> tuple[OperatorToken, ...]:
    """The tokens in ``path``, after checking that only its owner may read it."""
    try:
        raw = read_private(
            path, what="tokens file", secret="its tokens", max_bytes=MAX_FILE_BYTES,
            rotate="replace the tokens if others did read them",
        )  # fmt: skip
    except KeyFileError as exc:
        raise ConfigError(f"{SETTING}: {exc}") from None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError(f"{SETTING}: {path} is not ASCII text (tokens are ASCII)") from None
    tokens = tuple(_parse(text, path))
    if not tokens:
        raise ConfigError(f"{SETTING}: {path} holds no token (one token per line)")
    return tokens


def _parse(text: str, path: Path) -> list[OperatorToken]:
    tokens = []
    for number, line in enumerate(text.splitlines(), start=1):
        value = line.strip()
        if not value or value.startswith("#"):
            continue
        if not _TOKEN.match(value):
            raise ConfigError(
                f"{SETTING}: {path} line {number} is not one bearer token "
                "(letters, digits and -._~+/ only, optionally ending in =; one per line)"
            )
        if len(value) < MIN_TOKEN_CHARS:
            raise ConfigError(
                f"{SETTING}: {path} line {number} is shorter than {MIN_TOKEN_CHARS} "
                "characters; make one with `openssl rand -hex 32`"
            )
        tokens.append(OperatorToken(value.encode("ascii"), number))
    return tokens
