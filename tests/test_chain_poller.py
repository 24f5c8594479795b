"""The generic log poller (shared/chain) with test-only filters and sinks registered beside
the oracle's on one poller, on a real anvil and a real SQLite file: each sink gets exactly
its logs, a reorg rolls every sink back in one transaction, a sink that raises leaves
nothing of the range and the cursor where it was, the bloom check finds a second filter's
hidden logs, and a poller of its own name needs no oracle at all.

The test sink (:class:`RecordingSink`) stores the logs it is handed in a table of its own,
``test_sink_logs``, created in the node's database, so what it holds is read back from the
same file the oracle's rows are in.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_abi.abi import encode as abi_encode
from eth_utils.crypto import keccak
from prometheus_client import Counter, Gauge
from structlog.testing import capture_logs

from shared.chain.config import PollerConfig
from shared.chain.filters import Log, LogFilter
from shared.chain.metrics import PollerMetrics
from shared.chain.poller import LogPoller
from shared.chain.rpc import RpcClient, hex_int
from shared.db import connect
from shared.keys import load_private_key
from shared.runtime import run_loop
from tests.chain_fixtures import DeployedStack
from tests.rpc_proxy import RpcProxy
from tests.test_indexer_support import (
    SET_FEE_SELECTOR,
    ChainDriver,
    caught_up_to,
    indexer_settings,
    run_indexer,
    stored_requests,
)
from workers.oracle.indexer.main import Indexer, open_database, start_when_reachable
from workers.oracle.indexer.settings import IndexerSettings

FEE_TOPIC = "0x" + keccak(text="ModelFeeSet(string,uint256)").hex()
DECISION_TOPIC = "0x" + keccak(text="DecisionReceived(uint256,string,string)").hex()
# Seconds a test waits for the poller to reach a state.
LIMIT_S = 45.0

SINK_TABLE = (
    "CREATE TABLE test_sink_logs (sink TEXT NOT NULL, block_number INTEGER NOT NULL, "
    "block_hash TEXT NOT NULL, log_index INTEGER NOT NULL, topic0 TEXT NOT NULL, "
    "PRIMARY KEY (sink, block_hash, log_index))"
)

# A poller of its own needs gauges of its own (Prometheus allows each name once).
OWN_METRICS = PollerMetrics(
    cursor=Gauge("hodlai_test_poller_cursor_block", "test poller cursor"),
    lag=Gauge("hodlai_test_poller_lag_blocks", "test poller lag"),
    halted=Gauge("hodlai_test_poller_halted", "test poller halted"),
    no_progress_polls=Gauge("hodlai_test_poller_polls_without_progress", "test"),
    log_conflicts=Counter("hodlai_test_poller_log_conflicts_total", "test"),
    hidden_logs=Counter("hodlai_test_poller_hidden_logs_total", "test"),
    process="test-poller",
)


class SinkRefused(Exception):
    """What the test sink raises when told to."""


@dataclass(frozen=True, slots=True)
class Recorded:
    """The test sink's SinkStats."""

    recorded: int = 0
    removed: int = 0

    @property
    def changed(self) -> int:
        return self.recorded + self.removed

    def fields(self) -> dict[str, int]:
        return {"test_logs_recorded": self.recorded, "test_logs_removed": self.removed}


Row = tuple[str, int, str, int, str]


