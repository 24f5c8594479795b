"""The sending service: the loop every executor that sends transactions runs, written once.

An executor gives it a :class:`SubmissionSource` (what to send: its own rows, claimed, judged
and turned into :class:`~shared.tx.manager.Submission`\\ s with idempotency keys and binds),
a readiness check (the balance; the oracle adds its role) and the halts it respects. The
service owns the order of things and the transaction manager does the signing. Each
:meth:`SendingService.step`:

1. on the first step, lets the source recover what a killed predecessor left (leases), then
   reconciles nonces and re-broadcasts every recorded, unsettled transaction
   (:meth:`TxManager.start <shared.tx.manager.TxManager.start>`);
2. runs the readiness check when due (every round while paused);
3. polls the manager (receipts, re-broadcasts, bumps, cancels), and sweeps the source's
   orphans (subjects left without a live transaction) when a poll settled a nonce in a way
   that can leave one, and on the source's timer;
4. if nothing holds sending back and the window has room: asks the source to claim up to
   ``room`` units, prices them, asks the source for their submissions, records them (signed
   and committed with their binds), tells the source, and only then broadcasts them.

Guarantees:

- Record before broadcast: no node sees a transaction before its ledger row and its bind are
  committed (``HODLAI_FAULT_POINT`` ``after_record`` / ``after_broadcast`` SIGKILLs the
  process on either side of the broadcast, for tests).
- Poll before new work: every round follows what is in flight before it claims anything, and
  nothing is claimed before the manager has reconciled its nonces.
- Nothing new is signed while the readiness check pauses sending, while a node refused a
  transaction for lack of funds and the balance has not risen since, while a respected
  worker is halted for an operator, or while the market is above the fee cap (claimed units
  are given back). What is in flight is followed throughout.
- One live transaction per subject: a submission whose purpose kind and subject already have
  a transaction at a nonce that can still mine is refused in the record transaction
  (shared/tx/subjects.py: ``InFlightError``, reported to the source in its ``Recorded``),
  whatever the source's bind does.
- Claimed units that end up not recorded because of an error (simulation, record) are given
  back to the source (:meth:`SubmissionSource.release`) before the error propagates.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Generic, Literal, Protocol, TypeVar

import structlog

from shared import halt
from shared.chain.rpc import RpcClient, hex_int
from shared.db import AsyncDatabase
from shared.errors import FeeCapExceededError, HodlaiError, RetryableError, StaleNodeError
from shared.tx.fees import FeePolicy, Fees, fetch_market, price
from shared.tx.manager import Recorded, Submission, TxManager
from shared.tx.subjects import one_live

log = structlog.get_logger(__name__)

# Seconds before the readiness check is made again after a node could not answer it.
CHECK_RETRY_S: Final = 1.0
# Poll outcomes that can leave a subject without a live transaction: the source's orphan
# sweep runs at once after a poll with one of them (its timer catches the rest).
ORPHANING: Final = frozenset({"dropped", "superseded", "cancelled", "gap_filled"})

FaultPoint = Literal["", "after_record", "after_broadcast"]
Unit = TypeVar("Unit")


@dataclass(frozen=True)
class Readiness:
    """What an executor's readiness check found."""

    balance_wei: int
    #: why sending must pause now, or None
    pause_reason: str | None = None
    #: the pause needs an operator (a revoked role), not only money: logged as an error
    needs_operator: bool = False
    min_balance_wei: int = 0


#: An executor's readiness check, asked at the highest head seen (None before the first poll).
#: A RetryableError means "no word now": the last verdict stands and it is asked again soon.
ReadinessCheck = Callable[[int | None], Awaitable[Readiness]]


def balance_check(rpc: RpcClient, address: str, *, min_balance_wei: int) -> ReadinessCheck:
    """The readiness of an executor that only needs gas money: ``address``'s balance."""

    async def check(block: int | None) -> Readiness:
        tag = "latest" if block is None else hex(block)
        balance = hex_int(await rpc.call("eth_getBalance", [address, tag]))
        reason = None
        if balance < min_balance_wei:
            reason = f"balance {balance} wei is below {min_balance_wei} wei; fund {address}"
        return Readiness(balance, reason, min_balance_wei=min_balance_wei)

    return check


@dataclass(frozen=True)
class SendingEvents:
    """The log event names of one executor's service: its operators alert on them."""

    started: str = "sending_started"
    paused: str = "sending_paused"
    resumed: str = "sending_resumed"
    check_skipped: str = "sending_check_skipped"
    waiting_for_fees: str = "sending_waiting_for_fees"
    #: the key under which these events name the sending address ("oracle" for the oracle)
    sender_key: str = "sender"


