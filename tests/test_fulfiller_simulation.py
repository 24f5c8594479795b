"""Simulation helpers without a chain: the gas rule and revert data in the shapes nodes use."""

from __future__ import annotations

from eth_abi.abi import encode as abi_encode
from eth_utils.crypto import keccak

from shared.errors import ExecutionRevertedError
from shared.tx.simulation import GasRule, revert_reason

ERROR_DATA = "0x" + (keccak(text="Error(string)")[:4] + abi_encode(["string"], ["nope"])).hex()


def test_the_gas_limit_is_the_estimate_plus_margin_never_above_the_cap() -> None:
    rule = GasRule(margin_percent=25, cap=1_300_000)
    assert rule.limit_for(1_000_000) == 1_250_000
    assert rule.limit_for(1_200_000) == 1_300_000  # the margin is cut, the call still fits
    assert rule.limit_for(1_300_001) is None  # the call itself needs more than the cap


def test_revert_data_is_decoded_whether_bare_or_wrapped() -> None:
    for data in (ERROR_DATA, {"data": ERROR_DATA}):
        error = ExecutionRevertedError("execution reverted", code=3, data=data)
        assert revert_reason(error) == 'Error("nope")'


def test_a_revert_without_data_falls_back_to_the_nodes_words() -> None:
    error = ExecutionRevertedError("JSON-RPC error 3: execution reverted: out of gas", code=3)
    assert revert_reason(error) == "JSON-RPC error 3: execution reverted: out of gas"
    with_reason = ExecutionRevertedError("x", code=3, reason="custom reason")
    assert revert_reason(with_reason) == "custom reason"
