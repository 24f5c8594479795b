"""Keys the node signs with: key files (:mod:`shared.keys.files`, the oracle's key as a 0600
JSON key file or an encrypted keystore) and the vault (:mod:`shared.keys.vault`, wallets
encrypted at rest in the state store under a 0600 master key file; the wallets it creates are
derived from that master key, :mod:`shared.keys.derivation`, so a lost row is recovered from it).

The key-file functions are re-exported here, so ``from shared.keys import load_private_key``
works as it always did. The vault is imported from :mod:`shared.keys.vault` by the processes
that use it: it pulls in the transaction signer and ``cryptography``, which a process that
only reads a key file does not need to load.
"""

from __future__ import annotations

from shared.keys.files import (
    KEY_FILE_MODE,
    PASSPHRASE_ENV,
    PASSPHRASE_FILE_ENV,
    generate_key_file,
    generate_keystore_file,
    key_file_address,
    load_private_key,
    read_passphrase,
)

__all__ = [
    "KEY_FILE_MODE",
    "PASSPHRASE_ENV",
    "PASSPHRASE_FILE_ENV",
    "generate_key_file",
    "generate_keystore_file",
    "key_file_address",
    "load_private_key",
    "read_passphrase",
]
