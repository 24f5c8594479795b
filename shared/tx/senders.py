"""One owner per sending key, across processes.

Two processes signing with one key would hand out the same nonces and replace each other's
transactions. So a process signs with a key only while it holds both:

- the key's OS lock on the database file (shared.instance: an open-file-description lock on
  one byte per key, taken on the file's inode, released by the kernel however the process
  ends). A second process on this machine is refused, whatever path or link it was given,
  while two executors with different keys run side by side;
- the key's row in ``senders``, written when the lock is taken and refreshed by a heartbeat.
  It names the owner (``hodlai`` shows it) and refuses a process on *another* machine while
  the row's heartbeat is fresh (the OS lock cannot see across machines).

Killed, the owner leaves its row; the next owner on this machine takes over at once (the OS
lock proves the old one is gone), one elsewhere after SENDER_STALE_S without a heartbeat.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import structlog
from eth_utils.address import to_checksum_address

from shared.db import atomic
from shared.errors import ConfigError
from shared.instance import RoleLock, hold_role

log = structlog.get_logger(__name__)

# Seconds without a heartbeat after which a sender row of another machine no longer counts:
# many heartbeats (HEARTBEAT_EVERY_S) plus a long pause of a busy process.
SENDER_STALE_S: Final = 120.0
# Seconds between heartbeats: one small write, far below the pace of a poll.
HEARTBEAT_EVERY_S: Final = 10.0


@dataclass
class SenderClaim:
    """A held sending key (see the module docstring)."""

    address: str
    owner: str
    lock: RoleLock
    host: str = field(default_factory=socket.gethostname)
    _last_beat: float = 0.0

    def heartbeat(self, conn: sqlite3.Connection, *, now: float | None = None) -> None:
        """Refresh the row (at most every HEARTBEAT_EVERY_S); raises if another owner took
        it over, which only a process on another machine ignoring the lock could."""
        at = time.time() if now is None else now
        if at - self._last_beat < HEARTBEAT_EVERY_S:
            return
        with atomic(conn):
            cursor = conn.execute(
                "UPDATE senders SET heartbeat_at = ? WHERE address = ? AND host = ? AND pid = ?",
                (at, self.address, self.host, os.getpid()),
            )
            if cursor.rowcount != 1:
                raise ConfigError(
                    f"the sending key {self.address} was taken over by another process; "
                    "this one stops signing"
                )
        self._last_beat = at

    def release(self, conn: sqlite3.Connection | None = None) -> None:
        """Give the key back (clean shutdown): the row goes, then the lock."""
        if conn is not None:
            with atomic(conn):
                conn.execute(
                    "DELETE FROM senders WHERE address = ? AND host = ? AND pid = ?",
                    (self.address, self.host, os.getpid()),
                )
        self.lock.release()


def claim_sender(
    db_path: Path, conn: sqlite3.Connection, address: str, *, owner: str, now: float | None = None
) -> SenderClaim:
    """Become the one process that signs with ``address`` on this database, or raise a
    ConfigError naming the current owner."""
    checksummed = to_checksum_address(address)
    lock = hold_role(db_path, f"sender {checksummed}")
    host, at = socket.gethostname(), time.time() if now is None else now
    try:
        with atomic(conn):
            row = conn.execute(
                "SELECT owner, host, pid, heartbeat_at FROM senders WHERE address = ?",
                (checksummed,),
            ).fetchone()
            if (
                row is not None
                and row["host"] != host
                and at - row["heartbeat_at"] < SENDER_STALE_S
            ):
                raise ConfigError(
                    f"the sending key {checksummed} is in use by {row['owner']} (pid "
                    f"{row['pid']} on {row['host']}, heartbeat {at - row['heartbeat_at']:.0f} s "
                    "ago): only one process may sign with a key"
                )
            conn.execute(
                "INSERT INTO senders (address, owner, host, pid, acquired_at, heartbeat_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (address) DO UPDATE SET "
                "owner = excluded.owner, host = excluded.host, pid = excluded.pid, "
                "acquired_at = excluded.acquired_at, heartbeat_at = excluded.heartbeat_at",
                (checksummed, owner, host, os.getpid(), at, at),
            )
    except BaseException:
        lock.release()
        raise
    if row is not None:
        log.info("sender_taken_over", address=checksummed, previous=row["owner"], pid=row["pid"])
    log.info("sender_claimed", address=checksummed, owner=owner)
    return SenderClaim(checksummed, owner, lock, host, _last_beat=at)
