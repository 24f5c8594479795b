"""One process per role per database: at most one indexer, and one fulfiller (the only signer
of its key), work on a database, however it is named.

Guarantees:

- The lock is taken on the database file itself, that is on its inode, not on a name built
  from the configured path: a second process that reaches the same file through a symlink,
  a hard link, a relative path or a bind mount is refused like one using the same path.
- It is taken before SQLite opens the file, so a refused process has not touched the
  database (no WAL opened, no migration tried).
- The kernel drops it when the holder exits in any way (SIGKILL, OOM kill): there is no
  stale lock to clean up and no lease to wait out.
- It does not touch SQLite's own locking. It is an open-file-description lock (``F_OFD_SETLK``)
  on one byte per role far past SQLite's lock bytes (which start at 1 GiB). POSIX ``fcntl``
  locks would not do: closing *any* descriptor of the file drops all of a process's POSIX
  locks on it, and SQLite opens and closes descriptors of it. ``flock`` covers the whole
  file, so it could not give each role its own lock.
- The refusal names the holder (pid, host, start time, the path it used), from an extended
  attribute the holder sets on the file (``user.hodlai.<role>``): it belongs to the inode,
  so every name of the file shows it, and it is read without opening the database. It only
  informs; the lock decides. On a filesystem without user extended attributes the holder is
  reported as unknown.

Platforms without OFD locks (not Linux) fall back to ``flock`` on ``<real path>.<role>.lock``,
which covers symlinks and relative paths but not hard links.

A sending key needs more than a lock on one database file: the same key used from a restored
copy of the database (another file, another inode) would give two signers of one nonce
sequence. :func:`hold_key` locks the key itself, per (address, chain id), with ``flock`` on a
file named after them in the node's lock directory (:func:`lock_dir`):

- ``HODLAI_LOCK_DIR`` when set. Set it to one directory per machine (``/run/hodlai`` under
  systemd's ``RuntimeDirectory=``) so that every database file of the machine shares it.
- Otherwise ``.hodlai-locks`` in the database's own directory: a restored copy beside the
  original (``node.db`` and ``node.restored.db``) is refused without any setting. A copy in
  another directory is only covered by ``HODLAI_LOCK_DIR``. (Not a machine-wide default such
  as ``$XDG_RUNTIME_DIR``: test runs and side-by-side devnets use the same public dev keys on
  one chain id, and would refuse each other.)

Like the role lock it is released by the kernel however the holder ends, and the refusal
names the holder (written into the lock file, which only informs).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
import sqlite3
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog

from shared.db import SETTING, check_path, create_file, opened_file
from shared.errors import ConfigError, DatabaseMismatchError

log = structlog.get_logger(__name__)

#: Environment variable naming the node's lock directory (see the module docstring).
LOCK_DIR_ENV: Final = "HODLAI_LOCK_DIR"
#: The lock directory beside the database when HODLAI_LOCK_DIR is not set.
DEFAULT_LOCK_SUBDIR: Final = ".hodlai-locks"

# First byte offset of the role locks: 2**62, far beyond SQLite's lock bytes at 2**30..+510
# and beyond any real database size (a lock past the end of a file is allowed).
ROLE_LOCK_BASE: Final = 1 << 62
# struct flock on Linux x86-64 and arm64: l_type, l_whence, (pad), l_start, l_len, l_pid, (pad).
_FLOCK: Final = struct.Struct("@hhqqi4x")
_OFD_SETLK: Final[int | None] = getattr(fcntl, "F_OFD_SETLK", None)
_XATTR_PREFIX: Final = "user.hodlai."


@dataclass
class RoleLock:
    """A held role lock; the kernel releases it when the process exits, or on release()."""

    role: str
    path: Path
    device: int
    inode: int
    fd: int

    def verify(self, conn: sqlite3.Connection) -> None:
        """Check that ``conn`` opened the locked file (not one swapped in since)."""
        opened = opened_file(conn)
        if opened is not None and (opened.device, opened.inode) != (self.device, self.inode):
            raise DatabaseMismatchError(
                f"{SETTING} {self.path} was replaced while this {self.role} was starting; "
                "start it again"
            )

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing our own descriptor drops an OFD lock
            self.fd = -1


def role_offset(role: str) -> int:
    """The byte locked for ``role``: stable across versions, distinct per role name."""
    return ROLE_LOCK_BASE + int.from_bytes(hashlib.sha256(role.encode()).digest()[:4], "big")


def hold_role(path: Path, role: str) -> RoleLock:
    """Take ``role``'s lock on the database file at ``path`` (creating the file if there is
    none yet, after the checks of shared.db.check_path), or raise ConfigError naming the
    holder. Call it before opening the database; keep the result for the process's life."""
    check_path(path)
    create_file(path)  # the database file's mode (0600 unless HODLAI_DB_GROUP_WRITABLE)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(f"{SETTING}: cannot open {path} for writing: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not _try_lock(fd, path, role):
            raise ConfigError(
                f"another {role} holds this database ({_describe_holder(fd, role)}; this "
                f"process was given {path}): only one {role} may run per database"
            )
        _record_holder(fd, role, path)
    except BaseException:
        os.close(fd)
        raise
    log.info("role_lock_held", role=role, path=str(path), pid=os.getpid())
    return RoleLock(role, path, info.st_dev, info.st_ino, fd)


