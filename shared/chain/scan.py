"""Reading the chain for a log poller: one JSON-RPC batch per poll, and the rules that decide
what of its answer may be accepted (the poller's guarantees: shared/chain/poller.py).

:func:`judge` is pure: it sees one batch's answer and the last accepted block, and says
whether the range may be accepted. Its rules, numbered as the poller's guarantees:

1. A range is accepted only when the *same* batch that returned its logs also reported a
   head at least ``confirmations`` above the range's end and returned the range's last
   header: a backend behind a load balancer that has not seen the range yet cannot make
   the poller skip it, because its answer fails these checks and is asked again.
3. The batch re-fetches the header of the last accepted block; another hash than stored is
   a suspected reorg (and a one-block range whose parent is not that block).
4. Logs must come from a registered address, lie inside the range, agree on one hash per
   block, and the logs of the range's last block must carry that header's hash.
4b. The bloom window's headers (bloom.py) are all there and link up to the range's last
   header, so their blooms describe the blocks whose logs are accepted.
5. :class:`RangeSizer` is the adaptive range: halved on a refusal, grown back after
   successes, shrunk when a poll returns many logs.

:class:`ChainScanner` builds and sends the batches (one ``eth_getLogs`` per filter; why:
shared/chain/filters.py) and parses them; it decides nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from shared.chain.filters import Log, LogFilter
from shared.chain.rpc import RpcCall, RpcClient, hex_int
from shared.errors import HodlaiError, RpcRangeTooLargeError, RpcTransportError

log = structlog.get_logger(__name__)

# Headers asked for in one batch while walking back through a reorg or verifying log blocks:
# providers cap batches at 100-1,000 calls, and a reorg is rarely more than a few blocks deep.
HEADER_BATCH = 50
# Blocks in the first poll's range: small enough that a dense backfill starts pipelined,
# and doubled per sparse poll, so 2,000 is reached after 7 polls.
INITIAL_RANGE = 16
# Successful polls during which the range stays below the size a node last refused.
CEILING_POLLS = 100
# Size of a block header's logsBloom (2,048 bits, yellow paper section 4.3.1).
BLOOM_BYTES = 256


@dataclass(frozen=True, slots=True)
class BlockHeader:
    """The part of a block header a poller needs."""

    number: int
    hash: str
    parent_hash: str | None
    #: the 256-byte logs bloom (None when the node did not send it, or not known)
    logs_bloom: bytes | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class LogRange:
    """Blocks ``first`` to ``last``, both included."""

    first: int
    last: int

    def __post_init__(self) -> None:
        if self.first < 0 or self.last < self.first:
            raise ValueError(f"empty or negative block range {self.first}..{self.last}")

    @property
    def size(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True, slots=True)
class PollAnswer:
    """One poll's batch answer."""

    range: LogRange
    head: int
    #: every filter's logs, in chain order
    logs: list[Log]
    range_end: BlockHeader | None
    anchor: BlockHeader | None
    #: headers of the range's blocks below its end whose blooms are checked (bloom window)
    headers: dict[int, BlockHeader | None] = field(default_factory=dict)

    def checked_headers(self) -> list[BlockHeader]:
        """The headers whose blooms are checked, the range end included, in chain order."""
        out = [h for _, h in sorted(self.headers.items()) if h is not None]
        return [*out, self.range_end] if self.range_end is not None else out


@dataclass(frozen=True, slots=True)
class Probe:
    """The head and the last accepted header, asked for when there is no range to read."""

    head: int
    anchor: BlockHeader | None


class Verdict(enum.Enum):
    ACCEPT = "accept"
    #: the reported head is too low for the whole range: ask again for less
    SHRINK = "shrink"
    #: the node's head is below the last accepted block: stale node, or a shorter chain
    HEAD_BELOW_CURSOR = "head_below_cursor"
    #: the last accepted block has another hash now (or the continuity check failed)
    REORG_SUSPECTED = "reorg_suspected"
    #: the parts of the answer disagree (a batch split across backends): ask again
    INCONSISTENT = "inconsistent"


@dataclass(frozen=True, slots=True)
class Judgement:
    verdict: Verdict
    reason: str = ""
    #: for SHRINK: the last block the reported head allows (may be below the range start)
    safe_last: int | None = None


