"""The sending service is executor-neutral: a test-only executor (tests/sample_executor.py's
notes, with a source written here) sends through it on a real anvil, and the service keeps
its guarantees for it: record before broadcast, poll before new work, nothing signed while
paused, halted or over the fee cap, one live transaction per subject, claimed units given
back when an error stops them, orphan sweeps on the source's schedule."""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_utils.address import to_checksum_address
from structlog.testing import capture_logs

from shared import halt, state
from shared.chain.rpc import RpcClient
from shared.db import AsyncDatabase, connect
from shared.errors import RpcTransportError, StoreBusyError
from shared.tx.fees import GWEI, FeePolicy
from shared.tx.ledger import Purpose
from shared.tx.manager import Recorded, Submission, TxManager, TxPolicy
from shared.tx.senders import claim_sender
from shared.tx.service import (
    ReadinessCheck,
    SendingConfig,
    SendingService,
    balance_check,
)
from shared.tx.signer import Call, LocalSigner, SignedTx
from shared.tx.subjects import InFlightError
from tests import sample_executor as sample
from workers.devnet.anvil import Anvil

OWNER = "note-sender"
FEES = FeePolicy(max_fee_per_gas=100 * GWEI, max_priority_fee_per_gas=5 * GWEI)
CONFIG = SendingConfig(fees=FEES, batch=4, poll_s=0.01, checks_s=30.0)
STEPS = 200  # rounds a test allows for its notes to be sent (each round takes milliseconds)


@dataclass
class NoteSource:
    """The test executor's source: NEW notes, claimed under a lease, each sent as one
    0-value transaction to the sender itself whose bind moves the note to SENDING. It notes
    what the service showed it, for the tests to check the order of things."""

    db: AsyncDatabase
    rpc_url: str
    manager: TxManager
    sweep_every_s: float = 5.0
    #: per claim: transactions still open in the ledger (-1: the manager had seen no head)
    open_at_claim: list[int] = field(default_factory=list)
    #: per recorded transaction: (ledger status, whether a node knew its hash) at record time
    at_record: list[tuple[str, bool]] = field(default_factory=list)
    results: list[Recorded] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    sweeps: int = 0
    #: the test's hook into submissions(): may replace or extend them
    shape: Any = None

    async def start(self) -> None:
        pass

    async def claim(self, limit: int, *, now: float) -> list[str]:
        polled = self.manager.best_head is not None
        self.open_at_claim.append(await self.db.run(_open_txs) if polled else -1)
        rows = await self.db.run(
            lambda c: state.claim(
                c, sample.NOTES, owner=OWNER, status="NEW", limit=limit, lease_seconds=60, now=now
            )
        )
        return [str(r["note_id"]) for r in rows]

    async def release(self, units: Sequence[str]) -> None:
        self.released += units
        await self.db.run(state.release, sample.NOTES, units, owner=OWNER)

    async def submissions(
        self, units: Sequence[str], *, best_head: int | None
    ) -> list[tuple[str, Submission]]:
        out = [(note_id, self.submission(note_id)) for note_id in units]
        return self.shape(out) if self.shape is not None else out

    def submission(self, note_id: str, *, key: str | None = None) -> Submission:
        def bind(conn: sqlite3.Connection, tx: SignedTx) -> None:
            state.transition(conn, sample.NOTES, note_id, "NEW", "SENDING", actor=OWNER,
                             lease_owner=OWNER, note=tx.tx_hash)  # fmt: skip

        call = Call(
            to=to_checksum_address(self.manager.sender),
            data=note_id.encode(),
            value=0,
            gas_limit=30_000,
        )
        return Submission(call, Purpose(sample.PURPOSE, note_id), bind, key=key or f"n:{note_id}")

    async def recorded(self, results: Sequence[tuple[str, Recorded]]) -> None:
        self.batches.append(len(results))
        for _, r in results:
            self.results.append(r)
            if r.signed is not None:
                status = await self.db.run(_ledger_status, r.signed.tx_hash)
                known = _rpc(self.rpc_url, "eth_getTransactionByHash", [r.signed.tx_hash])
                self.at_record.append((status, known is not None))

    async def sweep_orphans(self, *, now: float) -> int:
        self.sweeps += 1
        return 0

    async def stop(self) -> None:
        held = await self.db.run(
            lambda c: [r[0] for r in c.execute(
                "SELECT note_id FROM sample_notes WHERE lease_owner = ? AND status = 'NEW'",
                (OWNER,))]
        )  # fmt: skip
        await self.release(held)


