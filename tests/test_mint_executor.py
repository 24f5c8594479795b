"""The mint executor as a process on a real anvil, buying from a mint server built only from
x402's own parts (interoperability: code nobody here wrote), counted on chain."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mint_fixtures import (
    PRICE,
    MintChain,
    Node,
    Process,
    mint_chain,
    pay_directly,
    reference_server,
)
from workers.devnet.anvil import Anvil


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MintChain, str, Process]]:
    tmp = tmp_path_factory.mktemp("mint")
    with Anvil() as anvil:
        chain = mint_chain(anvil, tmp)
        url, server = reference_server(chain, tmp)
        try:
            yield chain, url, server
        finally:
            server.stop()


def test_the_executor_buys_every_mint_from_an_x402_only_server_exactly_once(
    stack: tuple[MintChain, str, Process], tmp_path: Path
) -> None:
    chain, url, _server = stack
    node = Node(chain, url, tmp_path)
    user, key = chain.user(1)
    task = node.create_task(user, 12)
    body = chain.sign_funding(
        key, task.agent_address, task.total_cost, valid_before=task.payment_deadline
    )
    # Someone else submits the user's authorization: AuthorizationUsed + Transfer count.
    assert pay_directly(chain, body)["status"] == "0x1"
    executor = node.start_executor()
    try:
        done = node.wait_task(task.id, "completed", "failed", timeout=90)
    finally:
        executor.stop()
    assert done.status.value == "completed", done.error_message
    assert done.mints_completed == 12
    assert len(chain.mints_to(user)) == 12
    assert chain.token_balance(task.agent_address) == 0
    assert len(chain.uses_by(task.agent_address)) == 12
    assert chain.usdc.balance(chain.pay_to) == 12 * PRICE
    assert chain.usdc.balance(task.agent_address) == 0
    banner = [
        line for line in executor.log.read_text().splitlines() if "mint_executor_started" in line
    ]
    assert len(banner) == 1 and '"version": "1.1"' in banner[0]
    for name in (
        "network",
        "server_url",
        "rpc_endpoints",
        "agent_account",
        "usdc",
        "mint_interval_s",
        "check_interval_s",
        "payment_timeout_s",
        "max_retries",
    ):
        assert f'"{name}"' in banner[0]
