"""What one poll of the transaction manager reads, in one database read and one batch.

:func:`snapshot` reads, in one database transaction, everything a poll judges: the open
nonces with every row at them (current and superseded alternatives, any of which may mine),
the recently settled rows a reorg could still take out, the settled rows deep enough to be
told FINAL, and what the purposes say: whether open rows still serve them (given ``now``
and a lazy :class:`~shared.tx.chainview.ChainView`), and for held rows (taken out by a
reorg) where their subjects are anchored. :func:`lookups` turns it into one JSON-RPC batch:

- ``eth_blockNumber`` and ``eth_getTransactionCount(latest)``: the head judges whether the
  whole answer is fresh (shared/tx/evidence.py), and the count comes from the same batch as
  the receipts it is compared with;
- the receipt of every row at every open nonce;
- the header of the highest block one of our recent transactions was mined in: unchanged, it
  proves every block below it unchanged (a block hash commits to its ancestors), so one
  header per poll watches all of them for reorgs;
- ``eth_getTransactionByHash`` of broadcast transactions due for a check that a node still
  holds them;
- the headers of the blocks held transactions' subjects are anchored in;
- for each settled row that may be final now (its block at least ``confirmations`` below
  the highest head seen before this poll): its receipt and the header at its block's
  height, so FINAL is judged from this poll's one batch, under its freshness rule.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from shared.chain.rpc import RpcCall
from shared.db import read_transaction
from shared.tx import ledger
from shared.tx.chainview import ChainView
from shared.tx.ledger import TxRecord
from shared.tx.settlement import PurposeHandler, SubjectAnchor

# Settled rows judged for FINAL per poll at most: bounds one poll's batch after a long
# downtime left many behind (each costs a receipt and at most a header); the rest follow on
# the next polls, oldest block first.
FINAL_PER_POLL: Final = 64


@dataclass(frozen=True)
class Snapshot:
    open_rows: list[TxRecord]  # the current row of each open nonce
    at_open: list[TxRecord]  # every row at those nonces
    recent_mined: list[TxRecord]  # MINED / REVERTED in the last blocks, highest block first
    settled_floor: int  # one above our highest MINED / REVERTED nonce
    settled_open: set[int]  # open nonces that also hold a MINED / REVERTED row of ours
    invalid: dict[int, str]  # open row id -> why its purpose no longer holds
    anchors: dict[int, SubjectAnchor | None]  # held, still valid row id -> its anchor
    unfinal: list[TxRecord] = field(default_factory=list)  # settled, deep enough to judge

    @property
    def held(self) -> list[TxRecord]:
        return [tx for tx in self.open_rows if tx.held]


def snapshot(
    conn: sqlite3.Connection,
    sender: str,
    handlers: Mapping[str, PurposeHandler],
    *,
    chain_id: int,
    mined_since_block: int | None,
    final_up_to_block: int | None = None,
    now: float,
    chain: ChainView,
) -> Snapshot:
    with read_transaction(conn):  # a consistent picture of the ledger
        open_rows = ledger.open_txs(conn, sender, chain_id=chain_id)
        nonces = {tx.nonce for tx in open_rows}
        at_open = ledger.at_nonces(conn, sender, nonces, chain_id=chain_id) if nonces else []
        recent = (
            ledger.recent_mined(conn, sender, mined_since_block, chain_id=chain_id)
            if mined_since_block is not None
            else []
        )
        invalid = _by_kind(
            open_rows, handlers, lambda h, group: h.invalid(conn, group, now=now, chain=chain)
        )
        held = [tx for tx in open_rows if tx.held and tx.id not in invalid]
        anchors: dict[int, SubjectAnchor | None] = {tx.id: None for tx in held}
        anchors.update(_by_kind(held, handlers, lambda h, group: h.anchors(conn, group)))
        return Snapshot(
            open_rows=open_rows,
            at_open=at_open,
            recent_mined=recent,
            settled_floor=ledger.settled_floor(conn, sender, chain_id=chain_id),
            settled_open=(
                ledger.settled_nonces(conn, sender, nonces, chain_id=chain_id) if nonces else set()
            ),
            invalid=invalid,
            anchors=anchors,
            unfinal=(
                ledger.unfinal(
                    conn,
                    sender,
                    chain_id=chain_id,
                    up_to_block=final_up_to_block,
                    limit=FINAL_PER_POLL,
                )
                if final_up_to_block is not None
                else []
            ),
        )


def _by_kind(txs: Sequence[TxRecord], handlers: Mapping[str, PurposeHandler], ask: Any) -> Any:
    """Ask each kind's handler about its own transactions; merge the answers."""
    groups: dict[str, list[TxRecord]] = {}
    for tx in txs:
        if tx.purpose.kind in handlers:
            groups.setdefault(tx.purpose.kind, []).append(tx)
    out: dict[int, Any] = {}
    for kind, group in groups.items():
        out.update(ask(handlers[kind], group))
    return out


