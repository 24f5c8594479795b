"""The operator tokens file (``HODLAI_API_TOKENS_FILE``): one bearer token per line, each
with the id that names its operator and the role it grants.

Format (whitespace-separated; blank lines and lines starting with ``#`` are ignored)::

    # id     role   token
    alice    admin  3f9c0d...
    grafana  read   a71b2e...

Guarantees:

- A file the group or others may read or write is refused, by the reader of every secret
  file of the node (shared/keys/files.py ``read_private``): its tokens must be assumed
  leaked. The mode is checked on the open file descriptor that is then read, so the file
  cannot be swapped between check and read.
- Every refusal is a ConfigError naming the setting, the file, the line number and the fix;
  none quotes a line of the file, which may hold a token.
- An operator is named by its id, never by its line: reordering the file, or deleting a
  line, renames no one in the audit trail. Ids and tokens are unique within the file.
- Each token is one RFC 6750 bearer token of at least :data:`MIN_TOKEN_CHARS` characters;
  the role is ``read`` or ``admin``.
- **Legacy lines.** A line holding only a token (the format before roles) is read as an
  ``admin`` token whose id is ``legacy-`` and the first 12 hex digits of the SHA-256 of the
  token: stable whatever the line order, and a 48-bit digest of a 128-bit-or-more random
  token says nothing usable about it. Each such line is logged once at start
  (``api_token_legacy``, with the id) so the operator rewrites it with a chosen id.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final

import structlog

from shared.errors import ConfigError, KeyFileError
from shared.keys.files import read_private

log = structlog.get_logger(__name__)

SETTING: Final = "HODLAI_API_TOKENS_FILE"
# Characters per token at least: `openssl rand -hex 16` (128 bits) is the shortest accepted,
# so a guessable word like "admin" or "test" is refused.
MIN_TOKEN_CHARS: Final = 32
# Bytes of the tokens file at most: a few hundred tokens; anything larger is not this file.
MAX_FILE_BYTES: Final = 64 * 1024
# The token68 syntax of RFC 6750 section 2.1: what may follow "Bearer " in the header.
_TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")
# An operator id: what the audit trail shows after "operator:api:". No ':' or spaces, so an
# actor string splits unambiguously; 64 characters is a name, not a sentence.
_TOKEN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
LEGACY_PREFIX: Final = "legacy-"
# Hex digits of the token's SHA-256 in a legacy id: 48 bits, so two legacy tokens of one
# file collide with odds of about 2**-48 per pair (and a collision is refused, not merged).
LEGACY_ID_HEX: Final = 12


class Role(StrEnum):
    """What a token may do. ``admin`` includes ``read``."""

    READ = "read"
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        return self is Role.ADMIN or needed is Role.READ


@dataclass(frozen=True)
class OperatorToken:
    """One token, the id that names its operator, and its role; never shown by value."""

    value: bytes
    token_id: str
    role: Role
    line: int  # only for messages about the file itself, never for naming the operator

    def __repr__(self) -> str:  # a token in a traceback or a debug print shows no value
        return f"OperatorToken(id={self.token_id!r}, role={self.role.value})"


def legacy_id(token: str) -> str:
    """The id of a token written on a line of its own (the format before roles)."""
    digest = hashlib.sha256(token.encode("ascii")).hexdigest()
    return LEGACY_PREFIX + digest[:LEGACY_ID_HEX]


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
    tokens = _parse(text, path)
    if not tokens:
        raise ConfigError(f"{SETTING}: {path} holds no token (one `id role token` per line)")
    for token in tokens:
        if token.token_id.startswith(LEGACY_PREFIX):
            log.warning("api_token_legacy", token_id=token.token_id, role=token.role.value,
                        hint="a line with a token only is an admin token; write it as "
                        "`<id> <role> <token>`")  # fmt: skip
    return tokens


def _parse(text: str, path: Path) -> tuple[OperatorToken, ...]:
    tokens: list[OperatorToken] = []
    ids: dict[str, int] = {}
    values: dict[bytes, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        where = f"{SETTING}: {path} line {number}"
        if len(fields) == 1:
            value, token_id, role = fields[0], None, Role.ADMIN
        elif len(fields) == 3:
            token_id, role_text, value = fields
            if not _TOKEN_ID.match(token_id) or token_id.startswith(LEGACY_PREFIX):
                raise ConfigError(
                    f"{where}: the id is not 1-64 letters, digits and ._- starting with a "
                    f"letter or digit (and not {LEGACY_PREFIX}...)"
                )
            try:
                role = Role(role_text)
            except ValueError:
                raise ConfigError(f"{where}: the role is neither read nor admin") from None
        else:
            raise ConfigError(
                f"{where} is not `<id> <role> <token>` (three fields) or a bare token"
            )
        if not _TOKEN.match(value):
            raise ConfigError(
                f"{where}: the token is not one bearer token "
                "(letters, digits and -._~+/ only, optionally ending in =)"
            )
        if len(value) < MIN_TOKEN_CHARS:
            raise ConfigError(
                f"{where}: the token is shorter than {MIN_TOKEN_CHARS} characters; make one "
                "with `openssl rand -hex 32`"
            )
        token_id = token_id or legacy_id(value)
        encoded = value.encode("ascii")
        if token_id in ids:
            raise ConfigError(f"{where}: id {token_id} is on line {ids[token_id]} already")
        if encoded in values:
            raise ConfigError(f"{where}: the same token is on line {values[encoded]} already")
        ids[token_id] = values[encoded] = number
        tokens.append(OperatorToken(encoded, token_id, role, number))
    return tuple(tokens)
