"""SIGKILL ``hodlai mint-executor`` in the middle of batches, five times (more behind
``make chaos``: HODLAI_MINT_KILLS), then count on chain: mints = mints_completed = quantity,
USDC paid = mints × price, no authorization used twice, the money account adds up."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.mint_fixtures import PRICE, Node, mint_chain, pay_directly, reference_server
from workers.devnet.anvil import Anvil

KILLS = int(os.environ.get("HODLAI_MINT_KILLS", "5"))
QUANTITY = 3 * KILLS + 5


def _minted(node: Node, task_id: str) -> int:
    conn = node.conn()
    try:
        return int(
            conn.execute(
                "SELECT COUNT(*) FROM mint_payments WHERE task_id = ? AND status IN"
                " ('signed', 'minted')",
                (task_id,),
            ).fetchone()[0]
        )
    finally:
        conn.close()


# The same kills against the x402-only reference server, which is not idempotent: a payment
# it settled answers 402 when presented again, so each resolution goes through the ledger's
# reconciler and the mint found on chain. `make chaos` runs 20 kills (HODLAI_MINT_KILLS).
@pytest.mark.timeout(300)
def test_sigkill_mid_batch_never_pays_a_mint_twice(tmp_path: Path) -> None:
    with Anvil() as anvil:
        chain = mint_chain(anvil, tmp_path)
        url, server = reference_server(chain, tmp_path)
        try:
            node = Node(chain, url, tmp_path, extra={"HODLAI_MINT_MAX_BATCH": "4"})
            user, key = chain.user(1)
            task = node.create_task(user, QUANTITY)
            body = chain.sign_funding(
                key, task.agent_address, task.total_cost, valid_before=task.payment_deadline
            )
            assert pay_directly(chain, body)["status"] == "0x1"
            kills = 0
            progress = 0
            while kills < KILLS:
                executor = node.start_executor()
                # wait until this run has signed at least one more payment, then kill it
                deadline = time.monotonic() + 60
                while _minted(node, task.id) <= progress and time.monotonic() < deadline:
                    time.sleep(0.05)
                time.sleep(0.1 * (kills % 3))
                executor.kill()
                kills += 1
                progress = _minted(node, task.id)
                assert progress < QUANTITY, "the task finished before the kills were done"
            executor = node.start_executor()
            try:
                done = node.wait_task(task.id, "completed", "failed", timeout=120)
            finally:
                executor.stop()
        finally:
            server.stop()
        assert done.status.value == "completed", done.error_message
        mints = chain.mints_to(user)
        assert len(mints) == done.mints_completed == QUANTITY
        uses = chain.uses_by(task.agent_address)
        nonces = Counter(entry["topics"][2] for entry in uses)
        assert len(uses) == QUANTITY and max(nonces.values()) == 1
        assert chain.usdc.balance(chain.pay_to) == QUANTITY * PRICE
        assert chain.usdc.balance(task.agent_address) == 0
        conn = node.conn()
        try:
            from workers.mint import store

            account = store.account(conn, store.get_task(conn, task.id))
        finally:
            conn.close()
        assert account.funded == account.spent_on_mints + account.held + account.refunded
        assert (account.spent_on_mints, account.held) == (QUANTITY * PRICE, 0)
