"""Simulation before signing: what would ``fulfillNodeReasoning`` do for each claimed row?

For a batch of claimed ANSWERED rows, one JSON-RPC batch (one HTTP round trip) carries the
per row ``getRequestInfo``, an ``eth_call`` of the fulfilment from the oracle
address and an ``eth_estimateGas`` of it, all at an explicit block: the highest head the
fulfiller has seen, and never below a block an earlier send of the same answer was simulated
at (``Target.at_block``). A backend behind that block answers an error instead of an older
state, so a lagging view can never pass for the chain: its answer is DEFER, not a verdict.
Each row gets one :class:`Verdict`:

- ``SEND`` with a gas limit (estimate plus margin, at most the cap);
- ``FAIL`` with a human-readable reason: the answer is not sendable, the call reverts (the
  revert data decoded: ``Error(string)``, custom errors, the provider's ``CallbackReverted``
  with the vault's own reason inside, ``CallbackOutOfGas``), or it needs more gas than the cap;
- ``FULFILLED``: the chain already holds an answer (by us earlier, or another oracle): send
  nothing;
- ``DEFER``: the node could not tell (transport trouble on that one call, a node behind the
  block asked about), or the revert is one a view of the chain that lacks something can
  explain (``UnknownRequest``: the indexer saw the request, so a node that does not know it
  is behind or on another fork, and a reorg that really removed it is the indexer's to
  apply; a missing role: the periodic role check pauses sending if it is really gone):
  try again later, never FAILED for good.

A revert is judged from the request's own call, so one broken vault never fails another.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from eth_utils.address import to_checksum_address

from shared.chain.rpc import RpcClient
from shared.errors import HodlaiError, StaleNodeError
from shared.tx.signer import Call
from shared.tx.simulation import GasRule, Outcome, Simulation, judge, simulation_calls
from workers.oracle.fulfiller.provider import (
    decode_request_info,
    fulfil_calldata,
    request_info_call,
)
from workers.oracle.store import Claimed

# Reverts that a node lacking part of the chain produces for a request that is fine: retried,
# never a verdict (see the module docstring).
LAG_EXPLAINED_ERRORS = frozenset({"UnknownRequest", "AccessControlUnauthorizedAccount"})


class VerdictKind(StrEnum):
    SEND = "send"
    FAIL = "fail"
    FULFILLED = "fulfilled"
    DEFER = "defer"


@dataclass(frozen=True)
class Verdict:
    kind: VerdictKind
    calldata: bytes = b""
    gas_limit: int = 0
    reason: str = ""
    #: the block the simulation ran at (SEND), recorded with the transaction
    block: int | None = None
    #: DEFER because the answering node was behind: worth asking again soon
    lagging: bool = False


def answer_problem(row: Claimed) -> str | None:
    """Why this row's stored answer cannot be sent, or None when it can."""
    if row.answer_action is None:
        return "the row is ANSWERED but holds no action"
    if row.answer_action not in row.action_set:
        return f"the stored action {row.answer_action!r} is not in the request's action set"
    if row.answer_cid is None:
        return "the row is ANSWERED but holds no reasoning CID"
    return None


async def simulate(
    rpc: RpcClient,
    rows: Sequence[Claimed],
    *,
    provider: str,
    oracle: str,
    gas: GasRule,
    at_blocks: Sequence[int],
) -> list[Verdict]:
    """One verdict per row, in order; row i is simulated at block ``at_blocks[i]``."""
    verdicts: list[Verdict | None] = []
    calls = []
    datas: list[tuple[bytes, int]] = []
    for row, block in zip(rows, at_blocks, strict=True):
        problem = answer_problem(row)
        if problem is not None:
            verdicts.append(Verdict(VerdictKind.FAIL, reason=problem))
            continue
        assert row.answer_action is not None and row.answer_cid is not None
        data = fulfil_calldata(row.request_id, row.answer_action, row.answer_cid)
        call = Call(to=to_checksum_address(provider), data=data, value=0, gas_limit=0)
        verdicts.append(None)
        datas.append((data, block))
        calls += [
            request_info_call(provider, row.request_id, block=block),
            *simulation_calls(call, sender=oracle, block=block),
        ]
    # No head check is needed: every call names its block, and a node without that block
    # answers an error for that call (StaleNodeError), never an older state.
    answers = await rpc.batch_settled(calls) if calls else []
    out: list[Verdict] = []
    slot = 0
    for verdict in verdicts:
        if verdict is not None:
            out.append(verdict)
            continue
        data, block = datas[slot]
        info, call_answer, estimate = answers[3 * slot : 3 * slot + 3]
        out.append(_verdict(info, call_answer, estimate, data, gas, block))
        slot += 1
    return out


def _verdict(
    info: Any, call_answer: Any, estimate: Any, data: bytes, gas: GasRule, block: int
) -> Verdict:
    if isinstance(info, StaleNodeError):
        return Verdict(VerdictKind.DEFER, reason=f"node behind: {info}", lagging=True)
    if isinstance(info, HodlaiError):
        return Verdict(VerdictKind.DEFER, reason=f"getRequestInfo failed: {info}")
    try:
        request = decode_request_info(info)
    except HodlaiError as exc:
        return Verdict(VerdictKind.DEFER, reason=str(exc))
    if request.exists and request.fulfilled:
        return Verdict(VerdictKind.FULFILLED, reason="the chain already holds an answer")
    return _from_simulation(judge(call_answer, estimate, gas), data, gas, block)


def _from_simulation(sim: Simulation, data: bytes, gas: GasRule, block: int) -> Verdict:  # noqa: PLR0911 -- one verdict per outcome
    """The fulfiller's verdict on the core's simulation of its call."""
    if sim.outcome is Outcome.OK:
        return Verdict(VerdictKind.SEND, calldata=data, gas_limit=sim.gas_limit, block=block)
    if sim.outcome is Outcome.BEHIND:
        return Verdict(VerdictKind.DEFER, reason=sim.reason, lagging=True)
    if sim.outcome is Outcome.UNAVAILABLE:
        return Verdict(VerdictKind.DEFER, reason=sim.reason)
    if sim.outcome is Outcome.OVER_CAP:
        return Verdict(
            VerdictKind.FAIL,
            reason=f"needs {sim.estimate} gas, above the cap HODLAI_FULFILLER_GAS_CAP={gas.cap}",
        )
    if sim.error_name == "AlreadyFulfilled":  # answered meanwhile: the event will say by whom
        return Verdict(VerdictKind.FULFILLED, reason=sim.reason)
    if sim.error_name in LAG_EXPLAINED_ERRORS:
        return Verdict(VerdictKind.DEFER, reason=sim.reason, lagging=True)
    return Verdict(VerdictKind.FAIL, reason=sim.reason)