class RecordingSink:
    """A LogSink that stores each log it is handed (idempotently) and deletes them again
    on a rollback; it raises on ``apply`` of a non-empty batch, or on ``rollback``, when
    told to."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.fail_apply = False
        self.fail_rollback = False
        self.failures = 0
        self.committed_rows = 0
        self.rollbacks = 0

    def decode(self, logs: Sequence[Log]) -> list[Row]:
        return [
            (self.name, hex_int(e["blockNumber"]), str(e["blockHash"]).lower(),
             hex_int(e["logIndex"]), str(e["topics"][0]).lower())
            for e in logs
        ]  # fmt: skip

    def apply(self, conn: sqlite3.Connection, batch: list[Row], *, now: float) -> Recorded:
        if self.fail_apply and batch:
            self.failures += 1
            raise SinkRefused(f"{self.name} refuses {len(batch)} log(s)")
        before = conn.total_changes
        conn.executemany("INSERT OR IGNORE INTO test_sink_logs VALUES (?, ?, ?, ?, ?)", batch)
        return Recorded(recorded=conn.total_changes - before)

    def rollback(self, conn: sqlite3.Connection, ancestor: int, *, now: float) -> Recorded:
        if self.fail_rollback:
            self.failures += 1
            raise SinkRefused(f"{self.name} refuses to roll back to {ancestor}")
        self.rollbacks += 1
        gone = conn.execute(
            "DELETE FROM test_sink_logs WHERE sink = ? AND block_number > ?", (self.name, ancestor)
        )
        return Recorded(removed=gone.rowcount)

    def committed(self, stats: Recorded) -> None:
        self.committed_rows += stats.recorded


async def run_until_refused(
    settings: IndexerSettings, sink: RecordingSink, refusals: int, log_filter: LogFilter
) -> None:
    """Run an indexer with ``sink`` registered until the sink has refused ``refusals``
    times. Checked after every step, failed ones too (run_indexer looks only after steps
    that return, and every step fails while a sink refuses)."""
    db = open_database(settings.db_path)
    rpc = RpcClient(settings.rpc_urls, timeout=5.0)
    indexer = Indexer(settings, rpc=rpc, db=db)
    indexer.register(log_filter, sink)
    stop = asyncio.Event()

    async def step() -> float:
        try:
            return await indexer.step()
        finally:
            if sink.failures >= refusals:
                stop.set()

    try:
        async with asyncio.timeout(LIMIT_S):
            if await start_when_reachable(indexer, stop):
                await run_loop("indexer", step, stop=stop)
    finally:
        await indexer.close()
        await rpc.aclose()
        db.close()


@pytest.fixture
def driver(deployed: DeployedStack) -> Iterator[ChainDriver]:
    chain = ChainDriver(
        deployed.rpc_url, deployed.deployment, deployed.anvil.accounts[2].private_key
    )
    yield chain
    chain.close()


@pytest.fixture
def sink_db(db_path: Path) -> Path:
    """The node's database (migrated) with the test sink's table in it."""
    conn = connect(db_path)
    conn.execute(SINK_TABLE)
    conn.close()
    return db_path


def fee_filter(deployed: DeployedStack, start_block: int) -> LogFilter:
    """The provider's ModelFeeSet: the oracle filter's address, another topic. From
    ``start_block``, a block after the deployment's own fees (its model prices)."""
    return LogFilter(
        name="fees",
        addresses=(deployed.deployment.provider_address,),
        topics=((FEE_TOPIC,),),
        start_block=start_block,
    )


def recorded(db_path: Path, sink: str) -> set[tuple[str, int]]:
    conn = connect(db_path)
    try:
        rows = conn.execute(
            "SELECT block_hash, log_index FROM test_sink_logs WHERE sink = ?", (sink,)
        ).fetchall()
    finally:
        conn.close()
    return {(r[0], r[1]) for r in rows}


def chain_logs(driver: ChainDriver, log_filter: LogFilter) -> set[tuple[str, int]]:
    """What the node itself returns for the filter over the whole chain."""
    logs = driver.rpc("eth_getLogs", [log_filter.query(log_filter.start_block, driver.head())])
    return {(str(e["blockHash"]).lower(), hex_int(e["logIndex"])) for e in logs}


def cursor(db_path: Path, name: str = "indexer") -> int:
    conn = connect(db_path)
    try:
        row = conn.execute("SELECT block_number FROM cursors WHERE name = ?", (name,)).fetchone()
    finally:
        conn.close()
    return -1 if row is None else int(row[0])


def set_fee(driver: ChainDriver, deployed: DeployedStack, model: str, fee: int) -> int:
    """A ModelFeeSet event; returns its block."""
    driver.set_model_fee(deployed.anvil.accounts[0].private_key, model, fee)
    return driver.head()


