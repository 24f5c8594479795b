"""The fulfiller: ANSWERED rows in, recorded and broadcast fulfilments out.

The loop itself is the core's sending service (shared/tx/service.py: start and reconcile,
readiness, poll first, halts, fee cap, record before broadcast, one live transaction per
request, orphan sweeps, fault points). What is the oracle's own lives here:

- the readiness check: ORACLE_ROLE on the provider and the balance, in one round trip
  (a missing role pauses sending at error level); the indexer's halt holds sending back;
- :class:`FulfilmentSource`: claims ANSWERED rows under a lease; simulates them in one batch
  (rows a node behind the block answered are asked again at once); fails the ones that would
  revert (with the decoded reason), holds the ones already fulfilled on chain for the
  indexer, defers the ones the node could not judge; and for the rest gives the service a
  ``fulfillNodeReasoning`` submission whose bind moves the row ANSWERED -> PROCESSED in the
  record transaction (fenced by the lease and the content generation);
- after the record: a row refused because its request still has a fulfilment in flight
  (after a reorg re-answered it while the old one awaits its cancel) is held briefly;
- the orphan sweep: PROCESSED rows left without a live transaction go back to ANSWERED.

``HODLAI_FAULT_POINT`` (test only) SIGKILLs the process right after the record or the
broadcast.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import structlog
from eth_utils.address import to_checksum_address

from shared import halt
from shared.chain.rpc import RpcClient
from shared.db import AsyncDatabase
from shared.errors import TransitionConflict
from shared.tx.fees import FeePolicy
from shared.tx.ledger import Purpose
from shared.tx.manager import Recorded, Submission, TxManager
from shared.tx.service import Readiness, SendingConfig, SendingEvents, SendingService
from shared.tx.signer import Call, SignedTx
from shared.tx.simulation import GasRule
from shared.tx.subjects import InFlightError, PriorSends, prior_sends
from workers.oracle import request_id as rid
from workers.oracle import store
from workers.oracle.fulfiller.purpose import ACTOR, FULFIL_PURPOSE, return_orphans
from workers.oracle.fulfiller.readiness import read_readiness
from workers.oracle.fulfiller.settings import FaultPoint
from workers.oracle.fulfiller.simulation import Verdict, VerdictKind, simulate
from workers.oracle.store import Claimed, Status

log = structlog.get_logger(__name__)

# The lease owner of every fulfiller: there is one per key and database (a lock file makes
# sure), so at start it may release leases a killed predecessor left behind at once.
LEASE_OWNER: Final = "fulfiller"
# Seconds a row whose request still has a transaction in flight waits before being retried.
IN_FLIGHT_DEFER_S: Final = 10.0
# Seconds before a row whose simulation the node could not answer is simulated again.
RETRY_DEFER_S: Final = 5.0
# Immediate re-simulations of rows a node behind the simulation block answered, then seconds
# before they are tried again: behind a load balancer the next request usually reaches a
# fresh backend, and one that keeps answering from behind catches up within a block or two.
LAGGING_RETRIES: Final = 3
LAGGING_DEFER_S: Final = 1.0
# Seconds between sweeps for PROCESSED rows left without a live transaction. The service also
# sweeps at once after a poll that settled a nonce in a way that can leave one; the timer
# catches rows the indexer hands back later (an orphaned fulfilment event).
ORPHAN_SWEEP_S: Final = 10.0
# The fulfiller's log events (the runbook and its alerts name them).
EVENTS: Final = SendingEvents(
    started="fulfiller_started",
    paused="fulfiller_paused",
    resumed="fulfiller_resumed",
    check_skipped="fulfiller_check_skipped",
    waiting_for_fees="fulfiller_waiting_for_fees",
    sender_key="oracle",
)


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
    """The oracle's client of the sending service: its source, its readiness check and the
    indexer's halt (see the module docstring)."""

    def __init__(
        self,
        *,
        db: AsyncDatabase,
        rpc: RpcClient,
        manager: TxManager,
        config: FulfillerConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.manager = manager
        self.config = config
        self.source = FulfilmentSource(db=db, rpc=rpc, manager=manager, config=config, clock=clock)

        async def oracle_readiness(block: int | None) -> Readiness:
            found = await read_readiness(
                rpc, provider=config.provider, oracle=manager.sender,
                min_balance_wei=config.min_balance_wei, block=block,
            )  # fmt: skip
            return Readiness(
                balance_wei=found.balance_wei, pause_reason=found.pause_reason,
                needs_operator=not found.has_role, min_balance_wei=found.min_balance_wei,
            )  # fmt: skip

        sending = SendingConfig(
            fees=config.fees, batch=config.batch, poll_s=config.poll_s, checks_s=config.checks_s,
            halts=(halt.INDEXER,), events=EVENTS, fault_point=config.fault_point,
        )  # fmt: skip
        self.service = SendingService(
            db=db,
            rpc=rpc,
            manager=manager,
            config=sending,
            source=self.source,
            readiness=oracle_readiness,
            clock=clock,
        )

    @property
    def oracle(self) -> str:
        return self.manager.sender

    @property
    def paused(self) -> str | None:
        """Why sending is paused (role, balance or funds), None while sending."""
        return self.service.paused

    async def step(self) -> float:
        """One round of the sending service; returns seconds to sleep before the next."""
        return await self.service.step()

    async def stop(self) -> None:
        """Give back leases of rows claimed but not recorded (clean shutdown)."""
        await self.source.stop()


class FulfilmentSource:
    """ANSWERED rows as the sending service's units (see the module docstring)."""

    sweep_every_s: float = ORPHAN_SWEEP_S

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
        self._manager = manager
        self.config = config
        self._clock = clock

    async def start(self) -> None:
        released = await self._db.run(_held_leases)
        if released:
            # Our predecessor was killed holding these; no other process uses our owner name.
            await self._db.run(store.release, released, owner=LEASE_OWNER)
            log.info("fulfiller_leases_recovered", rows=len(released))

    async def claim(self, limit: int, *, now: float) -> list[Claimed]:
        return await self._db.run(
            store.claim,
            owner=LEASE_OWNER,
            status=Status.ANSWERED,
            limit=limit,
            lease_seconds=self.config.lease_s,
            now=now,
        )

    async def release(self, units: Sequence[Claimed]) -> None:
        await self._db.run(store.release, [r.request_id for r in units], owner=LEASE_OWNER)

    async def sweep_orphans(self, *, now: float) -> int:
        return await self._db.run(return_orphans, now=now)

    async def stop(self) -> None:
        held = await self._db.run(_held_leases)
        if held:
            await self._db.run(store.release, held, owner=LEASE_OWNER)

    async def submissions(
        self, units: Sequence[Claimed], *, best_head: int | None
    ) -> list[tuple[Claimed, Submission]]:
        keys = [(rid.encode(row.request_id), row.generation) for row in units]
        prior = await self._db.run(prior_sends, FULFIL_PURPOSE, keys)
        # Never simulate below the highest head seen, nor below the block an earlier send of
        # the same answer was simulated at, nor below the request's own block.
        at_blocks = [
            max(best_head or 0, prior.get(key, PriorSends()).block, row.block_number)
            for row, (key, _) in zip(units, keys, strict=True)
        ]
        verdicts = await self._simulate(units, at_blocks)
        sends: list[tuple[Claimed, Submission]] = []
        for row, (key, _), verdict in zip(units, keys, verdicts, strict=True):
            if verdict.kind is VerdictKind.SEND:
                earlier = prior.get(key, PriorSends()).intents
                sends.append((row, self._submission(row, verdict, earlier)))
            else:
                await self._db.run(self._settle_unsent, row, verdict, self._clock())
        return sends

    async def recorded(self, results: Sequence[tuple[Claimed, Recorded]]) -> None:
        deferred = [row.request_id for row, r in results if isinstance(r.skipped, InFlightError)]
        if deferred:
            await self._db.run(
                store.extend_lease,
                deferred,
                owner=LEASE_OWNER,
                lease_seconds=IN_FLIGHT_DEFER_S,
                now=self._clock(),
            )
        for _, r in results:
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

    # --- the oracle's judgement -------------------------------------------------------------

    async def _simulate(self, rows: Sequence[Claimed], at_blocks: Sequence[int]) -> list[Verdict]:
        """Verdicts for ``rows``; those a node behind the block answered are asked again at
        once, up to LAGGING_RETRIES times (behind a load balancer the next request usually
        reaches a fresh backend)."""
        oracle = self._manager.sender
        verdicts = await simulate(
            self._rpc, rows, provider=self.config.provider, oracle=oracle,
            gas=self.config.gas, at_blocks=at_blocks,
        )  # fmt: skip
        for _ in range(LAGGING_RETRIES):
            again = [i for i, v in enumerate(verdicts) if v.lagging]
            if not again:
                break
            retried = await simulate(
                self._rpc, [rows[i] for i in again], provider=self.config.provider,
                oracle=oracle, gas=self.config.gas, at_blocks=[at_blocks[i] for i in again],
            )  # fmt: skip
            for i, verdict in zip(again, retried, strict=True):
                verdicts[i] = verdict
        return verdicts

    def _submission(self, row: Claimed, verdict: Verdict, earlier: int) -> Submission:
        """The fulfilment of ``row``; its idempotency key names the request, the generation
        and how many fulfilments of that generation were intended before (a revert earns
        one re-simulation and a second intent). The service refuses it while the request
        has another fulfilment in flight (InFlightError)."""
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

        def bind(conn: sqlite3.Connection, signed: SignedTx) -> None:
            store.transition(
                conn, key, Status.ANSWERED, Status.PROCESSED, actor=ACTOR,
                lease_owner=LEASE_OWNER, generation=row.generation,
                note=f"tx {signed.tx_hash} nonce {signed.nonce}",
            )  # fmt: skip

        return Submission(
            call=call, purpose=purpose, bind=bind, simulated_block=verdict.block,
            key=f"{FULFIL_PURPOSE}:{key}:g{row.generation}:{earlier}",
        )  # fmt: skip

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


def _held_leases(conn: sqlite3.Connection) -> list[int]:
    return [
        rid.decode(row[0])
        for row in conn.execute(
            "SELECT request_id FROM requests WHERE lease_owner = ? AND status = 'ANSWERED'",
            (LEASE_OWNER,),
        )
    ]
