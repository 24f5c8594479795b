"""The mint server's units of work for the core's sending service: purchases whose settle or
mint is owed (SETTLE_QUEUED, MINT_QUEUED), turned into submissions from the minter key.

- A settle is the exact call x402's facilitator asked for (``transferWithAuthorization`` on
  the USDC, recorded by the facilitator's signer); a mint is ``MintToken.mint(recipient)``.
- The bind moves the purchase SETTLE_QUEUED -> SETTLING (MINT_QUEUED -> MINTING) in the
  transaction that records the signed transaction, fenced by the lease: recorded before
  broadcast, one live transaction per purchase and purpose (the service's ``one_live``).
- Idempotency keys name the purpose, the payment and how many were intended before, so a
  mint sent again after a cancel is a new intent and a retried record is the same one.
- Before claiming, purchases whose own settle failed are checked against the chain
  (workers/mint/server/check.py): paid by another submission, they are owed their mint.
- ``HODLAI_MINT_SERVER_FAULT_POINT=after_settle`` (test only) SIGKILLs the process when a
  paid purchase is about to get its mint: the settle is FINAL and the mint not recorded.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Final

import structlog
from eth_abi.abi import encode as abi_encode
from eth_utils.address import to_checksum_address

from shared import state
from shared.db import AsyncDatabase
from shared.tx.ledger import Purpose
from shared.tx.manager import Recorded, Submission
from shared.tx.policy import selector_of
from shared.tx.signer import Call, SignedTx
from shared.tx.subjects import InFlightError, PriorSends, prior_sends
from workers.mint.server import store
from workers.mint.server.check import SettleChecker
from workers.mint.server.machine import PURCHASES, PurchaseStatus
from workers.mint.server.purpose import MINT_PURPOSE, SETTLE_PURPOSE, return_orphans
from workers.mint.server.settings import FaultPoint

log = structlog.get_logger(__name__)

P = PurchaseStatus
LEASE_OWNER: Final = "mint-server"
LEASE_S: Final = 60.0
IN_FLIGHT_DEFER_S: Final = 5.0
ORPHAN_SWEEP_S: Final = 10.0
MINT_SIGNATURE: Final = "mint(address)"
MINT_SELECTOR: Final = selector_of(MINT_SIGNATURE)


def mint_calldata(recipient: str) -> bytes:
    return MINT_SELECTOR + abi_encode(["address"], [to_checksum_address(recipient)])


class PurchaseSource:
    """SETTLE_QUEUED and MINT_QUEUED purchases as the sending service's units."""

    sweep_every_s: float = ORPHAN_SWEEP_S

    def __init__(
        self,
        *,
        db: AsyncDatabase,
        gas_limit: int,
        checker: SettleChecker | None = None,
        fault_point: FaultPoint = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._gas_limit = gas_limit
        self._checker = checker
        self._fault_point = fault_point
        self._clock = clock

    async def start(self) -> None:
        released = await self._db.run(_release_all)
        if released:
            log.info("mint_server_leases_recovered", rows=released)

    async def claim(self, limit: int, *, now: float) -> list[store.Purchase]:
        if self._checker is not None:  # failed settles first: a paid one is owed its mint
            await self._checker.run(now=now)
        return await self._db.run(self._claim, limit, now)

    def _claim(self, conn: sqlite3.Connection, limit: int, now: float) -> list[store.Purchase]:
        rows = state.claim(
            conn, PURCHASES, owner=LEASE_OWNER, status=P.SETTLE_QUEUED, limit=limit,
            lease_seconds=LEASE_S, now=now,
        )  # fmt: skip
        if len(rows) < limit:
            owed = conn.execute(
                "SELECT 1 FROM mint_purchases WHERE status = 'MINT_QUEUED' LIMIT 1"
            ).fetchone()
            if owed is not None and self._fault_point == "after_settle":
                log.warning("fault_injected", point="after_settle", pid=os.getpid())
                os.kill(os.getpid(), signal.SIGKILL)
            rows += state.claim(
                conn, PURCHASES, owner=LEASE_OWNER, status=P.MINT_QUEUED,
                limit=limit - len(rows), lease_seconds=LEASE_S, now=now,
            )  # fmt: skip
        return [store.Purchase.of(row) for row in rows]

    async def release(self, units: Sequence[store.Purchase]) -> None:
        keys = [u.payment_id for u in units]
        await self._db.run(lambda conn: state.release(conn, PURCHASES, keys, owner=LEASE_OWNER))

    async def sweep_orphans(self, *, now: float) -> int:
        return await self._db.run(return_orphans, now=now)

    async def stop(self) -> None:
        await self._db.run(_release_all)

    async def submissions(
        self, units: Sequence[store.Purchase], *, best_head: int | None
    ) -> list[tuple[store.Purchase, Submission]]:
        out: list[tuple[store.Purchase, Submission]] = []
        for unit in units:
            kind = SETTLE_PURPOSE if unit.status is P.SETTLE_QUEUED else MINT_PURPOSE
            prior = await self._db.run(prior_sends, kind, [(unit.payment_id, None)])
            earlier = prior.get(unit.payment_id, PriorSends()).intents
            out.append((unit, self._submission(unit, kind, earlier)))
        return out

    def _submission(self, unit: store.Purchase, kind: str, earlier: int) -> Submission:
        if kind == SETTLE_PURPOSE:
            assert unit.settle_call is not None
            to, data = unit.asset, bytes.fromhex(unit.settle_call.removeprefix("0x"))
            frm, nxt = P.SETTLE_QUEUED, P.SETTLING
        else:
            to, data = unit.token, mint_calldata(unit.recipient)
            frm, nxt = P.MINT_QUEUED, P.MINTING
        call = Call(to=to_checksum_address(to), data=data, value=0, gas_limit=self._gas_limit)

        def bind(conn: sqlite3.Connection, signed: SignedTx) -> None:
            state.transition(
                conn, PURCHASES, unit.payment_id, frm, nxt, actor=LEASE_OWNER,
                lease_owner=LEASE_OWNER, note=f"tx {signed.tx_hash} nonce {signed.nonce}",
            )  # fmt: skip

        return Submission(
            call=call,
            purpose=Purpose(kind=kind, subject=unit.payment_id, fingerprint=unit.fingerprint),
            bind=bind,
            key=f"{kind}:{unit.payment_id}:{earlier}",
        )

    async def recorded(self, results: Sequence[tuple[store.Purchase, Recorded]]) -> None:
        deferred = [u.payment_id for u, r in results if isinstance(r.skipped, InFlightError)]
        if deferred:
            await self._db.run(
                lambda conn: state.extend(
                    conn,
                    PURCHASES,
                    deferred,
                    owner=LEASE_OWNER,
                    lease_seconds=IN_FLIGHT_DEFER_S,
                    now=self._clock(),
                )
            )
        for unit, r in results:
            if r.signed is not None:
                log.info(
                    "mint_server_tx_signed",
                    purpose=r.submission.purpose.kind,
                    payment_id=unit.payment_id,
                    tx_hash=r.signed.tx_hash,
                    nonce=r.signed.nonce,
                )
            elif r.skipped is not None and not isinstance(r.skipped, InFlightError):
                log.error(
                    "mint_server_tx_not_recorded",
                    purpose=r.submission.purpose.kind,
                    payment_id=unit.payment_id,
                    why=str(r.skipped),
                )


def _release_all(conn: sqlite3.Connection) -> int:
    """Leases a killed predecessor left (one mint server per database: a role lock)."""
    keys = [
        row[0]
        for row in conn.execute(
            "SELECT payment_id FROM mint_purchases WHERE lease_owner = ? AND status IN "
            "('SETTLE_QUEUED', 'MINT_QUEUED')",
            (LEASE_OWNER,),
        )
    ]
    return state.release(conn, PURCHASES, keys, owner=LEASE_OWNER) if keys else 0