@dataclass(frozen=True)
class SendingConfig:
    fees: FeePolicy
    #: most units claimed per round (and at most the window's room)
    batch: int
    #: seconds to sleep after a round that left no work waiting
    poll_s: float
    #: seconds between readiness checks while sending
    checks_s: float
    #: workers (shared.halt) whose halt holds every new send back, e.g. ("indexer",)
    halts: tuple[str, ...] = ()
    events: SendingEvents = SendingEvents()
    fault_point: FaultPoint = ""


class SubmissionSource(Protocol[Unit]):
    """What an executor gives the service: its units of work (e.g. claimed rows)."""

    #: seconds between orphan sweeps when no poll outcome calls for one
    sweep_every_s: float

    async def start(self) -> None:
        """Recover what a killed predecessor left (its leases), before the manager starts."""
        ...

    async def claim(self, limit: int, *, now: float) -> Sequence[Unit]:
        """Up to ``limit`` units to send now, held for this process."""
        ...

    async def release(self, units: Sequence[Unit]) -> None:
        """Give back claimed units that will not be recorded this round."""
        ...

    async def submissions(
        self, units: Sequence[Unit], *, best_head: int | None
    ) -> list[tuple[Unit, Submission]]:
        """Judge (simulate) the claimed units: the ones to send with their submissions. The
        source settles the others itself (failed, deferred); nothing is signed yet."""
        ...

    async def recorded(self, results: Sequence[tuple[Unit, Recorded]]) -> None:
        """After the record transaction committed, before anything is broadcast."""
        ...

    async def sweep_orphans(self, *, now: float) -> int:
        """Give subjects none of whose transactions can still mine back to be sent again."""
        ...

    async def stop(self) -> None:
        """Give back what is claimed but not recorded (clean shutdown)."""
        ...


