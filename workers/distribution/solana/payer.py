"""The Solana payer: pays the runs of one Solana network, each recipient exactly once.

Exactly once on Solana rests on one fact: a transaction names a recent blockhash, and once
the cluster's block height has passed that blockhash's last valid block height, the
transaction can never be processed. So:

1. Before a batch can reach the cluster, its signature, its last valid block height and its
   signed bytes are recorded, and its transfers move ``pending → sent`` carrying the
   signature, in one database transaction (store.record_batch). A crash after that leaves a
   signature to look up, never an unknown payment.
2. A ``sent`` signature is resolved from the cluster only:
   - found and finalized without error → its transfers are ``paid``;
   - found and finalized with an error → nothing of it happened (a transaction is atomic):
     the recipients that fail on their own (simulated one by one, the reason decoded) end
     ``failed``; the others go back to ``pending``;
   - not found → unknown. While the finalized block height has not passed the last valid
     height the same bytes are re-sent (the same signature lands at most once); only once it
     has passed (read *before* the statuses, so a landing at the edge is seen), and only if
     the node's ledger still reaches back to the blockhash's slot (a pruned node cannot tell
     "never landed" from "landed long ago"), is the send ``expired`` and its transfers
     ``pending`` again, to go out under a new blockhash and a new signature.
3. New batches go out only while the run has no unresolved send, after a pre-flight: the
   source's token balance covers every pending amount, and its lamports cover the fees and
   the rent of the recipients' missing token accounts. A shortfall pauses the run with the
   reason; it resumes when the shortfall is met.
4. Each run is worked on under a lease (store.claim_runs); every write checks it.

The source key is never logged; only its public key is.
"""

from __future__ import annotations

import base64
import os
import socket
import sqlite3
import time
from collections.abc import Sequence
from typing import Final

import structlog
from solders.hash import Hash
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import VersionedTransaction
from solders.transaction_status import (
    InstructionErrorCustom,
    TransactionErrorInstructionError,
    TransactionErrorType,
)

from shared.db import AsyncDatabase
from shared.errors import InvalidRequestError, LeaseLostError, RetryableError
from workers.distribution.machine import RunStatus, TransferStatus
from workers.distribution.solana import store
from workers.distribution.solana.network import SolanaNetwork, parse_pubkey
from workers.distribution.solana.spl import (
    PER_RECIPIENT,
    TOKEN_ERRORS,
    Mint,
    associated_account,
    batch_message,
    failure_reason,
    plan_batches,
    preamble,
    token_amount,
)

log = structlog.get_logger(__name__)

R, T = RunStatus, TransferStatus

#: lamports per signature (the cluster's base fee)
SIGNATURE_FEE: Final = 5_000
#: lamports of rent a 165-byte token account needs (created for a recipient without one);
#: Token-2022 accounts with extensions are larger, so the mint's owner decides (see _rent)
TOKEN_ACCOUNT_BYTES: Final = 165
#: compute units a batch may use at most, for the priority fee's upper bound
MAX_COMPUTE_UNITS: Final = 1_400_000
#: a system account must keep the rent-exempt minimum for 0 bytes (890,880 lamports)
SYSTEM_ACCOUNT_RENT: Final = 890_880
#: sends of one transfer (failed or expired) after which it ends failed: a transaction
#: that fails for no recipient-specific reason spends a fee each time, and 20 sends rule
#: out a transient cause (congestion expiring blockhashes) while bounding what is spent
MAX_ATTEMPTS: Final = 20
#: runs one tick works on at most
RUNS_PER_TICK: Final = 8


