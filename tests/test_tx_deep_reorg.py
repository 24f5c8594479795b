"""A deep reorg under a fulfilled request: the answer was mined, the chain reverted deeper than
the confirmations (the fulfilment and the request with it), and the same request id came
back with other content and another action set. The vault must receive only the new
content's answer, once; the old signed fulfilment must never be sent again."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from shared.db import connect
from tests.chain_fixtures import DeployedStack
from tests.test_fulfiller_support import (
    TEST_POLICY,
    Chain,
    ManualClock,
    answer_pending,
    indexer_env,
    make_fulfiller,
    start_indexer,
    step_like_the_loop,
    tx_rows,
)
from workers.oracle import store
from workers.oracle.store import Status

CONFIRMATIONS = 3
# Seconds each phase may take.
PHASE_LIMIT_S = 60.0


async def test_after_a_deep_reorg_the_vault_gets_only_the_new_contents_answer_once(
    deployed: DeployedStack, db_path: Path, tmp_path: Path
) -> None:
    chain = Chain(deployed)
    before = chain.rpc("evm_snapshot")
    (request_id,) = chain.ask(1, state="old content", actions=("OLD_A", "OLD_B"))
    chain.mine(CONFIRMATIONS)
    conn = connect(db_path)
    log_path = tmp_path / "indexer.log"
    indexer = start_indexer(indexer_env(deployed, db_path, confirmations=CONFIRMATIONS), log_path)
    clock = ManualClock()
    fulfiller = make_fulfiller(deployed, db_path, clock=clock)

    async def run_until(done: object, what: str) -> None:
        deadline = time.monotonic() + PHASE_LIMIT_S
        while not done():  # type: ignore[operator]
            assert time.monotonic() < deadline, f"{what}: {tx_rows(conn)}"
            assert indexer.poll() is None, log_path.read_text()[-2000:]
            answer_pending(conn)
            await step_like_the_loop(fulfiller)
            chain.mine()  # blocks keep coming, as on a real chain

    def row() -> dict[str, object]:
        found = store.get_request(conn, request_id)
        return {} if found is None else dict(found)

    try:
        await run_until(lambda: row().get("status") == Status.FULFILLED, "old answer mined")
        assert row()["fulfilled_action"] == "OLD_A"
        (old_tx,) = tx_rows(conn)
        assert old_tx["status"] == "MINED"

        # Deeper than the confirmations: the request and its fulfilment are gone, and anvil
        # dropped the reverted transactions. The same id returns with new content. The
        # indexer has not seen any of it yet (it is paused), so the database still holds
        # the old content: the fulfiller alone must not send the old answer again.
        indexer.send_signal(signal.SIGSTOP)
        assert chain.rpc("evm_revert", [before]) is True
        assert chain.fulfilled_counts() == {}
        (again,) = chain.ask(1, state="new content", actions=("NEW_A", "NEW_B"))
        assert again == request_id
        chain.mine(CONFIRMATIONS + 6)  # the new chain grows past the old head
        clock.advance(TEST_POLICY.rebroadcast_after_s + 1)  # due for a "still known?" check
        for _ in range(30):
            await step_like_the_loop(fulfiller)
            chain.mine()
            clock.advance(0.2)
        assert chain.deliveries(request_id) == 0, "the old answer was sent again"
        indexer.send_signal(signal.SIGCONT)

        await run_until(
            lambda: row().get("status") == Status.FULFILLED and row().get("generation") == 2,
            "new answer mined",
        )
        for _ in range(20):  # and nothing else lands afterwards
            await step_like_the_loop(fulfiller)
            chain.mine()
    finally:
        indexer.send_signal(signal.SIGCONT)
        indexer.terminate()
        indexer.wait(timeout=30)
        await fulfiller.close()

    action, _, received = chain.vault.functions.decisionOf(request_id).call()
    assert received and action in ("NEW_A", "NEW_B")
    assert chain.deliveries(request_id) == 1
    assert chain.fulfilled_counts() == {request_id: 1}
    assert row()["fulfilled_action"] == action
    assert chain.rpc("eth_getTransactionByHash", [old_tx["tx_hash"]]) is None  # never resent
    statuses = {r["tx_hash"]: r["status"] for r in tx_rows(conn)}
    assert statuses[old_tx["tx_hash"]] in ("CANCELLED", "REPLACED")
