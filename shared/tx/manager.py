"""The transaction manager: one key on one chain, many transactions in flight, each nonce
used once.

It is generic: it knows calls, nonces, fees and receipts, not requests. What a transaction is
*for* is a :class:`~shared.tx.ledger.Purpose`, judged by the
:class:`~shared.tx.settlement.PurposeHandler` registered for its kind (the fulfiller registers
one for 'fulfil'; later executors register theirs). Guarantees:

- Record before broadcast: :meth:`TxManager.record` signs and commits each transaction,
  together with its purpose's own state change, before :meth:`TxManager.broadcast` lets any
  node see it. Killed at any instant, the ledger holds every transaction a node might have.
- It refuses a database connection below ``synchronous=FULL`` (NotDurableError), and checks
  each new submission against its key's spend policy (shared/tx/policy.py) before signing
  it: a violation skips that submission (SpendPolicyError naming the rule), signs nothing
  and uses no nonce.
- It signs only while it holds its key's sender claim (shared/tx/senders.py): one process per
  (key, chain) across processes, refreshed by a heartbeat every poll.
- It sends on its signer's chain (:attr:`TxManager.chain_id`) and sees only the ledger rows of
  (its key, that chain): the same key on another chain is another manager, with its own
  nonce sequence, that never touches these rows (shared/tx/ledger.py).
- At most ``window`` nonces are open at once; within them transactions are pipelined (sent
  without waiting for the previous receipt) with consecutive nonces.
- Every poll (:meth:`TxManager.poll`) reads the head, the nonce count and the receipts of
  every row at every open nonce in one batch (shared/tx/watch.py). An answer whose head is
  behind the highest head seen is no verdict at all (shared/tx/evidence.py): behind a load
  balancer it comes from a lagging backend.
- Verdicts come from evidence, never from an absence: a receipt settles a nonce as mined; a
  consumed nonce without one is settled as used by someone else only when the chain shows
  another transaction hash at that nonce (shared/tx/settlement.py); a transaction is judged
  not mined only when its receipt is missing on two polls some time apart from nodes at or
  past the head of the first.
- A transaction the node no longer knows is broadcast again: the same signed bytes, so it can
  never become a second, different transaction. Stuck, underpriced, rejected and invalid
  transactions and gaps are handled on their own nonce (shared/tx/replacements.py), so two
  transactions for one purpose are only ever alternatives on one nonce, of which at most one
  mines. A nonce where one of ours already mined is never a gap.
- A mined transaction that a reorg took out (the header of its block changed, and its receipt
  stays missing) is *held*: never re-broadcast until its purpose confirms that its subject is
  still the same version at a block at least ``confirmations`` deep
  (:meth:`~shared.tx.settlement.PurposeHandler.anchors`); otherwise it is cancelled. Its
  purpose is told :meth:`~shared.tx.settlement.PurposeHandler.reorged` in the transaction
  that reopens it; when held no longer, the same signed bytes are sent again.
- A settled transaction is told FINAL once its block is ``confirmations`` deep and still
  canonical, judged from the poll's one batch (shared/tx/settlement.py's guarantees say
  which outcomes may be undone).
- On start (:meth:`TxManager.start`) the next nonce is reconciled with the ledger and the
  chain (latest and pending) and every recorded, unsettled transaction is broadcast again,
  except one whose purpose no longer holds: invalid wins, always. An invalid transaction is
  never broadcast (not at start, not behind a lagging node); the replacement plan cancels it
  on its nonce. An open row whose purpose kind has no registered handler stops the start
  with UnregisteredPurposeError (a ConfigError; the run loop does not retry it) naming the
  kinds: nobody could judge it.
- Nobody is told REJECTED on one node's error text: the cancel of a refused transaction only
  competes with it on its nonce, and the purpose learns the outcome at settlement.
- Fee bumps re-sign the call of the row's signed bytes, checked against its columns, signer
  and chain (shared/tx/replacements.py ``signed_call``); a row that differs is refused:
  logged as an error, counted (``hodlai_txs_total{outcome="bump_refused"}``), nothing signed.
- Sender fencing: every ledger insert checks, in its own transaction, that the key's
  ``senders`` row is still this claim's generation and owner; a takeover raises
  SenderTakenOverError, which the run loop does not survive (shared/runtime.py).
- With ``halt_on_foreign_nonce`` (money senders), a nonce consumed by a transaction this node
  did not sign halts the key (a ``halts`` row for worker ``sender:<address>``, counted as
  ``hodlai_txs_total{outcome="sender_halted"}``): nothing new is signed (no record, no
  replacement) and every poll ends with SenderHaltedError (so health turns unhealthy) until
  an operator resumes it (shared.halt.resume). Without it (the oracle) a warning is logged.
- Under a fee spike: replacements are priced from a node at least as new as the last poll's
  head (shared.tx.fees.fetch_market ``at_least``); a transaction a node refused for its
  price is sent again only once the base fee (or the gas price) differs from when it was
  refused, or as a bump with new fees; each refusal and each fee-cap stop is logged once
  per transaction and state.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import structlog

from shared import halt
from shared.chain.rpc import RpcCall, RpcClient, hex_int
from shared.db import AsyncDatabase, atomic, require_durable
from shared.errors import (
    HodlaiError,
    LedgerTamperedError,
    PermanentError,
    SenderHaltedError,
    SpendPolicyError,
    StaleNodeError,
    TransitionConflict,
    UnregisteredPurposeError,
)
from shared.metrics import TXS, TXS_IN_FLIGHT
from shared.tx import ledger, replacements, watch
from shared.tx.broadcast import BroadcastOutcome, BroadcastResult, broadcast
from shared.tx.chainview import RpcChainView
from shared.tx.evidence import Absences, HeadTracker, NonceUser, find_nonce_user
from shared.tx.fees import FeePolicy, Fees, Market, fetch_market
from shared.tx.ledger import CANCEL_PURPOSE, Purpose, TxRecord, TxStatus
from shared.tx.nonces import NonceTracker
from shared.tx.policy import SpendPolicy, movements, record_spends
from shared.tx.receipts import Receipt, parse_receipt
from shared.tx.replacements import Replacement
from shared.tx.senders import SenderClaim
from shared.tx.settlement import (
    PurposeHandler,
    Settlement,
    final_verdicts,
    finalize,
    settle_nonces,
    tell,
    undo,
)
from shared.tx.signer import Call, SignedTx, Signer

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
    # Blocks a held transaction's subject must lie below the head before it is re-sent
    # (HODLAI_CONFIRMATIONS: the depth the indexer accepts requests at).
    confirmations: int = 3
    # Seconds between the two polls on which a receipt must be missing before it counts as
    # not there: longer than one block on any chain we serve, so a backend one block behind
    # cannot make a mined transaction look gone.
    absent_after_s: float = 3.0
    # Blocks below the head in which our mined transactions are watched for reorgs
    # (HODLAI_MAX_REORG_DEPTH's default: deeper reorgs stop the indexer for an operator).
    reorg_watch_blocks: int = 64

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError("window must be at least 1")
        if self.confirmations < 0 or self.reorg_watch_blocks < 1:
            raise ValueError("confirmations must be >= 0 and reorg_watch_blocks >= 1")


@dataclass(frozen=True)
class Submission:
    """A new transaction to sign: the call, its purpose, ``key`` (the idempotency key that
    names this intended transaction; recording a key already in the ledger signs nothing and
    returns that row) and ``bind``, which runs in the same database transaction as the ledger
    insert (raise a PermanentError to skip this one)."""

    call: Call
    purpose: Purpose
    bind: Callable[[sqlite3.Connection, SignedTx], None]
    key: str
    #: the block the call was simulated at (recorded; a re-simulation uses one as new)
    simulated_block: int | None = None


@dataclass(frozen=True)
class Recorded:
    submission: Submission
    signed: SignedTx | None = None
    tx_id: int | None = None
    skipped: PermanentError | None = None
    #: the row that already holds this submission's key (nothing was signed)
    existing_id: int | None = None


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
        signer: Signer,
        policy: TxPolicy,
        handlers: Mapping[str, PurposeHandler],
        claim: SenderClaim,
        clock: Callable[[], float] = time.time,
        spend_policy: SpendPolicy | None = None,
        halt_on_foreign_nonce: bool = False,
    ) -> None:
        """``halt_on_foreign_nonce``: True for senders of users' money (see the module
        docstring); the oracle keeps False and only warns."""
        if claim.address != signer.address:
            raise ValueError(f"the sender claim is for {claim.address}, not {signer.address}")
        # What it records must survive a power cut: a lost row re-pays after a restart.
        require_durable(db.conn, who="the transaction manager")
        #: checked before each new submission is signed (shared/tx/policy.py); None: any call
        self.spend_policy = spend_policy
        if claim.chain_id != signer.chain_id:
            raise ValueError(
                f"the sender claim is for chain {claim.chain_id}, the signer for "
                f"chain {signer.chain_id}"
            )
        self._claim = claim
        self._db = db
        self._rpc = rpc
        self._signer = signer
        self.policy = policy
        self._handlers = dict(handlers)
        self._clock = clock
        self._nonces = NonceTracker()
        self._heads = HeadTracker()
        self._nonce_absences = Absences(policy.absent_after_s)
        self._mined_absences = Absences(policy.absent_after_s)
        self._open_nonces = 0
        #: set when a node refused a transaction for lack of funds; cleared by the owner once
        #: the balance is back (see the fulfiller's balance check)
        self.funds_short = False
        self.halt_on_foreign_nonce = halt_on_foreign_nonce
        #: the halts row's worker name of this key (shared.halt)
        self.halt_worker = f"sender:{signer.address}"
        self._halt_reason: str | None = None
        self._starting = False
        #: tx id -> the market level (Market.level, None: unknown) when a node refused it for
        #: its price; it is not sent again until the level differs
        self._price_refused: dict[int, int | None] = {}
        #: (tx id or gap nonce, what) already logged: each refusal or cap stop logged once
        self._said: set[tuple[str, str]] = set()

    @property
    def sender(self) -> str:
        return self._signer.address

    @property
    def chain_id(self) -> int:
        """The chain this manager sends on: its signer's. Its ledger rows, nonces and sender
        claim are those of (sender, chain id); the same key on another chain is another
        manager's."""
        return self._signer.chain_id

    @property
    def in_flight(self) -> int:
        """Open nonces (signed, not yet settled)."""
        return self._open_nonces

    @property
    def best_head(self) -> int | None:
        """The highest chain head seen (None before the first poll)."""
        return self._heads.best

    @property
    def halted(self) -> str | None:
        """Why this key is halted for an operator (None: it is not); nothing new is signed."""
        return self._halt_reason

    @property
    def room(self) -> int:
        """How many new transactions the window admits now."""
        return max(0, self.policy.window - self._open_nonces)

    async def close(self) -> None:
        """Give the sending key back (the row and the OS lock); nothing is signed after."""
        await self._db.run(self._claim.release)

    # --- start ------------------------------------------------------------------------------

    async def start(self) -> PollReport:
        """Refuse open rows of unregistered purpose kinds; reconcile nonces with the ledger and
        the chain; broadcast every unsettled, still valid tx again (cancel the invalid)."""
        adopted = await self._db.run(ledger.adopt_unchained, self.sender, chain_id=self.chain_id)
        if adopted:
            log.info("tx_rows_adopted", sender=self.sender, chain_id=self.chain_id, rows=adopted)
        kinds = set(await self._db.run(_open_kinds, self.sender, self.chain_id))
        unknown = sorted(kinds - set(self._handlers) - {CANCEL_PURPOSE})
        if unknown:
            raise UnregisteredPurposeError(
                f"open transactions of {self.sender} have purpose kinds no handler is "
                f"registered for: {', '.join(unknown)}; start the executor that registers "
                "them (nothing could judge whether they still hold)"
            )
        latest_raw, pending_raw = await self._rpc.batch(
            [
                RpcCall("eth_getTransactionCount", [self.sender, "latest"]),
                RpcCall("eth_getTransactionCount", [self.sender, "pending"]),
            ]
        )
        recorded_next = await self._db.run(
            ledger.next_unused_nonce, self.sender, chain_id=self.chain_id
        )
        self._nonces.reconcile(
            recorded_next=recorded_next,
            chain_latest=hex_int(latest_raw),
            chain_pending=hex_int(pending_raw),
        )
        self._starting = True  # a halted key still starts: it follows what is in flight
        try:
            report = await self.poll(rebroadcast_all=True)
        finally:
            self._starting = False
        log.info(
            "tx_manager_started",
            sender=self.sender,
            open_nonces=report.open_nonces,
            halted=self._halt_reason,
        )
        return report

    # --- new transactions -------------------------------------------------------------------

    async def record(self, submissions: Sequence[Submission], fees: Fees) -> list[Recorded]:
        """Sign each submission with the next nonce and commit it with its ``bind`` in one
        database transaction (one fsync for the batch). Nothing is broadcast yet."""
        if not submissions:
            return []
        if len(submissions) > self.room:
            raise ValueError(f"{len(submissions)} submissions exceed the window's room {self.room}")
        unknown = sorted({s.purpose.kind for s in submissions} - set(self._handlers))
        if unknown:
            raise ValueError(f"no handler is registered for purpose kinds {', '.join(unknown)}")
        self._halt_reason = await self._db.run(halt.halted, self.halt_worker)
        if self._halt_reason is not None:
            raise SenderHaltedError(f"{self.halt_worker} is halted: {self._halt_reason}")
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
            self._claim.check(conn)  # fences every insert below: one transaction
            known = ledger.recorded_keys(conn, [sub.key for sub in submissions])
            for sub in submissions:
                if sub.key in known:
                    # The intended transaction is recorded already (a caller retrying after a
                    # crash or a lost answer, or twice in one batch): never a second one.
                    out.append(Recorded(sub, existing_id=known[sub.key]))
                    continue
                try:  # the spend policy, before anything is signed (it sees this batch's spends)
                    moved = (
                        movements(sub.call, strict=False)
                        if self.spend_policy is None
                        else self.spend_policy.check(conn, sub.call, sender=self.sender, now=now)
                    )
                except SpendPolicyError as exc:
                    log.warning("tx_spend_refused", key=sub.key, rule=exc.rule, error=str(exc))
                    out.append(Recorded(sub, skipped=exc))
                    continue
                signed = self._signer.sign(sub.call, nonce=nonce, fees=fees)
                try:
                    with atomic(conn):  # a savepoint: one refused bind undoes only its own row
                        tx_id = ledger.insert(
                            conn, signed, sub.purpose, sender=self.sender,
                            chain_id=self.chain_id, now=now,
                            simulated_block=sub.simulated_block, idempotency_key=sub.key,
                        )  # fmt: skip
                        record_spends(conn, tx_id, sender=self.sender, moved=moved, now=now)
                        sub.bind(conn, signed)
                except PermanentError as exc:
                    out.append(Recorded(sub, skipped=exc))
                    continue
                out.append(Recorded(sub, signed=signed, tx_id=tx_id))
                known[sub.key] = tx_id
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
        for tx_id in accepted:
            self._price_refused.pop(tx_id, None)
        priced = [tx_id for tx_id, r in refused if r.outcome is BroadcastOutcome.UNDERPRICED]
        if priced:
            # Remember the price of inclusion it was refused at: sent again only once it moves.
            level = await self._market_level()
            self._price_refused.update((tx_id, level) for tx_id in priced)
        for tx_id, result in refused:
            if result.outcome is BroadcastOutcome.INSUFFICIENT_FUNDS:
                if not self.funds_short:
                    log.warning("tx_insufficient_funds", sender=self.sender, detail=result.detail)
                self.funds_short = True
            elif result.outcome is not BroadcastOutcome.NONCE_TOO_LOW and self._first_time(
                str(tx_id), result.outcome.value
            ):
                log.info(
                    "tx_broadcast_refused",
                    tx_hash=result.tx_hash,
                    outcome=result.outcome.value,
                    detail=result.detail,
                )
        return results

    def _first_time(self, subject: str, what: str) -> bool:
        """True the first time ``what`` is said of ``subject`` (a tx id, a gap nonce) while it
        stays in that state: a refusal repeated every poll is logged once."""
        if (subject, what) in self._said:
            return False
        self._said = {(s, w) for s, w in self._said if s != subject}  # a new state of it
        self._said.add((subject, what))
        return True

    async def _market_level(self) -> int | None:
        """The price of inclusion now (shared.tx.fees.Market.level) from a node at least as
        new as our best head; None when no such node answered."""
        try:
            return (await fetch_market(self._rpc, at_least=self._heads.best)).level
        except HodlaiError as exc:
            log.debug("tx_market_unavailable", error=str(exc))
            return None

    # --- following transactions -------------------------------------------------------------

    async def poll(self, *, rebroadcast_all: bool = False) -> PollReport:
        """Settle nonces on evidence, watch recent blocks for reorgs, confirm or cancel held
        transactions, re-broadcast what nodes forgot, replace what is stuck, cancel what lost
        its purpose and fill gaps. Returns what it did."""
        now = self._clock()
        report = PollReport()
        await self._db.run(self._claim.heartbeat, now=now)
        self._halt_reason = await self._db.run(halt.halted, self.halt_worker)
        best = self._heads.best
        snap = await self._db.run(
            watch.snapshot,
            self.sender,
            self._handlers,
            chain_id=self.chain_id,
            mined_since_block=None if best is None else best - self.policy.reorg_watch_blocks,
            final_up_to_block=None if best is None else best - self.policy.confirmations,
            now=now,
            chain=RpcChainView.here(self._rpc, head=best, confirmations=self.policy.confirmations),
        )
        check_known = [
            tx
            for tx in snap.open_rows
            if tx.status is TxStatus.BROADCAST
            and not tx.held
            and not rebroadcast_all
            and now - (tx.broadcast_at or tx.created_at) >= self.policy.rebroadcast_after_s
        ]
        plan = watch.lookups(snap, self.sender, check_known=check_known)
        answers = await self._ask(plan.calls)
        head = hex_int(_ok(answers[watch.HEAD_SLOT]))
        if not self._heads.observe(head, now):
            # A node behind what we have seen: nothing it says (or leaves out) is a verdict.
            report.add("stale_view")
            unsent = [
                tx
                for tx in snap.open_rows
                if tx.status is TxStatus.SIGNED
                and not tx.held
                and tx.id not in snap.invalid  # invalid wins: the plan cancels it later
                and tx.id not in self._price_refused  # no market to tell whether it moved
            ]
            await self._send([(tx.id, tx.tx_hash, tx.raw) for tx in unsent])
            return await self._finish(report, head)
        count = hex_int(_ok(answers[watch.COUNT_SLOT]))
        report.chain_latest = count
        self._nonces.observe_chain(count)
        receipts = {h: answers[slot] for h, slot in plan.receipts.items()}

        settled = await self._settle(snap, receipts, count=count, head=head, now=now)
        for what, n in settled.items():
            report.add(what, n)
        if settled.get("dropped") and self.halt_on_foreign_nonce:
            await self._halt_for_foreign_nonce(report, head=head, now=now)
        final, suspects = self._judge_final(snap, plan, answers, head=head)
        reorged = await self._watch_reorgs(snap, plan, answers, head=head, now=now, also=suspects)
        for what, n in reorged.items():
            report.add(what, n)
        if final:
            report.add(
                "final", await self._db.run(finalize, final, self._handlers, head=head, now=now)
            )
        released, unanchored = self._judge_held(snap, plan, answers, head=head)
        if released:
            await self._db.run(_release, released, now)
            report.add("released", len(released))

        # Nonces the chain may not have consumed yet, without a receipt this poll.
        done = {tx.nonce for tx in snap.at_open if isinstance(receipts.get(tx.tx_hash), dict)}
        # A nonce of ours that mined proves every nonce below it consumed, whatever the count
        # (from a lagging entry of a split batch) says: none of them can be a gap.
        floor = max(count, snap.settled_floor, max(done, default=-1) + 1)
        waiting = [
            tx
            for tx in snap.open_rows
            if tx.nonce >= count and tx.nonce not in done and tx.nonce not in snap.settled_open
        ]
        await self._send_decisions(
            snap, plan, answers, waiting=waiting, released=released, unanchored=unanchored,
            floor=floor, now=now, rebroadcast_all=rebroadcast_all, report=report,
        )  # fmt: skip
        return await self._finish(report, head)

    async def _send_decisions(
        self,
        snap: watch.Snapshot,
        plan: watch.Lookups,
        answers: Sequence[Any],
        *,
        waiting: Sequence[TxRecord],
        released: Sequence[TxRecord],
        unanchored: Mapping[int, str],
        floor: int,
        now: float,
        rebroadcast_all: bool,
        report: PollReport,
    ) -> None:
        """Of the ``waiting`` transactions, (re-)broadcast those that should go out, then
        replace, cancel and fill gaps (shared/tx/replacements.py)."""
        mined_per_view = {h for h, slot in plan.known.items() if watch.seen_mined(answers[slot])}
        release_ids = {tx.id for tx in released}
        # Invalid wins over every reason to send, at start too: an operator's cancel made
        # while the process was down must not go out first and then race its own cancel.
        invalid = {**snap.invalid, **unanchored}
        open_ids = {tx.id for tx in snap.open_rows}
        self._price_refused = {i: v for i, v in self._price_refused.items() if i in open_ids}
        self._said = {(s, w) for s, w in self._said if _still_open(s, open_ids, floor)}
        level = (
            await self._market_level()
            if any(tx.id in self._price_refused for tx in waiting)
            else None
        )

        def wants_send(tx: TxRecord) -> bool:
            if tx.id in invalid:
                return False  # never broadcast: the replacement plan cancels it
            if tx.id in release_ids:
                return True
            if tx.held or tx.tx_hash in mined_per_view:
                return False  # held for its purpose; or mined, its receipt not visible yet
            if tx.id in self._price_refused:
                # Refused for its price: the same bytes only once the market moved (a bump,
                # with new fees, is a new transaction and is sent as one).
                return level is not None and level != self._price_refused[tx.id]
            if rebroadcast_all or tx.status is TxStatus.SIGNED:
                return True
            slot = plan.known.get(tx.tx_hash)
            return slot is not None and answers[slot] is None  # the node forgot it

        to_send = [tx for tx in waiting if wants_send(tx)]
        results = await self._send([(tx.id, tx.tx_hash, tx.raw) for tx in to_send])
        report.add("rebroadcast", sum(1 for tx in to_send if tx.status is TxStatus.BROADCAST))
        outcomes = {r.tx_hash: r.outcome for r in results}

        plans = replacements.plan(
            waiting,
            sender=self.sender,
            outcomes=outcomes,
            invalid=invalid,
            chain_latest=floor,
            now=now,
            stuck_after_s=self.policy.stuck_after_s,
            reprice_after_s=self.policy.rebroadcast_after_s,
            skip_bump={tx.id for tx in waiting if tx.held or tx.tx_hash in mined_per_view}
            - release_ids,
            price_refused=set(self._price_refused),
        )
        if plans:
            await self._replace(plans, report)

    async def _halt_for_foreign_nonce(self, report: PollReport, *, head: int, now: float) -> None:
        """A nonce of this key was consumed by a transaction we did not sign: someone else
        signs with our key. Halt it for an operator (see the module docstring)."""
        detail = await self._db.run(_last_dropped, self.sender, self.chain_id)
        reason = (
            f"a nonce of {self.sender} was used by a transaction this node did not sign "
            f"({detail}): another signer holds this key; nothing more is signed with it"
        )
        if await self._db.run(
            lambda conn: halt.halt(conn, reason, worker=self.halt_worker, at_block=head, now=now)
        ):
            report.add("sender_halted")
            log.error("sender_halted", sender=self.sender, worker=self.halt_worker, reason=reason)
        self._halt_reason = reason

    async def _finish(self, report: PollReport, head: int) -> PollReport:
        self._open_nonces = len(
            {
                tx.nonce
                for tx in await self._db.run(ledger.open_txs, self.sender, chain_id=self.chain_id)
            }
        )
        report.open_nonces = self._open_nonces
        TXS_IN_FLIGHT.set(self._open_nonces)
        if report.counts:
            # A poll that only met a node behind is routine behind a load balancer: debug.
            quiet = set(report.counts) <= {"stale_view"}
            (log.debug if quiet else log.info)(
                "tx_poll",
                head=head,
                chain_nonce=report.chain_latest,
                open_nonces=self._open_nonces,
                **report.counts,
            )
        if self._halt_reason is not None and not self._starting:
            # Every step fails while the key is halted, so health turns unhealthy; what is in
            # flight was followed above all the same.
            raise SenderHaltedError(f"{self.halt_worker} is halted: {self._halt_reason}")
        return report

    async def _ask(self, calls: Sequence[RpcCall]) -> list[Any]:
        """The poll's batch, LOOKUP_CHUNK calls per POST. The first POST carries the head and
        the nonce count; every further POST carries its own head, and its answers count only
        if that head is not behind the first one's (else they read as missing)."""
        answers = list(await self._rpc.batch_settled(calls[:LOOKUP_CHUNK]))
        first_head = _ok(answers[watch.HEAD_SLOT])
        for start in range(LOOKUP_CHUNK, len(calls), LOOKUP_CHUNK):
            chunk = calls[start : start + LOOKUP_CHUNK]
            part = await self._rpc.batch_settled([RpcCall("eth_blockNumber", []), *chunk])
            fresh = not isinstance(part[0], HodlaiError) and hex_int(part[0]) >= hex_int(first_head)
            stale = StaleNodeError("a later part of the poll came from a node behind")
            answers += part[1:] if fresh else [stale] * len(chunk)
        return answers

    async def _settle(
        self,
        snap: watch.Snapshot,
        receipts: dict[str, Any],
        *,
        count: int,
        head: int,
        now: float,
    ) -> Counter[str]:
        """Settle what a receipt proves mined, and consumed nonces whose user the chain
        shows; a consumed nonce without either is looked at again on later polls."""
        by_nonce: dict[int, list[TxRecord]] = {}
        for tx in snap.at_open:
            by_nonce.setdefault(tx.nonce, []).append(tx)
        users: dict[int, NonceUser] = {}
        wanted: set[str] = set()
        for nonce, rows in sorted(by_nonce.items()):
            if any(isinstance(receipts.get(tx.tx_hash), dict) for tx in rows):
                continue
            if nonce >= count or any(
                isinstance(receipts.get(tx.tx_hash), HodlaiError) for tx in rows
            ):
                continue
            key = f"nonce:{nonce}"
            wanted.add(key)
            if not self._nonce_absences.missing(key, now=now, head=head):
                continue
            user = await find_nonce_user(self._rpc, self.sender, nonce, head=head)
            if user is None:
                log.warning("tx_nonce_consumed_unexplained", nonce=nonce, head=head)
            elif user.tx_hash in {tx.tx_hash for tx in rows}:
                # Ours mined there; its receipt was hidden from us. Read it again now.
                try:
                    receipts[user.tx_hash] = await self._rpc.call(
                        "eth_getTransactionReceipt", [user.tx_hash]
                    )
                except HodlaiError as exc:
                    log.info("tx_receipt_unavailable", tx_hash=user.tx_hash, error=str(exc))
            else:
                users[nonce] = user
        self._nonce_absences.forget_except(wanted)
        candidates = [
            tx
            for tx in snap.at_open
            if tx.nonce in users
            or any(isinstance(receipts.get(r.tx_hash), dict) for r in by_nonce[tx.nonce])
        ]
        if not candidates:
            return Counter()
        return await self._db.run(
            settle_nonces, candidates, receipts, self._handlers, now=now, users=users
        )

    def _judge_final(
        self, snap: watch.Snapshot, plan: watch.Lookups, answers: Sequence[Any], *, head: int
    ) -> tuple[list[tuple[TxRecord, Receipt]], list[TxRecord]]:
        """Of the settled rows not told FINAL yet: those final now (their receipt's block
        ``confirmations`` below this poll's head, and the header at that height, from this
        fresh poll, carrying that very hash), and the suspects the chain shows elsewhere."""
        receipts = {h: answers[slot] for h, slot in plan.final_receipts.items()}
        headers: dict[int, str | None] = {}
        for number, slot in plan.headers.items():
            answer = answers[slot]
            at = answer.get("number") if isinstance(answer, dict) else None
            # a header only counts for the height asked (a node answering another is no view)
            ok = isinstance(at, str) and at.startswith("0x") and int(at, 16) == number
            headers[number] = watch.block_hash(answer) if ok else None
        return final_verdicts(
            snap.unfinal, receipts, headers, head=head, confirmations=self.policy.confirmations
        )

    def _to_watch(
        self,
        snap: watch.Snapshot,
        plan: watch.Lookups,
        answers: Sequence[Any],
        *,
        head: int,
        also: Sequence[TxRecord],
    ) -> list[TxRecord]:
        """The settled rows whose receipts the reorg watch must read again: every recent one
        when the header of the highest recent block changed, and the suspects ``also``."""
        watched: list[TxRecord] = []
        suspect_ids = {tx.id for tx in also}
        if plan.watch_slot is not None and plan.watch_block is not None:
            top = snap.recent_mined[0]
            seen = watch.block_hash(answers[plan.watch_slot])
            if seen is not None and (top.mined_block_hash is None or seen == top.mined_block_hash):
                for tx in snap.recent_mined:
                    if tx.id not in suspect_ids:  # a suspect's absence must be seen twice
                        self._mined_absences.found(tx.tx_hash)
            elif seen is not None or head < plan.watch_block:
                watched = list(snap.recent_mined)
            # else the node claims the height but lacks the block: an inconsistent view
        watched_ids = {tx.id for tx in watched}
        return watched + [tx for tx in also if tx.id not in watched_ids]

    async def _watch_reorgs(
        self,
        snap: watch.Snapshot,
        plan: watch.Lookups,
        answers: Sequence[Any],
        *,
        head: int,
        now: float,
        also: Sequence[TxRecord] = (),
    ) -> Counter[str]:
        """Reopen (held) our recently settled transactions that a reorg took out of the chain,
        telling their purposes, and follow those it re-included in another block. Evidence:
        the header of the highest block one of them is in has another hash (or the chain is
        now shorter than that block), or the finality check saw one in another block than
        recorded (``also``); then each one's receipt is missing on two polls some time apart
        from nodes at or past the head of the first."""
        watched = self._to_watch(snap, plan, answers, head=head, also=also)
        if not watched:
            return Counter()
        batch = [RpcCall("eth_blockNumber", [])]
        batch += [RpcCall("eth_getTransactionReceipt", [tx.tx_hash]) for tx in watched]
        again = await self._ask(batch)
        second_head = hex_int(_ok(again[0]))
        if not self._heads.observe(second_head, now):
            return Counter()
        vanished: list[TxRecord] = []
        moved: list[tuple[TxRecord, Receipt]] = []
        for tx, answer in zip(watched, again[1:], strict=True):
            if isinstance(answer, dict):
                self._mined_absences.found(tx.tx_hash)
                receipt = parse_receipt(answer)
                if receipt.block_hash != tx.mined_block_hash or receipt.ok != (
                    tx.status is TxStatus.MINED
                ):
                    moved.append((tx, receipt))
            elif answer is None and self._mined_absences.missing(
                tx.tx_hash, now=now, head=second_head
            ):
                vanished.append(tx)
        if not vanished and not moved:
            return Counter()
        counts = await self._db.run(
            _reopen_and_move, vanished, moved, now, second_head, self._handlers
        )
        for tx in vanished:
            self._mined_absences.found(tx.tx_hash)
            log.warning(
                "tx_reorged_out",
                tx_hash=tx.tx_hash,
                nonce=tx.nonce,
                mined_block=tx.mined_block,
                held=True,
            )
        for tx, receipt in moved:
            log.info(
                "tx_moved_by_reorg",
                tx_hash=tx.tx_hash,
                old_block=tx.mined_block,
                block=receipt.block_number,
            )
        return counts

    def _judge_held(
        self, snap: watch.Snapshot, plan: watch.Lookups, answers: Sequence[Any], *, head: int
    ) -> tuple[list[TxRecord], dict[int, str]]:
        """Held transactions whose subject is confirmed unchanged at a block at least
        ``confirmations`` deep (released), and those whose subject's block is gone from the
        chain (to cancel: id -> why). The rest stay held."""
        released: list[TxRecord] = []
        gone: dict[int, str] = {}
        for tx in snap.held:
            if tx.id in snap.invalid:
                continue  # cancelled by the replacement plan
            anchor = snap.anchors.get(tx.id)
            if anchor is None:
                released.append(tx)
                continue
            seen = watch.block_hash(answers[plan.headers[anchor.block_number]])
            if seen is None:
                continue
            if seen != anchor.block_hash.lower():
                gone[tx.id] = f"its subject's block {anchor.block_number} is no longer on the chain"
            elif head - anchor.block_number >= self.policy.confirmations:
                released.append(tx)
        return released, gone

    async def _replace(self, plans: Sequence[Replacement], report: PollReport) -> None:
        if self._halt_reason is not None:
            if self._first_time("sender", "halted"):
                log.error("tx_replacements_halted", sender=self.sender, reason=self._halt_reason)
            return
        try:
            market = await fetch_market(self._rpc, at_least=self._heads.best)
        except StaleNodeError as exc:
            report.add("stale_market")  # priced on a later poll, never from behind
            log.debug("tx_market_behind", error=str(exc))
            return
        signed: list[tuple[Replacement, SignedTx]] = []
        for plan in plans:
            call = self._replacement_call(plan, report)
            if call is None:
                continue
            fees = replacements.replacement_fees(plan, market, self.policy.fees)
            if fees is None:
                self._say_capped(plan, market)
                continue
            signed.append((plan, self._signer.sign(call, nonce=plan.nonce, fees=fees)))
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

    def _replacement_call(self, plan: Replacement, report: PollReport) -> Call | None:
        """The call to sign for ``plan``: a cancel's own; for a bump, the call the replaced
        transaction's signed bytes hold, or None (refused) when its row differs from them."""
        if plan.old is None or plan.purpose.kind == CANCEL_PURPOSE:
            return plan.call
        try:
            return replacements.signed_call(
                plan.old, sender=self.sender, chain_id=self._signer.chain_id
            )
        except LedgerTamperedError as exc:
            report.add("bump_refused")
            if self._first_time(str(plan.old.id), "bump_refused"):
                log.error(
                    "tx_bump_refused", tx_hash=plan.old.tx_hash, nonce=plan.nonce, error=str(exc)
                )
            return None

    def _say_capped(self, plan: Replacement, market: Market) -> None:
        """The caps leave no room for ``plan``: said once per transaction (or gap)."""
        if plan.old is None:
            if self._first_time(f"gap:{plan.nonce}", "waits_for_fees"):
                log.warning(
                    "tx_gap_fill_waits_for_fees",
                    nonce=plan.nonce,
                    base_fee=market.base_fee,
                    cap_wei=self.policy.fees.max_fee_per_gas,
                )
            return
        if self._first_time(str(plan.old.id), "fee_cap"):
            log.warning(
                "tx_fee_cap_reached",
                tx_hash=plan.old.tx_hash,
                nonce=plan.nonce,
                reason=plan.reason,
                cap_wei=self.policy.fees.max_fee_per_gas,
                base_fee=market.base_fee,
                **plan.old.fees.describe(),
            )

    def _record_replacements_sync(
        self, conn: sqlite3.Connection, signed: Sequence[tuple[Replacement, SignedTx]], now: float
    ) -> list[int | None]:
        ids: list[int | None] = []
        with atomic(conn):
            for plan, tx in signed:
                existing = ledger.recorded_id(conn, tx.tx_hash)
                if existing is not None:
                    # The same call, nonce and fees signed again: the same transaction. Never
                    # a second row; a gap is filled with it once more if nothing holds the nonce.
                    revived = plan.old is None and ledger.revive(
                        conn, existing, now=now, reason=f"recorded again: {plan.reason}"
                    )
                    ids.append(existing if revived else None)
                    continue
                key = (
                    ledger.replacement_key(plan.old)
                    if plan.old is not None
                    else ledger.free_key(conn, f"gap:{self.sender}:{plan.nonce}")
                )
                # Nobody is told REJECTED here: the cancel competes with the refused
                # transaction, which another node may hold; settlement tells the outcome.
                try:
                    with atomic(conn):
                        tx_id = ledger.insert(
                            conn,
                            tx,
                            plan.purpose,
                            sender=self.sender,
                            chain_id=self.chain_id,
                            now=now,
                            replaces=plan.old,
                            replaced_reason=plan.reason,
                            idempotency_key=key,
                            fence=self._claim,
                        )
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


