"""A paying sender for transaction tests: a real anvil behind a scripted node
(tests/scripted_rpc.py), a real SQLite file, a payment purpose an operator can cancel, and a
manager per simulated process life."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from eth_utils.address import to_checksum_address

from shared.chain.rpc import RpcClient
from shared.db import AsyncDatabase, connect
from shared.tx.chainview import ChainView
from shared.tx.fees import GWEI, FeePolicy, Fees
from shared.tx.ledger import Purpose, TxRecord
from shared.tx.manager import Submission, TxManager, TxPolicy
from shared.tx.receipts import Receipt
from shared.tx.senders import claim_sender
from shared.tx.settlement import Settlement, SubjectAnchor
from shared.tx.signer import Call, LocalSigner
from tests.scripted_rpc import ScriptedNode
from tests.test_fulfiller_support import ManualClock
from workers.devnet.anvil import Anvil

CHAIN = 31337
PAY = "pay"
VALUE = 10**15  # wei per payment: small, and easy to find in a balance
POLICY = TxPolicy(
    fees=FeePolicy(max_fee_per_gas=100 * GWEI, max_priority_fee_per_gas=5 * GWEI),
    window=8,
    stuck_after_s=30.0,
    rebroadcast_after_s=5.0,
    absent_after_s=1.0,
)
FAIR = Fees(max_fee_per_gas=3 * GWEI, max_priority_fee_per_gas=GWEI)
_keys = itertools.count(1)


@dataclass
class PayPurpose:
    """A payment purpose: invalid once the test (an operator) cancels it; remembers what it
    is told."""

    cancelled: set[str] = field(default_factory=set)
    told: list[tuple[str, Settlement]] = field(default_factory=list)
    reorgs: list[tuple[str, Settlement]] = field(default_factory=list)

    def invalid(
        self,
        conn: sqlite3.Connection,
        txs: Sequence[TxRecord],
        *,
        now: float,
        chain: ChainView,
    ) -> dict[int, str]:
        return {
            tx.id: "cancelled by an operator" for tx in txs if tx.purpose.subject in self.cancelled
        }

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
        self.told.append((tx.tx_hash, outcome))

    def reorged(
        self, conn: sqlite3.Connection, tx: TxRecord, *, undone: Settlement, detail: str,
        now: float,
    ) -> None:  # fmt: skip
        self.reorgs.append((tx.tx_hash, undone))


@dataclass
class World:
    node: Anvil
    scripted: ScriptedNode
    db_path: Path
    signer: LocalSigner
    purpose: PayPurpose
    clock: ManualClock
    recipient: str

    def rpc(self, method: str, params: list[object]) -> object:
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        return httpx.post(self.node.rpc_url, json=body).json().get("result")

    def balance(self, address: str | None = None) -> int:
        return int(str(self.rpc("eth_getBalance", [address or self.recipient, "latest"])), 16)

    def rows(self) -> list[sqlite3.Row]:
        conn = connect(self.db_path)
        try:
            return conn.execute("SELECT * FROM txs ORDER BY id").fetchall()
        finally:
            conn.close()

    def payment(self, subject: str, to: str | None = None) -> Submission:
        call = Call(to=to or self.recipient, data=b"", value=VALUE, gas_limit=21_000)  # type: ignore[arg-type]
        return Submission(call, Purpose(PAY, subject), lambda c, tx: None, key=f"pay:{subject}")

    @asynccontextmanager
    async def manager(self, **kwargs: object) -> AsyncIterator[TxManager]:
        """A manager on the scripted node (a process's life: claim, work, give back)."""
        db = AsyncDatabase(connect(self.db_path, durable=True))
        claim = claim_sender(
            self.db_path, db.conn, self.signer.address, owner="test", chain_id=CHAIN
        )
        rpc = RpcClient([self.scripted.url])
        manager = TxManager(
            db=db, rpc=rpc, signer=self.signer, policy=POLICY, handlers={PAY: self.purpose},
            claim=claim, clock=self.clock, **kwargs,  # type: ignore[arg-type]
        )  # fmt: skip
        try:
            yield manager
        finally:
            await manager.close()
            await rpc.aclose()
            db.close()


@contextmanager
def make_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """The world of one test (its own lock directory: tests use anvil's public keys)."""
    monkeypatch.setenv("HODLAI_LOCK_DIR", str(tmp_path / "locks"))
    with Anvil(no_mining=True) as node, ScriptedNode(node.rpc_url) as scripted:
        signer = LocalSigner(bytes.fromhex(node.accounts[6].private_key[2:]), chain_id=CHAIN)
        yield World(
            node, scripted, tmp_path / "pay.db", signer, PayPurpose(), ManualClock(),
            recipient=to_checksum_address(f"0x{0xBEEF000000 + next(_keys):040x}"),
        )  # fmt: skip