async def test_sinks_beside_the_oracle_each_get_exactly_their_logs(
    deployed: DeployedStack, driver: ChainDriver, sink_db: Path
) -> None:
    first = driver.head() + 1
    oracle = load_private_key(deployed.oracle_key_file)
    for i in range(3):
        driver.wait(driver.ask(f"request {i}"))
        set_fee(driver, deployed, f"model-{i}", 10 + i)
    driver.wait(driver.fulfill(oracle, 1, "BUY"))
    driver.wait(driver.fulfill(oracle, 2, "SELL"))
    # The vault's callback event, restricted on its second topic to request 1 only: another
    # address than the oracle's, and a topic position the union of first topics cannot say.
    decisions = LogFilter(
        name="decisions",
        addresses=(deployed.deployment.vault_address,),
        topics=((DECISION_TOPIC,), (f"0x{1:064x}",)),
        start_block=deployed.deployment.deploy_block,
    )
    fees, only_one = RecordingSink("fees"), RecordingSink("decisions")
    settings = indexer_settings(sink_db, [deployed.rpc_url], deployed.deployment,
                                indexer_max_range=3)  # fmt: skip
    with capture_logs() as logs:
        sinks = [(fee_filter(deployed, first), fees), (decisions, only_one)]
        indexer = await run_indexer(settings, until=caught_up_to(driver.head()), sinks=sinks)

    assert len(chain_logs(driver, fee_filter(deployed, first))) == 3
    assert recorded(sink_db, "fees") == chain_logs(driver, fee_filter(deployed, first))
    assert len(chain_logs(driver, decisions)) == 1
    assert recorded(sink_db, "decisions") == chain_logs(driver, decisions)
    conn = connect(sink_db)
    topics = {r[0] for r in conn.execute("SELECT DISTINCT topic0 FROM test_sink_logs")}
    assert topics == {FEE_TOPIC, DECISION_TOPIC}
    rows = stored_requests(conn)
    assert set(rows) == driver.requested_ids() == {1, 2, 3}
    assert [rows[i]["status"] for i in (1, 2, 3)] == ["FULFILLED", "FULFILLED", "PENDING"]
    # The sinks heard of exactly what committed; the oracle's totals are its own.
    assert (fees.committed_rows, only_one.committed_rows) == (3, 1)
    assert (indexer.totals.inserted, indexer.totals.fulfilments_applied) == (3, 2)
    # Their logs' blocks are in the poller's block history like the oracle's.
    stored_blocks = {r[0] for r in conn.execute("SELECT hash FROM blocks")}
    assert {h for h, _ in recorded(sink_db, "fees")} <= stored_blocks
    ingested = [e for e in logs if e["event"] == "range_ingested" and e["log_level"] == "info"]
    assert sum(e.get("test_logs_recorded", 0) for e in ingested) == 4
    assert sum(e.get("inserted", 0) for e in ingested) == 3


async def test_a_reorg_rolls_back_every_sink_in_one_transaction(
    deployed: DeployedStack, driver: ChainDriver, sink_db: Path
) -> None:
    first = driver.head() + 1
    driver.wait(driver.ask("kept"))
    set_fee(driver, deployed, "kept-model", 1)
    driver.wait(driver.ask("orphaned"))
    set_fee(driver, deployed, "orphaned-model", 2)
    head = driver.head()
    fees = RecordingSink("fees")
    settings = indexer_settings(sink_db, [deployed.rpc_url], deployed.deployment)
    await run_indexer(
        settings, until=caught_up_to(head), sinks=[(fee_filter(deployed, first), fees)]
    )
    conn = connect(sink_db)
    assert set(stored_requests(conn)) == {1, 2} and len(recorded(sink_db, "fees")) == 2

    # The last two blocks (request 2 and the second fee) are replaced by empty ones.
    driver.reorg(2)
    before = (
        [tuple(r) for r in conn.execute("SELECT * FROM requests ORDER BY request_id")],
        recorded(sink_db, "fees"),
        cursor(sink_db),
        conn.execute("SELECT COUNT(*) FROM reorgs").fetchone()[0],
        conn.execute("SELECT COUNT(*) FROM transitions").fetchone()[0],
    )
    # One sink refusing its rollback takes every other part of it back with it: the
    # oracle's removal, the block hashes, the cursor and the reorg record.
    fees.fail_rollback = True
    await run_until_refused(settings, fees, 2, fee_filter(deployed, first))
    after_refusal = (
        [tuple(r) for r in conn.execute("SELECT * FROM requests ORDER BY request_id")],
        recorded(sink_db, "fees"),
        cursor(sink_db),
        conn.execute("SELECT COUNT(*) FROM reorgs").fetchone()[0],
        conn.execute("SELECT COUNT(*) FROM transitions").fetchone()[0],
    )
    assert after_refusal == before

    fees.fail_rollback = False
    with capture_logs() as logs:
        await run_indexer(settings, until=caught_up_to(driver.head()),
                          sinks=[(fee_filter(deployed, first), fees)])  # fmt: skip
    assert fees.rollbacks == 1
    assert set(stored_requests(conn)) == driver.requested_ids() == {1}
    assert recorded(sink_db, "fees") == chain_logs(driver, fee_filter(deployed, first))
    assert len(recorded(sink_db, "fees")) == 1
    assert conn.execute("SELECT COUNT(*) FROM reorgs").fetchone()[0] == 1
    rolled = [e for e in logs if e["event"] == "reorg_rolled_back"]
    assert len(rolled) == 1
    assert (rolled[0]["requests_removed"], rolled[0]["test_logs_removed"]) == (1, 1)


