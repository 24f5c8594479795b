"""What an executor registers with a log poller: a :class:`LogFilter` (which logs) and its
:class:`LogSink` (what they do to the state store, inside the poller's transactions).

What the poller guarantees a sink (shared/chain/poller.py keeps it):

- **Inside the transaction that moves the cursor, or not at all.** :meth:`LogSink.apply`
  runs inside the write transaction that also stores the range's block hashes and moves
  the cursor over the range. If any sink raises, nothing of the range is stored, for any
  sink, and the cursor stays where it was; the range is read again.
- **Exactly its logs.** A sink is handed the logs of the range that match its filter
  (:meth:`LogFilter.matches`: one of its addresses, its topics, at or above its start block),
  in chain order, each once, never one a node reports as removed.
- **Undone with the cursor.** :meth:`LogSink.rollback` runs inside the transaction that moves
  the cursor back to a common ancestor and deletes the stored hashes above it: the sink
  undoes there everything it stored from blocks above that ancestor. All sinks of a poller
  roll back in that one transaction.
- **Decoded before the lock.** :meth:`LogSink.decode` runs before the write transaction
  opens (``BEGIN IMMEDIATE``), so other processes wait for the write lock only while the
  sinks write; it must not touch the database. The poller decodes a range on a worker thread
  while the previous range commits on the database thread (pipeline.py), so ``decode`` may
  run at the same time as the sink's ``apply`` of earlier logs: it must be pure.

What a sink owes the poller:

- ``apply`` is idempotent: the same logs applied again (the backup re-scan reads accepted
  blocks again; a range is read again after a crash before its commit was known) change
  nothing.
- It raises :class:`~shared.errors.LogDataConflictError` when logs differ from stored ones
  under an unchanged block hash (a block hash commits to its logs: the node is wrong); the
  poller then stores nothing of the answer and fails over to the next RPC URL.
- ``decode`` raises :class:`~shared.errors.RpcTransportError` for a log object the node got
  wrong (missing fields, not hex): the poll is asked again, possibly elsewhere.
- ``committed`` is called on the event loop after a transaction with the sink's writes
  committed, with what ``apply`` returned: the place for totals and alarm counters, which
  must not count work a failed transaction took back.

Why one ``eth_getLogs`` per filter in the poll's batch, not one with the union of all
addresses and topics routed by (address, topic0): a union query can express only the
filters' first topics, so a filter on a later topic (an ERC-20 ``Transfer`` *to* an agent
wallet, topic 2) would fetch every transfer of the token, unbounded on a busy token. One
exact query per filter costs one more entry per filter in the same HTTP request. The answers
are merged into one list in chain order (duplicates of overlapping filters removed) and
routed back by :meth:`LogFilter.matches`, so a sink gets the same logs whichever query
returned them (a by-hash re-read of the bloom check, a re-scan).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from shared.chain.rpc import hex_int
from shared.errors import RpcTransportError

#: A log as eth_getLogs returns it (JSON object, hex strings).
Log = dict[str, Any]

# Topic positions of a log (EVM LOG0 to LOG4).
MAX_TOPICS = 4
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_TOPIC = re.compile(r"0x[0-9a-fA-F]{64}")
_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")

B = TypeVar("B")
S = TypeVar("S", bound="SinkStats")


@dataclass(frozen=True, slots=True)
class LogFilter:
    """The logs one sink wants: emitted by one of ``addresses``, with ``topics`` (per
    position, any of the given values; None: any value), from ``start_block`` on."""

    name: str
    addresses: tuple[str, ...]
    topics: tuple[tuple[str, ...] | None, ...] = ()
    start_block: int = 0
    _addresses: frozenset[str] = field(init=False, repr=False, compare=False)
    _topics: tuple[frozenset[str] | None, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"log filter name {self.name!r} is not snake_case")
        if not self.addresses or not all(_ADDRESS.fullmatch(a) for a in self.addresses):
            raise ValueError(f"log filter {self.name}: addresses must be 0x-hex, got "
                             f"{self.addresses!r}")  # fmt: skip
        if len(self.topics) > MAX_TOPICS:
            raise ValueError(f"log filter {self.name}: at most {MAX_TOPICS} topic positions")
        for options in self.topics:
            if options is not None and (
                not options or not all(_TOPIC.fullmatch(t) for t in options)
            ):
                raise ValueError(f"log filter {self.name}: topics must be 32-byte 0x-hex, got "
                                 f"{options!r}")  # fmt: skip
        if self.start_block < 0:
            raise ValueError(f"log filter {self.name}: negative start block {self.start_block}")
        object.__setattr__(self, "_addresses", frozenset(a.lower() for a in self.addresses))
        object.__setattr__(
            self,
            "_topics",
            tuple(None if o is None else frozenset(t.lower() for t in o) for o in self.topics),
        )

    @property
    def lowercase_addresses(self) -> frozenset[str]:
        return self._addresses

    def _query_topics(self) -> list[list[str] | None]:
        topics: list[list[str] | None] = [None if o is None else list(o) for o in self.topics]
        while topics and topics[-1] is None:
            topics.pop()
        return topics

    def query(self, first: int, last: int) -> dict[str, Any]:
        """eth_getLogs parameters for blocks ``first`` to ``last``, this filter's part only."""
        address: str | list[str] = (
            self.addresses[0] if len(self.addresses) == 1 else list(self.addresses)
        )
        return {
            "address": address,
            "fromBlock": hex(max(first, self.start_block)),
            "toBlock": hex(last),
            "topics": self._query_topics(),
        }

    def by_hash(self, block_hash: str) -> dict[str, Any]:
        """eth_getLogs parameters for one block, asked for by its hash (EIP-234)."""
        address: str | list[str] = (
            self.addresses[0] if len(self.addresses) == 1 else list(self.addresses)
        )
        return {"address": address, "blockHash": block_hash, "topics": self._query_topics()}

    def matches(self, entry: Mapping[str, Any]) -> bool:
        """Whether ``entry`` is one of this filter's logs (its block is not checked: see
        :func:`route`). A log object without a topics list is the node's error."""
        address = entry.get("address")
        if not isinstance(address, str) or address.lower() not in self._addresses:
            return False
        topics = entry.get("topics")
        if not isinstance(topics, list):
            raise RpcTransportError(f"log without topics: {entry!r:.200}")
        for position, options in enumerate(self._topics):
            if options is None:
                continue
            if position >= len(topics):
                return False
            topic = topics[position]
            if topic not in options and (
                not isinstance(topic, str) or topic.lower() not in options
            ):
                return False
        return True


