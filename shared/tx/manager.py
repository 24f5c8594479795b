"""The transaction manager: one key, many transactions in flight, each nonce used once.

It is generic: it knows calls, nonces, fees and receipts, not requests. What a transaction is
*for* is a :class:`~shared.tx.ledger.Purpose`, judged by the
:class:`~shared.tx.settlement.PurposeHandler` registered for its kind (the fulfiller registers
one for 'fulfil'; later executors register theirs). Guarantees:

- Record before broadcast: :meth:`TxManager.record` signs and commits each transaction,
  together with its purpose's own state change, before :meth:`TxManager.broadcast` lets any
  node see it. Killed at any instant, the ledger holds every transaction a node might have.
- At most ``window`` nonces are open at once; within them transactions are pipelined (sent
  without waiting for the previous receipt) with consecutive nonces.
- Every poll (:meth:`TxManager.poll`) asks the chain how many nonces the key has consumed and
  fetches the receipts of all our transactions at those nonces in one batch, then settles
  them (shared/tx/settlement.py) together with what their purposes do about it.
- A transaction the node no longer knows is broadcast again: the same signed bytes, so it can
  never become a second, different transaction. Stuck, underpriced, rejected and invalid
  transactions and gaps are handled on their own nonce (shared/tx/replacements.py), so two
  transactions for one purpose are only ever alternatives on one nonce, of which at most one
  mines.
- After a reorg rolled the chain's nonce back below a MINED transaction, it is open again and
  broadcast again (or cancelled, if its purpose no longer holds).
- On start (:meth:`TxManager.start`) the next nonce is reconciled with the ledger and the
  chain (latest and pending) and every recorded, unsettled transaction is broadcast again.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import structlog

from shared.db import AsyncDatabase, atomic
from shared.errors import HodlaiError, PermanentError, TransitionConflict
from shared.metrics import TXS, TXS_IN_FLIGHT
from shared.rpc import RpcCall, RpcClient, hex_int
from shared.tx import ledger, replacements
from shared.tx.broadcast import BroadcastOutcome, BroadcastResult, broadcast
from shared.tx.fees import FeePolicy, Fees, fetch_market
from shared.tx.ledger import Purpose, TxRecord, TxStatus
from shared.tx.nonces import NonceTracker
from shared.tx.replacements import Replacement
from shared.tx.settlement import PurposeHandler, Settlement, settle_nonces, tell
from shared.tx.signer import Call, LocalSigner, SignedTx

log = structlog.get_logger(__name__)

# Receipt / transaction look-ups per HTTP POST: keeps one poll's request well under provider
# batch limits (commonly 1,000 calls) while a full 64-transaction window takes one round trip.
LOOKUP_CHUNK: Final = 250


@dataclass(frozen=True)
class TxPolicy:
    fees: FeePolicy
    # Open nonces at most: bounds what a fee spike or a broken node can leave pending at once.
    window: int = 64
    # Seconds without being mined before a transaction is replaced with bumped fees.
    stuck_after_s: float = 30.0
    # Seconds after acceptance before we check that the node still knows a transaction; also
    # the least time between two re-pricings of a transaction refused as underpriced.
    rebroadcast_after_s: float = 5.0

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError("window must be at least 1")


@dataclass(frozen=True)
class Submission:
    """A new transaction to sign: the call, its purpose, and ``bind``, which runs in the same
    database transaction as the ledger insert (raise a PermanentError to skip this one)."""

    call: Call
    purpose: Purpose
    bind: Callable[[sqlite3.Connection, SignedTx], None]


@dataclass(frozen=True)
class Recorded:
    submission: Submission
    signed: SignedTx | None = None
    tx_id: int | None = None
    skipped: PermanentError | None = None


@dataclass
class PollReport:
    chain_latest: int = 0
    open_nonces: int = 0
    counts: Counter[str] = field(default_factory=Counter)

    def add(self, what: str, n: int = 1) -> None:
        if n:
            self.counts[what] += n
            TXS.labels(outcome=what).inc(n)


class TxManager:
    """Sends and follows the transactions of one key (see the module docstring)."""

    def __init__(
        self,
        *,
        db: AsyncDatabase,
        rpc: RpcClient,
        signer: LocalSigner,
        policy: TxPolicy,
        handlers: Mapping[str, PurposeHandler],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._rpc = rpc
        self._signer = signer
        self.policy = policy
        self._handlers = dict(handlers)
        self._clock = clock
        self._nonces = NonceTracker()
        self._open_nonces = 0
        #: set when a node refused a transaction for lack of funds; cleared by the owner once
        #: the balance is back (see the fulfiller's balance check)
        self.funds_short = False

    @property
    def sender(self) -> str:
        return self._signer.address

    @property
    def in_flight(self) -> int:
        """Open nonces (signed, not yet settled)."""
        return self._open_nonces

    @property
    def room(self) -> int:
        """How many new transactions the window admits now."""
        return max(0, self.policy.window - self._open_nonces)

    # --- start ------------------------------------------------------------------------------

    async def start(self) -> PollReport:
        """Reconcile nonces with the ledger and the chain; broadcast every unsettled tx again."""
        latest_raw, pending_raw = await self._rpc.batch(
            [
                RpcCall("eth_getTransactionCount", [self.sender, "latest"]),
                RpcCall("eth_getTransactionCount", [self.sender, "pending"]),
            ]
        )
        recorded_next = await self._db.run(ledger.next_unused_nonce, self.sender)
        self._nonces.reconcile(
            recorded_next=recorded_next,
            chain_latest=hex_int(latest_raw),
            chain_pending=hex_int(pending_raw),
        )
        report = await self.poll(rebroadcast_all=True)
        log.info("tx_manager_started", sender=self.sender, open_nonces=report.open_nonces)
        return report

    # --- new transactions -------------------------------------------------------------------

    async def record(self, submissions: Sequence[Submission], fees: Fees) -> list[Recorded]:
        """Sign each submission with the next nonce and commit it with its ``bind`` in one
        database transaction (one fsync for the batch). Nothing is broadcast yet."""
        if not submissions:
            return []
        if len(submissions) > self.room:
            raise ValueError(f"{len(submissions)} submissions exceed the window's room {self.room}")
        first = self._nonces.peek()
        results = await self._db.run(self._record_sync, submissions, fees, first, self._clock())
        done = sum(1 for r in results if r.signed is not None)
        self._nonces.consume(done)
        self._open_nonces += done
        TXS_IN_FLIGHT.set(self._open_nonces)
        return results

    def _record_sync(
        self,
        conn: sqlite3.Connection,
        submissions: Sequence[Submission],
        fees: Fees,
        first_nonce: int,
        now: float,
    ) -> list[Recorded]:
        out: list[Recorded] = []
        nonce = first_nonce
        with atomic(conn):
            for sub in submissions:
                signed = self._signer.sign(sub.call, nonce=nonce, fees=fees)
                try:
                    with atomic(conn):  # a savepoint: one refused bind undoes only its own row
                        tx_id = ledger.insert(
                            conn, signed, sub.purpose, sender=self.sender, now=now
                        )
                        sub.bind(conn, signed)
                except PermanentError as exc:
                    out.append(Recorded(sub, skipped=exc))
                    continue
                out.append(Recorded(sub, signed=signed, tx_id=tx_id))
                nonce += 1
        return out

    async def broadcast(self, recorded: Sequence[Recorded]) -> list[BroadcastResult]:
        """Send freshly recorded transactions (in one batch)."""
        items = [
            (r.tx_id, r.signed.tx_hash, r.signed.raw)
            for r in recorded
            if r.signed is not None and r.tx_id is not None
        ]
        results = await self._send(items)
        TXS.labels(outcome="sent").inc(sum(1 for r in results if r.in_pool))
        return results

    async def _send(self, items: Sequence[tuple[int, str, str]]) -> list[BroadcastResult]:
        """Broadcast (id, hash, raw) and record what the node said."""
        if not items:
            return []
        results = await broadcast(self._rpc, [(h, raw) for _, h, raw in items])
        pairs = list(zip((tx_id for tx_id, _, _ in items), results, strict=True))
        accepted = [tx_id for tx_id, r in pairs if r.in_pool]
        refused = [(tx_id, r) for tx_id, r in pairs if not r.in_pool]
        await self._db.run(_store_broadcast, accepted, refused, self._clock())
        for _, result in refused:
            if result.outcome is BroadcastOutcome.INSUFFICIENT_FUNDS:
                if not self.funds_short:
                    log.warning("tx_insufficient_funds", sender=self.sender, detail=result.detail)
                self.funds_short = True
            elif result.outcome is not BroadcastOutcome.NONCE_TOO_LOW:
                log.info(
                    "tx_broadcast_refused",
                    tx_hash=result.tx_hash,
                    outcome=result.outcome.value,
                    detail=result.detail,
                )
        return results

    # --- following transactions -------------------------------------------------------------

    async def poll(self, *, rebroadcast_all: bool = False) -> PollReport:
        """Settle consumed nonces, re-broadcast what nodes forgot, replace what is stuck,
        cancel what lost its purpose and fill gaps. Returns what it did."""
        now = self._clock()
        report = PollReport()
        latest = hex_int(await self._rpc.call("eth_getTransactionCount", [self.sender, "latest"]))
        report.chain_latest = latest
        self._nonces.observe_chain(latest)
        report.add("reopened", await self._reopen_vanished(latest, now))

        open_rows = await self._db.run(ledger.open_txs, self.sender)
        consumed = {tx.nonce for tx in open_rows if tx.nonce < latest}
        waiting = [tx for tx in open_rows if tx.nonce >= latest]
        candidates = await self._db.run(ledger.at_nonces, self.sender, consumed) if consumed else []
        check_known = [
            tx
            for tx in waiting
            if tx.status is TxStatus.BROADCAST
            and not rebroadcast_all
            and now - (tx.broadcast_at or tx.created_at) >= self.policy.rebroadcast_after_s
        ]
        receipts, known = await self._look_up(candidates, check_known)
        if candidates:
            settled = await self._db.run(
                settle_nonces, candidates, receipts, self._handlers, now=now
            )
            for what, n in settled.items():
                report.add(what, n)

        to_send = [
            tx
            for tx in waiting
            if rebroadcast_all or tx.status is TxStatus.SIGNED or known.get(tx.tx_hash) is False
        ]
        results = await self._send([(tx.id, tx.tx_hash, tx.raw) for tx in to_send])
        report.add("rebroadcast", sum(1 for tx in to_send if tx.status is TxStatus.BROADCAST))
        outcomes = {r.tx_hash: r.outcome for r in results}

        judged = [tx for tx in waiting if tx.purpose.kind in self._handlers]
        invalid = await self._db.run(self._invalid_sync, judged) if judged else {}
        plans = replacements.plan(
            waiting,
            sender=self.sender,
            outcomes=outcomes,
            invalid=invalid,
            chain_latest=latest,
            now=now,
            stuck_after_s=self.policy.stuck_after_s,
            reprice_after_s=self.policy.rebroadcast_after_s,
        )
        if plans:
            await self._replace(plans, report)

        self._open_nonces = len(
            {tx.nonce for tx in await self._db.run(ledger.open_txs, self.sender)}
        )
        report.open_nonces = self._open_nonces
        TXS_IN_FLIGHT.set(self._open_nonces)
        if report.counts:
            log.info("tx_poll", chain_nonce=latest, open_nonces=self._open_nonces, **report.counts)
        return report

    async def _reopen_vanished(self, latest: int, now: float) -> int:
        vanished = await self._db.run(ledger.mined_from, self.sender, latest)
        if not vanished:
            return 0

        def reopen(conn: sqlite3.Connection) -> None:
            with atomic(conn):
                for tx in vanished:
                    ledger.reopen(conn, tx.id, now=now, reason="mined block was reorged away")

        await self._db.run(reopen)
        for tx in vanished:
            log.warning(
                "tx_reorged_out", tx_hash=tx.tx_hash, nonce=tx.nonce, mined_block=tx.mined_block
            )
        return len(vanished)

    async def _look_up(
        self, candidates: Sequence[TxRecord], check_known: Sequence[TxRecord]
    ) -> tuple[dict[str, Any], dict[str, bool]]:
        """Receipts of ``candidates`` (hash -> receipt, None, or an error) and whether the
        node still knows each of ``check_known`` (hash -> bool), in batched round trips."""
        calls = [RpcCall("eth_getTransactionReceipt", [tx.tx_hash]) for tx in candidates]
        calls += [RpcCall("eth_getTransactionByHash", [tx.tx_hash]) for tx in check_known]
        answers: list[Any] = []
        for start in range(0, len(calls), LOOKUP_CHUNK):
            answers += await self._rpc.batch_settled(calls[start : start + LOOKUP_CHUNK])
        receipts = {tx.tx_hash: answers[i] for i, tx in enumerate(candidates)}
        known: dict[str, bool] = {}
        for i, tx in enumerate(check_known):
            answer = answers[len(candidates) + i]
            if not isinstance(answer, HodlaiError):  # unknown stays unknown: no re-send
                known[tx.tx_hash] = answer is not None
        return receipts, known

    def _invalid_sync(self, conn: sqlite3.Connection, txs: Sequence[TxRecord]) -> dict[int, str]:
        by_kind: dict[str, list[TxRecord]] = {}
        for tx in txs:
            by_kind.setdefault(tx.purpose.kind, []).append(tx)
        out: dict[int, str] = {}
        for kind, group in by_kind.items():
            out.update(self._handlers[kind].invalid(conn, group))
        return out

    async def _replace(self, plans: Sequence[Replacement], report: PollReport) -> None:
        market = await fetch_market(self._rpc)
        signed: list[tuple[Replacement, SignedTx]] = []
        for plan in plans:
            fees = replacements.replacement_fees(plan, market, self.policy.fees)
            if fees is not None:
                signed.append((plan, self._signer.sign(plan.call, nonce=plan.nonce, fees=fees)))
        if not signed:
            return
        ids = await self._db.run(self._record_replacements_sync, signed, self._clock())
        items: list[tuple[int, str, str]] = []
        for (plan, tx), tx_id in zip(signed, ids, strict=True):
            if tx_id is None:
                continue
            items.append((tx_id, tx.tx_hash, tx.raw))
            report.add(plan.kind)
            log.info(
                "tx_" + plan.kind,
                nonce=plan.nonce,
                old_tx=plan.old.tx_hash if plan.old else None,
                new_tx=tx.tx_hash,
                reason=plan.reason,
                **tx.fees.describe(),
            )
        await self._send(items)

    def _record_replacements_sync(
        self, conn: sqlite3.Connection, signed: Sequence[tuple[Replacement, SignedTx]], now: float
    ) -> list[int | None]:
        ids: list[int | None] = []
        with atomic(conn):
            for plan, tx in signed:
                try:
                    with atomic(conn):
                        tx_id = ledger.insert(
                            conn,
                            tx,
                            plan.purpose,
                            sender=self.sender,
                            now=now,
                            replaces=plan.old,
                            replaced_reason=plan.reason,
                        )
                        if plan.rejected and plan.old is not None:
                            tell(
                                conn, self._handlers, plan.old, Settlement.REJECTED,
                                detail=plan.reason, now=now,
                            )  # fmt: skip
                except TransitionConflict:
                    ids.append(None)  # settled meanwhile: nothing to replace
                    continue
                ids.append(tx_id)
        return ids


def _store_broadcast(
    conn: sqlite3.Connection,
    accepted: Sequence[int],
    refused: Sequence[tuple[int, BroadcastResult]],
    now: float,
) -> None:
    with atomic(conn):
        ledger.mark_accepted(conn, accepted, now=now)
        for tx_id, result in refused:
            ledger.note_error(conn, tx_id, f"{result.outcome.value}: {result.detail}", now=now)
