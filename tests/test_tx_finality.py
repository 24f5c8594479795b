"""Final outcomes and what a purpose sees, on a real anvil and a real SQLite file: a payment is
told MINED at its first receipt, FINAL once its block is ``confirmations`` deep and canonical
(once, across restarts), ``reorged`` when a reorg takes it out before that (and then the same
signed bytes go out again and land once); ``settled`` gets the receipt with its logs and gas;
``invalid`` gets ``now`` and a chain view at a confirmed block."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import sqlite3
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address
from structlog.testing import capture_logs

from shared import state
from shared.chain.rpc import RpcClient
from shared.db import AsyncDatabase, atomic, connect
from shared.tx import ledger
from shared.tx.chainview import ChainView, RpcChainView
from shared.tx.fees import GWEI, FeePolicy, Fees
from shared.tx.ledger import Purpose, TxRecord
from shared.tx.manager import Submission, TxManager, TxPolicy
from shared.tx.receipts import Receipt
from shared.tx.senders import claim_sender
from shared.tx.settlement import Settlement, SubjectAnchor
from shared.tx.signer import Call, LocalSigner
from tests.test_fulfiller_support import ManualClock
from workers.devnet.anvil import Anvil

CONFIRMATIONS = 3
POLICY = TxPolicy(
    fees=FeePolicy(max_fee_per_gas=100 * GWEI, max_priority_fee_per_gas=5 * GWEI),
    window=4,
    confirmations=CONFIRMATIONS,
)
FAIR = Fees(max_fee_per_gas=3 * GWEI, max_priority_fee_per_gas=GWEI)
PAY = "pay"
AMOUNT = 10**15  # wei paid per test payment
_keys = itertools.count(1)

# A contract whose every call emits LOG1(TOPIC) with the word 42 as data. Runtime:
# PUSH1 42, PUSH1 0, MSTORE, PUSH32 TOPIC, PUSH1 32, PUSH1 0, LOG1, STOP (44 bytes); the 11
# bytes of init code before it copy it to memory and return it.
TOPIC = "0x" + "ab" * 32
EMITTER_RUNTIME = "602a600052" + "7f" + "ab" * 32 + "60206000a100"
EMITTER_INIT = "0x602c80600b6000396000f3" + EMITTER_RUNTIME
REVERTER_INIT = "0x600580600b6000396000f3" + "60006000fd"  # every call: REVERT(0, 0)
IDENTITY = "0x0000000000000000000000000000000000000004"  # the precompile echoes its input


@dataclass
class Told:
    """One thing a purpose was told."""

    tx_hash: str
    what: Settlement
    receipt: Receipt | None = None
    undone: Settlement | None = None  # set for a reorged() call


@dataclass
class PayPurpose:
    """A money purpose: remembers everything it is told, and what its invalid() saw."""

    told: list[Told] = field(default_factory=list)
    read_chain: bool = False
    cancel_all: bool = False  # an operator cancelled every payment
    seen: list[dict[str, Any]] = field(default_factory=list)

    def invalid(
        self, conn: sqlite3.Connection, txs: Sequence[TxRecord], *, now: float, chain: ChainView
    ) -> dict[int, str]:
        if self.read_chain:
            self.seen.append({
                "now": now, "block": chain.block_number, "timestamp": chain.block_timestamp,
                "echo": chain.call(IDENTITY, b"authorizationState?"),
            })  # fmt: skip
        return {tx.id: "cancelled by the operator" for tx in txs if self.cancel_all}

    def anchors(
        self, conn: sqlite3.Connection, txs: Sequence[TxRecord]
    ) -> dict[int, SubjectAnchor | None]:
        return {}  # an off-chain subject (an order in the database)

    def settled(
        self, conn: sqlite3.Connection, tx: TxRecord, outcome: Settlement, *, detail: str,
        now: float, receipt: Receipt | None,
    ) -> None:  # fmt: skip
        assert conn.in_transaction
        self.told.append(Told(tx.tx_hash, outcome, receipt))

    def reorged(
        self, conn: sqlite3.Connection, tx: TxRecord, *, undone: Settlement, detail: str,
        now: float,
    ) -> None:  # fmt: skip
        assert conn.in_transaction
        self.told.append(Told(tx.tx_hash, Settlement.MINED, undone=undone))

    def finals(self) -> list[Told]:
        return [t for t in self.told if t.what is Settlement.FINAL and t.undone is None]

    def story(self) -> list[str]:
        return [f"reorged:{t.undone.value}" if t.undone else t.what.value for t in self.told]


@dataclass
class Node:
    anvil: Anvil
    db_path: Path
    signer: LocalSigner
    clock: ManualClock = field(default_factory=ManualClock)

    def rpc(self, method: str, params: list[object] | None = None) -> Any:
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}
        answer = httpx.post(self.anvil.rpc_url, json=body).json()
        assert "error" not in answer, answer
        return answer.get("result")

    def mine(self, blocks: int = 1) -> None:
        for _ in range(blocks):
            self.rpc("evm_mine")

    def head(self) -> int:
        return int(self.rpc("eth_blockNumber"), 16)

    def balance(self, address: str) -> int:
        return int(self.rpc("eth_getBalance", [address, "latest"]), 16)

    def manager(self, purpose: PayPurpose) -> TxManager:
        db = AsyncDatabase(connect(self.db_path, durable=True))
        return TxManager(
            db=db, rpc=RpcClient([self.anvil.rpc_url]), signer=self.signer, policy=POLICY,
            handlers={PAY: purpose},
            claim=claim_sender(
                self.db_path, db.conn, self.signer.address, owner="test",
                chain_id=self.signer.chain_id,
            ),
            clock=self.clock,
        )  # fmt: skip

    def deploy_emitter(self, init: str = EMITTER_INIT) -> ChecksumAddress:
        sender = self.anvil.accounts[0].address
        tx_hash = self.rpc("eth_sendTransaction", [{"from": sender, "data": init}])
        self.mine()
        receipt = self.rpc("eth_getTransactionReceipt", [tx_hash])
        return to_checksum_address(str(receipt["contractAddress"]))


@pytest_asyncio.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    with Anvil(no_mining=True) as anvil:
        signer = LocalSigner(bytes.fromhex(anvil.accounts[4].private_key[2:]), chain_id=31337)
        yield Node(anvil, tmp_path / "tx.db", signer)


async def close(manager: TxManager) -> None:
    await manager.close()
    manager._db.close()  # the test built it; nothing else owns it


async def pay(node: Node, manager: TxManager, call: Call | None = None) -> str:
    """Record and broadcast one payment; returns its hash."""
    recipient = node.anvil.accounts[5].address
    call = call or Call(to=recipient, data=b"", value=AMOUNT, gas_limit=21_000)
    sub = Submission(call, Purpose(PAY, f"order-{next(_keys)}"), lambda c, t: None,
                     key=f"pay:{next(_keys)}")  # fmt: skip
    recorded = await manager.record([sub], FAIR)
    await manager.broadcast(recorded)
    assert recorded[0].signed is not None
    return recorded[0].signed.tx_hash


async def polls(manager: TxManager, n: int = 2) -> None:
    """Polls enough for a verdict: the finality step judges rows at least ``confirmations``
    below the head seen on the poll before."""
    for _ in range(n):
        await manager.poll()


def row(node: Node, tx_hash: str) -> sqlite3.Row:
    conn = connect(node.db_path)
    found = conn.execute("SELECT * FROM txs WHERE tx_hash = ?", (tx_hash,)).fetchone()
    conn.close()
    assert isinstance(found, sqlite3.Row)
    return found


async def test_final_is_told_once_only_when_the_block_is_confirmations_deep(node: Node) -> None:
    purpose = PayPurpose()
    manager = node.manager(purpose)
    try:
        await manager.start()
        tx_hash = await pay(node, manager)
        node.mine()
        mined_in = node.head()
        await polls(manager)
        assert purpose.story() == ["mined"]
        for _ in range(CONFIRMATIONS - 1):  # one block short of the depth
            node.mine()
            await polls(manager)
        assert node.head() - mined_in == CONFIRMATIONS - 1
        assert purpose.story() == ["mined"], "FINAL before the depth"
        assert row(node, tx_hash)["final_at"] is None
        node.mine()
        await polls(manager)
        assert purpose.story() == ["mined", "final"]
        for _ in range(3):
            node.mine()
            await polls(manager)
    finally:
        await close(manager)
    assert purpose.story() == ["mined", "final"]  # once
    (final,) = purpose.finals()
    assert final.tx_hash == tx_hash and final.receipt is not None and final.receipt.ok
    assert final.receipt.block_number == mined_in
    stored = row(node, tx_hash)
    assert stored["final_at"] is not None and stored["final_head"] >= mined_in + CONFIRMATIONS
    conn = connect(node.db_path)
    notes = [h["note"] for h in state.history(conn, ledger.TX_MACHINE, str(stored["id"]))]
    assert any(n and n.startswith("final: ") for n in notes)  # audited


async def test_final_is_told_once_across_restarts_and_not_forgotten(node: Node) -> None:
    first = PayPurpose()
    manager = node.manager(first)
    await manager.start()
    tx_hash = await pay(node, manager)
    node.mine()
    await polls(manager)
    await close(manager)  # killed after MINED, before FINAL
    assert first.story() == ["mined"]

    node.mine(CONFIRMATIONS + 2)
    second = PayPurpose()
    manager = node.manager(second)
    try:
        await manager.start()
        await polls(manager, 3)
    finally:
        await close(manager)
    assert second.story() == ["final"]  # not forgotten by a process that never saw MINED
    assert second.finals()[0].tx_hash == tx_hash

    node.mine(2)
    third = PayPurpose()
    manager = node.manager(third)
    try:
        await manager.start()
        await polls(manager, 3)
    finally:
        await close(manager)
    assert third.told == []  # never twice


async def test_a_reorg_before_final_tells_reorged_resends_the_same_bytes_and_pays_once(
    node: Node,
) -> None:
    recipient = node.anvil.accounts[5].address
    before = node.balance(recipient)
    purpose = PayPurpose()
    manager = node.manager(purpose)
    try:
        await manager.start()
        tx_hash = await pay(node, manager)
        node.mine()
        await polls(manager)
        assert purpose.story() == ["mined"]
        assert node.balance(recipient) == before + AMOUNT

        node.rpc("anvil_reorg", [1, []])  # the payment's block is replaced; anvil drops it
        assert node.balance(recipient) == before
        assert node.rpc("eth_getTransactionByHash", [tx_hash]) is None
        for _ in range(10):  # its receipt must be missing on two polls some time apart
            await manager.poll()
            node.clock.advance(POLICY.absent_after_s)
            if "reorged:mined" in purpose.story():
                break
        assert purpose.story() == ["mined", "reorged:mined"]
        assert row(node, tx_hash)["status"] in ("BROADCAST", "SIGNED")
        await polls(manager)  # released (an off-chain subject) and sent again
        resent = node.rpc("eth_getTransactionByHash", [tx_hash])
        assert resent is not None, "the same signed bytes were not sent again"
        node.mine()
        await polls(manager)
        assert purpose.story() == ["mined", "reorged:mined", "mined"]
        for _ in range(CONFIRMATIONS + 2):
            node.mine()
            await polls(manager)
    finally:
        await close(manager)
    assert purpose.story() == ["mined", "reorged:mined", "mined", "final"]
    conn = connect(node.db_path)
    assert [r["tx_hash"] for r in conn.execute("SELECT tx_hash FROM txs")] == [tx_hash]
    # counted on chain: one transfer, by that very transaction, and one nonce used
    assert node.balance(recipient) == before + AMOUNT
    receipt = node.rpc("eth_getTransactionReceipt", [tx_hash])
    assert receipt["status"] == "0x1"
    assert int(node.rpc("eth_getTransactionCount", [node.signer.address, "latest"]), 16) == 1
    final = purpose.finals()[0]
    assert final.receipt is not None and final.receipt.block_hash == receipt["blockHash"].lower()


async def test_settled_gets_the_receipt_with_its_logs_and_gas(node: Node) -> None:
    emitter = node.deploy_emitter()
    purpose = PayPurpose()
    manager = node.manager(purpose)
    try:
        await manager.start()
        call = Call(to=emitter, data=b"\x01", value=0, gas_limit=60_000)
        tx_hash = await pay(node, manager, call)
        node.mine()
        await polls(manager)
        node.mine(CONFIRMATIONS)
        await polls(manager)
    finally:
        await close(manager)
    chain = node.rpc("eth_getTransactionReceipt", [tx_hash])
    mined, final = purpose.told
    assert (mined.what, final.what) == (Settlement.MINED, Settlement.FINAL)
    for told in (mined, final):
        receipt = told.receipt
        assert receipt is not None and receipt.tx_hash == tx_hash and receipt.ok
        assert receipt.gas_used == int(chain["gasUsed"], 16) > 21_000
        assert receipt.effective_gas_price == int(chain["effectiveGasPrice"], 16) > 0
        assert receipt.fee_wei == receipt.gas_used * receipt.effective_gas_price
        (entry,) = receipt.logs
        assert entry["address"].lower() == emitter.lower()
        assert entry["topics"] == (TOPIC,)
        assert entry["data"] == (42).to_bytes(32, "big")
        assert entry["logIndex"] == 0


async def test_a_reverted_payment_is_told_final_too_with_its_failed_receipt(node: Node) -> None:
    reverter = node.deploy_emitter(REVERTER_INIT)
    purpose = PayPurpose()
    manager = node.manager(purpose)
    try:
        await manager.start()
        tx_hash = await pay(node, manager, Call(to=reverter, data=b"", value=0, gas_limit=30_000))
        node.mine()
        await polls(manager)
        node.mine(CONFIRMATIONS)
        await polls(manager)
    finally:
        await close(manager)
    assert purpose.story() == ["reverted", "final"]
    for told in purpose.told:
        assert told.receipt is not None and told.receipt.tx_hash == tx_hash
        assert not told.receipt.ok and told.receipt.logs == ()
    assert row(node, tx_hash)["status"] == "REVERTED"


async def test_invalid_gets_now_and_a_chain_view_at_a_confirmed_block(node: Node) -> None:
    node.mine(10)
    purpose = PayPurpose(read_chain=True)
    manager = node.manager(purpose)
    try:
        await manager.start()
        await pay(node, manager)
        node.clock.advance(1234.0)
        await polls(manager)  # unmined: the purpose is asked whether it still holds
        head = node.head()
    finally:
        await close(manager)
    seen = purpose.seen[-1]
    assert node.clock() - 60 < seen["now"] <= node.clock()  # the poll's clock, not wall time
    assert seen["block"] == head - CONFIRMATIONS
    header = node.rpc("eth_getBlockByNumber", [hex(seen["block"]), False])
    assert seen["timestamp"] == int(header["timestamp"], 16)
    assert seen["echo"] == b"authorizationState?"  # an eth_call at that block, answered


async def test_a_chain_view_read_on_the_event_loop_is_refused_not_deadlocked(node: Node) -> None:
    async with RpcClient([node.anvil.rpc_url]) as rpc:
        view = RpcChainView.here(rpc, head=None, confirmations=1)
        with pytest.raises(RuntimeError, match="deadlock"):
            view.call(IDENTITY, b"x")
        # on another thread (as on the database thread) it answers, lazily: one header read
        echo = await asyncio.to_thread(view.call, IDENTITY, b"x")
        assert echo == b"x"
        assert view.reads == 3  # head, header, call
        assert await asyncio.to_thread(lambda: view.block_number) == max(0, node.head() - 1)
        assert view.reads == 3  # the block is fixed at the first read


async def test_a_reorg_deeper_than_the_confirmations_undoes_final_loudly(node: Node) -> None:
    purpose = PayPurpose()
    manager = node.manager(purpose)
    try:
        await manager.start()
        tx_hash = await pay(node, manager)
        node.mine(CONFIRMATIONS + 1)
        await polls(manager, 3)
        assert purpose.story() == ["mined", "final"]
        node.rpc("anvil_reorg", [CONFIRMATIONS + 1, []])
        with capture_logs() as logs:
            for _ in range(10):
                report = await manager.poll()
                node.clock.advance(POLICY.absent_after_s)
                if "reorged:final" in purpose.story():
                    break
    finally:
        await close(manager)
    assert purpose.story() == ["mined", "final", "reorged:final"]
    assert report.counts["final_reorged"] == 1
    assert any(e["event"] == "tx_final_reorged_out" and e["log_level"] == "error" for e in logs)
    assert row(node, tx_hash)["final_at"] is None  # a new settlement will be told FINAL again


async def test_a_lagging_backend_never_makes_a_payment_final_early(node: Node) -> None:
    """Behind a load balancer half the requests, and some entries of the fresh ones, come
    from a backend CONFIRMATIONS blocks behind: it lacks the newest headers and receipts.
    FINAL still comes only at the depth on the real chain, and once."""
    from tests.rpc_proxy import RpcProxy

    purpose = PayPurpose()
    with RpcProxy(node.anvil.rpc_url, lag=CONFIRMATIONS, stale_every=2, split_fraction=0.3) as px:
        db = AsyncDatabase(connect(node.db_path, durable=True))
        manager = TxManager(
            db=db, rpc=RpcClient([px.url]), signer=node.signer, policy=POLICY,
            handlers={PAY: purpose},
            claim=claim_sender(
                node.db_path, db.conn, node.signer.address, owner="test",
                chain_id=node.signer.chain_id,
            ),
            clock=node.clock,
        )  # fmt: skip
        try:
            await manager.start()
            node.mine(CONFIRMATIONS + 1)  # the lagging view has blocks to show
            await pay(node, manager)
            while node.rpc("eth_getTransactionReceipt", [purpose_hash(node)]) is None:
                await manager.poll()  # until a poll has put it out (a lagging one may not)
                node.clock.advance(POLICY.rebroadcast_after_s)
                node.mine()
            receipt = node.rpc("eth_getTransactionReceipt", [purpose_hash(node)])
            mined_in = int(receipt["blockNumber"], 16)
            for _ in range(3 * CONFIRMATIONS):
                for _ in range(4):
                    await manager.poll()
                    if purpose.finals():
                        assert node.head() - mined_in >= CONFIRMATIONS, "FINAL too early"
                node.mine()
        finally:
            await close(manager)
        assert px.stats["stale_answers"] > 0
    assert len(purpose.finals()) == 1


def purpose_hash(node: Node) -> str:
    """The one payment's hash, from the ledger."""
    conn = connect(node.db_path)
    (found,) = [
        str(r[0]) for r in conn.execute("SELECT tx_hash FROM txs WHERE purpose = ?", (PAY,))
    ]
    conn.close()
    return found


