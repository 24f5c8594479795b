"""What the mint server's transactions are for, and what their fate means for a purchase.

Two purposes, both with the purchase's payment identifier as subject:

- ``mint_server_settle``: x402's settle, ``transferWithAuthorization`` on the USDC. Its FINAL
  outcome, with a receipt of status 1 holding the Transfer (payer -> payTo, the price) on the
  USDC, moves SETTLING -> MINT_QUEUED in the database transaction that records it: the mint
  is owed from that instant, durably (a process killed next still mints after a restart).
  A FINAL revert, or a nonce taken by another of our transactions (SUPERSEDED) or by a
  foreign one (DROPPED), is SETTLE_CHECK: someone else may have submitted the same
  authorization first (anyone may), which pays as well; workers/mint/server/check.py asks
  the chain and moves it to MINT_QUEUED or SETTLE_FAILED.
- ``mint_server_mint``: ``MintToken.mint(to)``. FINAL with status 1 -> MINTED, and the answer
  body is written from the receipt (the Transfer from zero of tokensPerMint to the
  recipient). A FINAL revert is MINT_FAILED (paid, not minted: an operator refunds; sold out
  is refused before a payment is taken, so this is a revoked role or a bug). A mint that
  cannot mine any more (SUPERSEDED, DROPPED) is owed again: MINTING -> MINT_QUEUED.

Only FINAL is acted on for the books (MINED and REVERTED may still be undone by a reorg).
:meth:`_Purpose.invalid` cancels an unmined transaction whose purchase moved on (no
purchase is paid or minted by a transaction it no longer expects). :func:`return_orphans`
sends a MINTING purchase none of whose mints can still mine back to MINT_QUEUED, and sends a
SETTLING one none of whose settles can to SETTLE_CHECK.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Final

import structlog

from shared import state
from shared.errors import TransitionConflict
from shared.tx.authorizations.eip3009 import TRANSFER_TOPIC, address_topic
from shared.tx.chainview import ChainView
from shared.tx.ledger import TxRecord
from shared.tx.receipts import Receipt
from shared.tx.settlement import Settlement, SubjectAnchor
from workers.mint.server import store
from workers.mint.server.machine import PURCHASES, PurchaseStatus

log = structlog.get_logger(__name__)

P = PurchaseStatus
SETTLE_PURPOSE: Final = "mint_server_settle"
MINT_PURPOSE: Final = "mint_server_mint"
ACTOR: Final = "mint-server-sender"
ZERO_TOPIC: Final = "0x" + "00" * 32


def transfer_amount(receipt: Receipt, *, token: str, source: str, to: str) -> int | None:
    """The value of the first Transfer(source -> to) ``token`` emitted in ``receipt``."""
    wanted = (TRANSFER_TOPIC, source, address_topic(to))
    for entry in receipt.logs:
        if entry["address"].lower() != token.lower() or len(entry["topics"]) != 3:
            continue
        if tuple(entry["topics"]) == wanted:
            return int.from_bytes(entry["data"][:32], "big")
    return None


def answer_body(purchase: store.Purchase, *, mint_tx: str, minted: int) -> dict[str, str]:
    """The 200 answer of ``POST /mint/{token}`` (docs/API.md), replayed to every retry."""
    return {
        "txHash": mint_tx,
        "token": purchase.token,
        "to": purchase.recipient,
        "amount": str(minted),
        "paymentId": purchase.payment_id,
        "payer": purchase.payer,
        "settleTxHash": purchase.settle_tx_hash or "",
    }


class _Purpose:
    """Shared by both purposes: a transaction is valid while its purchase is in ``live``."""

    live: PurchaseStatus

    def invalid(
        self,
        conn: sqlite3.Connection,
        txs: Sequence[TxRecord],
        *,
        now: float | None = None,
        chain: ChainView | None = None,
    ) -> dict[int, str]:
        out: dict[int, str] = {}
        for tx in txs:
            found = None if tx.purpose.subject is None else store.get(conn, tx.purpose.subject)
            if found is None:
                out[tx.id] = "no such purchase"
            elif found.status is not self.live:
                out[tx.id] = f"the purchase is {found.status} now"
        return out

    def anchors(
        self, conn: sqlite3.Connection, txs: Sequence[TxRecord]
    ) -> dict[int, SubjectAnchor | None]:
        # A purchase lives off chain: the database check of invalid() is the confirmation.
        return dict.fromkeys((tx.id for tx in txs), None)

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
            # Deeper than the confirmations: the books said final. An operator must look.
            log.error(
                "mint_server_final_undone",
                purpose=tx.purpose.kind,
                payment_id=tx.purpose.subject,
                tx_hash=tx.tx_hash,
                detail=detail,
            )

    def _move(
        self,
        conn: sqlite3.Connection,
        tx: TxRecord,
        frm: PurchaseStatus,
        to: PurchaseStatus,
        *,
        now: float,
        note: str,
        columns: dict[str, object] | None = None,
    ) -> bool:
        try:
            state.transition(
                conn, PURCHASES, tx.purpose.subject or "", frm, to, actor=ACTOR, note=note,
                set_columns=columns, now=now,
            )  # fmt: skip
        except TransitionConflict as exc:
            log.info("mint_server_settle_skipped", payment_id=tx.purpose.subject, why=str(exc))
            return False
        return True


class SettlePurpose(_Purpose):
    live = P.SETTLING

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
        purchase = None if tx.purpose.subject is None else store.get(conn, tx.purpose.subject)
        if purchase is None or purchase.status is not P.SETTLING:
            return
        if outcome is Settlement.FINAL and receipt is not None:
            paid = transfer_amount(
                receipt, token=purchase.asset, source=address_topic(purchase.payer),
                to=purchase.pay_to,
            )  # fmt: skip
            if receipt.ok and paid == purchase.amount:
                if self._move(
                    conn, tx, P.SETTLING, P.MINT_QUEUED, now=now, note=f"settled by {tx.tx_hash}",
                    columns={"settle_tx_hash": receipt.tx_hash},
                ):  # fmt: skip
                    log.info(
                        "mint_server_settled",
                        payment_id=purchase.payment_id,
                        payer=purchase.payer,
                        amount=purchase.amount,
                        tx_hash=receipt.tx_hash,
                    )
                return
            why = "settle reverted" if not receipt.ok else "settle moved no matching Transfer"
            self._check(conn, tx, purchase, f"{why} ({receipt.tx_hash})", now)
        elif outcome in (Settlement.SUPERSEDED, Settlement.DROPPED):
            self._check(conn, tx, purchase, f"settle cannot mine: {outcome} ({detail})", now)

    def _check(
        self, conn: sqlite3.Connection, tx: TxRecord, purchase: store.Purchase, why: str, now: float
    ) -> None:
        if self._move(
            conn, tx, P.SETTLING, P.SETTLE_CHECK, now=now, note=why, columns={"error": why}
        ):
            log.warning("mint_server_settle_not_ours", payment_id=purchase.payment_id, why=why)


class MintPurpose(_Purpose):
    live = P.MINTING

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
        purchase = None if tx.purpose.subject is None else store.get(conn, tx.purpose.subject)
        if purchase is None or purchase.status is not P.MINTING:
            return
        if outcome is Settlement.FINAL and receipt is not None:
            minted = transfer_amount(
                receipt, token=purchase.token, source=ZERO_TOPIC, to=purchase.recipient
            )
            if receipt.ok and minted is not None:
                body = answer_body(purchase, mint_tx=receipt.tx_hash, minted=minted)
                if self._move(
                    conn, tx, P.MINTING, P.MINTED, now=now, note=f"minted by {receipt.tx_hash}",
                    columns={
                        "mint_tx_hash": receipt.tx_hash, "minted_amount": str(minted),
                        "body": json.dumps(body, sort_keys=True),
                    },
                ):  # fmt: skip
                    log.info(
                        "mint_server_minted",
                        payment_id=purchase.payment_id,
                        token=purchase.token,
                        to=purchase.recipient,
                        amount=minted,
                        tx_hash=receipt.tx_hash,
                    )
                return
            why = f"mint reverted ({receipt.tx_hash}); paid, not minted: refund the payer"
            if self._move(
                conn, tx, P.MINTING, P.MINT_FAILED, now=now, note=why, columns={"error": why}
            ):
                log.error("mint_server_mint_failed", payment_id=purchase.payment_id, why=why)
        elif outcome in (Settlement.SUPERSEDED, Settlement.DROPPED):
            self._move(
                conn, tx, P.MINTING, P.MINT_QUEUED, now=now,
                note=f"mint cannot mine ({outcome}: {detail}); owed again",
            )  # fmt: skip


def return_orphans(conn: sqlite3.Connection, *, now: float) -> int:
    """MINTING purchases without a mint that can still mine are owed again; SETTLING ones
    without a settle that can still mine are checked (did another transaction pay?)."""
    moved = 0
    for status, purpose, to in (
        (P.MINTING, MINT_PURPOSE, P.MINT_QUEUED),
        (P.SETTLING, SETTLE_PURPOSE, P.SETTLE_CHECK),
    ):
        rows = conn.execute(
            "SELECT p.payment_id FROM mint_purchases p WHERE p.status = ? AND NOT EXISTS "
            "(SELECT 1 FROM txs t WHERE t.subject = p.payment_id AND t.purpose = ? "
            "AND t.status IN ('SIGNED', 'BROADCAST', 'MINED'))",
            (status, purpose),
        ).fetchall()
        for row in rows:
            note = "no transaction of it can mine any more"
            try:
                state.transition(
                    conn, PURCHASES, row[0], status, to, actor=ACTOR, note=note, now=now,
                    set_columns={"error": note} if to is P.SETTLE_CHECK else None,
                )  # fmt: skip
            except TransitionConflict:
                continue
            moved += 1
            log.info("mint_server_orphan_moved", payment_id=row[0], to=str(to))
    return moved