def role_holder(path: Path, role: str) -> str | None:
    """Who holds ``role``'s lock on the database file at ``path``, described as a refusal
    names it, or None when no process does (``hodlai status``). Opens the file read-only and
    takes no lock. Without OFD locks (not Linux) it cannot tell: NotImplementedError."""
    getlk: int | None = getattr(fcntl, "F_OFD_GETLK", None)
    if getlk is None or _OFD_SETLK is None:
        raise NotImplementedError("no open-file-description locks on this platform")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        answer = fcntl.fcntl(fd, getlk, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET,
                                                   role_offset(role), 1, 0))  # fmt: skip
        if _FLOCK.unpack(answer)[0] == fcntl.F_UNLCK:
            return None
        return _describe_holder(fd, role)
    finally:
        os.close(fd)


def _try_lock(fd: int, path: Path, role: str) -> bool:
    if _OFD_SETLK is None:  # not Linux
        return _try_flock_sidecar(fd, path, role)
    request = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, role_offset(role), 1, 0)
    try:
        fcntl.fcntl(fd, _OFD_SETLK, request)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _try_flock_sidecar(fd: int, path: Path, role: str) -> bool:
    sidecar = os.open(f"{os.path.realpath(path)}.{role}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(sidecar, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(sidecar)
        return False
    os.dup2(sidecar, fd)  # the RoleLock's descriptor now holds the flock
    os.close(sidecar)
    return True


def _record_holder(fd: int, role: str, path: Path) -> None:
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "path": str(path),
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        os.setxattr(fd, _XATTR_PREFIX + role, json.dumps(holder).encode())
    except (OSError, AttributeError) as exc:  # no user xattrs here (or no xattrs at all)
        log.info("role_holder_not_recorded", role=role, reason=str(exc))


def _describe_holder(fd: int, role: str) -> str:
    try:
        raw = os.getxattr(fd, _XATTR_PREFIX + role)
    except (OSError, AttributeError):
        return "holder unknown: this filesystem keeps no extended attributes"
    try:
        holder = json.loads(raw)
        return (
            f"pid {holder['pid']} on {holder['host']} since {holder['since']}, "
            f"opened as {holder['path']}"
        )
    except (ValueError, KeyError, TypeError):
        return "holder record unreadable"


@dataclass
class KeyLock:
    """A held sending-key lock (:func:`hold_key`); the kernel releases it when the process
    exits, or on release()."""

    address: str
    chain_id: int
    path: Path
    fd: int

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # the only descriptor of this open file: drops the flock
            self.fd = -1


def lock_dir(db_path: Path) -> Path:
    """The directory of the sending-key locks for a database at ``db_path``."""
    configured = os.environ.get(LOCK_DIR_ENV, "").strip()
    if configured:
        return Path(configured)
    return Path(os.path.realpath(db_path)).parent / DEFAULT_LOCK_SUBDIR


def hold_key(address: str, chain_id: int, directory: Path, *, db_path: Path) -> KeyLock:
    """Take the lock of sending ``address`` on ``chain_id`` in ``directory`` (created 0700),
    or raise ConfigError naming the holder. ``db_path`` is only recorded for that message."""
    name = f"sender-{chain_id}-{address.lower()}.lock"
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(directory / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(
            f"{LOCK_DIR_ENV}: cannot create a sending key's lock in {directory}: {exc.strerror}"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_key_holder(os.pread(fd, 4096, 0))
            raise ConfigError(
                f"the sending key {address} on chain {chain_id} is held by another process "
                f"({holder}; lock {directory / name}): one signer per key and chain, whatever "
                "database file it uses"
            ) from None
        holder_record = json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "database": str(db_path),
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        ).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder_record, 0)
    except BaseException:
        os.close(fd)
        raise
    log.info("sender_key_lock_held", address=address, chain_id=chain_id, lock=str(directory / name))
    return KeyLock(address, chain_id, directory / name, fd)


def _describe_key_holder(raw: bytes) -> str:
    try:
        holder = json.loads(raw)
        return (
            f"pid {holder['pid']} on {holder['host']} since {holder['since']}, "
            f"database {holder['database']}"
        )
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