async def test_a_sink_that_raises_leaves_nothing_of_the_range_and_the_cursor_where_it_was(
    deployed: DeployedStack, driver: ChainDriver, sink_db: Path
) -> None:
    first = driver.head() + 1
    driver.wait(driver.ask("before"))
    fees = RecordingSink("fees")
    settings = indexer_settings(sink_db, [deployed.rpc_url], deployed.deployment)
    await run_indexer(settings, until=caught_up_to(driver.head()),
                      sinks=[(fee_filter(deployed, first), fees)])  # fmt: skip
    accepted = cursor(sink_db)

    # A request and a fee in one block: the oracle's half of that block must not be stored
    # while the fee sink refuses it.
    driver.set_automine(False)
    admin = deployed.anvil.accounts[0].private_key
    fee_tx = driver._sign(admin, deployed.deployment.provider_address,
                          SET_FEE_SELECTOR + abi_encode(["string", "uint256"], ["m", 5]),
                          0, 500_000)  # fmt: skip
    asked = driver.ask("in the refused block")
    fee_hash = driver.send_raw(fee_tx)
    driver.mine(1)
    driver.set_automine(True)
    block = int(driver.wait(asked)["blockNumber"], 16)
    assert int(driver.wait(fee_hash)["blockNumber"], 16) == block
    driver.mine(2)

    fees.fail_apply = True
    with capture_logs() as logs:
        await run_until_refused(settings, fees, 2, fee_filter(deployed, first))
    assert accepted <= cursor(sink_db) < block
    conn = connect(sink_db)
    assert set(stored_requests(conn)) == {1}
    assert recorded(sink_db, "fees") == set()
    stored = conn.execute("SELECT MAX(number) FROM blocks").fetchone()[0]
    assert stored < block
    assert fees.committed_rows == 0
    failed = [e for e in logs if e["event"] == "loop_step_failed"]
    assert failed and failed[0]["kind"] == "SinkRefused"

    fees.fail_apply = False
    await run_indexer(settings, until=caught_up_to(driver.head()),
                      sinks=[(fee_filter(deployed, first), fees)])  # fmt: skip
    assert set(stored_requests(conn)) == driver.requested_ids() == {1, 2}
    assert recorded(sink_db, "fees") == chain_logs(driver, fee_filter(deployed, first))
    assert fees.committed_rows == 1