def _release(conn: sqlite3.Connection, txs: Sequence[TxRecord], now: float) -> None:
    with atomic(conn):
        for tx in txs:
            ledger.release_hold(
                conn, tx.id, now=now, note="purpose confirmed after a reorg; broadcast again"
            )
    for tx in txs:
        log.info("tx_hold_released", tx_hash=tx.tx_hash, nonce=tx.nonce)


def _reopen_and_move(
    conn: sqlite3.Connection,
    vanished: Sequence[TxRecord],
    moved: Sequence[tuple[TxRecord, Receipt]],
    now: float,
    head: int,
    handlers: Mapping[str, PurposeHandler],
) -> Counter[str]:
    """Record what a reorg did to settled transactions, and tell their purposes in the same
    database transaction: a vanished one is reopened (held) and its purposes told
    ``reorged``; one re-included elsewhere keeps its outcome with its finality clock
    restarted, or, re-included with the other result, is settled again (``reorged``, then
    the new outcome with its receipt). An outcome already FINAL undone means a reorg deeper
    than the confirmations: logged as an error and counted (``final_reorged``), and told
    anyway, since the chain no longer holds what the purpose was told."""
    counts: Counter[str] = Counter()
    with atomic(conn):
        for seen in vanished:
            tx = ledger.get(conn, seen.id)
            if tx is None or tx.status not in ledger.SETTLED_STATUSES:
                continue  # settled again or reopened meanwhile
            reason = f"block {tx.mined_block} was reorged away; held until its purpose holds"
            ledger.reopen(conn, tx.id, now=now, head=head, reason=reason)
            counts["reopened"] += 1
            if tx.final_at is not None:
                counts["final_reorged"] += 1
                log.error(
                    "tx_final_reorged_out", tx_hash=tx.tx_hash, nonce=tx.nonce,
                    mined_block=tx.mined_block, head=head,
                )  # fmt: skip
            undo(
                conn, handlers, tx,
                ledger.at_nonces(conn, tx.sender, [tx.nonce], chain_id=tx.chain_id),
                detail=reason, now=now,
            )  # fmt: skip
        for seen, receipt in moved:
            tx = ledger.get(conn, seen.id)
            if tx is None or tx.status not in ledger.SETTLED_STATUSES:
                continue
            if tx.final_at is not None:
                counts["final_reorged"] += 1
                log.error(
                    "tx_final_moved_by_reorg", tx_hash=tx.tx_hash, nonce=tx.nonce,
                    old_block=tx.mined_block, block=receipt.block_number, ok=receipt.ok,
                )  # fmt: skip
            status = TxStatus.MINED if receipt.ok else TxStatus.REVERTED
            if status is tx.status:
                ledger.move_mined(
                    conn, tx.id, block=receipt.block_number, block_hash=receipt.block_hash,
                    now=now,
                )  # fmt: skip
                counts["moved"] += 1
                continue
            detail = (
                f"tx {tx.tx_hash} re-included by a reorg in block {receipt.block_number}, "
                f"{'executed' if receipt.ok else 'reverted'} this time"
            )
            undo(conn, handlers, tx, (), detail=detail, now=now)
            ledger.resettle(
                conn, tx.id, status, block=receipt.block_number, block_hash=receipt.block_hash,
                gas_used=receipt.gas_used, now=now, reason=detail,
            )  # fmt: skip
            outcome = Settlement.MINED if receipt.ok else Settlement.REVERTED
            settled = ledger.get(conn, tx.id)
            assert settled is not None  # rows are never deleted
            tell(conn, handlers, settled, outcome, detail=detail, now=now, receipt=receipt)
            counts["resettled"] += 1
    return counts


