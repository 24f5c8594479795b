"""The EVM payer: pays the runs of one EVM network from the source key, through the multisend,
with the core's sending service (shared/tx/service.py) and transaction manager.

Each :meth:`EvmPayer.tick`:

1. the first time: loads the source key, claims it (one process per key and chain: a second
   distributor on the same database waits, it never signs), builds the manager with the
   source's spend policy (the multisend's ``disperseToken`` and ``approve`` on the configured
   tokens, nothing else) and gives back the runs a killed predecessor held;
2. leases the in-flight runs of its network (shared.state claim, extended every tick);
3. advances each: ``pending → running``; a run with no transfer left open becomes
   ``completed`` (at least one paid) or ``failed``; otherwise the **pre-flight**: the
   source's token balance, its allowance to the multisend and its gas, read at the latest
   block, against what is pending (less what is sent but not mined yet). A shortfall of
   balance or gas PAUSES the run with the reason (``running → paused``); it resumes
   (``paused → running``) when the shortfall is met. A short allowance is not a pause: an
   ``approve`` of what is still to pay is sent through the sending service, and batches wait
   for it;
4. runs one step of the sending service, whose source (:class:`BatchSource`) claims the
   pending transfers of the runs that passed their pre-flight in batches of at most
   ``HODLAI_DIST_MAX_BATCH`` recipients and ``HODLAI_DIST_BATCH_GAS`` gas, **simulates** each
   batch, and splits a batch that reverts in halves, simulated again, down to the recipient
   whose transfer reverts: that one ends ``failed`` with the decoded reason, the others are
   sent. A batch is one transaction; its transfers move ``pending → sent`` in the database
   transaction that records it, before any node sees it (record before broadcast).

A recipient is paid only at FINAL, from the receipt's ``Transfer`` log
(workers/distribution/evm/purpose.py). A batch a reorg took out is sent again by the manager,
the same signed bytes. A killed distributor's successor re-broadcasts what was recorded and
pays only what is still pending: nobody is paid twice, nobody is missed.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import structlog
from eth_utils.address import to_checksum_address

from shared import keys, state
from shared.chain.rpc import RpcCall, RpcClient, hex_int
from shared.db import AsyncDatabase, atomic
from shared.errors import ConfigError, HodlaiError, SpendPolicyError
from shared.tx.fees import FeePolicy
from shared.tx.ledger import Purpose
from shared.tx.manager import Recorded, Submission, TxManager, TxPolicy
from shared.tx.policy import Limit, SpendPolicy, selectors
from shared.tx.senders import claim_sender
from shared.tx.service import SendingConfig, SendingEvents, SendingService
from shared.tx.signer import Call, LocalSigner, SignedTx
from shared.tx.simulation import GasRule, Outcome, Simulation, judge, simulation_calls
from shared.tx.subjects import InFlightError
from workers.distribution.evm import ledger
from workers.distribution.evm.contracts import (
    APPROVE_SIGNATURE,
    DISPERSE_SIGNATURE,
    SHORTFALL_ERRORS,
    allowance_calldata,
    approve_calldata,
    balance_of_calldata,
    decode_uint,
    disperse_calldata,
)
from workers.distribution.evm.ledger import APPROVE_PURPOSE, BATCH_PURPOSE, Item
from workers.distribution.evm.purpose import ApprovePurpose, BatchPurpose
from workers.distribution.evm.settings import EvmPaySettings, pay_settings
from workers.distribution.machine import RUNS, RunStatus
from workers.distribution.settings import DistSettings

log = structlog.get_logger(__name__)

R = RunStatus
#: Runs one payer works on at once (oldest first); the others wait their turn.
MAX_RUNS: Final = 4
#: Gas an approve is planned with (the gas pre-flight).
APPROVE_GAS: Final = 60_000
#: Seconds before a payer whose key is held by another process tries to claim it again.
KEY_BUSY_RETRY_S: Final = 5.0
#: Revert texts (OpenZeppelin 4's, most tokens') that mean the source is short, not a recipient.
SHORTFALL_PHRASES: Final = (
    "transfer amount exceeds balance",
    "transfer amount exceeds allowance",
    "insufficient allowance",
    "insufficient balance",
)
#: The headroom of a batch's gas limit over its estimate, and its cap over the budget.
GAS_MARGIN_PERCENT: Final = 25
EVENTS: Final = SendingEvents(
    started="dist_sending_started",
    paused="dist_sending_paused",
    resumed="dist_sending_resumed",
    check_skipped="dist_sending_check_skipped",
    waiting_for_fees="dist_sending_waiting_for_fees",
    sender_key="source",
)


@dataclass(frozen=True)
class Batch:
    """Transfers of one run, to be paid by one ``disperseToken`` transaction."""

    run_id: str
    token: str
    items: tuple[Item, ...]


@dataclass(frozen=True)
class Approval:
    """An ``approve(multisend, amount)`` of one token."""

    token: str
    amount: int


Unit = Batch | Approval


@dataclass
class _Plan:
    """What this payer knows about the runs it holds, between ticks."""

    ready: set[str] = field(default_factory=set)  # runs whose pre-flight passed
    approvals: dict[str, int] = field(default_factory=dict)  # token -> amount to approve
    recheck: set[str] = field(default_factory=set)  # runs a simulation found short


def spend_policy(multisend: str, tokens: Sequence[str]) -> SpendPolicy:
    """The source key may call ``disperseToken`` on the multisend and ``approve`` on the
    configured tokens, moving any amount of those tokens and no native value."""
    contracts: dict[str, frozenset[bytes] | None] = {
        to_checksum_address(multisend): selectors(DISPERSE_SIGNATURE)
    }
    for token in tokens:
        contracts[to_checksum_address(token)] = selectors(APPROVE_SIGNATURE)
    return SpendPolicy(
        contracts=contracts, limits={to_checksum_address(t): Limit() for t in tokens}
    )


class EvmPayer:
    """Pays one EVM network's runs (module docstring); a workers.distribution.payers.Payer."""

    def __init__(
        self,
        settings: EvmPaySettings,
        network: str,
        *,
        db: AsyncDatabase,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.network = network.lower()
        self.networks = frozenset({self.network})
        self._db = db
        self._clock = clock
        self._chain = settings.evm_chain(self.network)
        multisend = settings.multisend(self.network)
        #: why this payer cannot pay (no key, no multisend): it stays idle, its runs wait
        self.idle: str | None = None
        if not multisend:
            self.idle = (
                f"no multisend contract for network {self.network}: set "
                "HODLAI_DIST_MULTISEND_ADDRESS (devnet) or "
                f"HODLAI_DIST_MULTISEND_ADDRESSES__{self.network}"
            )
        elif settings.dist_key_file is None:
            self.idle = "HODLAI_DIST_KEY_FILE is not set: the distributor has no source key"
        self.multisend = to_checksum_address(multisend) if multisend else ""
        self._idle_logged = False
        self.tokens = sorted(
            {
                to_checksum_address(t)
                for t in [*settings.dist_tokens, settings.dist_token_address]
                if t
            }
        )
        self._rpc = RpcClient(list(self._chain.rpc_urls), chain_id=self._chain.chain_id)
        self.service: SendingService[Unit] | None = None
        self.source: str | None = None
        self.owner = ""
        self._held: list[str] = []
        self._resumed: set[str] = set()
        self._plan = _Plan()
        self._busy_until = 0.0
        self.batch_size = max(
            1,
            min(settings.dist_max_batch, settings.dist_batch_gas // settings.dist_gas_per_transfer),
        )

    # --- the Payer protocol -----------------------------------------------------------------

    async def tick(self) -> bool:
        """One pass (module docstring); True if it did work."""
        if self.idle is not None:
            if not self._idle_logged:
                self._idle_logged = True
                log.error("dist_payer_idle", network=self.network, reason=self.idle)
            return False
        if self.service is None and not await self._open():
            return False
        assert self.service is not None
        self._held = await self._db.run(self._lease_runs, self._clock())
        did = False
        for run_id in list(self._held):
            did = await self._advance(run_id) or did
        sent_before = self._sent
        await self.service.step()
        return did or self._sent != sent_before

    async def aclose(self) -> None:
        try:
            if self.service is not None:
                await self.service.stop()
            if self._held:
                await self._db.run(
                    lambda conn: state.release(conn, RUNS, self._held, owner=self.owner)
                )
        finally:
            await self._rpc.aclose()

    # --- start ------------------------------------------------------------------------------

    async def _open(self) -> bool:
        """Load and claim the source key and build the sending service; False while another
        process holds the key (retried every KEY_BUSY_RETRY_S)."""
        now = self._clock()
        if now < self._busy_until:
            return False
        settings = self.settings
        assert settings.dist_key_file is not None  # else idle
        passphrase = keys.read_passphrase(
            passphrase=(
                settings.dist_key_passphrase.get_secret_value()
                if settings.dist_key_passphrase
                else None
            ),
            passphrase_file=settings.dist_key_passphrase_file,
        )
        private_key = keys.load_private_key(settings.dist_key_file, passphrase)
        chain_id = hex_int(await self._rpc.call("eth_chainId"))
        if self._chain.chain_id is not None and self._chain.chain_id != chain_id:
            raise ConfigError(
                f"network {self.network} is configured as chain {self._chain.chain_id} but its "
                f"RPC serves chain {chain_id} ({self._chain.rpc_setting})"
            )
        signer = LocalSigner(private_key, chain_id=chain_id)
        if settings.dist_source_address and (
            to_checksum_address(settings.dist_source_address) != signer.address
        ):
            raise ConfigError(
                f"HODLAI_DIST_SOURCE_ADDRESS is {settings.dist_source_address} but the key in "
                f"HODLAI_DIST_KEY_FILE is {signer.address}"
            )
        db_path = settings.db_path
        try:
            claim = await self._db.run(
                lambda conn: claim_sender(
                    db_path, conn, signer.address, owner="distributor", chain_id=chain_id
                )
            )
        except ConfigError as exc:
            self._busy_until = now + KEY_BUSY_RETRY_S
            log.warning(
                "dist_source_busy", source=signer.address, network=self.network, why=str(exc)
            )
            return False
        fees = FeePolicy(
            max_fee_per_gas=settings.dist_max_fee_wei,
            max_priority_fee_per_gas=settings.dist_max_priority_fee_wei,
        )
        manager = TxManager(
            db=self._db,
            rpc=self._rpc,
            signer=signer,
            policy=TxPolicy(
                fees=fees, window=settings.dist_window, confirmations=self._chain.confirmations
            ),
            handlers={BATCH_PURPOSE: BatchPurpose(), APPROVE_PURPOSE: ApprovePurpose()},
            claim=claim,
            clock=self._clock,
            spend_policy=spend_policy(self.multisend, self.tokens),
            halt_on_foreign_nonce=True,
        )
        self.source = signer.address
        self.owner = f"distributor:{self.network}:{signer.address}"
        released = await self._db.run(self._release_own)
        if released:
            log.info("dist_runs_recovered", network=self.network, runs=released)
        self.service = SendingService(
            db=self._db,
            rpc=self._rpc,
            manager=manager,
            config=SendingConfig(
                fees=fees,
                batch=settings.dist_window,
                poll_s=settings.dist_poll_s,
                checks_s=max(settings.dist_poll_s, 5.0),
                events=EVENTS,
                fault_point=settings.dist_fault_point,
            ),
            source=BatchSource(self),
            clock=self._clock,
        )
        if settings.dist_fault_point:
            log.warning("fault_point_armed", point=settings.dist_fault_point, test_only=True)
        log.info(
            "dist_payer_started", network=self.network, chain_id=chain_id, source=self.source,
            multisend=self.multisend, batch_size=self.batch_size, tokens=self.tokens,
        )  # fmt: skip
        return True

    def _release_own(self, conn: sqlite3.Connection) -> int:
        """Runs a killed predecessor with this owner name held: ours again at once (one
        process per key, so nobody else uses the name)."""
        with atomic(conn):
            return conn.execute(
                "UPDATE distribution_runs SET lease_owner = NULL, lease_until = NULL"
                " WHERE lease_owner = ?",
                (self.owner,),
            ).rowcount

    @property
    def _sent(self) -> int:
        return self.service.manager.in_flight if self.service is not None else 0

    # --- runs -------------------------------------------------------------------------------

    def _lease_runs(self, conn: sqlite3.Connection, now: float) -> list[str]:
        lease = self.settings.dist_lease_s
        held = [r for r in self._held if r not in state.extend(
            conn, RUNS, self._held, owner=self.owner, lease_seconds=lease, now=now)]  # fmt: skip
        held = [
            r
            for r in held
            if conn.execute(
                "SELECT 1 FROM distribution_runs WHERE run_id = ? AND status IN"
                " ('pending', 'running', 'paused')",
                (r,),
            ).fetchone()
        ]
        room = MAX_RUNS - len(held)
        if room <= 0:
            return held
        # Oldest first, of this network only: claim by status, then keep ours.
        for status in (R.RUNNING, R.PAUSED, R.PENDING):
            free = [
                row[0]
                for row in conn.execute(
                    "SELECT run_id FROM distribution_runs WHERE network = ? AND status = ?"
                    " AND (lease_owner IS NULL OR lease_until < ?) ORDER BY created_at LIMIT ?",
                    (self.network, status, now, room),
                )
            ]
            for run_id in free:
                with atomic(conn):
                    taken = conn.execute(
                        "UPDATE distribution_runs SET lease_owner = ?, lease_until = ?"
                        " WHERE run_id = ? AND status = ? AND (lease_owner IS NULL"
                        " OR lease_until < ?)",
                        (self.owner, now + lease, run_id, status, now),
                    ).rowcount
                if taken:
                    held.append(run_id)
                    room -= 1
            if room <= 0:
                break
        return held

    async def _advance(self, run_id: str) -> bool:
        """Move one held run on (module docstring, step 3); True if its status changed."""
        now = self._clock()
        run = await self._db.run(ledger.run_row, run_id)
        if run is None:
            return False
        status = run.status
        if status == R.PENDING:
            await self._move(run_id, R.PENDING, R.RUNNING, "claimed by the payer",
                             {"started_at": now, "source": self.source})  # fmt: skip
            status = R.RUNNING
            self._resumed.add(run_id)
        elif run_id not in self._resumed:
            self._resumed.add(run_id)
            await self._move(run_id, status, status, f"resumed by {self.owner}")
        totals = await self._db.run(ledger.totals, run_id)
        if totals.open == 0:
            self._plan.ready.discard(run_id)
            await self._finish(run_id, status, totals)
            return True
        pending = totals.counts.get("pending", 0)
        if pending == 0:
            self._plan.ready.discard(run_id)
            return False
        shortfall = await self._preflight(run, totals)
        if shortfall is not None:
            self._plan.ready.discard(run_id)
            if status == R.RUNNING:
                await self._move(run_id, R.RUNNING, R.PAUSED, shortfall, {"reason": shortfall})
                log.warning("dist_run_paused", run_id=run_id, reason=shortfall)
                return True
            if run.reason != shortfall:
                await self._move(run_id, R.PAUSED, R.PAUSED, shortfall, {"reason": shortfall})
            return False
        if status == R.PAUSED:
            await self._move(run_id, R.PAUSED, R.RUNNING, "the shortfall is met", {"reason": None})
            log.info("dist_run_resumed", run_id=run_id)
        return False

    async def _finish(self, run_id: str, status: str, totals: ledger.Totals) -> None:
        paid, failed = totals.counts.get("paid", 0), totals.counts.get("failed", 0)
        if status == R.PAUSED:
            await self._move(run_id, R.PAUSED, R.RUNNING, "nothing left to pay", {"reason": None})
        now = self._clock()
        if paid:
            await self._move(
                run_id, R.RUNNING, R.COMPLETED, f"{paid} paid, {failed} failed",
                {"finished_at": now, "reason": None},
            )  # fmt: skip
        else:
            reason = f"no transfer could be paid ({failed} failed)"
            await self._move(
                run_id, R.RUNNING, R.FAILED, reason, {"finished_at": now, "reason": reason}
            )
        self._held.remove(run_id)
        log.info(
            "dist_run_finished", run_id=run_id, paid=paid, failed=failed,
            paid_amount=str(totals.amounts.get("paid", 0)),
        )  # fmt: skip

    async def _move(
        self, run_id: str, frm: str, to: str, note: str, columns: dict[str, object] | None = None
    ) -> None:
        await self._db.run(
            lambda conn: ledger.move_run(
                conn,
                run_id,
                frm,
                to,
                owner=self.owner,
                note=note,
                columns=columns,
                now=self._clock(),
            )
        )

    async def _preflight(self, run: ledger.RunRow, totals: ledger.Totals) -> str | None:
        """The shortfall that pauses ``run`` (None: it may send). Queues an approval when only
        the allowance is short, and keeps the run out of the ready set until it is met."""
        assert self.source is not None
        token = to_checksum_address(run.token)
        # Every held run of this token draws on one balance and one allowance.
        same_token = await self._db.run(ledger.runs_of_token, self._held, token)
        needed = await self._db.run(ledger.pending_total, same_token)
        committed = await self._db.run(ledger.unmined_sent, same_token)
        answers = await self._rpc.batch_settled(
            [
                _eth_call(token, balance_of_calldata(self.source)),
                _eth_call(token, allowance_calldata(self.source, self.multisend)),
                RpcCall("eth_getBalance", [self.source, "latest"]),
                RpcCall("eth_gasPrice", []),
            ]
        )
        if any(isinstance(a, HodlaiError) for a in answers):
            bad = next(a for a in answers if isinstance(a, HodlaiError))
            if run.run_id in self._plan.recheck:
                return f"the token {token} cannot be read: {bad}"
            self._plan.ready.discard(run.run_id)
            log.info("dist_preflight_unavailable", run_id=run.run_id, error=str(bad))
            return None if run.status != R.PAUSED else run.reason
        self._plan.recheck.discard(run.run_id)
        balance, allowance = decode_uint(str(answers[0])), decode_uint(str(answers[1]))
        native, gas_price = hex_int(answers[2]), hex_int(answers[3])
        available = balance - committed
        if available < needed:
            return (
                f"the source {self.source} holds {balance} of token {token}, {committed} of it "
                f"committed to batches in flight; {needed} more is pending: fund it with at "
                f"least {needed - available}"
            )
        pending = totals.counts.get("pending", 0)  # this run's recipients (the gas check)
        approve_short = allowance - committed < needed
        gas_needed = (pending * self.settings.dist_gas_per_transfer + (
            APPROVE_GAS if approve_short else 0)) * gas_price  # fmt: skip
        if native < gas_needed:
            return (
                f"the source {self.source} holds {native} wei for gas; paying {pending} "
                f"recipients needs about {gas_needed} wei at {gas_price} wei per gas"
            )
        if approve_short:
            self._plan.ready.discard(run.run_id)
            subject = approve_subject(token, self.multisend)
            if not await self._db.run(ledger.approve_in_flight, subject):
                self._plan.approvals[token] = needed + committed
                log.info("dist_approve_needed", run_id=run.run_id, token=token,
                         allowance=str(allowance), amount=str(needed + committed))  # fmt: skip
            return None
        self._plan.ready.add(run.run_id)
        return None


def _eth_call(to: str, data: bytes) -> RpcCall:
    return RpcCall("eth_call", [{"to": to, "data": "0x" + data.hex()}, "latest"])


def approve_subject(token: str, spender: str) -> str:
    return f"approve:{to_checksum_address(token)}:{to_checksum_address(spender)}"


class BatchSource:
    """The sending service's source: approvals and batches of the ready runs (module
    docstring, step 4)."""

    sweep_every_s: float = 10.0

    def __init__(self, payer: EvmPayer) -> None:
        self._payer = payer
        self._db = payer._db
        self._room = 0

    async def start(self) -> None:
        """Nothing is held between rounds: transfers are claimed by the record transaction."""

    async def claim(self, limit: int, *, now: float) -> list[Unit]:
        payer = self._payer
        plan = payer._plan
        units: list[Unit] = []
        units += [Approval(t, a) for t, a in plan.approvals.items()][:limit]
        plan.approvals.clear()
        for run_id in list(plan.ready):
            if len(units) >= limit:
                break
            run = await self._db.run(ledger.run_row, run_id)
            if run is None or run.status != R.RUNNING:
                plan.ready.discard(run_id)
                continue
            size = payer.batch_size
            items = await self._db.run(ledger.pending_items, run_id, (limit - len(units)) * size)
            for start in range(0, len(items), size):
                units.append(Batch(run_id, to_checksum_address(run.token),
                                   tuple(items[start : start + size])))  # fmt: skip
        self._room = limit
        return units

    async def release(self, units: Sequence[Unit]) -> None:
        """Nothing to give back: unrecorded transfers stay pending."""

    async def sweep_orphans(self, *, now: float) -> int:
        return await self._db.run(ledger.return_orphans, network=self._payer.network, now=now)

    async def stop(self) -> None:
        """Nothing is held."""

    async def submissions(
        self, units: Sequence[Unit], *, best_head: int | None
    ) -> list[tuple[Unit, Submission]]:
        payer = self._payer
        assert payer.source is not None
        out: list[tuple[Unit, Submission]] = []
        approvals = [u for u in units if isinstance(u, Approval)]
        if approvals:
            sims = await self._simulate([self._approve_call(a) for a in approvals])
            for unit, sim in zip(approvals, sims, strict=True):
                if sim.outcome is Outcome.OK:
                    out.append((unit, self._approve_submission(unit, sim.gas_limit)))
                else:
                    log.warning("dist_approve_not_sent", token=unit.token, reason=sim.reason)
        queue = [u for u in units if isinstance(u, Batch)]
        while queue and len(out) < self._room:
            sims = await self._simulate([self._disperse_call(b) for b in queue])
            again: list[Batch] = []
            for batch, sim in zip(queue, sims, strict=True):
                if sim.outcome is Outcome.OK:
                    if len(out) < self._room:
                        out.append((batch, self._batch_submission(batch, sim.gas_limit)))
                elif sim.outcome in (Outcome.REVERTED, Outcome.OVER_CAP):
                    again += await self._split(batch, sim)
                else:
                    log.info("dist_batch_deferred", run_id=batch.run_id, reason=sim.reason)
            queue = again
        return out

    async def _split(self, batch: Batch, sim: Simulation) -> list[Batch]:
        """A batch whose simulation reverted: halves to simulate again, or, for one recipient,
        its end (failed with the decoded reason). A shortfall of the source is no recipient's
        fault: the run goes back to its pre-flight."""
        plan = self._payer._plan
        text = sim.reason.lower()
        if sim.error_name in SHORTFALL_ERRORS or any(p in text for p in SHORTFALL_PHRASES):
            plan.ready.discard(batch.run_id)
            plan.recheck.add(batch.run_id)
            log.warning("dist_batch_short", run_id=batch.run_id, reason=sim.reason)
            return []
        if len(batch.items) == 1:
            item = batch.items[0]
            reason = sim.reason.removeprefix("simulation reverted: ")
            if sim.outcome is Outcome.OVER_CAP:
                reason = f"the transfer alone {sim.reason}"
            await self._db.run(
                ledger.fail, item.transfer_id, "pending",
                f"the transfer to {item.address} reverts: {reason}", now=time.time(),
            )  # fmt: skip
            return []
        half = len(batch.items) // 2
        log.info("dist_batch_split", run_id=batch.run_id, size=len(batch.items), reason=sim.reason)
        return [
            Batch(batch.run_id, batch.token, batch.items[:half]),
            Batch(batch.run_id, batch.token, batch.items[half:]),
        ]

    async def _simulate(self, calls: Sequence[Call]) -> list[Simulation]:
        payer = self._payer
        assert payer.source is not None
        rpc_calls: list[RpcCall] = []
        for call in calls:
            rpc_calls += simulation_calls(call, sender=payer.source, block=None)
        answers = await payer._rpc.batch_settled(rpc_calls) if rpc_calls else []
        rule = GasRule(GAS_MARGIN_PERCENT, payer.settings.dist_batch_gas * 3 // 2)
        return [judge(answers[2 * i], answers[2 * i + 1], rule) for i in range(len(calls))]

    def _disperse_call(self, batch: Batch) -> Call:
        manifest = [(item.address, item.amount) for item in batch.items]
        return Call(
            to=to_checksum_address(self._payer.multisend),
            data=disperse_calldata(batch.token, manifest), value=0,
            gas_limit=0,
        )  # fmt: skip

    def _approve_call(self, approval: Approval) -> Call:
        return Call(
            to=to_checksum_address(approval.token),
            data=approve_calldata(self._payer.multisend, approval.amount), value=0, gas_limit=0,
        )  # fmt: skip

    def _batch_submission(self, batch: Batch, gas_limit: int) -> Submission:
        batch_id = f"{batch.run_id}:{uuid.uuid4().hex[:12]}"
        call = self._disperse_call(batch)
        items = batch.items

        def bind(conn: sqlite3.Connection, signed: SignedTx) -> None:
            ledger.mark_sent(conn, items, batch_id=batch_id, tx_hash=signed.tx_hash,
                             now=time.time())  # fmt: skip

        return Submission(
            call=Call(to=call.to, data=call.data, value=0, gas_limit=gas_limit),
            purpose=Purpose(kind=BATCH_PURPOSE, subject=batch_id, fingerprint=batch.run_id),
            bind=bind,
            key=f"{BATCH_PURPOSE}:{batch_id}",
        )

    def _approve_submission(self, approval: Approval, gas_limit: int) -> Submission:
        call = self._approve_call(approval)
        subject = approve_subject(approval.token, self._payer.multisend)
        return Submission(
            call=Call(to=call.to, data=call.data, value=0, gas_limit=gas_limit),
            purpose=Purpose(kind=APPROVE_PURPOSE, subject=subject),
            bind=lambda conn, signed: None,
            key=f"{APPROVE_PURPOSE}:{subject}:{uuid.uuid4().hex[:12]}",
        )

    async def recorded(self, results: Sequence[tuple[Unit, Recorded]]) -> None:
        for unit, r in results:
            if r.signed is not None:
                what = "approve" if isinstance(unit, Approval) else "batch"
                log.info(
                    "dist_tx_signed", what=what, subject=r.submission.purpose.subject,
                    tx_hash=r.signed.tx_hash, nonce=r.signed.nonce,
                    recipients=len(unit.items) if isinstance(unit, Batch) else 0,
                )  # fmt: skip
            elif isinstance(r.skipped, SpendPolicyError):
                await self._refused(unit, r.skipped)
            elif not isinstance(r.skipped, InFlightError):
                log.info("dist_tx_not_recorded", subject=r.submission.purpose.subject,
                         why=str(r.skipped))  # fmt: skip

    async def _refused(self, unit: Unit, error: SpendPolicyError) -> None:
        """The source's spend policy forbids it: the transfers it would pay fail with the
        rule (nothing was signed)."""
        reason = f"refused by the source's spend policy: {error}"
        log.error("dist_spend_refused", rule=error.rule, error=str(error))
        if isinstance(unit, Batch):
            for item in unit.items:
                await self._db.run(
                    ledger.fail, item.transfer_id, "pending", reason, now=time.time()
                )
            return
        for run_id in list(self._payer._held):
            run = await self._db.run(ledger.run_row, run_id)
            if run is not None and to_checksum_address(run.token) == unit.token:
                for item in await self._db.run(ledger.pending_items, run_id, 1_000_000):
                    await self._db.run(
                        ledger.fail, item.transfer_id, "pending", reason, now=time.time()
                    )


def build(
    settings: DistSettings,
    chain_name: str,
    *,
    db: AsyncDatabase,
    clock: Callable[[], float] = time.time,
) -> EvmPayer:
    """The payer of EVM network ``chain_name`` (the frame's factory); ConfigError naming the
    setting when the network is not configured. Without a source key or a multisend it is
    idle: it logs ``dist_payer_idle`` (an error naming the setting) once and pays nothing,
    so the network's runs wait, recorded (a scheduler-only distributor)."""
    return EvmPayer(pay_settings(settings), chain_name, db=db, clock=clock)