def test_the_ledger_records_final_once_per_settlement_and_a_reorg_clears_it(
    tmp_path: Path,
) -> None:
    conn = connect(tmp_path / "tx.db")
    signer = LocalSigner(bytes.fromhex("22" * 32), chain_id=31337)
    signed = signer.sign(Call(to=signer.address, data=b"", value=0, gas_limit=21_000),
                         nonce=0, fees=FAIR)  # fmt: skip
    with atomic(conn):
        tx_id = ledger.insert(conn, signed, Purpose(PAY), sender=signer.address,
                              chain_id=31337, now=1.0, idempotency_key="pay:ledger")  # fmt: skip
    ledger.mark_accepted(conn, [tx_id], now=2.0)
    ledger.set_status(conn, tx_id, ledger.TxStatus.MINED, now=3.0, mined_block=7,
                      mined_block_hash="0xaa")  # fmt: skip

    def current() -> TxRecord:
        found = ledger.get(conn, tx_id)
        assert found is not None
        return found

    assert [
        t.id for t in ledger.unfinal(conn, signer.address, chain_id=31337, up_to_block=6, limit=9)
    ] == []
    (candidate,) = ledger.unfinal(conn, signer.address, chain_id=31337, up_to_block=7, limit=9)
    stale = dataclasses.replace(candidate, mined_block_hash="0xbb")  # judged on another block
    with atomic(conn):
        assert not ledger.mark_final(conn, stale, head=10, now=4.0, note="final: x")
        assert ledger.mark_final(conn, candidate, head=10, now=4.0, note="final: x")
        assert not ledger.mark_final(conn, candidate, head=11, now=5.0, note="final: y")
    assert current().final_at == 4.0
    assert ledger.unfinal(conn, signer.address, chain_id=31337, up_to_block=99, limit=9) == []
    ledger.reopen(conn, tx_id, now=6.0, reason="block 7 was reorged away", head=12)
    assert current().final_at is None and current().is_open
    ledger.set_status(conn, tx_id, ledger.TxStatus.MINED, now=7.0, mined_block=9,
                      mined_block_hash="0xcc")  # fmt: skip
    (again,) = ledger.unfinal(conn, signer.address, chain_id=31337, up_to_block=9, limit=9)
    with atomic(conn):
        assert ledger.mark_final(conn, again, head=13, now=8.0, note="final: z")
    notes = [h["note"] for h in state.history(conn, ledger.TX_MACHINE, str(tx_id))]
    assert [n for n in notes if n and n.startswith("final: ")] == ["final: x", "final: z"]


