"""How the vault derives a wallet's key from its master key, and what each row's AES-GCM
associated data binds: pure functions of bytes, no database and no I/O, so the format can be
re-implemented by an operator's recovery script from this docstring alone.

Derivation (HKDF-SHA256, RFC 5869):

- ``PRK = HMAC-SHA256(salt=b"hodlai vault derivation v1", key=master_key)`` (HKDF-Extract),
  computed once when the master key is loaded; the master key's bytes are not kept.
- ``candidate = HKDF-Expand(PRK, info, 32)`` with
  ``info = b"hodlai vault wallet v1\\x00" || field(label) || owner_field(owner) ||
  index (8 bytes, big-endian) || counter (4 bytes, big-endian)``, where ``field(s)`` is the
  UTF-8 bytes of ``s`` preceded by their length (4 bytes, big-endian) and
  ``owner_field(None) = b"\\x00"``, ``owner_field(o) = b"\\x01" || field(o)``. Every part is
  length-prefixed or fixed-size, so no two (label, owner, index) give the same ``info``.
- The first ``candidate`` (counter 0, 1, ...) that is a valid secp256k1 scalar, in
  ``[1, n-1]``, is the key. A candidate outside that range has probability about 2^-128; the
  counter makes the rule deterministic anyway.

Why HKDF and not BIP-32: the vault already holds one 32-byte symmetric secret and uses
SHA-256; HKDF needs nothing more (no chain codes to store, no extended keys, no hardened /
non-hardened choice), and its ``info`` string binds the label and the owner directly, where
BIP-32 would have to map them to 31-bit path components. No wallet software needs to import
our wallets by path, which is BIP-32's one advantage.

Associated data, version 2 (every row written since core migration 8):
``b"\\x02" || address (20 bytes) || index_field || field(label) || owner_field(owner)`` with
``index_field = b"\\x00"`` for an imported key and ``b"\\x01" || index (8 bytes)`` for a
derived one. Version 1 (rows written before): the 20 address bytes alone.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from eth_typing import ChecksumAddress
from eth_utils.address import to_canonical_address

# The order of secp256k1's group: a private key is an integer in [1, n-1].
SECP256K1_N: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
DERIVATION_SALT: Final = b"hodlai vault derivation v1"
_INFO_PREFIX: Final = b"hodlai vault wallet v1\x00"
PRIVATE_KEY_BYTES: Final = 32
# Derivation indexes fit 8 bytes of info and an SQLite INTEGER; 2^32 wallets per (label,
# owner) is far beyond any use, and a small bound keeps a typo'd --index obviously wrong.
MAX_DERIVATION_INDEX: Final = 2**32 - 1
# Candidates tried before giving up: each fails with probability ~2^-128, so more than one
# is never needed in practice; the bound only makes the loop visibly finite.
MAX_CANDIDATES: Final = 16

AAD_V1: Final = 1  # the address alone (rows written before core migration 8)
AAD_V2: Final = 2  # version, address, derivation index, label, owner


def derivation_prk(master_key: bytes) -> bytes:
    """HKDF-Extract of the master key: the secret every wallet key is expanded from."""
    return hmac.new(DERIVATION_SALT, master_key, hashlib.sha256).digest()


def derive_private_key(prk: bytes, *, label: str, owner: str | None, index: int) -> bytes:
    """The private key of wallet ``index`` of (``label``, ``owner``) under ``prk``."""
    check_index(index)
    for counter in range(MAX_CANDIDATES):
        info = _INFO_PREFIX + _field(label) + _owner_field(owner)
        info += index.to_bytes(8, "big") + counter.to_bytes(4, "big")
        candidate = HKDFExpand(hashes.SHA256(), PRIVATE_KEY_BYTES, info).derive(prk)
        if 1 <= int.from_bytes(candidate, "big") < SECP256K1_N:
            return candidate
    raise ValueError("no valid secp256k1 scalar in the derivation's candidates")  # ~2^-2048


def associated_data(
    version: int,
    address: ChecksumAddress,
    *,
    label: str,
    owner: str | None,
    index: int | None,
) -> bytes:
    """The AES-GCM associated data of a row of ``version`` (see the module docstring)."""
    raw_address = to_canonical_address(address)
    if version == AAD_V1:
        return raw_address
    if version != AAD_V2:
        raise ValueError(f"unknown associated-data version {version}")
    index_field = b"\x00" if index is None else b"\x01" + index.to_bytes(8, "big")
    return bytes([AAD_V2]) + raw_address + index_field + _field(label) + _owner_field(owner)


def check_index(index: object) -> int:
    if isinstance(index, bool) or not isinstance(index, int):
        raise ValueError("a derivation index is an integer")
    if not 0 <= index <= MAX_DERIVATION_INDEX:
        raise ValueError(f"a derivation index is between 0 and {MAX_DERIVATION_INDEX}")
    return index


def _field(text: str) -> bytes:
    raw = text.encode("utf-8")
    return len(raw).to_bytes(4, "big") + raw


def _owner_field(owner: str | None) -> bytes:
    return b"\x00" if owner is None else b"\x01" + _field(owner)
