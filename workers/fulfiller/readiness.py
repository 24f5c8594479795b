"""May the oracle send? It must hold ORACLE_ROLE on the provider and have gas money.

Checked at start (a missing role refuses to run) and then periodically: a revoked role or a
balance below the threshold pauses sending with a log line saying why, and sending resumes by
itself once the role is back or the account is funded. Transactions already in flight keep
being followed while paused.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from shared.rpc import RpcCall, RpcClient, hex_int
from workers.fulfiller.provider import decode_bool, has_oracle_role_call

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Readiness:
    has_role: bool
    balance_wei: int
    min_balance_wei: int

    @property
    def pause_reason(self) -> str | None:
        """Why sending must pause now, or None."""
        if not self.has_role:
            return "the oracle address does not hold ORACLE_ROLE on the provider"
        if self.balance_wei < self.min_balance_wei:
            return (
                f"balance {self.balance_wei} wei is below HODLAI_FULFILLER_MIN_BALANCE "
                f"({self.min_balance_wei} wei); fund the oracle address"
            )
        return None


async def read_readiness(
    rpc: RpcClient, *, provider: str, oracle: str, min_balance_wei: int
) -> Readiness:
    """Role and balance, in one round trip."""
    role, balance = await rpc.batch(
        [has_oracle_role_call(provider, oracle), RpcCall("eth_getBalance", [oracle, "latest"])]
    )
    return Readiness(
        has_role=decode_bool(role), balance_wei=hex_int(balance), min_balance_wei=min_balance_wei
    )
