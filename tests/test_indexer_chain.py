"""The indexer against a real anvil: everything the chain emitted ends up in the database,
once, exactly as emitted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from shared.chain.scan import LogRange
from shared.db import atomic, connect
from shared.keys import load_private_key
from tests.chain_fixtures import DeployedStack
from tests.test_indexer_support import (
    ChainDriver,
    creations_per_id,
    indexer_settings,
    run_indexer,
    stored_requests,
)
from workers.oracle import store
from workers.oracle.indexer import ingest
from workers.oracle.indexer.logs_decode import decode_logs

MAX_MODEL = "m" * 64
# Maximal fields measured in bytes, built from multi-byte characters.
MAX_PROMPT_UNICODE = "é" * 512  # 1,024 bytes
MAX_STATE_UNICODE = "价" * 682 + "ab"  # 2,048 bytes
MAX_ACTIONS_UNICODE = tuple(f"{i}" + "🚀" * 15 + "abc" for i in range(10))  # 64 bytes each


@pytest.fixture
def driver(deployed: DeployedStack) -> Iterator[ChainDriver]:
    chain = ChainDriver(
        deployed.rpc_url, deployed.deployment, deployed.anvil.accounts[2].private_key
    )
    yield chain
    chain.close()


def test_maximal_fields_are_really_maximal() -> None:
    assert len(MAX_MODEL.encode()) == 64
    assert len(MAX_PROMPT_UNICODE.encode()) == 1024
    assert len(MAX_STATE_UNICODE.encode()) == 2048
    assert len(MAX_ACTIONS_UNICODE) == 10
    assert all(len(a.encode()) == 64 for a in MAX_ACTIONS_UNICODE)


async def test_every_request_of_many_blocks_is_stored_once_with_its_exact_content(
    deployed: DeployedStack, driver: ChainDriver, db_path: Path
) -> None:
    admin = deployed.anvil.accounts[0].private_key
    driver.set_model_fee(admin, MAX_MODEL, 1)
    expected: dict[int, tuple[str, str, str, tuple[str, ...]]] = {}
    # Single requests, each in its own block, with maximal ASCII and maximal unicode fields.
    driver.wait(driver.ask("s" * 2048, model=MAX_MODEL, prompt="p" * 1024,
                           actions=tuple(f"{i:02d}" + "a" * 62 for i in range(10))))  # fmt: skip
    driver.wait(driver.ask(MAX_STATE_UNICODE, model=MAX_MODEL, prompt=MAX_PROMPT_UNICODE,
                           actions=MAX_ACTIONS_UNICODE))  # fmt: skip
    driver.wait(driver.ask("", prompt="", actions=("only",)))
    for i in range(40):
        driver.wait(driver.ask(f"état {i} — ₿ {i * 1.5}", actions=("BUY", "SELL", f"HOLD-{i}")))
    # Batches: many requests per block.
    for i in range(8):
        driver.wait(driver.ask_batch(25, f"batch {i}"))
    for entry in driver.logs():
        if entry.kind == "requested":
            decoded = decode_logs([entry.raw]).requests[0]
            expected[entry.request_id] = (
                decoded.model, decoded.system_prompt, decoded.state_string, decoded.action_set
            )  # fmt: skip
    assert len(expected) == 3 + 40 + 200

    settings = indexer_settings(db_path, [deployed.rpc_url], deployed.deployment,
                                indexer_max_range=7)  # fmt: skip
    await run_indexer(settings)

    conn = connect(db_path)
    rows = stored_requests(conn)
    assert set(rows) == set(expected)
    for request_id, (model, prompt, state, actions) in expected.items():
        row = rows[request_id]
        assert (row["model"], row["system_prompt"], row["state_string"]) == (model, prompt, state)
        assert tuple(json.loads(row["action_set"])) == actions
        assert row["status"] == "PENDING"
        assert row["generation"] == 1
    assert set(creations_per_id(conn).values()) == {1}
    assert REGISTRY.get_sample_value("hodlai_indexer_cursor_block") == driver.head()
    assert REGISTRY.get_sample_value("hodlai_indexer_lag_blocks") == 0
    first, second = rows[1], rows[2]
    assert first["model"] == MAX_MODEL and len(first["state_string"]) == 2048
    assert second["system_prompt"] == MAX_PROMPT_UNICODE
    assert tuple(json.loads(second["action_set"])) == MAX_ACTIONS_UNICODE


async def test_running_again_over_the_same_blocks_changes_nothing(
    deployed: DeployedStack, driver: ChainDriver, db_path: Path
) -> None:
    for i in range(5):
        driver.wait(driver.ask(f"state {i}"))
    settings = indexer_settings(db_path, [deployed.rpc_url], deployed.deployment)
    await run_indexer(settings)
    conn = connect(db_path)
    before = conn.execute("SELECT COUNT(*) FROM transitions").fetchone()[0]
    # Re-read every block from the start: a new cursor row at the start, same rows.
    conn.execute("UPDATE cursors SET block_number = ?", (deployed.deployment.deploy_block - 1,))
    conn.execute("DELETE FROM blocks")
    await run_indexer(settings)
    assert conn.execute("SELECT COUNT(*) FROM transitions").fetchone()[0] == before
    assert len(stored_requests(conn)) == 5


async def test_fulfilled_event_moves_the_request_to_fulfilled_whoever_sent_it(
    deployed: DeployedStack, driver: ChainDriver, db_path: Path
) -> None:
    oracle = load_private_key(deployed.oracle_key_file)
    driver.wait(driver.ask("a"))
    driver.wait(driver.ask("b"))
    settings = indexer_settings(db_path, [deployed.rpc_url], deployed.deployment)
    await run_indexer(settings)
    conn = connect(db_path)
    store.transition(conn, 2, store.Status.PENDING, store.Status.FAILED, actor="test",
                     set_columns={"fail_reason": "gave up"})  # fmt: skip
    receipt_1 = driver.wait(driver.fulfill(oracle, 1, "BUY", "bafy-one"))
    driver.wait(driver.fulfill(oracle, 2, "SELL", "bafy-two"))
    await run_indexer(settings)
    rows = stored_requests(conn)
    assert rows[1]["status"] == "FULFILLED" and rows[2]["status"] == "FULFILLED"
    assert (rows[1]["fulfilled_action"], rows[1]["fulfilled_cid"]) == ("BUY", "bafy-one")
    assert rows[1]["fulfilled_tx_hash"] == receipt_1["transactionHash"]
    prior = dict(conn.execute("SELECT request_id, prior_status FROM fulfillments").fetchall())
    assert prior == {"1": "PENDING", "2": "FAILED"}


async def test_fulfilled_event_seen_before_its_request_ends_in_the_same_state(
    deployed: DeployedStack, driver: ChainDriver, tmp_path: Path
) -> None:
    oracle = load_private_key(deployed.oracle_key_file)
    driver.wait(driver.ask("x", actions=("UP", "DOWN")))
    driver.wait(driver.fulfill(oracle, 1, "UP", "bafy"))
    logs = driver.logs()
    request_log = [e.raw for e in logs if e.kind == "requested"]
    fulfil_log = [e.raw for e in logs if e.kind == "fulfilled"]
    outcomes: list[tuple[dict[str, Any], dict[str, Any], list[tuple[Any, Any]]]] = []
    for order in ((request_log, fulfil_log), (fulfil_log, request_log)):
        conn = connect(tmp_path / f"order{len(outcomes)}.db")
        for raw in order:
            with atomic(conn):
                ingest.apply_logs(conn, decode_logs(raw), now=1000.0)
        row = dict(stored_requests(conn)[1])
        fulfilment = dict(conn.execute("SELECT * FROM fulfillments").fetchone())
        history = [(h["from_status"], h["to_status"]) for h in store.history(conn, 1)]
        outcomes.append((row, fulfilment, history))
        conn.close()
    assert outcomes[0] == outcomes[1]
    row, fulfilment, history = outcomes[0]
    assert row["status"] == "FULFILLED" and fulfilment["prior_status"] == "PENDING"
    assert history == [(None, "PENDING"), ("PENDING", "FULFILLED")]


def test_start_refuses_an_rpc_of_another_chain_than_configured(
    deployed: DeployedStack, db_path: Path
) -> None:
    env = _env(deployed, db_path) | {"HODLAI_CHAIN_ID": "56"}
    done = subprocess.run(
        [sys.executable, "-m", "shared.cli", "indexer", "--once"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "HODLAI_CHAIN_ID is 56 but the RPC reports chain 31337" in done.stderr


def test_cli_once_catches_up_and_exits_and_a_database_of_another_provider_is_refused(
    deployed: DeployedStack, driver: ChainDriver, db_path: Path
) -> None:
    for i in range(3):
        driver.wait(driver.ask(f"s{i}"))
    env = _env(deployed, db_path)
    done = subprocess.run(
        [sys.executable, "-m", "shared.cli", "indexer", "--once"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(stored_requests(connect(db_path))) == 3
    other = env | {"HODLAI_PROVIDER_ADDRESS": deployed.deployment.vault_address}
    refused = subprocess.run(
        [sys.executable, "-m", "shared.cli", "indexer", "--once"],
        env=other, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "this database was created for chain 31337" in refused.stderr


def test_log_range_refuses_empty_ranges() -> None:
    with pytest.raises(ValueError, match="empty"):
        LogRange(5, 4)


def _env(deployed: DeployedStack, db_path: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "HODLAI_DB_PATH": str(db_path),
        "HODLAI_RPC_URLS": deployed.rpc_url,
        "HODLAI_PROVIDER_ADDRESS": deployed.deployment.provider_address,
        "HODLAI_START_BLOCK": str(deployed.deployment.deploy_block),
        "HODLAI_CONFIRMATIONS": "0",
        "LOG_LEVEL": "WARNING",
    }
