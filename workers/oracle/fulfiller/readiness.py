"""May the oracle send? It must hold ORACLE_ROLE on the provider and have gas money.

Checked at start (a missing role refuses to run) and then periodically: a revoked role or a
balance below the threshold pauses sending with a log line saying why, and sending resumes by
itself once the role is back or the account is funded. Transactions already in flight keep
being followed while paused.

A node behind the chain (a lagging backend just after deployment) can say "no role" for an
oracle that has it: at start, :func:`await_role` asks again for up to ``STARTUP_ROLE_WAIT_S``
before the process gives up, saying so in a log line each time; later checks are made at the
highest head seen, where a node behind answers an error instead of an older state.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Final

import structlog

from shared.chain.rpc import RpcCall, RpcClient, hex_int
from shared.errors import RetryableError
from workers.oracle.fulfiller.provider import decode_bool, has_oracle_role_call

log = structlog.get_logger(__name__)

# Seconds the start-up role check keeps asking before the process exits: a load-balanced RPC
# can trail a fresh deployment by several blocks, a minute covers it on any chain we serve.
STARTUP_ROLE_WAIT_S: Final = 60.0
# Seconds between two start-up checks (doubled each time up to the cap).
STARTUP_RETRY_S: Final = 0.5
STARTUP_RETRY_CAP_S: Final = 5.0


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
    rpc: RpcClient, *, provider: str, oracle: str, min_balance_wei: int, block: int | None = None
) -> Readiness:
    """Role and balance, in one round trip (at ``block``, or latest)."""
    tag = "latest" if block is None else hex(block)
    role, balance = await rpc.batch(
        [
            has_oracle_role_call(provider, oracle, block=block),
            RpcCall("eth_getBalance", [oracle, tag]),
        ]
    )
    return Readiness(
        has_role=decode_bool(role), balance_wei=hex_int(balance), min_balance_wei=min_balance_wei
    )


async def await_role(
    rpc: RpcClient,
    *,
    provider: str,
    oracle: str,
    min_balance_wei: int,
    wait_s: float = STARTUP_ROLE_WAIT_S,
) -> Readiness:
    """Readiness at start, asked again while the node says "no role" (or cannot answer) for
    up to ``wait_s`` seconds; the last answer is returned, the caller decides. An RPC that
    stays unreachable raises its error after that time."""
    deadline = time.monotonic() + wait_s
    delay = STARTUP_RETRY_S
    while True:
        try:
            readiness = await read_readiness(
                rpc, provider=provider, oracle=oracle, min_balance_wei=min_balance_wei
            )
        except RetryableError as exc:
            if time.monotonic() >= deadline:
                raise
            log.warning("fulfiller_start_check_failed", error=str(exc), retry_in_s=delay)
        else:
            if readiness.has_role or time.monotonic() >= deadline:
                return readiness
            log.warning(
                "fulfiller_waiting_for_role",
                oracle=oracle,
                provider=provider,
                retry_in_s=delay,
                gives_up_in_s=round(deadline - time.monotonic(), 1),
            )
        await asyncio.sleep(delay)
        delay = min(STARTUP_RETRY_CAP_S, delay * 2)
