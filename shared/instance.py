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
