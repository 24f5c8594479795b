"""A test-only executor, to show that a new executor is a package plus its own migration set
(no copy of the core): a machine, a migration set, a transaction purpose, a CLI command and
an API route. It sends one 0-value "note" transaction per NEW note and marks it SENT when
the chain has it for good: on FINAL, as a money purpose would (MINED can still be undone by a
reorg, and then it is only told ``reorged``)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from fastapi import APIRouter

from shared import state
from shared.api.deps import Database
from shared.cli import inspection_settings, open_for_reading
from shared.migrations import Migration, MigrationSet
from shared.tx.chainview import ChainView
from shared.tx.ledger import TxRecord
from shared.tx.receipts import Receipt
from shared.tx.settlement import Settlement, SubjectAnchor


class NoteStatus(StrEnum):
    NEW = "NEW"
    SENDING = "SENDING"
    SENT = "SENT"


NOTES = state.Machine(
    name="sample.note", table="sample_notes", key="note_id", statuses=NoteStatus,
    moves=frozenset({("NEW", "SENDING"), ("SENDING", "SENT")}),
    settable=frozenset({"text", "lease_owner", "lease_until"}), claim_order=("note_id",),
)  # fmt: skip
MIGRATIONS = MigrationSet("sample", (Migration("sample", 1, "initial", f"""
CREATE TABLE sample_notes (note_id TEXT PRIMARY KEY, text TEXT NOT NULL, status TEXT NOT NULL,
    lease_owner TEXT, lease_until REAL, created_at REAL NOT NULL, updated_at REAL NOT NULL
) STRICT;
CREATE INDEX idx_sample_claim ON sample_notes (status, lease_owner, note_id);
{state.count_triggers_sql(NOTES)}"""),))  # fmt: skip
PURPOSE = "sample.note"


class NotePurpose:
    """The transaction handler: a note is valid while SENDING; final and executed means SENT."""

    def invalid(
        self, conn: sqlite3.Connection, txs: Sequence[TxRecord], *, now: float, chain: ChainView
    ) -> dict[int, str]:
        return {tx.id: "the note moved on" for tx in txs if _status(conn, tx) != "SENDING"}

    def anchors(
        self, conn: sqlite3.Connection, txs: Sequence[TxRecord]
    ) -> dict[int, SubjectAnchor | None]:
        return {}  # an off-chain subject: the database check is the whole confirmation

    def settled(
        self, conn: sqlite3.Connection, tx: TxRecord, outcome: Settlement, *, detail: str,
        now: float, receipt: Receipt | None,
    ) -> None:  # fmt: skip
        if (
            outcome is Settlement.FINAL
            and receipt is not None
            and receipt.ok
            and (tx.purpose.subject is not None)
        ):
            state.transition(conn, NOTES, tx.purpose.subject, "SENDING", "SENT", actor=PURPOSE,
                             note=detail, now=now)  # fmt: skip

    def reorged(
        self, conn: sqlite3.Connection, tx: TxRecord, *, undone: Settlement, detail: str,
        now: float,
    ) -> None:  # fmt: skip
        pass  # the note is still SENDING: it moves on FINAL only


def _status(conn: sqlite3.Connection, tx: TxRecord) -> str | None:
    row = conn.execute("SELECT status FROM sample_notes WHERE note_id = ?",
                       (tx.purpose.subject,)).fetchone()  # fmt: skip
    return None if row is None else str(row[0])


def register(sub: Any) -> None:
    """``hodlai sample-notes``: notes per status."""
    command = sub.add_parser("sample-notes", help="the sample executor's notes per status")
    command.set_defaults(
        func=lambda args: print(json.dumps(state.counts(open_for_reading(
            inspection_settings()), NOTES))) or 0,
    )  # fmt: skip


router = APIRouter(prefix="/api/sample", tags=["sample"])


@router.get("/notes")
def note_counts(conn: Database) -> dict[str, int]:
    return state.counts(conn, NOTES)
