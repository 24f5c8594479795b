"""One owner per sending key and chain, across processes.

Two processes signing with one key would hand out the same nonces and replace each other's
transactions. So a process signs with a key only while it holds all three:

- the key's OS lock on the database file for that chain (shared.instance: an
  open-file-description lock on one byte per key and chain, taken on the file's inode,
  released by the kernel however the process ends). A second process on this machine is
  refused, whatever path or link it was given, while two executors with different keys, or
  one key on two chains, run side by side;
- the key's lock per (address, chain id) in the node's lock directory (shared.instance
  ``hold_key``, ``HODLAI_LOCK_DIR``): ownership is per key and chain, not per database file,
  so the same key used from a restored copy of the database (another file) is refused too;
- the key's row in ``senders`` for that chain (primary key (address, chain id): one key
  sends on several chains, each with its own nonces, core migration 15), written when the
  locks are taken and refreshed by a heartbeat.
  It names the owner (``hodlai`` shows it) and refuses a process on *another* machine while
  the row's heartbeat is fresh (the OS locks cannot see across machines).

Fencing: every claim bumps the row's ``generation``. :meth:`SenderClaim.check` (called by the
ledger's insert, in the transaction that records a signed transaction) and the heartbeat
raise :class:`~shared.errors.SenderTakenOverError` once the row has another generation or
owner: the process that lost its key records nothing more, and the run loop stops it.

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
from shared.errors import ConfigError, SenderTakenOverError
from shared.instance import KeyLock, RoleLock, hold_key, hold_role, lock_dir

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
    #: the chain this claim signs for (a transaction manager's signer must match it)
    chain_id: int
    host: str = field(default_factory=socket.gethostname)
    _last_beat: float = 0.0
    #: the row's generation this claim wrote (0: a claim made before fencing existed)
    generation: int = 0
    #: the per-(key, chain) lock in the node's lock directory
    key_lock: KeyLock | None = None
    pid: int = field(default_factory=os.getpid)

    def check(self, conn: sqlite3.Connection) -> None:
        """Raise SenderTakenOverError unless the key's row is still this claim's (same
        generation, host and process). Call it inside the transaction whose writes it
        fences: the check and the writes then commit together or not at all."""
        row = conn.execute(
            "SELECT 1 FROM senders WHERE address = ? AND chain_id = ? AND generation = ? "
            "AND host = ? AND pid = ?",
            (self.address, self.chain_id, self.generation, self.host, self.pid),
        ).fetchone()
        if row is None:
            raise SenderTakenOverError(self._taken_over())

    def heartbeat(self, conn: sqlite3.Connection, *, now: float | None = None) -> None:
        """Refresh the row (at most every HEARTBEAT_EVERY_S); raises SenderTakenOverError if
        another owner took it over, which only a process ignoring the locks could (another
        machine, or a restored database with another lock directory)."""
        at = time.time() if now is None else now
        if at - self._last_beat < HEARTBEAT_EVERY_S:
            return
        with atomic(conn):
            cursor = conn.execute(
                "UPDATE senders SET heartbeat_at = ? WHERE address = ? AND chain_id = ? "
                "AND generation = ? AND host = ? AND pid = ?",
                (at, self.address, self.chain_id, self.generation, self.host, self.pid),
            )
            if cursor.rowcount != 1:
                raise SenderTakenOverError(self._taken_over())
        self._last_beat = at

    def _taken_over(self) -> str:
        return (
            f"the sending key {self.address} on chain {self.chain_id} was taken over by another "
            "process (this claim: "
            f"generation {self.generation}, pid {self.pid} on {self.host}); this one stops "
            "signing"
        )

    def release(self, conn: sqlite3.Connection | None = None) -> None:
        """Give the key back (clean shutdown): the row goes, then the locks."""
        if conn is not None:
            with atomic(conn):
                conn.execute(
                    "DELETE FROM senders WHERE address = ? AND chain_id = ? AND generation = ? "
                    "AND host = ? AND pid = ?",
                    (self.address, self.chain_id, self.generation, self.host, self.pid),
                )
        self.lock.release()
        if self.key_lock is not None:
            self.key_lock.release()


def claim_sender(
    db_path: Path,
    conn: sqlite3.Connection,
    address: str,
    *,
    owner: str,
    chain_id: int,
    now: float | None = None,
    locks: Path | None = None,
) -> SenderClaim:
    """Become the one process that signs with ``address`` on ``chain_id`` (its signer's
    chain) on this database, or raise a ConfigError naming the current owner. ``locks``
    defaults to shared.instance.lock_dir(db_path). The same key on another chain is another
    claim, which this one never refuses."""
    checksummed = to_checksum_address(address)
    key_lock = hold_key(
        checksummed, chain_id, lock_dir(db_path) if locks is None else locks, db_path=db_path
    )
    try:
        lock = hold_role(db_path, f"sender {checksummed} chain {chain_id}")
    except BaseException:
        key_lock.release()
        raise
    host, at = socket.gethostname(), time.time() if now is None else now
    try:
        with atomic(conn):
            row = conn.execute(
                "SELECT owner, host, pid, heartbeat_at FROM senders WHERE address = ? "
                "AND chain_id = ?",
                (checksummed, chain_id),
            ).fetchone()
            if (
                row is not None
                and row["host"] != host
                and at - row["heartbeat_at"] < SENDER_STALE_S
            ):
                raise ConfigError(
                    f"the sending key {checksummed} on chain {chain_id} is in use by "
                    f"{row['owner']} (pid "
                    f"{row['pid']} on {row['host']}, heartbeat {at - row['heartbeat_at']:.0f} s "
                    "ago): only one process may sign with a key"
                )
            # Every claim is a new generation: the fence of the previous owner's inserts.
            generation = conn.execute(
                "INSERT INTO senders (address, chain_id, owner, host, pid, acquired_at,"
                " heartbeat_at, generation) VALUES (?, ?, ?, ?, ?, ?, ?, 1)"
                " ON CONFLICT (address, chain_id) DO UPDATE SET "
                "owner = excluded.owner, host = excluded.host, pid = excluded.pid, "
                "acquired_at = excluded.acquired_at, heartbeat_at = excluded.heartbeat_at, "
                "generation = senders.generation + 1 RETURNING generation",
                (checksummed, chain_id, owner, host, os.getpid(), at, at),
            ).fetchone()[0]
    except BaseException:
        lock.release()
        key_lock.release()
        raise
    if row is not None:
        log.info(
            "sender_taken_over", address=checksummed, chain_id=chain_id, previous=row["owner"],
            pid=row["pid"],
        )  # fmt: skip
    log.info(
        "sender_claimed", address=checksummed, chain_id=chain_id, owner=owner,
        generation=generation,
    )  # fmt: skip
    return SenderClaim(
        checksummed, owner, lock, chain_id, host, _last_beat=at, generation=int(generation),
        key_lock=key_lock,
    )  # fmt: skip
