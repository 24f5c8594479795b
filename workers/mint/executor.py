"""``hodlai mint-executor``: the seed's background service, one per database (the role lock
of shared.instance refuses a second one: the seed ran "only one instance, to avoid races").

Each step:

1. the relayer's sending service (shared/tx/service.py) polls what is in flight and submits
   recorded funding and refund authorizations (workers/mint/funding.py);
2. every ``HODLAI_MINT_CHECK_INTERVAL_S``: the ledger's reconciler moves SIGNED
   authorizations to what the chain says, open payments are resolved (below), and each
   ``pending_payment`` task is checked: the agent wallet's USDC at a confirmed block, less
   what it holds for the user's other tasks, covers the total cost → ``funded`` (its budget
   set in the ledger first); else past ``HODLAI_MINT_PAYMENT_TIMEOUT_S`` with no funding
   on its way → ``cancelled`` with the seed's message. The age against the timeout and the
   balance against the requirement are logged, as v1.1 shows;
3. each ``funded`` / ``processing`` task that is due buys its next batch: at most
   ``HODLAI_MINT_MAX_BATCH`` mints at once, ``HODLAI_MINT_INTERVAL_S`` apart, each one x402
   purchase (workers/mint/buyer.py); a mint that failed is tried again up to
   ``HODLAI_MINT_MAX_RETRIES`` times; the task ends ``completed`` or ``failed`` with the
   reason.

Exactly once: a payment is recorded before it is signed, its authorization before it is
sent, and a payment whose outcome is unknown (the process died, the server did not answer)
is *resolved*, never bought again: its recorded request is sent again (the server answers a
settled payment with its original mint), and it is given up (``failed``) only once the
ledger's reconciler saw its authorization EXPIRED or CANCELLED on chain. Until then the
ledger refuses a second authorization for that mint. The budget of the task in the ledger is
its total cost, so never more is spent; a mint is bought only for a unit neither minted nor
live, so never more mints than the quantity.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Final

import httpx
import structlog

from shared.chain.rpc import RpcClient, hex_int
from shared.config import Chain
from shared.db import AsyncDatabase, atomic, connect
from shared.errors import ConfigError, HodlaiError, TransitionConflict
from shared.keys.vault import Vault
from shared.metrics import Health
from shared.runtime import WorkerSpec, run_worker
from shared.tx import authorizations as ledger
from shared.tx.authorizations import (
    AuthorizationError,
    AuthorizationStatus,
    DomainAllowlist,
    reconcile,
)
from shared.tx.fees import FeePolicy
from shared.tx.manager import TxManager, TxPolicy
from shared.tx.policy import SpendPolicy, selectors
from shared.tx.senders import claim_sender
from shared.tx.service import SendingConfig, SendingEvents, SendingService
from shared.tx.signer import LocalSigner
from workers.mint import chain as reads
from workers.mint import store
from workers.mint.buyer import Outcome, Purchaser
from workers.mint.funding import TRANSFER_PURPOSE, TransferPurpose, TransferSource
from workers.mint.keyfile import MintKeys, load_mint_keys
from workers.mint.machine import PaymentStatus, TaskStatus, TransferStatus
from workers.mint.settings import KEY_FILE_ENV, MintSettings
from workers.mint.store import Payment, Task

log = structlog.get_logger(__name__)

ROLE: Final = "mint-executor"
EXECUTOR: Final = "mint"
VERSION: Final = "1.1"
TRANSFER_WITH_AUTHORIZATION: Final = (
    "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,"
    "bytes32)"
)
HEALTH_MIN_S: Final = 120.0
# Blocks before a paid authorization's settlement in which its mint is looked for (a server
# may mint before it settles).
MINT_SEARCH_BLOCKS: Final = 256


def timeout_message(timeout_s: int) -> str:
    """The seed's cancellation reason (v1.1), for the configured timeout."""
    if timeout_s % 60 == 0:
        minutes = timeout_s // 60
        span = f"{minutes} minute" + ("s" if minutes != 1 else "")
    else:
        span = f"{timeout_s} seconds"
    return f"Payment timeout: No sufficient balance received within {span}"


