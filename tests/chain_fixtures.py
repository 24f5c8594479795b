"""Pytest plugin: real anvil nodes and a deployed HodlAI stack.

Listed in ``pytest_plugins`` of tests/conftest.py. Fixtures:

- ``anvil_session``: one anvil for the whole session (shared; tests that change its state
  should snapshot/revert or tolerate other tests' contracts).
- ``anvil``: a fresh anvil for one test, on its own free loopback port.
- ``deployed``: a fresh anvil with the provider and example vault deployed, an oracle key
  file (mode 0600) holding ORACLE_ROLE and 1,000 ether, treasury = dev account 1.

Each anvil object has ``rpc_url``, ``port``, ``chain_id``, ``pid`` and ``accounts``
(``DevAccount(address, private_key)``; account 0 is the admin/deployer).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.keys import generate_key_file
from workers.devnet.anvil import Anvil
from workers.devnet.deploy import Deployment, deploy_stack

# Ether given to the oracle of the `deployed` stack: plenty for any test's fulfilments.
ORACLE_FUNDING_WEI = 1_000 * 10**18


@dataclass(frozen=True)
class DeployedStack:
    """What the ``deployed`` fixture yields."""

    anvil: Anvil
    deployment: Deployment
    oracle_key_file: Path

    @property
    def rpc_url(self) -> str:
        return self.anvil.rpc_url


@pytest.fixture(scope="session")
def anvil_session() -> Iterator[Anvil]:
    with Anvil() as node:
        yield node


@pytest.fixture
def anvil() -> Iterator[Anvil]:
    with Anvil() as node:
        yield node


@pytest.fixture
def deployed(anvil: Anvil, tmp_path: Path) -> DeployedStack:
    key_file = tmp_path / "oracle-key.json"
    oracle = generate_key_file(key_file)
    deployment = deploy_stack(
        anvil.rpc_url,
        anvil.accounts[0].private_key,
        oracle_address=oracle,
        treasury=anvil.accounts[1].address,
        fund_wei=ORACLE_FUNDING_WEI,
    )
    return DeployedStack(anvil=anvil, deployment=deployment, oracle_key_file=key_file)
