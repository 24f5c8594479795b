"""A paying process SIGKILLed between signing and broadcast, and between broadcast and receipt,
with an operator cancel while it is down in half of the runs (issue 18, "Tests"). Counted on
chain: every payment not cancelled is paid exactly once, and no cancelled payment is paid.

Each run adds one payment and starts tests/pay_process.py, which first recovers what the
previous life left (re-sends it, or cancels it if the operator cancelled it meanwhile), then
mines one block, records the new payment and kills itself at the run's fault point. Anvil
mines only when told, so a payment broadcast before a kill is still in the pool when the
operator cancels it: whether it is paid is decided by the restarted process alone. A last,
clean life settles everything."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from eth_utils.address import to_checksum_address

from shared.db import atomic, connect
from tests.pay_process import TABLE
from workers.devnet.anvil import Anvil

VALUE = 10**15
ROOT = Path(__file__).resolve().parent.parent
# Seconds one life of the paying process may take.
LIFE_LIMIT_S = 60.0


def _life(
    node: Anvil, db: Path, key: str, log: Path, *, fault: str = "", settle: bool = False
) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HODLAI_")}
    env |= {"HODLAI_LOCK_DIR": str(db.parent / "locks"), "HODLAI_FAULT_POINT": fault}
    command = [sys.executable, "-m", "tests.pay_process", "--db", str(db), "--rpc",
               node.rpc_url, "--key", key, "--chain-id", str(node.chain_id)]  # fmt: skip
    command += ["--settle"] if settle else ["--mine-after-start"]
    with open(log, "ab") as out:
        done = subprocess.run(
            command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            timeout=LIFE_LIMIT_S, check=False,
        )  # fmt: skip
    return done.returncode


def _balance(node: Anvil, address: str) -> int:
    body = {"jsonrpc": "2.0", "id": 1, "method": "eth_getBalance", "params": [address, "latest"]}
    return int(httpx.post(node.rpc_url, json=body).json()["result"], 16)


def _chaos(tmp_path: Path, runs_per_fault: int) -> None:
    db = tmp_path / "pay.db"
    log = tmp_path / "pay.log"
    conn = connect(db)
    with atomic(conn):
        conn.execute(TABLE)
    cancelled: set[str] = set()
    with Anvil(no_mining=True) as node:
        key = node.accounts[7].private_key
        for run in range(2 * runs_per_fault):
            fault = "after_sign" if run % 2 == 0 else "after_broadcast"
            payment = f"p{run:03d}"
            with atomic(conn):
                conn.execute(
                    "INSERT INTO test_payments (id, recipient, value_wei) VALUES (?, ?, ?)",
                    (payment, _recipient(run), str(VALUE)),
                )
            code = _life(node, db, key, log, fault=fault)
            assert code == -signal.SIGKILL, f"run {run}: exit {code}; see {log}"
            if (run // 2) % 2 == 0:  # half the runs of each fault point: an operator cancel
                with atomic(conn):
                    conn.execute("UPDATE test_payments SET cancelled = 1 WHERE id = ?", (payment,))
                cancelled.add(payment)
        assert _life(node, db, key, log, settle=True) == 0, log.read_text()[-3000:]
        paid = {f"p{run:03d}": _balance(node, _recipient(run)) for run in range(2 * runs_per_fault)}
    assert {p for p, wei in paid.items() if wei == 0} == cancelled  # no cancelled one paid
    assert {wei for p, wei in paid.items() if p not in cancelled} == {VALUE}  # each once
    outcomes = dict(sqlite3.connect(db).execute("SELECT id, outcome FROM test_payments").fetchall())
    # Each purpose learned the true outcome: paid ones MINED, cancelled ones superseded by
    # their cancel (or never signed at all, for a cancel made before the first send).
    assert {outcomes[p] for p in paid if p not in cancelled} == {"mined"}
    assert {outcomes[p] for p in cancelled} <= {"superseded", None}


def _recipient(run: int) -> str:
    return to_checksum_address(f"0x{0xC0FFEE0000 + run:040x}")


def test_killed_payers_pay_each_payment_once_and_no_cancelled_one(tmp_path: Path) -> None:
    """A short version for every run of the suite (about 20 s): 2 kills at each fault point."""
    _chaos(tmp_path, runs_per_fault=2)


@pytest.mark.slow  # about 70 s: 41 process starts
def test_twenty_kills_at_each_fault_point_pay_once_and_never_a_cancelled_payment(
    tmp_path: Path,
) -> None:
    _chaos(tmp_path, runs_per_fault=20)