class SinkStats(Protocol):
    """What a sink reports about one of its writes (for the poller's log events)."""

    @property
    def changed(self) -> int:
        """How many things were not already stored as they are now (0: nothing to tell)."""

    def fields(self) -> dict[str, int]:
        """Counters by name, added to the poller's log events (``range_ingested``,
        ``reorg_rolled_back``, ...); sinks of one poller name theirs apart."""


class LogSink(Protocol[B, S]):
    """What a sink does with its filter's logs (the guarantees: the module docstring).
    ``B`` is its decoded batch, ``S`` what its writes report."""

    def decode(self, logs: Sequence[Log]) -> B:
        """Turn the filter's logs of one transaction into the sink's batch; pure."""

    def apply(self, conn: sqlite3.Connection, batch: B, *, now: float) -> S:
        """Store the batch, inside the poller's transaction (``conn`` is in it)."""

    def rollback(self, conn: sqlite3.Connection, ancestor: int, *, now: float) -> SinkStats:
        """Undo everything stored from blocks above ``ancestor``, inside the poller's
        rollback transaction."""

    def committed(self, stats: S) -> None:
        """A transaction with this sink's ``apply`` committed (called on the event loop)."""


@dataclass(frozen=True, slots=True)
class Registration:
    """One filter and its sink, as registered with a poller."""

    filter: LogFilter
    sink: LogSink[Any, Any]


@dataclass(frozen=True, slots=True)
class Routed:
    """One answer's logs, split by registration, and the blocks they came from."""

    #: per registration, in registration order: its logs in chain order
    logs: list[list[Log]]
    #: block number -> block hash of every routed log (for the ``blocks`` table)
    blocks: dict[int, str]


def route(registrations: Sequence[Registration], logs: Iterable[Log], first_block: int) -> Routed:
    """Hand each registration the logs that match its filter (see the module docstring);
    ``first_block`` is the first block the logs can come from."""
    out: list[list[Log]] = [[] for _ in registrations]
    # A filter that starts inside the range gets no log from below its start; the usual
    # case (every filter started before the range) needs no block number per log.
    floors = [r.filter.start_block if r.filter.start_block > first_block else None
              for r in registrations]  # fmt: skip
    blocks: dict[int, str] = {}
    last_block: object = None
    for entry in logs:
        if entry.get("removed") is True:
            continue  # a node that reports removals: the reorg check handles the block
        taken = False
        for index, registration in enumerate(registrations):
            if not registration.filter.matches(entry):
                continue
            floor = floors[index]
            if floor is not None and hex_int(entry.get("blockNumber")) < floor:
                continue
            out[index].append(entry)
            taken = True
        number = entry.get("blockNumber")
        if taken and number != last_block:
            # Logs come in chain order: one block number to parse per block, not per log
            # (the poll's judge saw to one hash per block).
            last_block = number
            blocks[hex_int(number)] = str(entry.get("blockHash")).lower()
    return Routed(logs=out, blocks=blocks)


@dataclass(frozen=True, slots=True)
class Decoded:
    """One answer's logs routed to the registrations and decoded by their sinks: what the
    range's transaction writes (history.write_decoded)."""

    #: per registration, in registration order: its sink's decoded batch
    batches: list[Any]
    #: block number -> block hash of every routed log (for the ``blocks`` table)
    blocks: dict[int, str]


def decode_routed(
    registrations: Sequence[Registration], logs: Iterable[Log], first_block: int
) -> Decoded:
    """:func:`route` the logs, then let each sink decode its share (touches no database)."""
    routed = route(registrations, logs, first_block)
    batches = [r.sink.decode(own) for r, own in zip(registrations, routed.logs, strict=True)]
    return Decoded(batches=batches, blocks=routed.blocks)


def merged_stats(stats: Sequence[SinkStats]) -> tuple[int, dict[str, int]]:
    """(everything changed, every counter by name) over the sinks' reports; a name two
    sinks report is summed."""
    if len(stats) == 1:
        return stats[0].changed, stats[0].fields()
    fields: dict[str, int] = {}
    for item in stats:
        for name, value in item.fields().items():
            fields[name] = fields.get(name, 0) + value
    return sum(item.changed for item in stats), fields
