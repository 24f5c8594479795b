"""A test-only paying process: ETH value transfers through the transaction manager, as a
money executor would send them, for tests that kill it at awkward moments
(tests/test_tx_restart_chaos.py).

One life of the process: claim the key, start the manager (reconcile and re-send, or cancel,
what is in flight), optionally mine one block (``--mine-after-start``: the test's stand-in for
the chain moving on), record every payment not recorded yet and not cancelled, broadcast them,
then follow them until none is open (``--settle``) or exit. ``HODLAI_FAULT_POINT`` makes it
SIGKILL itself right after signing ('after_sign': recorded, never broadcast) or right after
the broadcast ('after_broadcast': in a node's pool, no receipt seen).

Its table (created here if missing): ``test_payments (id, recipient, value_wei, cancelled,
outcome)``. An operator cancels a payment by setting ``cancelled = 1``; the purpose's
``invalid()`` reads it. ``outcome`` is the last settlement the purpose was told.

    python -m tests.pay_process --db PATH --rpc URL --key HEX --chain-id N [--settle]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sqlite3
import sys
from collections.abc import Sequence

from shared.chain.rpc import RpcClient
from shared.db import AsyncDatabase, atomic, connect
from shared.tx.chainview import ChainView
from shared.tx.fees import GWEI, FeePolicy, Fees
from shared.tx.ledger import Purpose, TxRecord
from shared.tx.manager import Submission, TxManager, TxPolicy
from shared.tx.receipts import Receipt
from shared.tx.senders import claim_sender
from shared.tx.settlement import Settlement, SubjectAnchor
from shared.tx.signer import Call, LocalSigner

PAY = "test-pay"
FAULT_ENV = "HODLAI_FAULT_POINT"
POLICY = TxPolicy(
    fees=FeePolicy(max_fee_per_gas=100 * GWEI, max_priority_fee_per_gas=5 * GWEI),
    window=64,
    absent_after_s=0.5,
)
PAYMENT_FEES = Fees(max_fee_per_gas=3 * GWEI, max_priority_fee_per_gas=GWEI)
# Seconds --settle follows the payments before it gives up (exit 3).
SETTLE_LIMIT_S = 60.0
TABLE = (
    "CREATE TABLE IF NOT EXISTS test_payments (id TEXT PRIMARY KEY, recipient TEXT NOT NULL,"
    " value_wei TEXT NOT NULL, cancelled INTEGER NOT NULL DEFAULT 0, outcome TEXT) STRICT"
)


class PaymentPurpose:
    """Invalid once an operator cancelled the payment; remembers the settlement told."""

    def invalid(
        self,
        conn: sqlite3.Connection,
        txs: Sequence[TxRecord],
        *,
        now: float,
        chain: ChainView,
    ) -> dict[int, str]:
        out: dict[int, str] = {}
        for tx in txs:
            row = conn.execute(
                "SELECT cancelled FROM test_payments WHERE id = ?", (tx.purpose.subject,)
            ).fetchone()
            if row is None or row[0]:
                out[tx.id] = "cancelled by an operator"
        return out

    def anchors(
        self, conn: sqlite3.Connection, txs: Sequence[TxRecord]
    ) -> dict[int, SubjectAnchor | None]:
        return {}

    def settled(
        self,
        conn: sqlite3.Connection,
        tx: TxRecord,
        outcome: Settlement,
        *,
        detail: str,
        now: float,
        receipt: Receipt | None = None,
    ) -> None:
        if outcome is Settlement.FINAL:
            return  # the outcome column keeps what settled; FINAL only confirms it
        conn.execute(
            "UPDATE test_payments SET outcome = ? WHERE id = ?", (outcome.value, tx.purpose.subject)
        )

    def reorged(
        self, conn: sqlite3.Connection, tx: TxRecord, *, undone: Settlement, detail: str,
        now: float,
    ) -> None:  # fmt: skip
        conn.execute("UPDATE test_payments SET outcome = NULL WHERE id = ?", (tx.purpose.subject,))


def _fault(point: str) -> None:
    if os.environ.get(FAULT_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)


def _todo(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT p.id, p.recipient, p.value_wei FROM test_payments p WHERE p.cancelled = 0"
        " AND NOT EXISTS (SELECT 1 FROM txs t WHERE t.idempotency_key = 'pay:' || p.id)"
        " ORDER BY p.id"
    ).fetchall()


async def run(args: argparse.Namespace) -> int:
    conn = connect(args.db, durable=True)
    with atomic(conn):
        conn.execute(TABLE)
    db = AsyncDatabase(conn)
    signer = LocalSigner(bytes.fromhex(args.key.removeprefix("0x")), chain_id=args.chain_id)
    claim = await db.run(
        lambda c: claim_sender(args.db, c, signer.address, owner="pay", chain_id=args.chain_id)
    )
    rpc = RpcClient([args.rpc])
    manager = TxManager(
        db=db, rpc=rpc, signer=signer, policy=POLICY, handlers={PAY: PaymentPurpose()},
        claim=claim, halt_on_foreign_nonce=True,
    )  # fmt: skip
    try:
        await manager.start()
        if args.mine_after_start:
            await rpc.call("evm_mine", [])
        todo = (await db.run(_todo))[: manager.room]
        subs = [
            Submission(
                Call(to=r["recipient"], data=b"", value=int(r["value_wei"]), gas_limit=21_000),
                Purpose(PAY, r["id"]),
                lambda c, tx: None,
                key=f"pay:{r['id']}",
            )
            for r in todo
        ]
        # Fixed, modest fees: a cancel can always outbid a payment within the caps (priced
        # from anvil's suggestion, which our own bumps raise, a cancel could meet the tip cap
        # and lose the race: a true outcome, but not the one this test counts).
        fees = PAYMENT_FEES
        recorded = await manager.record(subs, fees)
        _fault("after_sign")
        await manager.broadcast(recorded)
        _fault("after_broadcast")
        if args.settle:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + SETTLE_LIMIT_S
            while manager.in_flight:
                if loop.time() > deadline:
                    return 3
                await rpc.call("evm_mine", [])
                await manager.poll()
                await asyncio.sleep(0.05)
        return 0
    finally:
        await manager.close()
        await rpc.aclose()
        db.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, type=os.path.abspath)
    parser.add_argument("--rpc", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--chain-id", type=int, required=True)
    parser.add_argument("--mine-after-start", action="store_true")
    parser.add_argument("--settle", action="store_true")
    args = parser.parse_args()
    from pathlib import Path

    args.db = Path(args.db)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
