"""Key files: a JSON file ``{"address": "0x…", "private_key": "0x…"}`` readable by its owner only.

Guarantees:

- A generated key file is never visible half-written nor, even briefly, with looser
  permissions than 0600: it is created under a temporary name with ``O_CREAT | O_EXCL`` and
  mode 0600, fsynced, and then moved into place. An existing key file is never replaced
  unless the caller says ``overwrite=True`` (checked atomically, not by a racy exists()).
- A key file that the group or others can read is refused with a message saying why and how
  to fix it; so is one whose address does not match its key.
- The private key never appears in a log event or an exception message.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from pathlib import Path

import structlog
from eth_account import Account
from eth_utils.address import is_hex_address, to_checksum_address

from shared.errors import KeyFileError

log = structlog.get_logger(__name__)

KEY_FILE_MODE = 0o600


def generate_key_file(path: Path | str, *, overwrite: bool = False) -> str:
    """Create a new random key in ``path`` (mode 0600) and return its checksummed address."""
    target = Path(path)
    account = Account.create()
    payload = json.dumps(
        {"address": account.address, "private_key": "0x" + bytes(account.key).hex()}, indent=2
    )
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
    log.info("key_file_created", path=str(target), address=account.address)
    return str(account.address)


def load_private_key(path: Path | str) -> bytes:
    """The 32-byte private key stored in ``path``, after checking who may read the file."""
    source = Path(path)
    try:
        info = source.stat()
    except FileNotFoundError:
        raise KeyFileError(f"key file {source} does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"cannot stat key file {source}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise KeyFileError(f"key file {source} is not a regular file")
    loose = stat.S_IMODE(info.st_mode) & 0o077
    if loose:
        raise KeyFileError(
            f"key file {source} has mode {stat.S_IMODE(info.st_mode):04o}: group/others may "
            f"read or write it, so the key must be assumed leaked to them; refusing to use it. "
            f"Restrict it with `chmod 600 {source}`."
        )
    try:
        raw = json.loads(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {source}: {exc.strerror}") from None
    except ValueError:
        # The decoder's message would quote the file's content, which may hold the key.
        raise KeyFileError(f"key file {source} is not valid JSON") from None
    return _parse_key(raw, source)


def key_file_address(path: Path | str) -> str:
    """The checksummed address of the key in ``path`` (with the same checks as loading it)."""
    return str(Account.from_key(load_private_key(path)).address)


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
