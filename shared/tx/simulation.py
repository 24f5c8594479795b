"""Simulating a call before signing it, for any executor: would it revert, and with what gas
limit should it be signed?

:func:`simulation_calls` gives the two JSON-RPC calls (``eth_call`` and ``eth_estimateGas``
from the sender) that an executor puts in its own batch; :func:`judge` reads their answers:

- ``OK`` with a gas limit: the estimate plus ``GasRule.margin_percent``, at most the cap;
- ``REVERTED`` with the revert decoded into a reason (``Error(string)``, ``Panic``, every
  custom error of the contracts the installed executors declare, entry points
  ``hodlai.abis``, nested reasons: shared.contracts.decode_revert) and the custom error's
  name, for the executor to judge by type, not by text;
- ``OVER_CAP``: even the estimate is above the gas cap;
- ``BEHIND``: the node answering lacks the block asked about (StaleNodeError): ask again;
- ``UNAVAILABLE``: transport trouble on this call: ask again later.

Calls name an explicit block: a node behind it answers an error instead of an older state, so
a lagging backend never passes for the chain (shared/tx/evidence.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from shared.chain.rpc import RpcCall, hex_int
from shared.contracts import decode_revert, error_selectors
from shared.errors import ExecutionRevertedError, HodlaiError, StaleNodeError
from shared.tx.signer import Call


@dataclass(frozen=True)
class GasRule:
    margin_percent: int
    cap: int

    def limit_for(self, estimate: int) -> int | None:
        """The gas limit to sign with, or None when even the estimate is above the cap."""
        if estimate > self.cap:
            return None
        return min(estimate * (100 + self.margin_percent) // 100, self.cap)


class Outcome(StrEnum):
    OK = "ok"
    REVERTED = "reverted"
    OVER_CAP = "over_cap"
    BEHIND = "behind"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class Simulation:
    outcome: Outcome
    gas_limit: int = 0
    reason: str = ""
    #: for REVERTED: the custom error's name, when the revert carries a known one
    error_name: str | None = None
    #: the gas estimate (OK, OVER_CAP)
    estimate: int = 0


def simulation_calls(call: Call, *, sender: str, block: int | None) -> list[RpcCall]:
    """``eth_call`` and ``eth_estimateGas`` of ``call`` from ``sender`` at ``block``."""
    tx: dict[str, str] = {"from": sender, "to": call.to, "data": "0x" + call.data.hex()}
    if call.value:
        tx["value"] = hex(call.value)
    tag = "latest" if block is None else hex(block)
    return [RpcCall("eth_call", [tx, tag]), RpcCall("eth_estimateGas", [tx, tag])]


def judge(call_answer: Any, estimate_answer: Any, gas: GasRule) -> Simulation:
    """What the two answers of :func:`simulation_calls` say."""
    answers = (call_answer, estimate_answer)
    for answer in answers:
        if isinstance(answer, StaleNodeError):
            return Simulation(Outcome.BEHIND, reason=f"node behind: {answer}")
    for answer in answers:
        if isinstance(answer, ExecutionRevertedError):
            return Simulation(
                Outcome.REVERTED,
                reason=f"simulation reverted: {revert_reason(answer)}",
                error_name=revert_error_name(answer),
            )
    for answer in answers:
        if isinstance(answer, HodlaiError):
            return Simulation(Outcome.UNAVAILABLE, reason=f"simulation failed: {answer}")
    needed = hex_int(estimate_answer)
    limit = gas.limit_for(needed)
    if limit is None:
        return Simulation(
            Outcome.OVER_CAP, reason=f"needs {needed} gas, above the cap {gas.cap}",
            estimate=needed,
        )  # fmt: skip
    return Simulation(Outcome.OK, gas_limit=limit, estimate=needed)


def _revert_data(error: ExecutionRevertedError) -> str | None:
    data = error.data
    if isinstance(data, dict):  # some nodes wrap it: {"data": "0x..."} or {"message": ...}
        data = data.get("data", data.get("result"))
    return data if isinstance(data, str) and data.startswith("0x") else None


def revert_error_name(error: ExecutionRevertedError) -> str | None:
    """The name of the custom error a revert carries (``UnknownRequest``, ...), if any."""
    data = _revert_data(error)
    if data is None or len(data) < 10:
        return None
    try:
        selector = bytes.fromhex(data[2:10])
    except ValueError:
        return None
    spec = error_selectors().get(selector)
    return None if spec is None else spec.name


def revert_reason(error: ExecutionRevertedError) -> str:
    """The decoded reason of a reverted eth_call / eth_estimateGas."""
    data = _revert_data(error)
    if data is not None:
        return decode_revert(data)
    if error.reason:
        return error.reason
    return str(error)