@dataclass
class Lookups:
    """One poll's batch and where each answer lands."""

    calls: list[RpcCall] = field(default_factory=list)
    receipts: dict[str, int] = field(default_factory=dict)  # tx hash -> slot
    watch_block: int | None = None  # the recent-mined header asked for
    watch_slot: int | None = None
    known: dict[str, int] = field(default_factory=dict)  # tx hash -> getTransactionByHash slot
    headers: dict[int, int] = field(default_factory=dict)  # block number -> slot
    final_receipts: dict[str, int] = field(default_factory=dict)  # unfinal tx hash -> slot

    def add(self, call: RpcCall) -> int:
        self.calls.append(call)
        return len(self.calls) - 1


HEAD_SLOT = 0
COUNT_SLOT = 1


def lookups(snap: Snapshot, sender: str, *, check_known: Sequence[TxRecord]) -> Lookups:
    out = Lookups()
    out.add(RpcCall("eth_blockNumber", []))
    out.add(RpcCall("eth_getTransactionCount", [sender, "latest"]))
    for tx in snap.at_open:
        if tx.tx_hash not in out.receipts:
            out.receipts[tx.tx_hash] = out.add(RpcCall("eth_getTransactionReceipt", [tx.tx_hash]))
    if snap.recent_mined and snap.recent_mined[0].mined_block is not None:
        out.watch_block = snap.recent_mined[0].mined_block
        out.watch_slot = out.add(RpcCall("eth_getBlockByNumber", [hex(out.watch_block), False]))
    for tx in check_known:
        out.known[tx.tx_hash] = out.add(RpcCall("eth_getTransactionByHash", [tx.tx_hash]))
    for anchor in snap.anchors.values():
        if anchor is not None and anchor.block_number not in out.headers:
            out.headers[anchor.block_number] = out.add(
                RpcCall("eth_getBlockByNumber", [hex(anchor.block_number), False])
            )
    for tx in snap.unfinal:
        if tx.mined_block is None:
            continue
        slot = out.receipts.get(tx.tx_hash)
        if slot is None:
            slot = out.add(RpcCall("eth_getTransactionReceipt", [tx.tx_hash]))
        out.final_receipts[tx.tx_hash] = slot
        if tx.mined_block not in out.headers:
            out.headers[tx.mined_block] = (
                out.watch_slot
                if out.watch_slot is not None and tx.mined_block == out.watch_block
                else out.add(RpcCall("eth_getBlockByNumber", [hex(tx.mined_block), False]))
            )
    return out


def block_hash(answer: object) -> str | None:
    """The hash of a header answer (None when the node has no such block or answered badly)."""
    if isinstance(answer, dict) and isinstance(answer.get("hash"), str):
        return str(answer["hash"]).lower()
    return None


def seen_mined(answer: object) -> bool:
    """An eth_getTransactionByHash answer that places the transaction in a block."""
    return isinstance(answer, dict) and answer.get("blockNumber") not in (None, "")
