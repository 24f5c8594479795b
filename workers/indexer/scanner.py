"""Reading the chain for the indexer: one JSON-RPC batch per poll, and the rules that decide
what of its answer may be accepted.

The indexer's guarantees (after Chainlink's LogPoller) and where each one is kept:

1. **No log is missed.** Blocks are accepted strictly in order from ``HODLAI_START_BLOCK``;
   the cursor names the last block whose logs are all stored, and it moves only in the same
   SQLite transaction as those logs (ingest.apply_range). A range is accepted only when the
   *same* batch that returned its logs also reported a head at least ``confirmations`` above
   the range's end and returned the range's last header (:func:`judge`): a backend behind a
   load balancer that has not seen the range yet cannot make us skip it, because its answer
   fails these checks and is asked again. A separate ``eth_blockNumber`` followed by
   ``eth_getLogs`` (the naive loop) would trust a head one backend saw and logs another
   backend returned, and lose the difference forever.
2. **No log is stored twice, and re-reading changes nothing.** Ingestion is idempotent per
   request id and content (ingest.py), so a crash between the commit and anything after it,
   a re-scan or an overlapping range only re-confirms what is there.
3. **Reorgs are undone.** The hashes of accepted blocks are stored; every poll re-fetches the
   header of the last accepted block in the same batch and compares (:func:`judge`). A
   mismatch walks back to the newest stored block the chain still has (reorg.py) and undoes,
   in one transaction, everything above it; the range is then read again.
4. **Every log of an accepted range is from the accepted chain, as far as one batch can
   tell.** Logs must come from the provider, lie inside the range, agree on one hash per
   block, and the logs of the range's last block must carry that header's hash.
4b. **No log is hidden by a batch split across backends.** A load balancer may answer the
   batch's eth_getLogs from a lagging backend and its headers from a fresh one: the newest
   blocks' logs are then simply missing. The batch also carries the headers of the range's
   blocks within ``HODLAI_INDEXER_BLOOM_WINDOW`` of the head (they must link up to the
   range's last header); a block whose ``logsBloom`` may hold a provider event but that
   returned no log is read again by its hash (bloom.py). The periodic backup re-scan stays
   as a second line.
5. **Progress is adaptive.** A range the node refuses as too large is halved (down to one
   block) and grows back after successes (:class:`RangeSizer`); a range that returned many
   logs also shrinks, so one poll stays a bounded amount of memory and work.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from shared.contracts import REASONING_FULFILLED_TOPIC0, REASONING_REQUESTED_TOPIC0
from shared.errors import HodlaiError, RpcRangeTooLargeError, RpcTransportError
from shared.rpc import RpcCall, RpcClient, hex_int

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
    """The part of a block header the indexer needs."""

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
    logs: list[dict[str, Any]]
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
    provider_address: str,
) -> Judgement:
    """Decide what one poll's answer allows. Pure: everything it needs is in the arguments.

    ``anchor`` is the last accepted block as stored (None before the first acceptance).
    """
    return (
        _judge_anchor(answer, anchor)
        or _judge_range(answer, anchor, confirmations)
        or _judge_headers(answer)
        or _judge_logs(answer, provider_address)
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


def _judge_logs(answer: PollAnswer, provider_address: str) -> Judgement | None:
    # Invariant 4: every log inside the range, from the provider, one hash per block, and the
    # last block's logs carrying the accepted header's hash.
    rng, end = answer.range, answer.range_end
    address = provider_address.lower()
    seen: dict[int, str] = {}
    problem = ""
    for entry in answer.logs:
        block = hex_int(entry.get("blockNumber"))
        block_hash = str(entry.get("blockHash", "")).lower()
        if not rng.first <= block <= rng.last:
            problem = f"log from block {block} outside the range"
        elif str(entry.get("address", "")).lower() != address:
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
    """Builds and sends the indexer's batches; parsing only, no decisions."""

    def __init__(self, rpc: RpcClient, provider_address: str) -> None:
        self.rpc = rpc
        self.provider_address = provider_address
        self._topics = [[REASONING_REQUESTED_TOPIC0, REASONING_FULFILLED_TOPIC0]]

    def _logs_call(self, rng: LogRange) -> RpcCall:
        return RpcCall(
            "eth_getLogs",
            [
                {
                    "address": self.provider_address,
                    "fromBlock": hex(rng.first),
                    "toBlock": hex(rng.last),
                    "topics": self._topics,
                }
            ],
        )

    async def chain_id(self) -> int:
        return hex_int(await self.rpc.call("eth_chainId"))

    async def poll(
        self, rng: LogRange, anchor: int | None, bloom_first: int | None = None
    ) -> PollAnswer:
        """One batch: head, the range's logs, its last header, the anchor's header, and the
        headers of blocks ``bloom_first`` to the range's last (the bloom window; None: none
        besides the last)."""
        calls = [
            RpcCall("eth_blockNumber", []),
            self._logs_call(rng),
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
        logs = results[1]
        if isinstance(logs, RpcRangeTooLargeError):
            raise logs
        logs = _ok(logs)
        if not isinstance(logs, list):
            raise RpcTransportError(f"eth_getLogs answered {type(logs).__name__}, not a list")
        return PollAnswer(
            range=rng,
            head=hex_int(head),
            logs=logs,
            range_end=parse_header(_ok(results[2])),
            anchor=parse_header(_ok(results[3])) if anchor is not None else None,
            headers={
                n: parse_header(_ok(raw))
                for n, raw in zip(window, results[len(calls) - len(window) :], strict=True)
            },
        )

    async def logs_by_hash(self, headers: Sequence[BlockHeader]) -> dict[int, list[dict[str, Any]]]:
        """The provider's logs of each block, asked for by block hash (EIP-234), one batch.
        A node that does not have a hash answers an error (EIP-234), never an empty list,
        so an empty answer means the block has no such log (a bloom false positive)."""
        calls = [
            RpcCall(
                "eth_getLogs",
                [{"address": self.provider_address, "blockHash": h.hash, "topics": self._topics}],
            )
            for h in headers
        ]
        results = await self.rpc.batch(calls)
        out: dict[int, list[dict[str, Any]]] = {}
        for header, logs in zip(headers, results, strict=True):
            if not isinstance(logs, list):
                raise RpcTransportError(f"eth_getLogs answered {type(logs).__name__}, not a list")
            out[header.number] = logs
        return out

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
