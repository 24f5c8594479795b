"""Declared state machines and the generic, audited calls on them (shared/state/store.py)."""

from shared.state.machine import LEASE_OWNER, LEASE_UNTIL, Machine
from shared.state.store import (
    REMOVED,
    audit,
    claim,
    count_triggers_sql,
    counts,
    extend,
    history,
    insert,
    insert_many,
    release,
    remove,
    removed_generation,
    transition,
)

__all__ = [
    "LEASE_OWNER",
    "LEASE_UNTIL",
    "REMOVED",
    "Machine",
    "audit",
    "claim",
    "count_triggers_sql",
    "counts",
    "extend",
    "history",
    "insert",
    "insert_many",
    "release",
    "remove",
    "removed_generation",
    "transition",
]