class SendingService(Generic[Unit]):
    """One executor's sending loop around one key's :class:`TxManager` (see the module
    docstring). Implements shared.runtime's Service (start, step, stop)."""

    def __init__(
        self,
        *,
        db: AsyncDatabase,
        rpc: RpcClient,
        manager: TxManager,
        config: SendingConfig,
        source: SubmissionSource[Unit],
        readiness: ReadinessCheck | None = None,  # None: the balance alone
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._rpc = rpc
        self.manager = manager
        self.config = config
        self.source = source
        # Without a check of its own, an executor still needs the balance: it is what ends a
        # pause after a node refused a transaction for lack of funds.
        self._readiness = readiness or balance_check(rpc, manager.sender, min_balance_wei=0)
        self._clock = clock
        self._started = False
        self._next_check = 0.0
        self._next_sweep = 0.0
        # Lowest balance seen since a node refused a transaction for insufficient funds.
        self._short_floor: int | None = None
        #: why sending is paused (readiness or funds), None while sending
        self.paused: str | None = None
        self._fee_cap_logged = False
        self._halt: tuple[str, str] | None = None  # (worker, reason) of the halt logged

    @property
    def _events(self) -> SendingEvents:
        return self.config.events

    @property
    def _sender(self) -> dict[str, str]:
        return {self._events.sender_key: self.manager.sender}

    async def start(self, stop: asyncio.Event) -> bool:
        return True  # the first step reconciles nonces and re-broadcasts what is in flight

    async def step(self, *, now: float | None = None) -> float:
        """One round (see the module docstring); returns seconds to sleep before the next."""
        now = self._clock() if now is None else now
        if not self._started:
            await self._start()
        await self._check_readiness(now)
        report = await self.manager.poll()
        if report.counts.keys() & ORPHANING or now >= self._next_sweep:
            self._next_sweep = now + self.source.sweep_every_s
            await self.source.sweep_orphans(now=self._clock())
        if self.paused is not None or self.manager.funds_short:
            return self.config.poll_s
        if await self._halted():
            return self.config.poll_s
        room = min(self.manager.room, self.config.batch)
        if room == 0:
            return self.config.poll_s
        units = await self.source.claim(room, now=self._clock())
        if not units:
            return self.config.poll_s
        fees = await self._fees()
        if fees is None:
            await self.source.release(units)
            return self.config.poll_s
        await self._send(units, fees)
        return 0.0 if len(units) == room and self.manager.room > 0 else self.config.poll_s

    async def stop(self) -> None:
        """Give back what the source claimed but did not record, then the sending key."""
        try:
            await self.source.stop()
        finally:
            await self.manager.close()

    # --- start and checks -------------------------------------------------------------------

    async def _start(self) -> None:
        await self.source.start()
        report = await self.manager.start()
        self._started = True
        log.info(
            self._events.started,
            **self._sender,
            open_nonces=report.open_nonces,
            chain_nonce=report.chain_latest,
        )

    async def _check_readiness(self, now: float) -> None:
        waiting = self.paused is not None or self.manager.funds_short
        if now < self._next_check and not waiting:
            return
        # While paused, check every round: sending resumes as soon as the account is funded.
        self._next_check = now + self.config.checks_s
        try:
            readiness = await self._readiness(self.manager.best_head)
        except RetryableError as exc:
            # A node behind the head we have seen, or one that cannot answer now: no word at
            # all; keep the last verdict.
            log.info(self._events.check_skipped, reason=str(exc))
            self._next_check = now + min(self.config.checks_s, CHECK_RETRY_S)
            return
        reason = readiness.pause_reason
        if reason is None and self.manager.funds_short:
            reason = self._funds_short_reason(readiness.balance_wei)
        if reason is not None and reason != self.paused:
            (log.error if readiness.needs_operator else log.warning)(
                self._events.paused,
                reason=reason,
                **self._sender,
                balance_wei=readiness.balance_wei,
                min_balance_wei=readiness.min_balance_wei,
            )
        elif reason is None and self.paused is not None:
            log.info(self._events.resumed, **self._sender, balance_wei=readiness.balance_wei)
        self.paused = reason

    def _funds_short_reason(self, balance_wei: int) -> str | None:
        """A node refused a transaction for lack of funds although the balance is above the
        threshold (the threshold is below one transaction's worst-case cost). Wait until the
        balance rises above the lowest seen since, i.e. until someone tops it up."""
        if self._short_floor is not None and balance_wei > self._short_floor:
            self.manager.funds_short = False
            self._short_floor = None
            return None
        self._short_floor = (
            balance_wei if self._short_floor is None else min(self._short_floor, balance_wei)
        )
        return "a node refused a transaction for insufficient funds; waiting for a top-up"

    async def _halted(self) -> bool:
        """While a respected worker is halted for an operator (the indexer: another chain, a
        reorg too deep to trust), nothing new is signed on the strength of its data; what is
        in flight is still followed."""
        if not self.config.halts:
            return False
        found = await self._db.run(_first_halt, self.config.halts)
        if found != self._halt:
            if found is not None:
                log.error(self._events.paused, reason=f"the {found[0]} is halted: {found[1]}")
            elif self._halt is not None:
                log.info(self._events.resumed, after=f"{self._halt[0]} halt cleared")
            self._halt = found
        return found is not None

    async def _fees(self) -> Fees | None:
        """The fees for new submissions, priced from a node at least as new as the manager's
        last poll (a lagging backend's base fee would underprice them); None while the market
        is over the cap or only nodes behind answered (the claimed units are given back)."""
        try:
            market = await fetch_market(self._rpc, at_least=self.manager.best_head)
            fees = price(market, self.config.fees)
        except StaleNodeError as exc:
            log.info(self._events.waiting_for_fees, error=str(exc))
            return None
        except FeeCapExceededError as exc:
            if not self._fee_cap_logged:
                log.warning(self._events.waiting_for_fees, error=str(exc))
                self._fee_cap_logged = True
            return None
        self._fee_cap_logged = False
        return fees

    # --- one batch --------------------------------------------------------------------------

    async def _send(self, units: Sequence[Unit], fees: Fees) -> None:
        try:
            sends = await self.source.submissions(units, best_head=self.manager.best_head)
        except HodlaiError:
            await self.source.release(units)
            raise
        if not sends:
            return
        try:
            recorded = await self.manager.record([one_live(sub) for _, sub in sends], fees)
        except HodlaiError:
            # The record transaction rolled back as a whole: nothing was signed for good.
            await self.source.release([unit for unit, _ in sends])
            raise
        await self.source.recorded(
            [(unit, r) for (unit, _), r in zip(sends, recorded, strict=True)]
        )
        self._fault("after_record")
        await self.manager.broadcast(recorded)
        self._fault("after_broadcast")

    def _fault(self, point: FaultPoint) -> None:
        if point and self.config.fault_point == point:
            log.warning("fault_injected", point=point, pid=os.getpid())
            os.kill(os.getpid(), signal.SIGKILL)


def _first_halt(conn: sqlite3.Connection, workers: Sequence[str]) -> tuple[str, str] | None:
    for worker in workers:
        reason = halt.halted(conn, worker)
        if reason is not None:
            return worker, reason
    return None
