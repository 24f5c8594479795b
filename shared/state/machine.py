"""A declared state machine: which table holds the entities, what their statuses are, which
moves between them are allowed, which columns a move may set, how work is claimed.

A machine is a module-level constant of its executor (``workers/<executor>/machine.py``).
Everything the generic calls in :mod:`shared.state.store` build into SQL comes from the
declaration, never from a caller's string, so no SQL is assembled from data.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

_IDENTIFIER: Final = re.compile(r"^[a-z_][a-z0-9_]*$")

#: The lease columns every claimable table has (NULL together: no lease).
LEASE_OWNER: Final = "lease_owner"
LEASE_UNTIL: Final = "lease_until"


@dataclass(frozen=True)
class Machine:
    """One table's state machine.

    ``moves`` are (from, to) status pairs; ``settable`` the columns a transition may set
    besides ``status`` and ``updated_at``; ``claim_order`` the columns free rows are handed out
    by (oldest first); ``shard_column`` an INTEGER column whose value modulo the worker count
    picks a worker's rows; ``generation_column`` a counter that fences work against content
    replaced under it. ``claimable`` tables have the lease columns ``lease_owner`` and
    ``lease_until`` and an index on (status, lease_owner, *claim_order).
    """

    name: str
    table: str
    key: str
    statuses: type[StrEnum]
    moves: frozenset[tuple[str, str]]
    settable: frozenset[str]
    claim_order: tuple[str, ...] = ()
    shard_column: str | None = None
    generation_column: str | None = None
    claimable: bool = True
    #: the statuses in which an entity is finished (no claim, no lease)
    terminal: frozenset[str] = field(default_factory=frozenset)
    #: columns an insert may give besides the key (default: the settable ones)
    insertable: frozenset[str] | None = None

    def __post_init__(self) -> None:
        names = [self.table, self.key, *self.settable, *self.claim_order, *(self.insertable or ())]
        names += [c for c in (self.shard_column, self.generation_column) if c is not None]
        for name in names:
            if not _IDENTIFIER.match(name):
                raise ValueError(f"machine {self.name}: {name!r} is not a plain SQL identifier")
        known = {s.value for s in self.statuses}
        for frm, to in self.moves:
            if frm not in known or to not in known:
                raise ValueError(f"machine {self.name}: move {frm} -> {to} names an unknown status")
        if not self.terminal <= known:
            raise ValueError(f"machine {self.name}: unknown terminal status")
        if "status" in self.settable or self.key in self.settable:
            raise ValueError(f"machine {self.name}: status and the key are set by the machine")

    def check_move(self, frm: str, to: str) -> None:
        if (frm, to) not in self.moves:
            raise ValueError(f"{self.name}: transition {frm} -> {to} is not in the state machine")

    def check_columns(self, columns: Iterable[str]) -> None:
        unknown = set(columns) - self.settable
        if unknown:
            raise ValueError(f"{self.name}: a transition may not set column(s) {sorted(unknown)}")

    def check_insert(self, columns: Iterable[str]) -> None:
        allowed = self.settable if self.insertable is None else self.insertable
        unknown = set(columns) - allowed
        if unknown:
            raise ValueError(f"{self.name}: an insert may not give column(s) {sorted(unknown)}")

    @property
    def status_values(self) -> tuple[str, ...]:
        return tuple(s.value for s in self.statuses)
