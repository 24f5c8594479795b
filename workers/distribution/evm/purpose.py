"""What the source key's transactions are for, and what their fate means for the ledger.

Two purpose kinds (shared/tx/settlement.py's PurposeHandler):

- ``distribution_batch`` (subject: the batch id): one ``disperseToken`` call paying the
  batch's transfers. A money purpose: it acts on FINAL only. A FINAL successful receipt pays
  each transfer whose ``Transfer`` log it holds (workers/distribution/evm/ledger.py
  ``settle_final``); a FINAL reverted one sends them back to be simulated again (the split
  by simulation then isolates the recipient that reverts). MINED and REVERTED change nothing
  (a reorg could take them back); a reorg before FINAL changes nothing either: the
  transfers stay ``sent`` and the manager sends the same signed bytes again, never a
  rebuilt batch. SUPERSEDED and DROPPED change nothing here: the orphan sweep returns the
  transfers once the transaction that won the nonce is FINAL.
  ``invalid``: a batch none of whose transfers is still ``sent`` under it is cancelled on
  its nonce (an operator failed them). Its subject lives off chain (``anchors``: None).
- ``distribution_approve`` (subject: ``approve:<token>:<spender>``): the allowance the
  multisend pulls with. Nothing to do on any outcome: the payer's pre-flight reads the
  allowance from the chain.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import structlog

from shared.tx.chainview import ChainView
from shared.tx.ledger import TxRecord
from shared.tx.receipts import Receipt
from shared.tx.settlement import OffChainSubject, Settlement, UnconditionalSubject
from workers.distribution.evm import ledger

log = structlog.get_logger(__name__)


class BatchPurpose(OffChainSubject):
    """The ``distribution_batch`` handler (module docstring)."""

    def invalid(
        self,
        conn: sqlite3.Connection,
        txs: Sequence[TxRecord],
        *,
        now: float | None = None,
        chain: ChainView | None = None,
    ) -> dict[int, str]:
        subjects = [tx.purpose.subject or "" for tx in txs]
        waiting = ledger.waiting_batches(conn, subjects)
        return {
            tx.id: f"no transfer of batch {tx.purpose.subject} waits for it any more"
            for tx in txs
            if tx.purpose.subject not in waiting
        }

    def settled(
        self,
        conn: sqlite3.Connection,
        tx: TxRecord,
        outcome: Settlement,
        *,
        detail: str,
        now: float,
        receipt: Receipt | None = None,
    ) -> None:
        if outcome is not Settlement.FINAL or receipt is None or tx.purpose.subject is None:
            log.debug("dist_batch_settled", batch_id=tx.purpose.subject, outcome=outcome.value)
            return
        paid, failed, returned = ledger.settle_final(
            conn, batch_id=tx.purpose.subject, multisend=tx.call.to, receipt=receipt, now=now
        )
        log.info(
            "dist_batch_final",
            batch_id=tx.purpose.subject,
            tx_hash=tx.tx_hash,
            ok=receipt.ok,
            paid=paid,
            failed=failed,
            returned=returned,
            gas_used=receipt.gas_used,
        )

    def reorged(
        self,
        conn: sqlite3.Connection,
        tx: TxRecord,
        *,
        undone: Settlement,
        detail: str,
        now: float,
    ) -> None:
        if undone is Settlement.FINAL:
            log.error("dist_batch_final_reorged_out", batch_id=tx.purpose.subject, detail=detail)
        else:
            log.warning("dist_batch_reorged", batch_id=tx.purpose.subject, detail=detail)


class ApprovePurpose(UnconditionalSubject):
    """The ``distribution_approve`` handler: nothing depends on it but the chain."""

    def settled(
        self,
        conn: sqlite3.Connection,
        tx: TxRecord,
        outcome: Settlement,
        *,
        detail: str,
        now: float,
        receipt: Receipt | None = None,
    ) -> None:
        log.info("dist_approve_settled", subject=tx.purpose.subject, outcome=outcome.value)

    def reorged(
        self,
        conn: sqlite3.Connection,
        tx: TxRecord,
        *,
        undone: Settlement,
        detail: str,
        now: float,
    ) -> None:
        log.info("dist_approve_reorged", subject=tx.purpose.subject, undone=undone.value)
