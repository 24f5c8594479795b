"""The distributor's Solana source key: a keypair file as ``solana-keygen`` writes it.

The file (``HODLAI_DIST_SOLANA_KEY_FILE``) holds a JSON array of the 64 bytes of the keypair
(secret seed, then public key). Guarantees, as for every secret file of the node
(shared.keys.files.read_private): a file the group or others may read is refused; the key
never appears in a log event or an exception message; a file whose public half does not
belong to its secret half is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

from solders.keypair import Keypair

from shared.errors import KeyFileError
from shared.keys.files import read_private, write_secret_file

KEY_FILE_ENV: Final = "HODLAI_DIST_SOLANA_KEY_FILE"


def load_keypair(path: Path | str) -> Keypair:
    source = Path(path)
    raw = read_private(source, what="Solana key file")
    try:
        numbers = json.loads(raw.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError included; the message would quote the key
        raise KeyFileError(f"Solana key file {source} is not valid JSON") from None
    if (
        not isinstance(numbers, list)
        or len(numbers) != 64
        or not all(isinstance(n, int) and 0 <= n <= 255 for n in numbers)
    ):
        raise KeyFileError(
            f"Solana key file {source} must hold a JSON array of 64 bytes (solana-keygen's format)"
        )
    secret = bytes(numbers)
    try:
        keypair = Keypair.from_seed(secret[:32])
    except ValueError:
        raise KeyFileError(f"Solana key file {source}: not a valid ed25519 key") from None
    if bytes(keypair.pubkey()) != secret[32:]:
        raise KeyFileError(f"Solana key file {source}: its public key does not match its secret")
    return keypair


def write_keypair(path: Path | str, keypair: Keypair | None = None) -> Keypair:
    """Write ``keypair`` (a new one if None) to ``path`` with mode 0600, never over an
    existing file; returns it."""
    keypair = keypair if keypair is not None else Keypair()
    write_secret_file(Path(path), json.dumps(list(bytes(keypair))), overwrite=False)
    return keypair
