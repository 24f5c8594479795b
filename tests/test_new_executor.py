"""A new executor is a package plus its own migration set: tests/sample_executor.py (under 100
lines: a machine, a migration set, a transaction purpose, a CLI command and a route) is
"installed" through entry points alone, and the core migrates its tables, runs its machine,
sends and settles its transactions on anvil, and serves its command and route."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from shared import state
from shared.chain.rpc import RpcClient
from shared.db import AsyncDatabase, connect
from shared.tx.fees import GWEI, FeePolicy, Fees
from shared.tx.ledger import Purpose
from shared.tx.manager import Submission, TxManager, TxPolicy
from shared.tx.senders import claim_sender
from shared.tx.signer import Call, LocalSigner, SignedTx
from tests import sample_executor as sample
from workers.devnet.anvil import Anvil

ROOT = Path(__file__).resolve().parent.parent
NOTES = 5
ENTRY_POINTS = """[hodlai.commands]
sample = tests.sample_executor:register

[hodlai.routers]
sample = tests.sample_executor:router

[hodlai.migrations]
sample = tests.sample_executor:MIGRATIONS

[hodlai.machines]
sample_note = tests.sample_executor:NOTES
"""


def _install(site: Path) -> dict[str, str]:
    """Entry points of a distribution 'hodlai-sample' on a path of its own; the environment
    in which processes see it installed."""
    info = site / "hodlai_sample-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hodlai-sample\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": f"{site}:{ROOT}"}


def _hodlai(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shared.cli", *args], env=env,
                          capture_output=True, text=True, check=False)  # fmt: skip


async def test_a_sample_executor_runs_on_the_core_through_entry_points_alone(
    tmp_path: Path,
) -> None:
    env = _install(tmp_path / "site") | {"HODLAI_DB_PATH": str(tmp_path / "node.db")}
    migrated = _hodlai(env, "migrate", "--json")
    assert migrated.returncode == 0, migrated.stderr
    assert json.loads(migrated.stdout)["after"]["sample"] == 1

    conn = connect(tmp_path / "node.db", extra_sets=[sample.MIGRATIONS])
    for n in range(NOTES):
        state.insert(conn, sample.NOTES, {"note_id": f"n{n}", "text": f"note {n}"},
                     status="NEW", actor="test")  # fmt: skip
    with Anvil() as node:
        signer = LocalSigner(bytes.fromhex(node.accounts[3].private_key[2:]), chain_id=31337)
        db = AsyncDatabase(connect(tmp_path / "node.db", durable=True,
                                   extra_sets=[sample.MIGRATIONS]))  # fmt: skip
        policy = TxPolicy(fees=FeePolicy(100 * GWEI, 5 * GWEI), confirmations=0)
        manager = TxManager(
            db=db, rpc=RpcClient([node.rpc_url]), signer=signer, policy=policy,
            handlers={sample.PURPOSE: sample.NotePurpose()},
            claim=claim_sender(
                tmp_path / "node.db", db.conn, signer.address, owner="sample",
                chain_id=signer.chain_id,
            ),
        )  # fmt: skip
        await manager.start()
        claimed = state.claim(conn, sample.NOTES, owner="sender", status="NEW", limit=NOTES,
                              lease_seconds=60)  # fmt: skip

        def submission(note_id: str) -> Submission:
            def bind(c: object, tx: SignedTx) -> None:  # the note moves with its signed tx
                state.transition(c, sample.NOTES, note_id, "NEW", "SENDING", actor="sender",  # type: ignore[arg-type]
                                 lease_owner="sender", note=tx.tx_hash)  # fmt: skip

            call = Call(to=signer.address, data=note_id.encode(), value=0, gas_limit=30_000)
            return Submission(call, Purpose(sample.PURPOSE, note_id), bind, key=f"note:{note_id}")

        fees = Fees(max_fee_per_gas=3 * GWEI, max_priority_fee_per_gas=GWEI)
        recorded = await manager.record([submission(r["note_id"]) for r in claimed], fees)
        await manager.broadcast(recorded)
        deadline = time.monotonic() + 30
        while state.counts(conn, sample.NOTES)["SENT"] < NOTES:
            assert time.monotonic() < deadline, state.counts(conn, sample.NOTES)
            await manager.poll()
            await asyncio.sleep(0.1)
        assert _nonce(node.rpc_url, signer.address) == NOTES  # counted on chain
        await manager.close()
        db.close()
    assert len(state.history(conn, sample.NOTES, "n0")) == 3  # NEW, SENDING, SENT audited

    listed = _hodlai(env, "sample-notes")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout.splitlines()[-1]) == {"NEW": 0, "SENDING": 0, "SENT": NOTES}

    _check_route(env)


def _nonce(rpc_url: str, address: str) -> int:
    body = {"jsonrpc": "2.0", "id": 1, "method": "eth_getTransactionCount",
            "params": [address, "latest"]}  # fmt: skip
    return int(httpx.post(rpc_url, json=body).json()["result"], 16)


def _check_route(env: dict[str, str]) -> None:
    """The real ``hodlai api`` serves the sample executor's route."""
    api = subprocess.Popen([sys.executable, "-m", "shared.cli", "api"], text=True,
                           env=env | {"HODLAI_API_PORT": "0", "HODLAI_API_PUBLIC_READS": "true"},
                           stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        assert api.stdout is not None
        while "listening on" not in (line := api.stdout.readline()):
            assert line, "hodlai api exited"
        url = line.rsplit(" ", 1)[-1].strip()
        answer = httpx.get(f"{url}/api/sample/notes", timeout=10)
        assert answer.status_code == 200 and answer.json()["SENT"] == NOTES
        assert "/api/sample/notes" in httpx.get(f"{url}/openapi.json", timeout=10).json()["paths"]
    finally:
        api.send_signal(signal.SIGTERM)
        assert api.wait(timeout=30) == 0