def _open_txs(conn: sqlite3.Connection) -> int:
    sql = "SELECT COUNT(*) FROM txs WHERE status IN ('SIGNED', 'BROADCAST')"
    return int(conn.execute(sql).fetchone()[0])


def _ledger_status(conn: sqlite3.Connection, tx_hash: str) -> str:
    return str(conn.execute("SELECT status FROM txs WHERE tx_hash = ?", (tx_hash,)).fetchone()[0])


class Clock:
    """Wall-clock time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Rig:
    node: Anvil
    conn: sqlite3.Connection
    source: NoteSource
    service: SendingService[str]
    clock: Clock

    @property
    def sender(self) -> str:
        return self.service.manager.sender

    def add_notes(self, n: int) -> list[str]:
        ids = [f"note-{i}" for i in range(n)]
        for note_id in ids:
            state.insert(self.conn, sample.NOTES, {"note_id": note_id, "text": note_id},
                         status="NEW", actor="test")  # fmt: skip
        return ids

    def counts(self) -> dict[str, int]:
        return state.counts(self.conn, sample.NOTES)

    def ledger(self) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT * FROM txs ORDER BY id").fetchall()

    def sent_on_chain(self) -> dict[str, int]:
        """Transactions from the sender per note, counted in the chain's blocks."""
        out: dict[str, int] = {}
        latest = int(_rpc(self.node.rpc_url, "eth_blockNumber", []), 16)
        for number in range(1, latest + 1):
            block = _rpc(self.node.rpc_url, "eth_getBlockByNumber", [hex(number), True])
            for tx in block["transactions"]:
                if tx["from"].lower() == self.sender.lower():
                    note_id = bytes.fromhex(tx["input"][2:]).decode()
                    out[note_id] = out.get(note_id, 0) + 1
        return out

    async def step(self, n: int = 1) -> None:
        for _ in range(n):
            await self.service.step()

    async def run_until_sent(self, total: int) -> None:
        for _ in range(STEPS):
            if self.counts()["SENT"] == total:
                return
            await self.service.step()
        raise AssertionError(f"not sent after {STEPS} rounds: {self.counts()}")


def _rpc(url: str, method: str, params: list[Any]) -> Any:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    return httpx.post(url, json=body, timeout=10).json()["result"]


@pytest.fixture
def node() -> Iterator[Anvil]:
    with Anvil() as anvil:
        yield anvil


