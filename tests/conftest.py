"""Fixtures every test module may use. Chain fixtures (anvil, deployed contracts) live in
tests/chain_fixtures.py; worker-specific fixtures live next to their tests."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from eth_utils.crypto import keccak

from shared.db import connect
from shared.store import NewRequest

pytest_plugins = ["tests.chain_fixtures"]

_block = itertools.count(100)


_configure = structlog.configure


def _configure_uncached(*args: Any, **kwargs: Any) -> None:
    # shared.logs.configure_logging caches each module's logger on first use (fast in a
    # process that configures once). In tests a command run in process (``main([...])``)
    # configures it again; cached loggers would then outlive the test: printing to its closed
    # capture file, and invisible to a later test's structlog.testing.capture_logs().
    _configure(*args, **{**kwargs, "cache_logger_on_first_use": False})


structlog.configure = _configure_uncached


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """A command run in process configures structlog to print to the sys.stderr of that
    moment, pytest's capture file of that test, closed once the test ends: every test starts
    from structlog's defaults again."""
    yield
    structlog.reset_defaults()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "hodlai.db"


@pytest.fixture
def conn(db_path: Path) -> Iterator[sqlite3.Connection]:
    connection = connect(db_path)
    yield connection
    connection.close()


def make_request(
    request_id: int,
    *,
    action_set: tuple[str, ...] = ("BUY", "SELL", "HOLD"),
    state_string: str = "price=1.00; trend=flat",
    system_prompt: str = "You manage a vault. Choose the best action.",
    model: str = "hodlai-local",
    requester: str = "0x" + "ab" * 20,
    block_number: int | None = None,
    log_index: int = 0,
) -> NewRequest:
    """A decoded request event as the indexer would store it (for tests that skip the chain)."""
    block = next(_block) if block_number is None else block_number
    content = f"{requester}|{model}|{system_prompt}|{state_string}|{'|'.join(action_set)}"
    return NewRequest(
        request_id=request_id,
        requester=requester,
        model=model,
        system_prompt=system_prompt,
        state_string=state_string,
        action_set=action_set,
        content_hash="0x" + keccak(text=content).hex(),
        block_number=block,
        block_hash="0x" + keccak(text=f"block{block}").hex(),
        tx_hash="0x" + keccak(text=f"tx{request_id}").hex(),
        log_index=log_index,
    )