async def test_the_bloom_check_finds_a_second_filters_hidden_logs(
    deployed: DeployedStack, driver: ChainDriver, sink_db: Path
) -> None:
    # eth_getLogs answered 3 blocks behind the rest of its batch, no backup re-scan: only
    # the blocks' logsBloom can reveal what the lagging getLogs left out, for each filter.
    first = driver.head() + 1
    fees = RecordingSink("fees")
    with RpcProxy(deployed.rpc_url, logs_lag=3) as proxy:
        target: dict[str, int] = {}
        settings = indexer_settings(sink_db, [proxy.url], deployed.deployment,
                                    indexer_rescan_every=10**6)  # fmt: skip
        with capture_logs() as logs:
            running = asyncio.create_task(
                run_indexer(settings, sinks=[(fee_filter(deployed, first), fees)],
                            until=lambda ix: ix.anchor.number >= target.get("head", 1 << 62))
            )  # fmt: skip
            for i in range(5):
                await asyncio.to_thread(set_fee, driver, deployed, f"hidden-{i}", i + 1)
                await asyncio.sleep(0.15)  # let the poller accept each block as it comes
            await asyncio.to_thread(driver.mine, 5)
            target["head"] = driver.head()
            await asyncio.wait_for(running, LIMIT_S)
        assert proxy.stats["split_answers"] > 0
    assert recorded(sink_db, "fees") == chain_logs(driver, fee_filter(deployed, first))
    assert len(recorded(sink_db, "fees")) == 5
    found = [e for e in logs if e["event"] == "hidden_logs_found"]
    assert found and sum(e["logs"] for e in found) >= 1


async def _run_own(
    poller: LogPoller, until: Callable[[LogPoller], bool], limit_s: float = LIMIT_S
) -> None:
    stop = asyncio.Event()

    async def step() -> float:
        delay = await poller.step()
        if until(poller):
            stop.set()
        return delay

    async with asyncio.timeout(limit_s):
        await poller.start()
        await run_loop("test-poller", step, stop=stop)


def _own_config(name: str) -> PollerConfig:
    return PollerConfig(
        name=name, confirmations=0, max_range=2000, target_logs=5000, poll_interval_s=0.05,
        rescan_every=20, rescan_blocks=64, block_history=10_000, bloom_window=64,
        max_reorg_depth=64, unhealthy_after_polls=20, start_setting="HODLAI_TEST_START_BLOCK",
    )  # fmt: skip


async def test_a_poller_of_its_own_reads_its_filter_from_its_start_block_under_its_name(
    deployed: DeployedStack, driver: ChainDriver, sink_db: Path
) -> None:
    set_fee(driver, deployed, "before-start", 1)
    driver.wait(driver.ask("not this poller's"))
    start = set_fee(driver, deployed, "from-start", 2)
    set_fee(driver, deployed, "after-start", 3)
    head = driver.head()
    db = open_database(sink_db)
    rpc = RpcClient([deployed.rpc_url], timeout=5.0)
    fees = RecordingSink("fees")
    poller = LogPoller(_own_config("test_fees"), rpc=rpc, db=db, metrics=OWN_METRICS)
    poller.register(fee_filter(deployed, start_block=start), fees)
    try:
        await _run_own(poller, lambda p: p.caught_up and p.anchor.number >= head)
    finally:
        await poller.close()
        await rpc.aclose()
        db.close()
    assert recorded(sink_db, "fees") == chain_logs(driver, fee_filter(deployed, start))
    assert len(recorded(sink_db, "fees")) == 2
    assert cursor(sink_db, "test_fees") == head and cursor(sink_db, "indexer") == -1
    assert stored_requests(connect(sink_db)) == {}
    assert OWN_METRICS.cursor.collect()[0].samples[0].value == head


def test_registering_after_start_or_twice_is_refused(
    deployed: DeployedStack, sink_db: Path
) -> None:
    settings = indexer_settings(sink_db, [deployed.rpc_url], deployed.deployment)

    async def attempt() -> None:
        db = open_database(sink_db)
        rpc = RpcClient([deployed.rpc_url], timeout=5.0)
        indexer = Indexer(settings, rpc=rpc, db=db)
        try:
            with pytest.raises(ValueError, match="registered already"):
                other = LogFilter(name="oracle", addresses=(deployed.deployment.vault_address,))
                indexer.register(other, RecordingSink("x"))
            await indexer.start()
            with pytest.raises(RuntimeError, match="before the poller starts"):
                indexer.register(fee_filter(deployed, 0), RecordingSink("fees"))
        finally:
            await indexer.close()
            await rpc.aclose()
            db.close()

    asyncio.run(attempt())
