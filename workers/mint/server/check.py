"""Did someone else pay? The check of a purchase whose own settle failed (SETTLE_CHECK).

An EIP-3009 authorization can be submitted by anyone, the payer included, and the first
submission wins: ours then reverts (or, with a foreign transaction on our nonce, never
mines) although the USDC moved to payTo. Such a purchase is paid and is owed its mint.

For each SETTLE_CHECK purchase, at a block ``confirmations`` below the head:

- an ``AuthorizationUsed(payer, nonce)`` log of the USDC within the last
  :data:`LOOKBACK_BLOCKS`, in a transaction whose receipt holds the Transfer payer -> payTo
  of the price on the USDC: paid (-> MINT_QUEUED, ``settle_tx_hash`` = that transaction);
- such a log without that Transfer (the payer used the nonce for another payment): failed;
- no log, and ``authorizationState(payer, nonce)`` false at that block: nothing moved
  (-> SETTLE_FAILED; the payer may present the payment again);
- no log and the state true at that block: the authorization was cancelled, or used longer
  ago than the look-back; -> SETTLE_FAILED naming it for an operator;
- used at the head but not yet at that block: asked again on a later round.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Final

import structlog
from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_utils.crypto import keccak

from shared import state
from shared.chain.rpc import RpcClient, hex_int
from shared.db import AsyncDatabase
from shared.errors import TransitionConflict
from shared.tx.authorizations.eip3009 import AUTHORIZATION_USED_TOPIC, address_topic
from shared.tx.receipts import parse_receipt
from workers.mint.server import store
from workers.mint.server.machine import PURCHASES, PurchaseStatus
from workers.mint.server.purpose import transfer_amount

log = structlog.get_logger(__name__)

P = PurchaseStatus
ACTOR: Final = "mint-server-check"
#: blocks searched back from the checked block for another use of the authorization: an
#: authorization lives HODLAI_MINT_SERVER_MAX_TIMEOUT_S (300 s: 150 blocks on Base)
LOOKBACK_BLOCKS: Final = 5_000
#: purchases checked per round
BATCH: Final = 16
_STATE_SELECTOR: Final = keccak(text="authorizationState(address,bytes32)")[:4]


class SettleChecker:
    """Runs the check (module docstring) for the sending loop, at most every ``every_s``."""

    def __init__(
        self,
        *,
        db: AsyncDatabase,
        rpc: RpcClient,
        usdc: str,
        confirmations: int,
        every_s: float = 1.0,
        clock: Any = time.monotonic,
    ) -> None:
        self._db = db
        self._rpc = rpc
        self._usdc = usdc
        self._confirmations = confirmations
        self._every_s = every_s
        self._clock = clock
        self._next = 0.0

    async def run(self, *, now: float) -> int:
        """Check what is waiting; returns how many purchases moved on."""
        if self._clock() < self._next:
            return 0
        self._next = self._clock() + self._every_s
        waiting = await self._db.run(_waiting)
        if not waiting:
            return 0
        head = hex_int(await self._rpc.call("eth_blockNumber"))
        at = max(0, head - self._confirmations)
        moved = 0
        for purchase in waiting:
            verdict = await self._judge(purchase, at=at)
            if verdict is None:
                continue
            to, columns, why = verdict
            try:
                await self._db.run(_move, purchase.payment_id, to, columns, why, now)
            except TransitionConflict:
                continue
            moved += 1
            (log.info if to is P.MINT_QUEUED else log.warning)(
                "mint_server_settle_checked", payment_id=purchase.payment_id, to=str(to), why=why
            )
        return moved

    async def _judge(
        self, purchase: store.Purchase, *, at: int
    ) -> tuple[PurchaseStatus, dict[str, object], str] | None:
        logs = await self._rpc.call(
            "eth_getLogs",
            [
                {
                    "address": self._usdc,
                    "fromBlock": hex(max(0, at - LOOKBACK_BLOCKS)),
                    "toBlock": hex(at),
                    "topics": [
                        AUTHORIZATION_USED_TOPIC,
                        address_topic(purchase.payer),
                        purchase.auth_nonce,
                    ],
                }
            ],
        )
        if logs:
            tx_hash = str(logs[0]["transactionHash"]).lower()
            receipt = parse_receipt(await self._rpc.call("eth_getTransactionReceipt", [tx_hash]))
            paid = transfer_amount(
                receipt, token=self._usdc, source=address_topic(purchase.payer),
                to=purchase.pay_to,
            )  # fmt: skip
            if receipt.ok and paid == purchase.amount:
                why = f"paid by another submission of the authorization ({tx_hash})"
                return P.MINT_QUEUED, {"settle_tx_hash": tx_hash, "error": None}, why
            why = f"the payer used the authorization's nonce for another payment ({tx_hash})"
            return P.SETTLE_FAILED, {"error": why}, why
        used_at = await self._used(purchase, hex(at))
        if not used_at:
            if await self._used(purchase, "latest"):
                return None  # used after the checked block: look again once it is deep
            why = "nobody used the authorization: no money moved"
            return P.SETTLE_FAILED, {"error": why}, why
        why = (
            f"the authorization was cancelled, or used before block {max(0, at - LOOKBACK_BLOCKS)}"
            ": no payment to payTo found; check by hand"
        )
        return P.SETTLE_FAILED, {"error": why}, why

    async def _used(self, purchase: store.Purchase, block: str) -> bool:
        data = _STATE_SELECTOR + abi_encode(
            ["address", "bytes32"], [purchase.payer, bytes.fromhex(purchase.auth_nonce[2:])]
        )
        answer = await self._rpc.call(
            "eth_call", [{"to": self._usdc, "data": "0x" + data.hex()}, block]
        )
        (used,) = abi_decode(["bool"], bytes.fromhex(str(answer)[2:]))
        return bool(used)


def _move(
    conn: sqlite3.Connection,
    payment_id: str,
    to: PurchaseStatus,
    columns: dict[str, object],
    why: str,
    now: float,
) -> None:
    state.transition(
        conn, PURCHASES, payment_id, P.SETTLE_CHECK, to, actor=ACTOR, note=why,
        set_columns=columns, now=now,
    )  # fmt: skip


def _waiting(conn: sqlite3.Connection) -> list[store.Purchase]:
    rows = conn.execute(
        "SELECT * FROM mint_purchases WHERE status = 'SETTLE_CHECK' ORDER BY updated_at LIMIT ?",
        (BATCH,),
    ).fetchall()
    return [store.Purchase.of(row) for row in rows]
