"""When a log poller stops for an operator instead of rolling back (issue 10 item 1).

A failover URL of another chain made the indexer log ``reorg_suspected head 13 < 764`` and
``reorg_deeper_than_history``, roll back 757 blocks, remove 535 requests, undo 480 fulfilments
and index chain 56's requests. Real reorgs are shallow and stay on one chain, so
:meth:`Guard.refusal` refuses a rollback when:

- the RPC now reports another chain id than at start;
- no stored block hash is on the RPC's chain (deeper than the stored history);
- it would undo more than ``HODLAI_MAX_REORG_DEPTH`` accepted blocks, counted from the lowest
  stored block the chain no longer has as stored (another hash, or none: a head far below
  the cursor counts in full). Stored hashes are dense only within the bloom window, so the
  common ancestor can lie further down than the fork; that lowest replaced block is what
  the rollback certainly undoes.

Then the poller halts (shared/halt.py: a row in ``halts`` under the poller's name, so a
restart stays halted, a signer that depends on it, like the oracle's fulfiller, signs
nothing, and pollers of other names, on this chain or others, carry on), logs
``indexer_halted`` at error level and sets its halted gauge (the indexer's:
``hodlai_indexer_halted``). Nothing is removed. ``hodlai poller-resume <name>`` (the
indexer's: ``hodlai indexer-resume``) clears it; with ``--allow-rollback`` the next refused
rollback goes through once.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from prometheus_client import Gauge

from shared import halt
from shared.chain.scan import ChainScanner
from shared.db import AsyncDatabase

log = structlog.get_logger(__name__)

# Seconds between reminders in the log while halted (the halt itself is logged at once).
HALT_REMINDER_EVERY_S = 300.0


class Guard:
    """A poller's halt state and the rule that decides it."""

    def __init__(
        self,
        db: AsyncDatabase,
        scanner: ChainScanner,
        *,
        worker: str,
        max_reorg_depth: int,
        clock: Callable[[], float],
        halted_gauge: Gauge,
        resume_command: str = "",
    ) -> None:
        self.db = db
        self.scanner = scanner
        #: the name its halts are recorded under (shared/halt.py): the poller's
        self.worker = worker
        self._resume_command = resume_command or f"hodlai poller-resume {worker}"
        self.max_reorg_depth = max_reorg_depth
        self.clock = clock
        self._gauge = halted_gauge
        #: the chain id the RPC reported at start
        self.chain_id: int | None = None
        #: why the poller is halted, None while it runs
        self.reason: str | None = None
        self._last_log = float("-inf")
        self._rollback_allowed = False
        self._resolution_seen = 0

    async def load(self, chain_id: int, cursor: int) -> None:
        """At start: remember the chain, and stay halted if the database says so."""
        self.chain_id = chain_id
        self._resolution_seen = (await self.db.run(halt.last_resolution, self.worker))[0]
        reason = await self.db.run(halt.halted, self.worker)
        if reason is not None:
            self._enter(reason, cursor)
        else:
            self._gauge.set(0)

    async def refusal(
        self, *, cursor: int, ancestor: int, orphaned: int, beyond_history: bool
    ) -> str | None:
        """Why rolling back from ``cursor`` to ``ancestor`` must wait for an operator, or
        None when it may go ahead (see the module docstring); ``orphaned`` is the lowest
        stored block the chain no longer has as stored."""
        chain_id = await self.scanner.chain_id()
        if self.chain_id is not None and chain_id != self.chain_id:
            return (
                f"the RPC now reports chain {chain_id}, not {self.chain_id}; nothing was "
                f"rolled back (cursor {cursor})"
            )
        depth = cursor - orphaned + 1
        if beyond_history:
            why = f"no stored block hash down to block {ancestor + 1} is on the RPC's chain"
        elif depth > self.max_reorg_depth:
            why = (
                f"accepted block {orphaned} is not on the RPC's chain as stored: a rollback of "
                f"at least {depth} blocks, deeper than HODLAI_MAX_REORG_DEPTH="
                f"{self.max_reorg_depth}"
            )
        else:
            return None
        if self._rollback_allowed:
            self._rollback_allowed = False
            log.warning("deep_rollback_allowed_by_operator", reason=why, ancestor=ancestor)
            return None
        return f"{why}; nothing was rolled back (cursor {cursor})"

    async def halt(self, reason: str, cursor: int) -> None:
        """Record the halt (the first reason stays if one is recorded already)."""
        await self.db.run(halt.halt, reason, worker=self.worker, at_block=cursor,
                          now=self.clock())  # fmt: skip
        recorded = await self.db.run(halt.halted, self.worker)
        self._enter(recorded if recorded is not None else reason, cursor)

    async def resumed(self, cursor: int) -> bool:
        """While halted: True once an operator has resumed (the halt is then cleared here)."""
        reason = await self.db.run(halt.halted, self.worker)
        if reason is not None:
            self.reason = reason
            now = self.clock()
            if now - self._last_log >= HALT_REMINDER_EVERY_S:
                self._last_log = now
                log.error("indexer_still_halted", reason=reason, cursor=cursor)
            return False
        resolution_id, resolution = await self.db.run(halt.last_resolution, self.worker)
        if resolution_id > self._resolution_seen:
            self._resolution_seen = resolution_id
            self._rollback_allowed = resolution is halt.Resolution.ALLOW_ROLLBACK
        log.warning(
            "indexer_resumed",
            resolution=resolution.value,
            rollback_allowed=self._rollback_allowed,
            cursor=cursor,
        )
        self.reason = None
        self._gauge.set(0)
        return True

    def _enter(self, reason: str, cursor: int) -> None:
        self.reason = reason
        self._last_log = self.clock()
        self._gauge.set(1)
        log.error(
            "indexer_halted",
            reason=reason,
            cursor=cursor,
            action=f"check HODLAI_RPC_URLS and the chain, then run {self.resume_command}",
        )

    @property
    def resume_command(self) -> str:
        """The operator's command that clears this poller's halt."""
        return self._resume_command
