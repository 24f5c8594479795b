"""Key files: the oracle's private key, as a plain JSON key file or an encrypted keystore.

Two formats are accepted in ``HODLAI_KEY_FILE``:

- a plain JSON key file ``{"address": "0x…", "private_key": "0x…"}`` (what ``hodlai devnet``
  writes), and
- a Web3 Secret Storage keystore (version 3, scrypt or pbkdf2, as geth, clef, MetaMask
  exports and ``eth-keyfile`` write), decrypted with a passphrase that comes from
  ``HODLAI_KEY_PASSPHRASE`` or from the file named by ``HODLAI_KEY_PASSPHRASE_FILE``.

Guarantees:

- A generated key file is never visible half-written nor, even briefly, with looser
  permissions than 0600: it is created under a temporary name with ``O_CREAT | O_EXCL`` and
  mode 0600, fsynced, and then moved into place. An existing key file is never replaced
  unless the caller says ``overwrite=True`` (checked atomically, not by a racy exists()).
- A key file, keystore or passphrase file that the group or others can read is refused with
  a message saying why and how to fix it; so is one whose address does not match its key.
  Every secret file of the node (these, the vault's master key, the API's operator tokens)
  is read by :func:`read_private`, which checks the mode on the open descriptor it then
  reads, so the file cannot be swapped between the check and the read.
- The private key and the passphrase never appear in a log event or an exception message:
  parser errors that could quote the file are replaced by our own messages.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any, Final, Literal

import structlog
from eth_account import Account
from eth_keyfile.keyfile import create_keyfile_json, decode_keyfile_json
from eth_utils.address import is_hex_address, to_checksum_address

from shared.errors import ConfigError, KeyFileError

log = structlog.get_logger(__name__)

KEY_FILE_MODE: Final = 0o600
# Bytes of a secret file at most: a keystore is ~500 bytes, a tokens file a few KiB; anything
# larger is not one of these files, and is not read into memory.
MAX_SECRET_FILE_BYTES: Final = 64 * 1024
PASSPHRASE_ENV: Final = "HODLAI_KEY_PASSPHRASE"
PASSPHRASE_FILE_ENV: Final = "HODLAI_KEY_PASSPHRASE_FILE"


def generate_key_file(path: Path | str, *, overwrite: bool = False) -> str:
    """Create a new random key in ``path`` (plain JSON, mode 0600); return its address."""
    account = Account.create()
    payload = json.dumps(
        {"address": account.address, "private_key": "0x" + bytes(account.key).hex()}, indent=2
    )
    write_secret_file(Path(path), payload, overwrite=overwrite)
    log.info("key_file_created", path=str(path), address=account.address)
    return str(account.address)


def generate_keystore_file(
    path: Path | str,
    passphrase: str,
    *,
    private_key: bytes | None = None,
    kdf: Literal["scrypt", "pbkdf2"] = "scrypt",
    iterations: int | None = None,
    overwrite: bool = False,
) -> str:
    """Write an encrypted keystore (mode 0600) for ``private_key`` (a new random key when
    None); return its address. ``iterations`` lowers the KDF work factor (tests only)."""
    if not passphrase:
        raise KeyFileError("a keystore needs a non-empty passphrase")
    key = bytes(Account.create().key) if private_key is None else private_key
    keystore = create_keyfile_json(key, passphrase.encode("utf-8"), kdf=kdf, iterations=iterations)
    write_secret_file(Path(path), json.dumps(keystore, indent=2), overwrite=overwrite)
    address = str(Account.from_key(key).address)
    log.info("keystore_created", path=str(path), address=address, kdf=kdf)
    return address


def load_private_key(path: Path | str, passphrase: str | None = None) -> bytes:
    """The 32-byte private key stored in ``path``, after checking who may read the file.

    ``passphrase`` decrypts a keystore; it is ignored for a plain key file."""
    source = Path(path)
    raw = _read_private_json(source, what="key file")
    if isinstance(raw, dict) and _is_keystore(raw):
        return _decrypt_keystore(raw, source, passphrase)
    return _parse_key(raw, source)


def key_file_address(path: Path | str, passphrase: str | None = None) -> str:
    """The checksummed address of the key in ``path`` (with the same checks as loading it)."""
    return str(Account.from_key(load_private_key(path, passphrase)).address)


def read_passphrase(*, passphrase: str | None, passphrase_file: Path | str | None) -> str | None:
    """The keystore passphrase from the environment (``HODLAI_KEY_PASSPHRASE``) or from a file
    readable by its owner only (``HODLAI_KEY_PASSPHRASE_FILE``; one trailing newline is
    dropped). None when neither is set. Setting both is refused: which one wins would be a
    guess."""
    if passphrase and passphrase_file:
        raise ConfigError(f"set only one of {PASSPHRASE_ENV} and {PASSPHRASE_FILE_ENV}")
    if passphrase:
        return passphrase
    if not passphrase_file:
        return None
    source = Path(passphrase_file)
    raw = read_private(source, what="passphrase file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyFileError(f"passphrase file {source} is not UTF-8 text") from None
    value = text.removesuffix("\n").removesuffix("\r")
    if not value:
        raise KeyFileError(f"passphrase file {source} is empty")
    return value


# --- internals ------------------------------------------------------------------------------


def read_private(
    source: Path,
    *,
    what: str,
    secret: str = "the secret",
    rotate: str = "rotate the key if others did read it",
    max_bytes: int = MAX_SECRET_FILE_BYTES,
) -> bytes:
    """The bytes of ``source``, a file only its owner may read or write: KeyFileError if it
    is missing, not a regular file, readable or writable by the group or others (``secret``
    and ``rotate`` say what leaked and what to do), or larger than ``max_bytes``. The mode
    is checked on the descriptor that is read. No message quotes the file."""
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever;
        # O_NOCTTY: a terminal named by mistake does not become the service's controlling
        # terminal. Neither changes anything for the regular file that is then read.
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        raise KeyFileError(f"{what} {source} does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"cannot open {what} {source}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"{what} {source} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise KeyFileError(
                f"{what} {source} has mode {mode:04o}: group/others may read or write it, so "
                f"{secret} must be assumed leaked to them; refusing to use it. "
                f"Restrict it with `chmod 600 {source}` (and {rotate})."
            )
        chunks: list[bytes] = []
        size = 0
        # At most one byte more than allowed is read, whatever the file's size says.
        while chunk := os.read(fd, max_bytes + 1 - size):
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                raise KeyFileError(f"{what} {source} is larger than {max_bytes} bytes")
        return b"".join(chunks)
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {source}: {exc.strerror}") from None
    finally:
        os.close(fd)


def _read_private_json(source: Path, *, what: str) -> Any:
    raw = read_private(source, what=what)
    try:
        return json.loads(raw.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError included
        # The decoder's message would quote the file's content, which may hold the key.
        raise KeyFileError(f"{what} {source} is not valid JSON") from None


def _is_keystore(raw: dict[str, Any]) -> bool:
    return "crypto" in raw or "Crypto" in raw


def _decrypt_keystore(raw: dict[str, Any], source: Path, passphrase: str | None) -> bytes:
    if raw.get("version") != 3:
        raise KeyFileError(f"keystore {source}: only version 3 keystores are supported")
    if not passphrase:
        raise KeyFileError(
            f"keystore {source} is encrypted: set {PASSPHRASE_ENV} or {PASSPHRASE_FILE_ENV}"
        )
    try:
        key = bytes(decode_keyfile_json(raw, passphrase.encode("utf-8")))
    except ValueError as exc:  # eth-keyfile's errors derive from ValueError
        if "MAC mismatch" in str(exc):
            raise KeyFileError(f"keystore {source}: wrong passphrase") from None
        raise KeyFileError(f"keystore {source} is malformed or uses an unknown cipher") from None
    except (KeyError, TypeError):
        raise KeyFileError(f"keystore {source} is malformed") from None
    address = str(Account.from_key(key).address)
    stored = raw.get("address")
    if isinstance(stored, str) and stored:
        claimed = stored if stored.startswith("0x") else "0x" + stored
        if not is_hex_address(claimed) or to_checksum_address(claimed) != address:
            raise KeyFileError(f"keystore {source}: address {stored} does not match its key")
    return key


def _parse_key(raw: object, source: Path) -> bytes:
    if not isinstance(raw, dict) or not isinstance(raw.get("private_key"), str):
        raise KeyFileError(f'key file {source} has no string field "private_key"')
    text = raw["private_key"].removeprefix("0x")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise KeyFileError(f"key file {source}: private_key is not hex") from None
    if len(key) != 32:
        raise KeyFileError(f"key file {source}: private_key must be 32 bytes, got {len(key)}")
    try:
        address = Account.from_key(key).address
    except ValueError:
        raise KeyFileError(f"key file {source}: private_key is not a valid secp256k1 key") from None
    stored = raw.get("address")
    if stored is not None:
        if not isinstance(stored, str) or not is_hex_address(stored):
            raise KeyFileError(f"key file {source}: address is not a 20-byte hex address")
        if to_checksum_address(stored) != address:
            raise KeyFileError(
                f"key file {source}: address {stored} does not belong to its private key"
            )
    return key


def write_secret_file(target: Path, payload: str, *, overwrite: bool) -> None:
    """Write ``payload`` to ``target`` with mode 0600, atomically (a temporary file fsynced,
    then linked or renamed into place); refuse an existing file unless ``overwrite``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    try:
        # The mode given to open() is filtered by the umask; set it explicitly as well.
        os.fchmod(fd, KEY_FILE_MODE)
        os.write(fd, (payload + "\n").encode("utf-8"))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        if overwrite:
            os.replace(tmp, target)
        else:
            # link() fails if the target exists, so "create only if absent" is atomic.
            os.link(tmp, target)
    except FileExistsError:
        raise KeyFileError(
            f"{target} already exists; refusing to overwrite a key file (move it away first)"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(target.parent)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename durable across a power cut; best effort where directories cannot be
    # opened (some filesystems).
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
