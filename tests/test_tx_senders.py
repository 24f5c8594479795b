"""One owner per sending key and chain across processes (shared/tx/senders.py): the key's OS
locks plus its ``senders`` row; the same key on another chain is another sender."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.db import atomic, connect
from shared.errors import ConfigError, SenderTakenOverError
from shared.tx.senders import SENDER_STALE_S, claim_sender

KEY_A = "0x" + "11" * 20
KEY_B = "0x" + "22" * 20
CHAIN = 31337
HOLDER = """
import sys, time
from pathlib import Path
from shared.db import connect
from shared.tx.senders import claim_sender
db = Path(sys.argv[1])
claim = claim_sender(db, connect(db), sys.argv[2], owner="holder", chain_id=31337)
print("held", flush=True)
time.sleep(600)
"""


def _hold_in_another_process(db: Path, address: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db), address], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    while (line := proc.stdout.readline()) and line.strip() != "held":
        pass  # the holder's own log lines
    assert line.strip() == "held"
    return proc


def test_a_second_process_with_the_same_key_is_refused_until_the_owner_dies(
    tmp_path: Path,
) -> None:
    db = tmp_path / "s.db"
    conn = connect(db)
    holder = _hold_in_another_process(db, KEY_A)
    try:
        with pytest.raises(ConfigError, match=r"another (sender|process)"):
            claim_sender(db, conn, KEY_A, owner="second", chain_id=CHAIN)
        via_link = tmp_path / "link.db"
        via_link.symlink_to(db)
        with pytest.raises(ConfigError, match=r"another (sender|process)"):
            claim_sender(via_link, conn, KEY_A, owner="second", chain_id=CHAIN)
        # Another key on the same database runs side by side, and so does this key on
        # another chain: a sender is a (key, chain).
        other = claim_sender(db, conn, KEY_B, owner="other executor", chain_id=CHAIN)
        other.release(conn)
        elsewhere = claim_sender(db, conn, KEY_A, owner="mint on base", chain_id=CHAIN + 1)
        rows = conn.execute(
            "SELECT chain_id, owner FROM senders WHERE address = ? ORDER BY chain_id", (KEY_A,)
        )
        assert [tuple(r) for r in rows] == [(CHAIN, "holder"), (CHAIN + 1, "mint on base")]
        elsewhere.release(conn)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The kernel dropped the dead owner's lock: the key is taken over at once.
    claim = claim_sender(db, conn, KEY_A, owner="second", chain_id=CHAIN)
    row = conn.execute("SELECT owner, pid FROM senders WHERE address = ?", (claim.address,))
    assert tuple(row.fetchone()) == ("second", os.getpid())
    claim.release(conn)
    assert conn.execute("SELECT COUNT(*) FROM senders").fetchone()[0] == 0


def test_a_fresh_owner_on_another_machine_is_refused_and_a_stale_one_taken_over(
    tmp_path: Path,
) -> None:
    db = tmp_path / "s.db"
    conn = connect(db)
    now = time.time()
    with atomic(conn):  # KEY_A is all digits: its checksummed form is itself
        conn.execute(
            "INSERT INTO senders (address, chain_id, owner, host, pid, acquired_at, heartbeat_at)"
            " VALUES (?, ?, 'mint-executor', 'elsewhere', 42, ?, ?)",
            (KEY_A, CHAIN, now, now),
        )
    with pytest.raises(ConfigError, match=r"in use by mint-executor \(pid 42 on elsewhere"):
        claim_sender(db, conn, KEY_A, owner="fulfiller", chain_id=CHAIN, now=now + 1)
    claim = claim_sender(
        db, conn, KEY_A, owner="fulfiller", chain_id=CHAIN, now=now + SENDER_STALE_S + 1
    )
    assert claim.owner == "fulfiller"
    claim.release(conn)


def test_a_heartbeat_notices_a_takeover_and_stops_the_signer(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    conn = connect(db)
    claim = claim_sender(db, conn, KEY_A, owner="fulfiller", chain_id=CHAIN, now=1000.0)
    claim.heartbeat(conn, now=1100.0)
    with atomic(conn):  # a process elsewhere that ignored the lock
        conn.execute("UPDATE senders SET host = 'elsewhere', pid = 7")
    with pytest.raises(SenderTakenOverError, match="taken over"):
        claim.heartbeat(conn, now=1200.0)
    claim.release()
