"""The logsBloom check (shared/chain/bloom.py) against real anvil headers, and what a poll
with bloom-window headers must look like to be accepted (scanner.judge)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.chain.bloom import EventBloom, suspects
from shared.chain.scan import BlockHeader, LogRange, PollAnswer, Verdict, judge, parse_header
from tests.chain_fixtures import DeployedStack
from tests.test_indexer_support import ChainDriver
from workers.oracle.indexer.sink import oracle_filter


@pytest.fixture
def driver(deployed: DeployedStack) -> Iterator[ChainDriver]:
    chain = ChainDriver(
        deployed.rpc_url, deployed.deployment, deployed.anvil.accounts[2].private_key
    )
    yield chain
    chain.close()


def _header(driver: ChainDriver, number: int) -> BlockHeader:
    header = parse_header(driver.rpc("eth_getBlockByNumber", [hex(number), False]))
    assert header is not None and header.logs_bloom is not None
    return header


def test_bloom_of_a_block_with_a_request_matches_and_others_do_not(
    deployed: DeployedStack, driver: ChainDriver
) -> None:
    asked = int(driver.wait(driver.ask("in the bloom"))["blockNumber"], 16)
    driver.mine(1)
    provider = EventBloom(oracle_filter(deployed.deployment.provider_address, 0))
    assert provider.may_contain(_header(driver, asked).logs_bloom)
    assert not provider.may_contain(_header(driver, asked + 1).logs_bloom)  # empty block
    # The vault's address is not the provider's: its bits are not all in this bloom.
    assert not EventBloom(oracle_filter(deployed.deployment.vault_address, 0)).may_contain(
        _header(driver, asked).logs_bloom
    )
    assert provider.may_contain(None)  # no bloom sent: cannot rule the block out

    answer = PollAnswer(
        range=LogRange(asked, asked + 1), head=asked + 1, logs=[],
        range_end=_header(driver, asked + 1), anchor=None,
        headers={asked: _header(driver, asked)},
    )  # fmt: skip
    assert [h.number for h in suspects(answer, provider)] == [asked]


def _linked(first: int, last: int, fork: str = "a") -> dict[int, BlockHeader]:
    def h(n: int) -> str:
        return "0x" + (fork * 2 + f"{n:062x}")[-64:]

    return {n: BlockHeader(n, h(n), h(n - 1)) for n in range(first, last + 1)}


def test_bloom_window_headers_must_all_be_there_and_link_up_to_the_range_end() -> None:
    chain = _linked(10, 15)
    provider = "0x5FbDB2315678afecb367f032d93F642f64180aa3"

    def verdict(headers: dict[int, BlockHeader | None]) -> Verdict:
        answer = PollAnswer(range=LogRange(10, 15), head=15, logs=[], range_end=chain[15],
                            anchor=None, headers=headers)  # fmt: skip
        return judge(answer, anchor=None, confirmations=0, addresses=[provider]).verdict

    assert verdict({n: chain[n] for n in range(12, 15)}) is Verdict.ACCEPT
    assert verdict({12: chain[12], 13: None, 14: chain[14]}) is Verdict.INCONSISTENT
    other = _linked(13, 13, fork="b")
    assert verdict({12: chain[12], 13: other[13], 14: chain[14]}) is Verdict.INCONSISTENT