class SolanaPayer:
    def __init__(
        self,
        *,
        db: AsyncDatabase,
        network: SolanaNetwork,
        keypair: Keypair,
        lease_seconds: float = 60.0,
        resend_s: float = 2.0,
        owner: str | None = None,
        owns_db: bool = False,
        owns_network: bool = False,
    ) -> None:
        self.db = db
        self._owns_db, self._owns_network = owns_db, owns_network
        self.network = network
        self.networks = frozenset({network.name})
        self._keypair = keypair
        self.source = keypair.pubkey()
        self.lease_seconds = lease_seconds
        self.resend_s = resend_s
        self.owner = owner or f"solana:{socket.gethostname()}:{os.getpid()}:{id(self):x}"

    async def tick(self) -> bool:
        runs = await self.db.run(
            store.claim_runs, network=self.network.name, owner=self.owner,
            lease_seconds=self.lease_seconds, limit=RUNS_PER_TICK,
        )  # fmt: skip
        worked = False
        for run in runs:
            try:
                worked |= await self._advance(run)
            except LeaseLostError as exc:
                # Another payer took the run over (this one stalled past its lease): it
                # resolves what this one recorded; nothing here may write to the run.
                log.warning("solana_run_lease_lost", run_id=run["run_id"], error=str(exc))
        return worked

    async def aclose(self) -> None:
        """Give back this payer's leases (another payer takes its runs at once); close the
        database connection and the cluster client it owns."""
        await self.db.run(store.release_runs, owner=self.owner)
        if self._owns_network:
            await self.network.aclose()
        if self._owns_db:
            self.db.close()

    # --- one run ----------------------------------------------------------------------------

    async def _advance(self, run: sqlite3.Row) -> bool:
        row = _Run(run)
        mint = await self._mint(row)
        if isinstance(mint, str):
            return await self._fail_run(row, mint)
        if row.source and row.source != str(self.source):
            return await self._wrong_source(row)
        if row.status == R.PENDING:
            await self._move(row, R.RUNNING, columns={"started_at": time.time(),
                                                      "source": str(self.source)})  # fmt: skip
            log.info("solana_run_started", run_id=row.run_id, source=str(self.source))
        sends = await self.db.run(store.open_sends, row.run_id)
        if sends:
            return await self._resolve(row, mint, sends)
        transfers = await self.db.run(store.transfers, row.run_id)
        pending = [t for t in transfers if t["status"] == T.PENDING]
        if pending:
            return await self._pay(row, mint, pending)
        if all(t["status"] in (T.PAID, T.FAILED) for t in transfers):
            return await self._finish(row, transfers)
        return False

    async def _mint(self, row: _Run) -> Mint | str:
        """The run's mint, or why the run can never be paid."""
        try:
            mint = await self.network.mint(row.token)
        except InvalidRequestError as exc:
            return f"the token cannot be paid: {exc}"
        if mint.decimals != row.decimals:
            return f"the mint's decimals are {mint.decimals}, the run was made for {row.decimals}"
        return mint

    async def _wrong_source(self, row: _Run) -> bool:
        """Recorded for another key (a stale HODLAI_DIST_SOLANA_SOURCE_ADDRESS): pause for the
        operator; never pay from an account the run does not name."""
        reason = f"the run is to be paid from {row.source}; this payer's key is {self.source}"
        if row.status == R.PENDING:
            await self._move(row, R.RUNNING, columns={"started_at": time.time()})
        if row.status == R.RUNNING or row.reason != reason:
            await self._move(row, R.PAUSED, reason=reason)
            log.error("solana_run_source_mismatch", run_id=row.run_id, reason=reason)
            return True
        return False

    async def _pay(self, row: _Run, mint: Mint, pending: Sequence[sqlite3.Row]) -> bool:
        items: list[tuple[str, Pubkey, int]] = []
        invalid: dict[str, str] = {}
        exhausted: dict[str, str] = {}
        for transfer in pending:
            t = _Transfer(transfer)
            key = parse_pubkey(t.address)
            if key is None:
                invalid[t.transfer_id] = f"{t.address!r} is not a Solana address"
            elif t.attempts >= MAX_ATTEMPTS:
                exhausted[t.transfer_id] = (
                    f"sent {t.attempts} times without landing or a recipient-specific reason"
                )
            else:
                items.append((t.transfer_id, key, t.amount))
        if invalid or exhausted:
            await self.db.run(
                store.fail_transfers,
                run_id=row.run_id,
                owner=self.owner,
                lease_seconds=self.lease_seconds,
                reasons={**invalid, **exhausted},
            )
            if not items:
                return True
        shortfall = await self._shortfall(mint, items)
        if shortfall is not None:
            if row.status == R.RUNNING or row.reason != shortfall:
                await self._move(row, R.PAUSED, reason=shortfall)
                log.warning("solana_run_paused", run_id=row.run_id, reason=shortfall)
                return True
            return False
        if row.status == R.PAUSED:
            await self._move(row, R.RUNNING)
            log.info("solana_run_resumed", run_id=row.run_id)
        items = await self._isolate_before_sending(row, mint, items)
        batches = plan_batches(
            self.source, mint, [(key, amount) for _, key, amount in items],
            max_per_batch=self.network.batch_max,
            priority_micro_lamports=self.network.priority_micro_lamports,
        )  # fmt: skip
        start = 0
        for batch in batches:
            ids = [transfer_id for transfer_id, _, _ in items[start : start + len(batch)]]
            start += len(batch)
            if not await self._send_batch(row, mint, ids, batch):
                break
        return True

    async def _send_batch(
        self, row: _Run, mint: Mint, transfer_ids: list[str], batch: list[tuple[Pubkey, int]]
    ) -> bool:
        recent = await self.network.cluster.recent_blockhash()
        message = batch_message(
            self.source, mint, batch, recent.blockhash,
            priority_micro_lamports=self.network.priority_micro_lamports,
        )  # fmt: skip
        transaction = VersionedTransaction(message, [self._keypair])
        signature = str(transaction.signatures[0])
        recorded = await self.db.run(
            store.record_batch,
            run_id=row.run_id,
            owner=self.owner,
            lease_seconds=self.lease_seconds,
            network=self.network.name,
            source=str(self.source),
            signature=signature,
            blockhash=str(recent.blockhash),
            last_valid_block_height=recent.last_valid_block_height,
            blockhash_slot=recent.slot,
            signed_tx=base64.b64encode(bytes(transaction)).decode("ascii"),
            transfer_ids=transfer_ids,
        )
        if not recorded:
            log.info("solana_blockhash_unchanged", run_id=row.run_id, signature=signature)
            return False
        log.info(
            "solana_batch_recorded", run_id=row.run_id, signature=signature,
            recipients=len(transfer_ids), last_valid_block_height=recent.last_valid_block_height,
        )  # fmt: skip
        await self._broadcast(signature, transaction)
        return True

    async def _broadcast(self, signature: str, transaction: VersionedTransaction) -> None:
        try:
            await self.network.cluster.send(transaction)
        except RetryableError as exc:
            # Recorded already: the next tick finds it, or re-sends it while it is valid.
            log.warning("solana_send_deferred", signature=signature, error=str(exc))
            return
        await self.db.run(store.mark_broadcast, signature)

    # --- resolving sends ------------------------------------------------------------------

    async def _resolve(self, row: _Run, mint: Mint, sends: Sequence[sqlite3.Row]) -> bool:
        cluster = self.network.cluster
        # The height first: if it is past a send's last valid height now, and the status read
        # after it finds nothing, that signature is in no finalized block and never will be.
        height = await cluster.block_height()
        signatures = [Signature.from_string(s["signature"]) for s in sends]
        states = await cluster.signature_states(signatures)
        changed = False
        for send, state in zip(sends, states, strict=True):
            signature = str(send["signature"])
            if state is None:
                changed |= await self._unknown(row, send, height)
                continue
            if not state.finalized:
                continue
            if state.error is None:
                paid = await self.db.run(
                    store.settle_landed,
                    run_id=row.run_id,
                    owner=self.owner,
                    lease_seconds=self.lease_seconds,
                    signature=signature,
                    slot=state.slot,
                )
                log.info("solana_batch_paid", run_id=row.run_id, signature=signature, paid=paid)
            else:
                await self._settle_failure(row, mint, signature, state.slot, state.error)
            changed = True
        return changed

    async def _unknown(self, row: _Run, send: sqlite3.Row, height: int) -> bool:
        """A signature the cluster does not know. Before its last valid height: re-send the
        same bytes. After it: expired — but only if the node's ledger reaches back to the
        blockhash's slot; a node that has pruned that history cannot tell "never landed" from
        "landed long ago", so the send stays unknown (and the operator is told) rather than
        being paid again."""
        signature = str(send["signature"])
        last_valid = int(send["last_valid_block_height"])
        if height <= last_valid:
            if self._resend_due(send):
                raw = base64.b64decode(send["signed_tx"])
                await self._broadcast(signature, VersionedTransaction.from_bytes(raw))
            return False
        ledger_from = await self.network.cluster.minimum_ledger_slot()
        if ledger_from > int(send["blockhash_slot"]):
            log.error(
                "solana_send_unverifiable", run_id=row.run_id, signature=signature,
                blockhash_slot=send["blockhash_slot"], minimum_ledger_slot=ledger_from,
            )  # fmt: skip
            return False
        await self.db.run(
            store.settle_expired, run_id=row.run_id, owner=self.owner,
            lease_seconds=self.lease_seconds, signature=signature, height=height,
        )  # fmt: skip
        log.warning(
            "solana_send_expired", run_id=row.run_id, signature=signature, height=height,
            last_valid_block_height=last_valid,
        )  # fmt: skip
        return True

    def _resend_due(self, send: sqlite3.Row) -> bool:
        last = send["last_broadcast_at"]
        return last is None or time.time() - float(last) >= self.resend_s

    async def _settle_failure(
        self, row: _Run, mint: Mint, signature: str, slot: int, error: TransactionErrorType
    ) -> None:
        offset = len(preamble(self.network.priority_micro_lamports))
        failure = failure_reason(error, offset=offset)
        transfers = [
            _Transfer(t)
            for t in await self.db.run(store.transfers, row.run_id)
            if t["tx_hash"] == signature and t["status"] == T.SENT
        ]
        failed: dict[str, str] = {}
        if failure.position is not None and not _source_short(error, offset):
            items = [(t.transfer_id, Pubkey.from_string(t.address), t.amount) for t in transfers]
            failed = await self._simulate_each(mint, items)
        await self.db.run(
            store.settle_failed,
            run_id=row.run_id,
            owner=self.owner,
            lease_seconds=self.lease_seconds,
            signature=signature,
            slot=slot,
            error=failure.reason,
            failed=failed,
        )
        log.warning(
            "solana_batch_failed", run_id=row.run_id, signature=signature, error=failure.reason,
            isolated=len(failed), back_to_pending=len(transfers) - len(failed),
        )  # fmt: skip

    # --- isolation --------------------------------------------------------------------------

    async def _isolate_before_sending(
        self, row: _Run, mint: Mint, items: list[tuple[str, Pubkey, int]]
    ) -> list[tuple[str, Pubkey, int]]:
        """Simulate each batch before recording it; when one fails on a recipient, simulate
        that batch's recipients one by one and fail those that fail alone, so no fee is spent
        on a batch known to fail. Returns the items still to send."""
        batches = plan_batches(
            self.source, mint, [(key, amount) for _, key, amount in items],
            max_per_batch=self.network.batch_max,
            priority_micro_lamports=self.network.priority_micro_lamports,
        )  # fmt: skip
        recent = await self.network.cluster.recent_blockhash()
        offset = len(preamble(self.network.priority_micro_lamports))
        failed: dict[str, str] = {}
        start = 0
        for batch in batches:
            chunk = items[start : start + len(batch)]
            start += len(batch)
            simulation = await self._simulate(mint, batch, recent.blockhash)
            if simulation is None:
                continue
            if failure_reason(simulation, offset=offset).position is None or _source_short(
                simulation, offset
            ):
                continue  # not about a recipient: sending will tell (pre-flight covers funds)
            failed.update(await self._simulate_each(mint, chunk))
        if failed:
            await self.db.run(
                store.fail_transfers,
                run_id=row.run_id,
                owner=self.owner,
                lease_seconds=self.lease_seconds,
                reasons=failed,
            )
            log.warning("solana_recipients_isolated", run_id=row.run_id, failed=len(failed))
        return [item for item in items if item[0] not in failed]

    async def _simulate_each(
        self, mint: Mint, items: Sequence[tuple[str, Pubkey, int]]
    ) -> dict[str, str]:
        recent = await self.network.cluster.recent_blockhash()
        offset = len(preamble(self.network.priority_micro_lamports))
        failed: dict[str, str] = {}
        for transfer_id, key, amount in items:
            error = await self._simulate(mint, [(key, amount)], recent.blockhash)
            if error is None or _source_short(error, offset):
                continue
            failure = failure_reason(error, offset=offset)
            if failure.position is not None:
                failed[transfer_id] = failure.reason
        return failed

    async def _simulate(
        self, mint: Mint, batch: list[tuple[Pubkey, int]], blockhash: Hash
    ) -> TransactionErrorType | None:
        message = batch_message(
            self.source,
            mint,
            batch,
            blockhash,
            priority_micro_lamports=self.network.priority_micro_lamports,
        )
        simulation = await self.network.cluster.simulate(
            VersionedTransaction(message, [self._keypair])
        )
        return simulation.error

    # --- pre-flight -------------------------------------------------------------------------

    async def _shortfall(self, mint: Mint, items: Sequence[tuple[str, Pubkey, int]]) -> str | None:
        cluster = self.network.cluster
        needed = sum(amount for _, _, amount in items)
        source_account = await cluster.account(associated_account(self.source, mint))
        balance = 0 if source_account is None else token_amount(source_account.data)
        if balance < needed:
            return (
                f"token balance {balance} of {self.source} is below the {needed} base units"
                f" still to pay"
            )
        accounts = await cluster.accounts([associated_account(key, mint) for _, key, _ in items])
        missing = sum(account is None for account in accounts)
        batches = -(-len(items) // self.network.batch_max)
        priority = self.network.priority_micro_lamports * MAX_COMPUTE_UNITS // 1_000_000
        rent = await self._rent(mint)
        lamports_needed = (
            missing * rent + batches * (SIGNATURE_FEE + priority) + SYSTEM_ACCOUNT_RENT
        )
        native = await cluster.account(self.source)
        lamports = 0 if native is None else native.lamports
        if lamports < lamports_needed:
            return (
                f"SOL balance {lamports} lamports of {self.source} is below the"
                f" {lamports_needed} needed for fees and {missing} new token accounts"
            )
        return None

    async def _rent(self, mint: Mint) -> int:
        # Rent-exempt minimum of a token account: (128 + bytes) * 3480 * 2 lamports per byte-year
        # (the cluster's constants). Token-2022 accounts of a mint with extensions are larger;
        # 300 bytes covers the common ones (immutable owner, transfer fee amount).
        size = TOKEN_ACCOUNT_BYTES if str(mint.program).startswith("Tokenkeg") else 300
        return (128 + size) * 3480 * 2

    # --- run moves ----------------------------------------------------------------------------

    async def _move(
        self,
        row: _Run,
        to: RunStatus,
        *,
        reason: str | None = None,
        columns: dict[str, object] | None = None,
    ) -> None:
        await self.db.run(
            store.move_run, row.run_id, row.status, to, owner=self.owner,
            lease_seconds=self.lease_seconds, reason=reason, columns=columns,
        )  # fmt: skip
        row.status, row.reason = to, reason

    async def _finish(self, row: _Run, transfers: Sequence[sqlite3.Row]) -> bool:
        paid = sum(t["status"] == T.PAID for t in transfers)
        failed = len(transfers) - paid
        if row.status == R.PAUSED:
            await self._move(row, R.RUNNING)
        if paid:
            reason = f"{failed} of {len(transfers)} transfers failed" if failed else None
            await self._move(row, R.COMPLETED, reason=reason,
                             columns={"finished_at": time.time()})  # fmt: skip
        else:
            await self._move(row, R.FAILED, reason="every transfer failed",
                             columns={"finished_at": time.time()})  # fmt: skip
        log.info("solana_run_finished", run_id=row.run_id, status=row.status, paid=paid,
                 failed=failed)  # fmt: skip
        return True

    async def _fail_run(self, row: _Run, reason: str) -> bool:
        """A run that can never be paid (its token is no mint, its decimals changed). Only
        while nothing is in flight: a sent transaction is resolved first."""
        sends = await self.db.run(store.open_sends, row.run_id)
        if sends:
            log.error("solana_run_unpayable_in_flight", run_id=row.run_id, reason=reason)
            return False
        await self._move(row, R.FAILED, reason=reason, columns={"finished_at": time.time()})
        log.error("solana_run_failed", run_id=row.run_id, reason=reason)
        return True


def _source_short(error: TransactionErrorType, offset: int) -> bool:
    """The token program's InsufficientFunds in a transfer: the source is short, no recipient
    is to blame (the pre-flight pauses the run)."""
    return (
        isinstance(error, TransactionErrorInstructionError)
        and isinstance(error.err, InstructionErrorCustom)
        and error.index >= offset
        and (error.index - offset) % PER_RECIPIENT == 1
        and error.err.code == TOKEN_ERRORS.index("InsufficientFunds")
    )


class _Run:
    def __init__(self, row: sqlite3.Row) -> None:
        self.run_id = str(row["run_id"])
        self.status = RunStatus(row["status"])
        self.reason: str | None = row["reason"]
        self.token = str(row["token"])
        self.decimals = int(row["decimals"])
        self.source: str | None = row["source"]


class _Transfer:
    def __init__(self, row: sqlite3.Row) -> None:
        self.transfer_id = str(row["transfer_id"])
        self.address = str(row["address"])
        self.amount = int(row["amount"])
        self.attempts = int(row["attempts"])
