"""The mint executor against the node's own ``hodlai mint-server`` (both processes, the
devnet's mint part on a real anvil): SIGKILL the executor, and separately the mint server,
in the middle of batches, five times each (HODLAI_MINT_KILLS); then, counted on chain:
mints = mints_completed = quantity, USDC paid = mints × price, no authorization used twice,
the task's money account adds up."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.eip3009_fixtures import Token
from tests.mint_fixtures import MintChain, Node, Process, pay_directly
from tests.mint_server_fixtures import PRICE, MintDevnet, mint_devnet  # noqa: F401
from workers.mint import store
from workers.mint.keyfile import load_mint_keys

KILLS = int(os.environ.get("HODLAI_MINT_KILLS", "5"))
# A killed server loses a batch in flight (up to 4 signed payments) each time: more mints.
QUANTITIES = {"executor": 3 * KILLS + 5, "server": 8 * KILLS + 5}


def _paid(node: Node, task_id: str) -> int:
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


@pytest.mark.timeout(400)
@pytest.mark.parametrize("victim", ["executor", "server"])
def test_sigkill_mid_batch_against_the_node_s_mint_server(
    mint_devnet: MintDevnet,  # noqa: F811
    tmp_path: Path,
    victim: str,
) -> None:
    devnet = mint_devnet
    quantity = QUANTITIES[victim]
    anvil = devnet.anvil
    settings = devnet.settings
    key_file = Path(settings["HODLAI_MINT_KEY_FILE"])
    chain = MintChain(
        anvil, Token(anvil, devnet.usdc, anvil.accounts[0].address), devnet.token,
        load_mint_keys(key_file), key_file, devnet.pay_to,
    )  # fmt: skip
    server = Process(devnet.start(), tmp_path / "server.log")
    extra = {k: v for k, v in settings.items() if k.startswith("HODLAI_MINT_")}
    extra |= {"HODLAI_MINT_MAX_BATCH": "4", "HODLAI_LOCK_DIR": str(tmp_path / "locks")}
    node = Node(chain, devnet.url, tmp_path / "node", extra=extra)
    node.tmp.mkdir()
    user, key = chain.user(1)
    task = node.create_task(user, quantity, price=PRICE)
    body = chain.sign_funding(
        key, task.agent_address, task.total_cost, valid_before=task.payment_deadline
    )
    assert pay_directly(chain, body)["status"] == "0x1"
    executor = node.start_executor()
    try:
        progress = 0
        for kill in range(KILLS):
            deadline = time.monotonic() + 60
            while _paid(node, task.id) <= progress and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.1 * (kill % 3))
            if victim == "executor":
                executor.kill()
                executor = node.start_executor()
            else:
                server.kill()
                server = Process(devnet.start(), tmp_path / "server.log")
            progress = _paid(node, task.id)
            assert progress < quantity, "the task finished before the kills were done"
        done = node.wait_task(task.id, "completed", "failed", timeout=180)
    finally:
        executor.stop()
        server.stop()
    assert done.status.value == "completed", done.error_message
    assert len(devnet_mints(devnet, user)) == done.mints_completed == quantity
    uses = chain.uses_by(task.agent_address)
    assert len(uses) == quantity
    assert max(Counter(entry["topics"][2] for entry in uses).values()) == 1
    assert chain.usdc.balance(devnet.pay_to) == quantity * PRICE
    assert chain.usdc.balance(task.agent_address) == 0
    conn = node.conn()
    try:
        account = store.account(conn, store.get_task(conn, task.id))
    finally:
        conn.close()
    assert account.funded == account.spent_on_mints + account.held + account.refunded
    assert (account.spent_on_mints, account.held) == (quantity * PRICE, 0)


def devnet_mints(devnet: MintDevnet, user: str) -> list[object]:
    from shared.tx.authorizations.eip3009 import TRANSFER_TOPIC, address_topic
    from tests.mint_fixtures import ZERO_TOPIC
    from tests.mint_server_fixtures import rpc

    found: list[object] = rpc(
        devnet.anvil, "eth_getLogs",
        [{"address": devnet.token, "fromBlock": "0x0", "toBlock": "latest",
          "topics": [TRANSFER_TOPIC, ZERO_TOPIC, address_topic(user)]}],
    )  # fmt: skip
    return found