async def test_the_chain_view_costs_no_request_unless_a_purpose_reads_it(node: Node) -> None:
    """The oracle's purpose never reads the view: its polls must cost what they did."""
    from tests.rpc_proxy import RpcProxy

    purpose = PayPurpose()
    with RpcProxy(node.anvil.rpc_url) as proxy:
        db = AsyncDatabase(connect(node.db_path, durable=True))
        manager = TxManager(
            db=db, rpc=RpcClient([proxy.url]), signer=node.signer, policy=POLICY,
            handlers={PAY: purpose},
            claim=claim_sender(
                node.db_path, db.conn, node.signer.address, owner="test",
                chain_id=node.signer.chain_id,
            ),
            clock=node.clock,
        )  # fmt: skip
        try:
            await manager.start()
            await pay(node, manager)  # open, unmined: invalid() is asked every poll
            costs = []
            for reads in (False, False, True):
                purpose.read_chain = reads
                before = proxy.stats["http_requests"]
                await manager.poll()
                costs.append(proxy.stats["http_requests"] - before)
        finally:
            await close(manager)
    quiet, again, reading = costs
    assert quiet == again == 1  # the poll's one batch
    assert reading == quiet + 2  # the confirmed block's header, then the eth_call


# A contract that reverts in odd blocks and executes in even ones: NUMBER, PUSH1 1, AND,
# PUSH1 8, JUMPI, STOP, JUMPDEST, PUSH1 0, DUP1, REVERT (13 bytes).
PARITY_INIT = "0x600d80600b6000396000f3" + "4360011660085700" + "5b600080fd"