def _ok(answer: Any) -> Any:
    """A batch slot's result, or its error raised."""
    if isinstance(answer, HodlaiError):
        raise answer
    return answer


def _open_kinds(conn: sqlite3.Connection, sender: str, chain_id: int) -> list[str]:
    """The purpose kinds of ``sender``'s open transactions on ``chain_id``."""
    rows = conn.execute(
        "SELECT DISTINCT purpose FROM txs WHERE sender = ? AND chain_id = ? "
        "AND status IN ('SIGNED', 'BROADCAST')",
        (sender, chain_id),
    ).fetchall()
    return [str(r[0]) for r in rows]


def _last_dropped(conn: sqlite3.Connection, sender: str, chain_id: int) -> str:
    """Why ``sender``'s latest DROPPED row on ``chain_id`` was dropped (the foreign
    transaction's hash)."""
    row = conn.execute(
        "SELECT error FROM txs WHERE sender = ? AND chain_id = ? AND status = 'DROPPED' "
        "ORDER BY id DESC LIMIT 1",
        (sender, chain_id),
    ).fetchone()
    return "unknown" if row is None or row[0] is None else str(row[0])


def _still_open(subject: str, open_ids: set[int], floor: int) -> bool:
    """Whether a subject of ``TxManager._first_time`` is still worth remembering."""
    if subject.isdigit():
        return int(subject) in open_ids
    if subject.startswith("gap:"):
        return int(subject.removeprefix("gap:")) >= floor
    return True