@pytest.fixture
async def rig(node: Anvil, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    """The test executor on the service; ``@pytest.mark.parametrize("rig", [...],
    indirect=True)`` passes SendingConfig fields and a ``readiness`` factory."""
    options: dict[str, Any] = dict(getattr(request, "param", {}))
    readiness_for = options.pop("readiness", None)
    path = tmp_path / "node.db"
    conn = connect(path, extra_sets=[sample.MIGRATIONS])
    db = AsyncDatabase(connect(path, durable=True, extra_sets=[sample.MIGRATIONS]))
    rpc = RpcClient([node.rpc_url])
    signer = LocalSigner(bytes.fromhex(node.accounts[3].private_key[2:]), chain_id=node.chain_id)
    clock = Clock()
    manager = TxManager(
        db=db, rpc=rpc, signer=signer, handlers={sample.PURPOSE: sample.NotePurpose()},
        policy=TxPolicy(fees=FEES, confirmations=0, absent_after_s=0.3),
        claim=claim_sender(path, db.conn, signer.address, owner=OWNER, chain_id=signer.chain_id),
        clock=clock,
    )  # fmt: skip
    source = NoteSource(db, node.rpc_url, manager)
    readiness: ReadinessCheck | None = None
    if readiness_for is not None:
        readiness = readiness_for(rpc, signer.address)
    service: SendingService[str] = SendingService(
        db=db, rpc=rpc, manager=manager, source=source, readiness=readiness, clock=clock,
        config=dataclasses.replace(CONFIG, **options),
    )  # fmt: skip
    try:
        yield Rig(node, conn, source, service, clock)
    finally:
        await service.stop()
        await rpc.aclose()
        db.close()
        conn.close()


async def test_a_test_executor_sends_through_the_service_and_each_unit_mines_once(
    rig: Rig,
) -> None:
    ids = rig.add_notes(10)
    await rig.run_until_sent(len(ids))
    assert rig.sent_on_chain() == {i: 1 for i in ids}  # counted on chain
    assert int(_rpc(rig.node.rpc_url, "eth_getTransactionCount", [rig.sender, "latest"]), 16) == 10
    # Record before broadcast: every transaction was committed, and unknown to the node,
    # when the source heard of it.
    assert rig.source.at_record == [("SIGNED", False)] * len(ids)
    # Poll before new work: each round settled what the one before sent (anvil mines each
    # transaction as it arrives) before it claimed anything.
    assert len(rig.source.open_at_claim) >= 3 and set(rig.source.open_at_claim) == {0}
    assert rig.source.batches == [4, 4, 2]  # batch=4: at most four units per round


@pytest.mark.parametrize(
    "rig",
    [{"readiness": lambda rpc, address: balance_check(rpc, address, min_balance_wei=10**30)}],
    indirect=True,
)
async def test_nothing_is_signed_while_the_readiness_check_pauses_sending(rig: Rig) -> None:
    ids = rig.add_notes(3)
    with capture_logs() as logs:
        await rig.step(5)
    assert rig.service.paused is not None and "below" in rig.service.paused
    assert [e["event"] for e in logs].count("sending_paused") == 1
    assert rig.source.open_at_claim == []  # nothing was even claimed
    assert rig.ledger() == [] and rig.sent_on_chain() == {}
    _rpc(rig.node.rpc_url, "anvil_setBalance", [rig.sender, hex(2 * 10**30)])
    with capture_logs() as logs:
        await rig.run_until_sent(len(ids))
    assert _paused(rig) is None
    assert any(e["event"] == "sending_resumed" for e in logs)
    assert rig.sent_on_chain() == {i: 1 for i in ids}


def _paused(rig: Rig) -> str | None:
    return rig.service.paused


@pytest.mark.parametrize("rig", [{"halts": (halt.INDEXER,)}], indirect=True)
async def test_nothing_is_signed_while_a_respected_worker_is_halted(rig: Rig) -> None:
    ids = rig.add_notes(3)
    assert halt.halt(rig.conn, "the RPC serves another chain", worker=halt.INDEXER)
    with capture_logs() as logs:
        await rig.step(5)
    paused = [e for e in logs if e["event"] == "sending_paused"]
    assert [e["reason"] for e in paused] == ["the indexer is halted: the RPC serves another chain"]
    assert rig.source.open_at_claim == [] and rig.ledger() == []
    halt.resume(rig.conn, by="operator", worker=halt.INDEXER)
    await rig.run_until_sent(len(ids))
    assert rig.sent_on_chain() == {i: 1 for i in ids}


async def test_nothing_is_signed_over_the_fee_cap_and_claimed_units_are_given_back(
    rig: Rig,
) -> None:
    ids = rig.add_notes(3)
    # anvil's base fee is about 1 gwei: a cap of 1,000 wei leaves the market above it.
    rig.service.config = dataclasses.replace(
        CONFIG, fees=FeePolicy(max_fee_per_gas=1_000, max_priority_fee_per_gas=1)
    )
    with capture_logs() as logs:
        await rig.step(5)
    assert [e["event"] for e in logs].count("sending_waiting_for_fees") == 1  # once, not per round
    assert len(rig.source.open_at_claim) == 5 and sorted(set(rig.source.released)) == ids
    leased = rig.conn.execute("SELECT COUNT(*) FROM sample_notes WHERE lease_owner IS NOT NULL")
    assert leased.fetchone()[0] == 0 and rig.ledger() == [] and rig.sent_on_chain() == {}
    rig.service.config = CONFIG
    await rig.run_until_sent(len(ids))
    assert rig.sent_on_chain() == {i: 1 for i in ids}


async def test_a_second_transaction_for_a_subject_with_one_in_flight_is_refused(
    rig: Rig,
) -> None:
    (note_id,) = rig.add_notes(1)

    def twice(sends: list[tuple[str, Submission]]) -> list[tuple[str, Submission]]:
        # A source that (wrongly) intends a second transaction for the same note under
        # another idempotency key, whose bind would not stop it.
        again = dataclasses.replace(
            rig.source.submission(note_id, key="another"), bind=lambda conn, tx: None
        )
        return [*sends, (note_id, again)]

    rig.source.shape = twice
    await rig.run_until_sent(1)
    first, second = rig.source.results
    assert first.signed is not None
    assert second.signed is None and isinstance(second.skipped, InFlightError)
    assert len(rig.ledger()) == 1 and rig.sent_on_chain() == {note_id: 1}


@pytest.mark.parametrize("stage", ["submissions", "record"])
async def test_units_an_error_stops_are_given_back_and_nothing_is_signed(
    rig: Rig, stage: str
) -> None:
    ids = rig.add_notes(2)

    def fail(sends: list[tuple[str, Submission]]) -> list[tuple[str, Submission]]:
        if stage == "submissions":
            raise RpcTransportError("the node could not simulate")

        def busy(conn: sqlite3.Connection, tx: SignedTx) -> None:
            raise StoreBusyError("the database is busy")  # retryable: the batch rolls back

        return [(u, dataclasses.replace(s, bind=busy)) for u, s in sends]

    rig.source.shape = fail
    with pytest.raises((RpcTransportError, StoreBusyError)):
        await rig.step()
    assert sorted(rig.source.released) == ids
    leased = rig.conn.execute("SELECT COUNT(*) FROM sample_notes WHERE lease_owner IS NOT NULL")
    assert leased.fetchone()[0] == 0 and rig.counts()["NEW"] == 2
    assert rig.ledger() == [] and rig.sent_on_chain() == {}
    rig.source.shape = None
    await rig.run_until_sent(len(ids))  # the next rounds take them again
    assert rig.sent_on_chain() == {i: 1 for i in ids}


async def test_orphans_are_swept_on_the_sources_schedule(rig: Rig) -> None:
    await rig.step()
    assert rig.source.sweeps == 1  # at once on the first round
    await rig.step(3)
    assert rig.source.sweeps == 1
    rig.clock.offset += rig.source.sweep_every_s
    await rig.step()
    assert rig.source.sweeps == 2


async def test_stop_gives_back_the_claimed_units_and_the_sending_key(rig: Rig) -> None:
    rig.add_notes(2)
    await rig.step()  # claims and sends the notes...
    # ...and a unit claimed for this process but not recorded when it stops:
    state.insert(rig.conn, sample.NOTES, {"note_id": "late", "text": "late"}, status="NEW",
                 actor="test")  # fmt: skip
    assert await rig.source.claim(1, now=time.time()) == ["late"]
    await rig.service.stop()
    row = rig.conn.execute("SELECT lease_owner FROM sample_notes WHERE note_id = 'late'")
    assert row.fetchone()[0] is None
    assert rig.conn.execute("SELECT COUNT(*) FROM senders").fetchone()[0] == 0