def run(settings: MintSettings) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code."""
    settings.require("mint_usdc_address", "mint_key_file")
    if not settings.servers():
        raise ConfigError("missing required setting(s): HODLAI_MINT_SERVER_URL")
    keys = load_mint_keys(settings.mint_key_file)
    if (
        settings.mint_relayer_address
        and settings.mint_relayer_address.lower() != keys.relayer_address.lower()
    ):
        raise ConfigError(
            f"HODLAI_MINT_RELAYER_ADDRESS is {settings.mint_relayer_address} but the relayer "
            f"key of {KEY_FILE_ENV} is {keys.relayer_address}"
        )
    chain = settings.chain(settings.mint_chain)
    spec = WorkerSpec(
        process=ROLE,
        executor=EXECUTOR,
        db_path=settings.db_path,
        health=Health(stale_after_s=max(HEALTH_MIN_S, 12 * settings.mint_check_interval_s)),
        metrics_port=settings.metrics_port,
        role=ROLE,
        durable=True,
    )
    return run_worker(
        spec,
        lambda db, _stop: executor_service(settings, keys, chain, db),
        log_level=settings.log_level,
    )


@asynccontextmanager
async def executor_service(
    settings: MintSettings, keys: MintKeys, chain: Chain, db: AsyncDatabase
) -> AsyncIterator[MintExecutor]:
    rpc = RpcClient(list(chain.rpc_urls), chain_id=chain.chain_id)
    sign_conn: sqlite3.Connection | None = None
    base = httpx.AsyncHTTPTransport(
        limits=httpx.Limits(max_connections=4 * settings.mint_concurrency)
    )
    try:
        chain_id = hex_int(await rpc.call("eth_chainId"))
        if chain.chain_id is not None and chain.chain_id != chain_id:
            raise ConfigError(
                f"{chain.rpc_setting} serves chain {chain_id}, not the configured {chain.chain_id}"
            )
        await rpc.expect_chain(chain_id)
        usdc = settings.mint_usdc_address
        allowlist = DomainAllowlist([(usdc, chain_id)])
        await allowlist.resolve(rpc, usdc, chain_id, now=time.time())
        # The signing connection: the vault and the ledger sign on it, outside any
        # transaction of the executor's own connection (the ledger commits before it returns).
        sign_conn = connect(settings.db_path, durable=True)
        vault = Vault(sign_conn, keys.master_key())
        signer = LocalSigner(keys.server_key, chain_id=chain_id)
        claim = await db.run(
            lambda conn: claim_sender(
                settings.db_path, conn, signer.address, owner=ROLE, chain_id=chain_id
            )
        )
        try:
            fees = FeePolicy(
                max_fee_per_gas=settings.max_fee_wei,
                max_priority_fee_per_gas=settings.max_priority_fee_wei,
            )
            manager = TxManager(
                db=db,
                rpc=rpc,
                signer=signer,
                policy=TxPolicy(
                    fees=fees,
                    window=settings.mint_relayer_window,
                    confirmations=chain.confirmations,
                ),
                handlers={TRANSFER_PURPOSE: TransferPurpose()},
                claim=claim,
                spend_policy=SpendPolicy(contracts={usdc: selectors(TRANSFER_WITH_AUTHORIZATION)}),
                halt_on_foreign_nonce=True,
            )
            sending = SendingService(
                db=db,
                rpc=rpc,
                manager=manager,
                config=SendingConfig(
                    fees=fees,
                    batch=settings.mint_max_batch,
                    poll_s=settings.mint_relayer_poll_s,
                    checks_s=settings.mint_check_interval_s,
                    events=SendingEvents(
                        started="mint_relayer_started",
                        paused="mint_relayer_paused",
                        resumed="mint_relayer_resumed",
                        check_skipped="mint_relayer_check_skipped",
                        waiting_for_fees="mint_relayer_waiting_for_fees",
                        sender_key="relayer",
                    ),
                ),
                source=TransferSource(db, rpc),
            )
        except BaseException:
            await db.run(claim.release)
            raise
        purchaser = Purchaser(
            db=db,
            sign_conn=sign_conn,
            vault=vault,
            allowlist=allowlist,
            base=base,
            max_validity_s=settings.mint_max_authorization_s,
            timeout_s=settings.mint_http_timeout_s,
        )
        yield MintExecutor(
            settings=settings,
            chain=chain,
            chain_id=chain_id,
            db=db,
            rpc=rpc,
            allowlist=allowlist,
            purchaser=purchaser,
            sending=sending,
            relayer=signer.address,
        )
    finally:
        await base.aclose()
        await rpc.aclose()
        if sign_conn is not None:
            sign_conn.close()


@dataclass
class MintExecutor:
    """The loop of the module docstring (shared.runtime's Service)."""

    settings: MintSettings
    chain: Chain
    chain_id: int
    db: AsyncDatabase
    rpc: RpcClient
    allowlist: DomainAllowlist
    purchaser: Purchaser
    sending: SendingService[store.Transfer]
    relayer: str
    _next_check: float = 0.0
    _due: dict[str, float] = field(default_factory=dict)
    _in_flight: set[str] = field(default_factory=set)
    _in_flight_tasks: Counter[str] = field(default_factory=Counter)

    async def start(self, stop: asyncio.Event) -> bool:
        s = self.settings
        log.info(
            "mint_executor_started",
            version=VERSION,
            network=self.chain.name,
            chain_id=self.chain_id,
            server_url=s.servers()[0],
            servers=len(s.servers()),
            rpc_endpoints=len(self.chain.rpc_urls),
            agent_account=self.relayer,
            usdc=s.mint_usdc_address,
            mint_interval_s=s.mint_interval_s,
            check_interval_s=s.mint_check_interval_s,
            payment_timeout_s=s.mint_payment_timeout_s,
            max_retries=s.mint_max_retries,
            max_batch=s.mint_max_batch,
        )
        return True

    async def step(self) -> float:
        wait = await self.sending.step()
        now = time.time()
        if now >= self._next_check:
            self._next_check = now + self.settings.mint_check_interval_s
            await self.check(now)
        await self.process(time.time())
        upcoming = [self._next_check, *self._due.values()]
        return max(0.0, min(wait, min(upcoming) - time.time(), 1.0))

    async def stop(self) -> None:
        await self.sending.stop()

    # --- checks -----------------------------------------------------------------------------

    async def check(self, now: float) -> None:
        """The periodic part: reconcile the ledger, settle transfers others submitted,
        resolve open payments, check pending tasks."""
        await reconcile(self.db, self.rpc, confirmations=self.chain.confirmations, now=now)
        await self.resolve_open(None)
        for task in await self.db.run(lambda c: store.tasks_in(c, TaskStatus.PENDING_PAYMENT)):
            try:
                await self.check_pending(task, now=now)
            except HodlaiError as exc:
                log.warning("mint_task_check_failed", task=task.id, error=str(exc))

    async def check_pending(self, task: Task, *, now: float) -> None:
        block = await reads.confirmed_block(self.rpc, self.chain.confirmations)
        balance = await reads.balance_of(
            self.rpc, task.usdc_address, task.agent_address, block=block
        )
        await self.db.run(lambda c: store.record_balance(c, task.agent_address, balance, now=now))
        elsewhere = await self.db.run(lambda c: store.held_elsewhere(c, task))
        available = balance - elsewhere
        age = now - task.created_at
        # The task's own deadline (created_at + the timeout it was created with).
        timeout = int(task.payment_deadline - task.created_at)
        log.info(
            "mint_task_payment_check",
            task=task.id,
            balance=str(available),
            required=str(task.total_cost),
            age_s=round(age, 1),
            timeout_s=timeout,
            block=block,
        )
        if available >= task.total_cost:
            await self.db.run(lambda c: self._fund(c, task, available, now=now))
            return
        if now < task.payment_deadline:
            log.debug("mint_task_waiting_for_payment", task=task.id)
            return
        on_its_way = await self.db.run(
            lambda c: store.transfers(
                c, task_id=task.id, statuses=(TransferStatus.RECORDED, TransferStatus.SUBMITTED)
            )
        )
        if any(t.kind == "funding" for t in on_its_way):
            log.info("mint_task_funding_in_flight", task=task.id, age_s=round(age, 1))
            return
        log.warning(
            "mint_task_payment_timeout", task=task.id, age_s=round(age, 1), timeout_s=timeout
        )
        message = timeout_message(timeout)

        def cancel(c: sqlite3.Connection) -> None:
            store.move_task(
                c,
                task,
                TaskStatus.CANCELLED,
                note="payment timeout",
                now=now,
                error_message=message,
                completed_at=now,
            )

        try:
            await self.db.run(cancel)
        except TransitionConflict:
            return
        log.info("mint_task_cancelled", task=task.id, reason=message)

    def _fund(self, conn: sqlite3.Connection, task: Task, available: int, *, now: float) -> None:
        fundings = [
            t
            for t in store.transfers(conn, task_id=task.id)
            if t.kind == "funding" and t.status is not TransferStatus.FAILED
        ]
        credited = max(task.total_cost, sum(t.value for t in fundings))
        funded = min(available, credited)
        # The budget first: a funded task can always sign (set again on a retry).
        ledger.set_budget(
            conn,
            purpose=store.MINT_PURPOSE,
            subject=task.id,
            token=task.usdc_address,
            chain_id=task.chain_id,
            budget=task.total_cost,
            now=now,
        )
        try:
            store.move_task(
                conn,
                task,
                TaskStatus.FUNDED,
                now=now,
                funded_amount=str(funded),
                funding_tx_hash=task.funding_tx_hash
                or next((t.tx_hash for t in fundings if t.tx_hash), None),
                note=f"agent wallet holds {available} for it",
            )
        except TransitionConflict:
            return
        log.info("mint_task_funded", task=task.id, funded=str(funded))

    # --- open payments ----------------------------------------------------------------------

    async def resolve_open(self, task_id: str | None) -> None:
        """Every prepared or signed payment not being bought right now: adopt or fail a
        prepared one by the ledger; send a signed one again, or fail it once the ledger saw
        its authorization expire or be cancelled."""
        open_ = await self.db.run(lambda c: store.open_payments(c, task_id))
        for payment in open_:
            if payment.id in self._in_flight:
                continue
            try:
                await self._resolve(payment)
            except HodlaiError as exc:
                log.warning("mint_payment_resolve_failed", payment=payment.id, error=str(exc))

    async def _resolve(self, payment: Payment) -> None:
        now = time.time()
        if payment.status is PaymentStatus.PREPARED:
            await self.db.run(lambda c: _adopt_or_fail(c, payment, now=now))
            return
        assert payment.authorization_id is not None
        auth_id = payment.authorization_id
        auth = await self.db.run(lambda c: ledger.get(c, auth_id))
        if auth.status in (AuthorizationStatus.EXPIRED, AuthorizationStatus.CANCELLED):
            await self.db.run(
                lambda c: store.move_payment(
                    c,
                    payment,
                    PaymentStatus.FAILED,
                    now=now,
                    note=f"authorization {auth.id} {auth.status.value}",
                    error=f"the authorization was never used ({auth.status.value})",
                )
            )
            log.info(
                "mint_payment_failed",
                payment=payment.id,
                unit=payment.unit,
                reason=f"authorization {auth.status.value}",
            )
            return
        task = await self.db.run(lambda c: store.get_task(c, payment.task_id))
        self._in_flight.add(payment.id)
        try:
            outcome = await self.purchaser.resend(task, payment)
        finally:
            self._in_flight.discard(payment.id)
        log.info(
            "mint_payment_resent",
            payment=payment.id,
            unit=payment.unit,
            minted=outcome.minted,
            error=outcome.error,
        )
        busy = self._in_flight_tasks[task.id] > 0
        if not outcome.minted and auth.status is AuthorizationStatus.USED and not busy:
            outcome = await self._mint_on_chain(task, auth.used_block) or outcome
        await self._record(task, payment.id, outcome)

    async def _mint_on_chain(self, task: Task, used_block: int | None) -> Outcome | None:
        """A paid authorization whose server does not give its mint again (it is not
        idempotent): the chain decides. A mint of the task's token to the user (a Transfer
        from the zero address) near the payment's settlement that no payment row holds yet
        is this payment's mint."""
        start = max(0, (used_block or 0) - MINT_SEARCH_BLOCKS)
        logs = await reads.mint_logs(self.rpc, task.token_address, task.user_address, start)
        known = await self.db.run(
            lambda c: {
                str(r[0]).lower()
                for r in c.execute(
                    "SELECT mint_tx_hash FROM mint_payments WHERE mint_tx_hash IS NOT NULL"
                )
            }
        )
        for entry in logs:
            tx_hash = str(entry["transactionHash"]).lower()
            if tx_hash not in known:
                log.info("mint_payment_found_on_chain", task=task.id, tx_hash=tx_hash)
                return Outcome(True, True, mint_tx_hash=tx_hash, amount=int(entry["data"], 16))
        return None

    # --- batches ----------------------------------------------------------------------------

    async def process(self, now: float) -> None:
        tasks = await self.db.run(
            lambda c: store.tasks_in(c, TaskStatus.FUNDED, TaskStatus.PROCESSING)
        )
        due = [t for t in tasks if self._due.get(t.id, 0.0) <= now]
        live = {t.id for t in tasks}
        for gone in set(self._due) - live:
            del self._due[gone]
        if not due:
            return
        limit = asyncio.Semaphore(self.settings.mint_concurrency)
        await asyncio.gather(*(self._batch(t, limit) for t in due))

    async def _batch(self, task: Task, limit: asyncio.Semaphore) -> None:
        s = self.settings
        now = time.time()
        backoff = False
        try:
            if task.status is TaskStatus.FUNDED:
                started = task.started_at or now
                await self.db.run(
                    lambda c: store.move_task(
                        c,
                        task,
                        TaskStatus.PROCESSING,
                        now=now,
                        note="minting",
                        started_at=started,
                    )
                )
                log.info("mint_task_processing", task=task.id, quantity=task.quantity)
            task = await self.db.run(lambda c: store.get_task(c, task.id))
            if task.status is not TaskStatus.PROCESSING:
                return
            if await self._finish_if_done(task):
                return
            open_count = len(await self.db.run(lambda c: store.open_payments(c, task.id)))
            room = s.mint_max_batch - open_count
            units = await self.db.run(
                lambda c: store.next_units(c, task, max(0, room), max_retries=s.mint_max_retries)
            )
            if not units:
                await self.resolve_open(task.id)
                await self._finish_if_done(await self.db.run(lambda c: store.get_task(c, task.id)))
                return
            if not await self.purchaser.reachable(task.server_url):
                # Nothing is recorded for a server that does not answer at all: an attempt
                # counts against a mint's retries only when it could have been bought.
                log.warning("mint_server_unreachable", task=task.id, server=task.server_url)
                backoff = True
                return
            domain = await self.allowlist.resolve(
                self.rpc, task.usdc_address, task.chain_id, now=now
            )

            async def one(unit: int) -> bool:
                async with limit:
                    return await self._buy(task, unit, domain)

            results = await asyncio.gather(*(one(u) for u in units))
            backoff = not all(results)
            await self._finish_if_done(await self.db.run(lambda c: store.get_task(c, task.id)))
        except TransitionConflict as exc:
            log.info("mint_task_moved_elsewhere", task=task.id, why=str(exc))
        except HodlaiError as exc:
            log.warning("mint_batch_failed", task=task.id, error=str(exc))
        finally:
            # After a failed purchase the next batch waits at least a check interval, so a
            # server that is restarting does not use up a mint's retries in a second.
            wait = max(s.mint_interval_s, s.mint_check_interval_s) if backoff else s.mint_interval_s
            self._due[task.id] = time.time() + wait

    async def _buy(self, task: Task, unit: int, domain: ledger.TokenDomain) -> bool:
        """One purchase; False when it failed (minted or still open: True)."""
        now = time.time()
        payment = await self.db.run(lambda c: store.prepare_payment(c, task, unit, now=now))
        self._in_flight.add(payment.id)
        self._in_flight_tasks[task.id] += 1
        try:
            try:
                outcome = await self.purchaser.buy(task, payment, domain)
            except AuthorizationError as exc:
                outcome = Outcome(False, False, error=str(exc))
        finally:
            self._in_flight.discard(payment.id)
            self._in_flight_tasks[task.id] -= 1
        (log.info if outcome.minted else log.warning)(
            "mint_purchase",
            task=task.id,
            unit=unit,
            payment=payment.id,
            minted=outcome.minted,
            tx_hash=outcome.mint_tx_hash,
            error=outcome.error,
        )
        await self._record(task, payment.id, outcome)
        return outcome.minted

    async def _record(self, task: Task, payment_id: str, outcome: Outcome) -> None:
        now = time.time()

        def record(c: sqlite3.Connection) -> None:
            payment = store.get_payment(c, payment_id)
            if outcome.minted and payment.status is PaymentStatus.SIGNED:
                store.move_payment(
                    c,
                    payment,
                    PaymentStatus.MINTED,
                    now=now,
                    note="minted",
                    mint_tx_hash=outcome.mint_tx_hash,
                    settle_tx_hash=outcome.settle_tx_hash,
                    minted_amount=None if outcome.amount is None else str(outcome.amount),
                )
            elif payment.status is PaymentStatus.PREPARED:
                # Nothing was signed for it (the ledger is checked: a crash-free path).
                _adopt_or_fail(c, payment, now=now, error=outcome.error)
            elif payment.status is PaymentStatus.SIGNED and outcome.error:
                with atomic(c):
                    c.execute(
                        "UPDATE mint_payments SET error = ? WHERE id = ?",
                        (outcome.error, payment.id),
                    )

        try:
            await self.db.run(record)
        except TransitionConflict:
            log.info("mint_payment_moved_elsewhere", payment=payment_id)

    async def _finish_if_done(self, task: Task) -> bool:
        s = self.settings
        now = time.time()
        if task.status is not TaskStatus.PROCESSING:
            return True
        if task.mints_completed >= task.quantity:
            await self.db.run(
                lambda c: store.move_task(
                    c,
                    task,
                    TaskStatus.COMPLETED,
                    now=now,
                    completed_at=now,
                    note="every mint landed",
                )
            )
            log.info("mint_task_completed", task=task.id, mints=task.mints_completed)
            return True
        unit = await self.db.run(
            lambda c: store.exhausted_unit(c, task, max_retries=s.mint_max_retries)
        )
        if unit is None:
            return False
        open_ = await self.db.run(lambda c: store.open_payments(c, task.id))
        if open_:
            return False  # the open ones resolve first: they may still land
        last = await self.db.run(
            lambda c: c.execute(
                "SELECT error FROM mint_payments WHERE task_id = ? AND unit = ? ORDER BY"
                " attempt DESC LIMIT 1",
                (task.id, unit),
            ).fetchone()[0]
        )
        reason = (
            f"mint {unit + 1} of {task.quantity} failed {s.mint_max_retries + 1} times; "
            f"last error: {last}"
        )
        await self.db.run(
            lambda c: store.move_task(
                c,
                task,
                TaskStatus.FAILED,
                now=now,
                completed_at=now,
                error_message=reason[:1000],
                note="out of retries",
            )
        )
        log.error("mint_task_failed", task=task.id, reason=reason)
        return True


def _adopt_or_fail(
    conn: sqlite3.Connection, payment: Payment, *, now: float, error: str | None = None
) -> None:
    """A prepared payment: if the ledger holds a live authorization for its unit that no
    other payment row claims, the signature was made (the process died before it was noted):
    adopt it; else nothing was signed and the attempt failed."""
    auths = ledger.for_unit(
        conn, purpose=store.MINT_PURPOSE, subject=payment.task_id, unit=str(payment.unit)
    )
    claimed = {
        r[0]
        for r in conn.execute(
            "SELECT authorization_id FROM mint_payments WHERE task_id = ? AND unit = ?"
            " AND authorization_id IS NOT NULL",
            (payment.task_id, payment.unit),
        )
    }
    live = [
        a
        for a in auths
        if a.kind is not ledger.Kind.CANCEL
        and a.id not in claimed
        and a.status in (AuthorizationStatus.SIGNED, AuthorizationStatus.USED)
    ]
    if live:
        store.move_payment(
            conn,
            payment,
            PaymentStatus.SIGNED,
            now=now,
            note=f"adopted authorization {live[0].id}",
            authorization_id=live[0].id,
        )
        return
    store.move_payment(
        conn,
        payment,
        PaymentStatus.FAILED,
        now=now,
        note="nothing was signed",
        error=error or "nothing was signed",
    )