async def test_a_payment_a_reorg_moves_to_another_block_restarts_its_finality_clock(
    node: Node,
) -> None:
    """Re-included one block later, the payment's result flips (the contract reverts in odd
    blocks): the purpose is told ``reorged`` and the new result, and FINAL comes at the depth
    of the new block, with its receipt."""
    contract = node.deploy_emitter(PARITY_INIT)
    purpose = PayPurpose()
    manager = node.manager(purpose)
    try:
        await manager.start()
        tx_hash = await pay(node, manager, Call(to=contract, data=b"", value=0, gas_limit=50_000))
        raw = str(row(node, tx_hash)["raw_tx"])
        node.mine()
        first_block = node.head()
        await polls(manager)
        first = "mined" if first_block % 2 == 0 else "reverted"
        second = "reverted" if first == "mined" else "mined"
        assert purpose.story() == [first]
        node.mine()
        node.rpc("anvil_reorg", [2, [[raw, 1]]])  # the same bytes, one block later
        moved = node.rpc("eth_getTransactionReceipt", [tx_hash])
        assert int(moved["blockNumber"], 16) == first_block + 1
        for _ in range(10):
            await manager.poll()
            node.clock.advance(POLICY.absent_after_s)
            if len(purpose.told) > 1:
                break
        assert purpose.story() == [first, f"reorged:{first}", second]
        assert purpose.told[-1].receipt is not None
        assert purpose.told[-1].receipt.block_number == first_block + 1
        while node.head() < first_block + 1 + CONFIRMATIONS:
            assert "final" not in purpose.story(), "FINAL on the old block's clock"
            node.mine()
            await polls(manager)
        await polls(manager)
    finally:
        await close(manager)
    assert purpose.story() == [first, f"reorged:{first}", second, "final"]
    final = purpose.finals()[0].receipt
    assert final is not None and final.block_number == first_block + 1
    assert final.ok == (second == "mined")
    assert row(node, tx_hash)["status"] == second.upper()
    assert int(node.rpc("eth_getTransactionCount", [node.signer.address, "latest"]), 16) == 1


async def test_a_reorg_that_takes_back_a_mined_cancel_tells_the_superseded_payment(
    node: Node,
) -> None:
    recipient = node.anvil.accounts[5].address
    before = node.balance(recipient)
    purpose = PayPurpose()
    manager = node.manager(purpose)
    try:
        await manager.start()
        payment = await pay(node, manager)
        purpose.cancel_all = True
        await manager.poll()  # the cancel replaces it on its nonce
        node.mine()
        await polls(manager)
        assert purpose.story() == ["superseded"]
        node.rpc("anvil_reorg", [1, []])
        for _ in range(10):
            await manager.poll()
            node.clock.advance(POLICY.absent_after_s)
            if len(purpose.told) > 1:
                break
        assert purpose.story() == ["superseded", "reorged:superseded"]
        await polls(manager)  # the cancel (no purpose to confirm) goes out again
        node.mine()
        await polls(manager)
    finally:
        await close(manager)
    assert purpose.story() == ["superseded", "reorged:superseded", "superseded"]
    assert all(t.tx_hash == payment and t.receipt is None for t in purpose.told)
    assert node.balance(recipient) == before  # the cancelled payment never landed
    assert int(node.rpc("eth_getTransactionCount", [node.signer.address, "latest"]), 16) == 1
