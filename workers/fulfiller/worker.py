"""The fulfiller's loop: ANSWERED rows in, recorded and broadcast fulfilments out.

Each :meth:`FulfillerWorker.step`:

1. checks ORACLE_ROLE and the balance when due (pausing sending while either is missing),
   and whether the indexer is halted for an operator (signing nothing new meanwhile);
2. lets the transaction manager follow what is in flight (receipts, re-broadcasts, bumps,
   cancels) and returns stranded PROCESSED rows to ANSWERED;
3. if the window has room: claims ANSWERED rows under a lease, simulates them in one batch,
   fails the ones that would revert (with the decoded reason), skips the ones already
   fulfilled on chain, and for the rest signs ``fulfillNodeReasoning`` with consecutive
   nonces and commits, per row and in one database transaction, the signed transaction
   together with ANSWERED -> PROCESSED (fenced by the lease and the content generation);
4. only then broadcasts them, in one batch.

A row never has two fulfilments in flight: the record transaction refuses a row that still
has an open one (after a reorg re-answered it while the old one awaits its cancel).

``HODLAI_FAULT_POINT`` (test only) SIGKILLs the process right after step 3 or 4.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import structlog
from eth_utils.address import to_checksum_address

from shared import halt, store
from shared import request_id as rid
from shared.chain.rpc import RpcClient
from shared.db import AsyncDatabase
from shared.errors import FeeCapExceededError, HodlaiError, RetryableError, TransitionConflict
from shared.store import Claimed, Status
from shared.tx.fees import FeePolicy, Fees, fetch_market, price
from shared.tx.ledger import Purpose
from shared.tx.manager import Recorded, Submission, TxManager
from shared.tx.signer import Call, SignedTx
from shared.tx.simulation import GasRule
from workers.fulfiller.purpose import ACTOR, FULFIL_PURPOSE, return_orphans
from workers.fulfiller.readiness import read_readiness
from workers.fulfiller.settings import FaultPoint
from workers.fulfiller.simulation import Verdict, VerdictKind, simulate

log = structlog.get_logger(__name__)

# The lease owner of every fulfiller: there is one per key and database (a lock file makes
# sure), so at start it may release leases a killed predecessor left behind at once.
LEASE_OWNER: Final = "fulfiller"
# Seconds a row whose request still has a transaction in flight waits before being retried.
IN_FLIGHT_DEFER_S: Final = 10.0
# Seconds before a row whose simulation the node could not answer is simulated again.
RETRY_DEFER_S: Final = 5.0
# Seconds before the role and balance are asked again after a node could not answer them.
CHECK_RETRY_S: Final = 1.0
# Immediate re-simulations of rows a node behind the simulation block answered, then seconds
# before they are tried again: behind a load balancer the next request usually reaches a
# fresh backend, and one that keeps answering from behind catches up within a block or two.
LAGGING_RETRIES: Final = 3
LAGGING_DEFER_S: Final = 1.0
# Seconds between sweeps for PROCESSED rows left without a live transaction. The sweep also
# runs at once after a poll that settled a nonce in a way that can leave one (_ORPHANING);
# the timer catches rows the indexer hands back later (an orphaned fulfilment event).
ORPHAN_SWEEP_S: Final = 10.0
_ORPHANING: Final = frozenset({"dropped", "superseded", "cancelled", "gap_filled"})


class InFlightError(TransitionConflict):
    """The request already has a fulfilment in flight; a second one must not be signed."""


@dataclass(frozen=True)
class FulfillerConfig:
    provider: str
    batch: int
    gas: GasRule
    fees: FeePolicy
    min_balance_wei: int
    poll_s: float
    checks_s: float
    lease_s: float
    recheck_s: float
    fault_point: FaultPoint = ""


class FulfillerWorker:
    def __init__(
        self,
        *,
        db: AsyncDatabase,
        rpc: RpcClient,
        manager: TxManager,
        config: FulfillerConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._rpc = rpc
        self.manager = manager
        self.config = config
        self._clock = clock
        self._started = False
        self._next_check = 0.0
        self._next_sweep = 0.0
        # Lowest balance seen since a node refused a transaction for insufficient funds.
        self._short_floor: int | None = None
        #: why sending is paused (role or balance), None while sending
        self.paused: str | None = None
        self._fee_cap_logged = False
        self._halt_logged: str | None = None

    @property
    def oracle(self) -> str:
        return self.manager.sender

    async def step(self) -> float:
        """One round (see the module docstring); returns seconds to sleep before the next."""
        now = self._clock()
        if not self._started:
            await self._start()
        await self._check_readiness(now)
        report = await self.manager.poll()
        if report.counts.keys() & _ORPHANING or now >= self._next_sweep:
            self._next_sweep = now + ORPHAN_SWEEP_S
            await self._db.run(return_orphans, now=self._clock())
        if self.paused is not None or self.manager.funds_short:
            return self.config.poll_s
        if await self._indexer_halted():
            return self.config.poll_s
        room = min(self.manager.room, self.config.batch)
        if room == 0:
            return self.config.poll_s
        claimed = await self._db.run(
            store.claim,
            owner=LEASE_OWNER,
            status=Status.ANSWERED,
            limit=room,
            lease_seconds=self.config.lease_s,
            now=self._clock(),
        )
        if not claimed:
            return self.config.poll_s
        fees = await self._fees()
        if fees is None:
            await self._db.run(store.release, [r.request_id for r in claimed], owner=LEASE_OWNER)
            return self.config.poll_s
        await self._fulfil(claimed, fees)
        return 0.0 if len(claimed) == room and self.manager.room > 0 else self.config.poll_s

    async def stop(self) -> None:
        """Give back leases of rows claimed but not recorded (clean shutdown)."""
        held = await self._db.run(_held_leases)
        if held:
            await self._db.run(store.release, held, owner=LEASE_OWNER)

    # --- start and checks -------------------------------------------------------------------

    async def _start(self) -> None:
        released = await self._db.run(_held_leases)
        if released:
            # Our predecessor was killed holding these; no other process uses our owner name.
            await self._db.run(store.release, released, owner=LEASE_OWNER)
            log.info("fulfiller_leases_recovered", rows=len(released))
        report = await self.manager.start()
        self._started = True
        log.info(
            "fulfiller_started",
            oracle=self.oracle,
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
            readiness = await read_readiness(
                self._rpc,
                provider=self.config.provider,
                oracle=self.oracle,
                min_balance_wei=self.config.min_balance_wei,
                block=self.manager.best_head,
            )
        except RetryableError as exc:
            # A node behind the head we have seen (or one that cannot answer now, or has no
            # code at the provider yet): no word on the role at all; keep the last verdict.
            log.info("fulfiller_check_skipped", reason=str(exc))
            self._next_check = now + min(self.config.checks_s, CHECK_RETRY_S)
            return
        reason = readiness.pause_reason
        if reason is None and self.manager.funds_short:
            reason = self._funds_short_reason(readiness.balance_wei)
        if reason is not None and reason != self.paused:
            (log.warning if readiness.has_role else log.error)(
                "fulfiller_paused",
                reason=reason,
                oracle=self.oracle,
                balance_wei=readiness.balance_wei,
                min_balance_wei=readiness.min_balance_wei,
            )
        elif reason is None and self.paused is not None:
            log.info("fulfiller_resumed", oracle=self.oracle, balance_wei=readiness.balance_wei)
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

    async def _indexer_halted(self) -> bool:
        """While the indexer is halted for an operator (another chain, a reorg too deep to
        trust), nothing new is signed on the strength of its data; what is in flight is
        still followed."""
        reason = await self._db.run(halt.halted)
        if reason != self._halt_logged:
            if reason is None:
                log.info("fulfiller_resumed", after="indexer halt cleared")
            else:
                log.error("fulfiller_paused", reason=f"the indexer is halted: {reason}")
            self._halt_logged = reason
        return reason is not None

    async def _fees(self) -> Fees | None:
        try:
            fees = price(await fetch_market(self._rpc), self.config.fees)
        except FeeCapExceededError as exc:
            if not self._fee_cap_logged:
                log.warning("fulfiller_waiting_for_fees", error=str(exc))
                self._fee_cap_logged = True
            return None
        self._fee_cap_logged = False
        return fees

    # --- one batch --------------------------------------------------------------------------

    async def _fulfil(self, claimed: Sequence[Claimed], fees: Fees) -> None:
        prior = await self._db.run(_prior_sends, claimed)
        best = self.manager.best_head or 0
        # Never simulate below the highest head seen, nor below the block an earlier send of
        # the same answer was simulated at, nor below the request's own block.
        at_blocks = [
            max(best, prior.get(row.request_id, PriorSends()).block, row.block_number)
            for row in claimed
        ]
        try:
            verdicts = await self._simulate(claimed, at_blocks)
        except HodlaiError:
            await self._db.run(store.release, [r.request_id for r in claimed], owner=LEASE_OWNER)
            raise
        sends: list[Submission] = []
        for row, verdict in zip(claimed, verdicts, strict=True):
            if verdict.kind is VerdictKind.SEND:
                earlier = prior.get(row.request_id, PriorSends()).intents
                sends.append(self._submission(row, verdict, earlier))
            else:
                await self._db.run(self._settle_unsent, row, verdict, self._clock())
        if not sends:
            return
        try:
            recorded = await self.manager.record(sends, fees)
        except HodlaiError:
            # The record transaction rolled back as a whole: nothing was signed for good.
            ids = [rid.decode(s.purpose.subject or "0") for s in sends]
            await self._db.run(store.release, ids, owner=LEASE_OWNER)
            raise
        await self._after_record(recorded)
        self._fault("after_record")
        await self.manager.broadcast(recorded)
        self._fault("after_broadcast")

    async def _simulate(self, rows: Sequence[Claimed], at_blocks: Sequence[int]) -> list[Verdict]:
        """Verdicts for ``rows``; those a node behind the block answered are asked again at
        once, up to LAGGING_RETRIES times (behind a load balancer the next request usually
        reaches a fresh backend)."""
        verdicts = await simulate(
            self._rpc, rows, provider=self.config.provider, oracle=self.oracle,
            gas=self.config.gas, at_blocks=at_blocks,
        )  # fmt: skip
        for _ in range(LAGGING_RETRIES):
            again = [i for i, v in enumerate(verdicts) if v.lagging]
            if not again:
                break
            retried = await simulate(
                self._rpc, [rows[i] for i in again], provider=self.config.provider,
                oracle=self.oracle, gas=self.config.gas, at_blocks=[at_blocks[i] for i in again],
            )  # fmt: skip
            for i, verdict in zip(again, retried, strict=True):
                verdicts[i] = verdict
        return verdicts

    def _submission(self, row: Claimed, verdict: Verdict, earlier: int) -> Submission:
        """The fulfilment of ``row``; its idempotency key names the request, the generation
        and how many fulfilments of that generation were intended before (a revert earns
        one re-simulation and a second intent)."""
        key = rid.encode(row.request_id)
        purpose = Purpose(
            kind=FULFIL_PURPOSE,
            subject=key,
            version=row.generation,
            fingerprint=row.content_hash,
        )
        call = Call(
            to=to_checksum_address(self.config.provider),
            data=verdict.calldata,
            value=0,
            gas_limit=verdict.gas_limit,
        )
        simulated_at = verdict.block

        def bind(conn: sqlite3.Connection, signed: SignedTx) -> None:
            # Any fulfilment of this request at a nonce still open (itself, or superseded by a
            # replacement or cancel that may yet lose to it) could still mine.
            other = conn.execute(
                "SELECT t.tx_hash FROM txs t WHERE t.subject = ? AND t.purpose = ?"
                " AND t.tx_hash <> ? AND EXISTS (SELECT 1 FROM txs o WHERE o.sender = t.sender"
                " AND o.nonce = t.nonce AND o.status IN ('SIGNED', 'BROADCAST')) LIMIT 1",
                (key, FULFIL_PURPOSE, signed.tx_hash),
            ).fetchone()
            if other is not None:
                raise InFlightError(f"request {key} still has {other[0]} in flight")
            store.transition(
                conn, key, Status.ANSWERED, Status.PROCESSED, actor=ACTOR,
                lease_owner=LEASE_OWNER, generation=row.generation,
                note=f"tx {signed.tx_hash} nonce {signed.nonce}",
            )  # fmt: skip

        return Submission(
            call=call, purpose=purpose, bind=bind, simulated_block=simulated_at,
            key=f"{FULFIL_PURPOSE}:{key}:g{row.generation}:{earlier}",
        )  # fmt: skip

    async def _after_record(self, recorded: Sequence[Recorded]) -> None:
        deferred = [
            rid.decode(r.submission.purpose.subject or "0")
            for r in recorded
            if isinstance(r.skipped, InFlightError)
        ]
        if deferred:
            await self._db.run(
                store.extend_lease,
                deferred,
                owner=LEASE_OWNER,
                lease_seconds=IN_FLIGHT_DEFER_S,
                now=self._clock(),
            )
        for r in recorded:
            if r.signed is not None:
                log.info(
                    "fulfilment_signed",
                    request_id=r.submission.purpose.subject,
                    tx_hash=r.signed.tx_hash,
                    nonce=r.signed.nonce,
                    gas_limit=r.signed.call.gas_limit,
                )
            else:
                log.info(
                    "fulfilment_not_recorded",
                    request_id=r.submission.purpose.subject,
                    why=str(r.skipped),
                )

    def _settle_unsent(
        self, conn: sqlite3.Connection, row: Claimed, verdict: Verdict, now: float
    ) -> None:
        if verdict.kind is VerdictKind.FAIL:
            try:
                store.transition(
                    conn, row.request_id, Status.ANSWERED, Status.FAILED, actor=ACTOR,
                    lease_owner=LEASE_OWNER, generation=row.generation, now=now,
                    note="not sent: simulation", set_columns={"fail_reason": verdict.reason},
                )  # fmt: skip
            except TransitionConflict as exc:
                log.info("fulfilment_fail_skipped", request_id=str(row.request_id), why=str(exc))
                return
            log.warning("fulfilment_failed", request_id=str(row.request_id), reason=verdict.reason)
        elif verdict.kind is VerdictKind.FULFILLED:
            # Hold the row: the indexer marks it FULFILLED from the event; we look again later.
            store.extend_lease(
                conn,
                [row.request_id],
                owner=LEASE_OWNER,
                lease_seconds=self.config.recheck_s,
                now=now,
            )
            log.info("fulfilment_not_needed", request_id=str(row.request_id), reason=verdict.reason)
        else:
            # Held briefly rather than released: a node failing one call should not be asked
            # again every poll.
            store.extend_lease(
                conn,
                [row.request_id],
                owner=LEASE_OWNER,
                lease_seconds=LAGGING_DEFER_S if verdict.lagging else RETRY_DEFER_S,
                now=now,
            )
            (log.info if verdict.lagging else log.warning)(
                "fulfilment_deferred", request_id=str(row.request_id), reason=verdict.reason
            )

    def _fault(self, point: FaultPoint) -> None:
        if point and self.config.fault_point == point:
            log.warning("fault_injected", point=point, pid=os.getpid())
            os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class PriorSends:
    """What the ledger holds of earlier fulfilments of one row's current generation."""

    block: int = 0  # the newest block one of them was simulated at
    intents: int = 0  # how many were intended (replacements and cancels not counted)


def _prior_sends(conn: sqlite3.Connection, rows: Sequence[Claimed]) -> dict[int, PriorSends]:
    out: dict[int, PriorSends] = {}
    for row in rows:
        block, intents = conn.execute(
            "SELECT MAX(simulated_block), COUNT(*) FILTER (WHERE replaces_tx_id IS NULL)"
            " FROM txs WHERE purpose = ? AND subject = ? AND version = ?",
            (FULFIL_PURPOSE, rid.encode(row.request_id), row.generation),
        ).fetchone()
        if intents:
            out[row.request_id] = PriorSends(int(block or 0), int(intents))
    return out


def _held_leases(conn: sqlite3.Connection) -> list[int]:
    return [
        rid.decode(row[0])
        for row in conn.execute(
            "SELECT request_id FROM requests WHERE lease_owner = ? AND status = 'ANSWERED'",
            (LEASE_OWNER,),
        )
    ]