def parse_header(raw: object) -> BlockHeader | None:
    """A header from eth_getBlockByNumber's answer (None when the node lacks the block)."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise RpcTransportError(f"block header is not an object: {raw!r:.200}")
    number, block_hash = raw.get("number"), raw.get("hash")
    parent = raw.get("parentHash")
    if not isinstance(block_hash, str) or len(block_hash) != 66:
        raise RpcTransportError(f"block header without a hash: {raw!r:.200}")
    return BlockHeader(
        number=hex_int(number),
        hash=block_hash.lower(),
        parent_hash=parent.lower() if isinstance(parent, str) else None,
        logs_bloom=_bloom_bytes(raw.get("logsBloom")),
    )


def _bloom_bytes(value: object) -> bytes | None:
    if not isinstance(value, str) or len(value) != 2 + 2 * BLOOM_BYTES:
        return None
    try:
        return bytes.fromhex(value[2:])
    except ValueError:
        return None


def judge(
    answer: PollAnswer,
    *,
    anchor: BlockHeader | None,
    confirmations: int,
    addresses: Collection[str],
) -> Judgement:
    """Decide what one poll's answer allows. Pure: everything it needs is in the arguments.

    ``anchor`` is the last accepted block as stored (None before the first acceptance);
    ``addresses`` are the registered filters' addresses (logs from any other are wrong).
    """
    return (
        _judge_anchor(answer, anchor)
        or _judge_range(answer, anchor, confirmations)
        or _judge_headers(answer)
        or _judge_logs(answer, frozenset(a.lower() for a in addresses))
        or Judgement(Verdict.ACCEPT)
    )


def _judge_headers(answer: PollAnswer) -> Judgement | None:
    # Invariant 4b: the bloom window's headers are all there and form one chain up to the
    # range's last header, so their blooms describe the blocks whose logs are accepted.
    if not answer.headers:
        return None
    previous: BlockHeader | None = None
    for number in sorted(answer.headers):
        header = answer.headers[number]
        if header is None:
            return Judgement(Verdict.INCONSISTENT, f"no header {number} in the bloom window")
        if header.number != number:
            raise RpcTransportError(f"asked for block {number}, got header {header.number}")
        if previous is not None and header.parent_hash != previous.hash:
            return Judgement(
                Verdict.INCONSISTENT, f"header {number} does not follow {previous.number}"
            )
        previous = header
    end = answer.range_end
    if previous is not None and end is not None and end.parent_hash != previous.hash:
        return Judgement(
            Verdict.INCONSISTENT, f"header {end.number} does not follow {previous.number}"
        )
    return None


def _judge_anchor(answer: PollAnswer, anchor: BlockHeader | None) -> Judgement | None:
    # Invariant 3: the chain must still contain the last accepted block, unchanged.
    if anchor is None:
        return None
    if answer.head < anchor.number:
        return Judgement(Verdict.HEAD_BELOW_CURSOR, f"head {answer.head} < {anchor.number}")
    if answer.anchor is None:
        return Judgement(Verdict.INCONSISTENT, f"no header for accepted block {anchor.number}")
    if answer.anchor.number != anchor.number:
        raise RpcTransportError(f"asked for block {anchor.number}, got {answer.anchor.number}")
    if answer.anchor.hash != anchor.hash:
        return Judgement(
            Verdict.REORG_SUSPECTED,
            f"block {anchor.number} is now {answer.anchor.hash}, was {anchor.hash}",
        )
    return None


def _judge_range(
    answer: PollAnswer, anchor: BlockHeader | None, confirmations: int
) -> Judgement | None:
    # Invariant 1: accept only what the same batch's head covers with enough confirmations.
    rng = answer.range
    safe_last = answer.head - confirmations
    if safe_last < rng.last:
        return Judgement(Verdict.SHRINK, f"head {answer.head} too low", safe_last=safe_last)
    end = answer.range_end
    if end is None:
        return Judgement(Verdict.INCONSISTENT, f"head {answer.head} but no header {rng.last}")
    if end.number != rng.last:
        raise RpcTransportError(f"asked for block {rng.last}, got header {end.number}")
    if (
        anchor is not None
        and rng.first == anchor.number + 1
        and rng.last == rng.first
        and end.parent_hash is not None
        and end.parent_hash != anchor.hash
    ):
        return Judgement(
            Verdict.REORG_SUSPECTED, f"block {rng.last}'s parent is not block {anchor.number}"
        )
    return None


def _judge_logs(answer: PollAnswer, addresses: frozenset[str]) -> Judgement | None:
    # Invariant 4: every log inside the range, from a registered address, one hash per
    # block, and the last block's logs carrying the accepted header's hash.
    rng, end = answer.range, answer.range_end
    seen: dict[int, str] = {}
    problem = ""
    # A range's logs share a few blocks and addresses: each distinct string is parsed or
    # lowered once (the same checks, ~3x cheaper on a 5,000-log poll).
    numbers: dict[str, int] = {}
    lowered: dict[str, str] = {}
    for entry in answer.logs:
        raw = entry.get("blockNumber")
        block = numbers.get(raw) if isinstance(raw, str) else None
        if block is None:
            block = hex_int(raw)  # raises unless raw is a str
            numbers[str(raw)] = block
        raw_hash = entry.get("blockHash", "")
        block_hash = lowered.get(raw_hash) if isinstance(raw_hash, str) else None
        if block_hash is None:
            block_hash = str(raw_hash).lower()
            if isinstance(raw_hash, str):
                lowered[raw_hash] = block_hash
        raw_address = entry.get("address", "")
        address = lowered.get(raw_address) if isinstance(raw_address, str) else None
        if address is None:
            address = str(raw_address).lower()
            if isinstance(raw_address, str):
                lowered[raw_address] = address
        if not rng.first <= block <= rng.last:
            problem = f"log from block {block} outside the range"
        elif address not in addresses:
            problem = f"log from {entry.get('address')}"
        elif seen.setdefault(block, block_hash) != block_hash:
            problem = f"two hashes for block {block} among logs"
        elif end is not None and block == rng.last and block_hash != end.hash:
            problem = f"logs of block {block} carry {block_hash}, not {end.hash}"
        if problem:
            return Judgement(Verdict.INCONSISTENT, problem)
    return None


class RangeSizer:
    """The adaptive getLogs range.

    - It starts at INITIAL_RANGE blocks, not at the maximum: on a dense backfill the first
      poll would otherwise fetch everything in one giant answer (no pipelining, unbounded
      memory). While polls return few logs it doubles every poll, so a sparse chain reaches
      the maximum within a handful of polls.
    - A range that returned more than ``target_logs`` logs is scaled down in proportion.
    - A range the node refused is halved (down to one block), and for CEILING_POLLS polls the
      range stays below the refused size, so growing back does not walk into the same refusal
      again and again; then the ceiling is forgotten, in case the refusal was momentary (a
      busy node timing out).
    """

    def __init__(self, max_range: int, target_logs: int) -> None:
        self.max_range = max_range
        self.target_logs = target_logs
        self.size = min(max_range, INITIAL_RANGE)
        self._ceiling = max_range
        self._ceiling_polls = 0

    def too_large(self, refused: int) -> bool:
        """A range of ``refused`` blocks was refused. False when it was already one block
        (nothing smaller to try: the caller must back off instead)."""
        if refused <= 1:
            return False
        self.size = max(1, min(self.size, refused) // 2)
        self._ceiling = refused - 1
        self._ceiling_polls = CEILING_POLLS
        return True

    def succeeded(self, blocks: int, logs: int) -> None:
        """A range of ``blocks`` blocks returned ``logs`` logs."""
        if self._ceiling_polls > 0:
            self._ceiling_polls -= 1
            if self._ceiling_polls == 0:
                self._ceiling = self.max_range
        if logs > self.target_logs:
            self.size = max(1, blocks * self.target_logs // logs)
        elif logs * 2 <= self.target_logs and blocks >= self.size:
            self.size = max(1, min(self.max_range, self._ceiling, self.size * 2))


class ChainScanner:
    """Builds and sends a poller's batches; parsing only, no decisions."""

    def __init__(self, rpc: RpcClient, filters: Sequence[LogFilter] = ()) -> None:
        self.rpc = rpc
        self.filters: tuple[LogFilter, ...] = tuple(filters)

    @property
    def addresses(self) -> frozenset[str]:
        """Every filter's addresses, lowercase."""
        return frozenset(a for f in self.filters for a in f.lowercase_addresses)

    def _logs_calls(self, rng: LogRange) -> list[RpcCall]:
        return [
            RpcCall("eth_getLogs", [f.query(rng.first, rng.last)])
            for f in self.filters
            if f.start_block <= rng.last
        ]

    async def chain_id(self) -> int:
        return hex_int(await self.rpc.call("eth_chainId"))

    async def poll(
        self, rng: LogRange, anchor: int | None, bloom_first: int | None = None
    ) -> PollAnswer:
        """One batch: head, the range's logs (one eth_getLogs per filter), its last header,
        the anchor's header, and the headers of blocks ``bloom_first`` to the range's last
        (the bloom window; None: none besides the last)."""
        logs_calls = self._logs_calls(rng)
        calls = [
            RpcCall("eth_blockNumber", []),
            *logs_calls,
            RpcCall("eth_getBlockByNumber", [hex(rng.last), False]),
        ]
        if anchor is not None:
            calls.append(RpcCall("eth_getBlockByNumber", [hex(anchor), False]))
        window = (
            range(max(bloom_first, rng.first), rng.last) if bloom_first is not None else range(0)
        )
        calls += [RpcCall("eth_getBlockByNumber", [hex(n), False]) for n in window]
        results = await self.rpc.batch_settled(calls)
        head = _ok(results[0])
        answers = results[1 : 1 + len(logs_calls)]
        for logs in answers:
            if isinstance(logs, RpcRangeTooLargeError):
                raise logs
        end = 1 + len(logs_calls)
        return PollAnswer(
            range=rng,
            head=hex_int(head),
            logs=merged([_log_list(_ok(logs)) for logs in answers]),
            range_end=parse_header(_ok(results[end])),
            anchor=parse_header(_ok(results[end + 1])) if anchor is not None else None,
            headers={
                n: parse_header(_ok(raw))
                for n, raw in zip(window, results[len(calls) - len(window) :], strict=True)
            },
        )

    async def logs_by_hash(
        self, wanted: Sequence[tuple[LogFilter, BlockHeader]]
    ) -> list[list[Log]]:
        """Each (filter, block)'s logs, asked for by block hash (EIP-234), one batch. A node
        that does not have a hash answers an error (EIP-234), never an empty list, so an
        empty answer means the block has no such log (a bloom false positive)."""
        calls = [RpcCall("eth_getLogs", [f.by_hash(h.hash)]) for f, h in wanted]
        return [_log_list(logs) for logs in await self.rpc.batch(calls)]

    async def probe(self, anchor: int | None) -> Probe:
        calls = [RpcCall("eth_blockNumber", [])]
        if anchor is not None:
            calls.append(RpcCall("eth_getBlockByNumber", [hex(anchor), False]))
        results = await self.rpc.batch(calls)
        return Probe(
            head=hex_int(results[0]),
            anchor=parse_header(results[1]) if anchor is not None else None,
        )

    async def headers(self, numbers: Sequence[int]) -> dict[int, BlockHeader | None]:
        """Headers of ``numbers`` (None where the node lacks the block), HEADER_BATCH a batch."""
        out: dict[int, BlockHeader | None] = {}
        for start in range(0, len(numbers), HEADER_BATCH):
            chunk = numbers[start : start + HEADER_BATCH]
            results = await self.rpc.batch(
                [RpcCall("eth_getBlockByNumber", [hex(n), False]) for n in chunk]
            )
            for number, raw in zip(chunk, results, strict=True):
                header = parse_header(raw)
                if header is not None and header.number != number:
                    raise RpcTransportError(f"asked for block {number}, got {header.number}")
                out[number] = header
        return out


def _ok(result: object) -> Any:
    """A batch slot's result, or its error raised."""
    if isinstance(result, HodlaiError):
        raise result
    return result


def _log_list(logs: object) -> list[Log]:
    if not isinstance(logs, list):
        raise RpcTransportError(f"eth_getLogs answered {type(logs).__name__}, not a list")
    return logs


def merged(answers: Sequence[list[Log]]) -> list[Log]:
    """Several eth_getLogs answers as one list in chain order (block, then log index), each
    log once (filters may overlap). One answer is returned as it is."""
    if len(answers) == 1:
        return answers[0]
    unique: dict[tuple[str, str], Log] = {}
    for logs in answers:
        for entry in logs:
            key = (str(entry.get("blockHash", "")).lower(), str(entry.get("logIndex")))
            unique.setdefault(key, entry)
    return sorted(
        unique.values(),
        key=lambda e: (hex_int(e.get("blockNumber")), hex_int(e.get("logIndex"))),
    )
