"""Finding logs a batch hid, from the blocks' own ``logsBloom`` (issue 9 item 5).

A load balancer may answer one batch's ``eth_getLogs`` from a backend that lags while the
head and headers come from a fresh one; with ``HODLAI_CONFIRMATIONS`` below that lag the
newest blocks' logs are simply absent, and the range is accepted without them (4 requests
were never indexed). Every header commits to a 2,048-bit bloom of the addresses and topics of
its block's logs. For every registered filter and every checked block whose bloom may hold
one of the filter's logs (one of its addresses *and*, for each topic position it restricts,
one of the allowed topics) and for which the batch returned none of the filter's logs, the
filter's logs are asked for again by block hash (EIP-234: answered for exactly that block,
or an error if the node lacks it; never a lagging view of it).

Guarantees:
- A bloom never has false negatives: a block with one of a filter's logs always passes
  :meth:`EventBloom.may_contain`, so a block the check does not re-read holds no such log.
- Which headers are checked, and what it costs (measured by scripts/bench_indexer.py, see
  docs/BENCHMARKS.md): the range's last header is in every batch already, so its bloom is
  checked for free. Besides it, a batch carries the headers of the range's blocks within
  the poller's bloom window (the indexer's ``HODLAI_INDEXER_BLOOM_WINDOW``, 64) blocks of
  the head, because only there can backends
  disagree. Each block is in one range only, so a backfill fetches at most 64 extra headers
  in total (once, on its way into the head) and not one header per block of every 2,000-block
  range; once caught up a range is usually one block, whose header is the range end: no
  extra call at all. Re-reads happen only for blocks whose bloom matches without a returned
  log: a bloom false positive (busy mainnet blocks saturate blooms, so up to one small
  ``eth_getLogs`` by hash per filter and such block near the head) or a hidden log.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from eth_utils.crypto import keccak

from shared.chain.filters import Log, LogFilter
from shared.chain.rpc import hex_int
from shared.chain.scan import BLOOM_BYTES, BlockHeader, ChainScanner, PollAnswer, merged
from shared.errors import RpcTransportError

log = structlog.get_logger(__name__)

# The bits one item sets in a bloom: (byte index, bit mask) of 3 of the 2,048 bits.
_Bits = tuple[tuple[int, int], ...]


def bloom_bits(item: bytes) -> _Bits:
    """The three bits ``item`` (an address or a topic) sets: the low 11 bits of each of the
    first three byte pairs of its keccak, bit 0 being the last byte's lowest (yellow paper
    M3:2048)."""
    digest = keccak(item)
    bits = []
    for pair in range(3):
        index = int.from_bytes(digest[2 * pair : 2 * pair + 2], "big") & 0x7FF
        bits.append((BLOOM_BYTES - 1 - index // 8, 1 << (index % 8)))
    return tuple(bits)


def _has(bloom: bytes, bits: _Bits) -> bool:
    return all(bloom[byte] & mask for byte, mask in bits)


class EventBloom:
    """One filter's addresses and topics, as bloom bits."""

    def __init__(self, log_filter: LogFilter) -> None:
        self.filter = log_filter
        self._addresses = [bloom_bits(bytes.fromhex(a[2:])) for a in log_filter.addresses]
        # A bloom holds every topic of every log, whatever its position: each restricted
        # position needs one of its allowed topics somewhere in the bloom.
        self._topics = [
            [bloom_bits(bytes.fromhex(t[2:])) for t in options]
            for options in log_filter.topics
            if options is not None
        ]

    def may_contain(self, bloom: bytes | None) -> bool:
        """False only when the block certainly has no log of the filter (None: unknown)."""
        if bloom is None or len(bloom) != BLOOM_BYTES:
            return True
        return any(_has(bloom, a) for a in self._addresses) and all(
            any(_has(bloom, t) for t in options) for options in self._topics
        )


def suspects(answer: PollAnswer, events: EventBloom) -> list[BlockHeader]:
    """Checked blocks whose bloom may hold one of the filter's logs but that returned none."""
    floor = events.filter.start_block
    maybe = [
        h
        for h in answer.checked_headers()
        if h.number >= floor and events.may_contain(h.logs_bloom)
    ]
    if not maybe:
        return []
    # Only the checked blocks' logs matter: a backfill's range has thousands of logs and its
    # window a few blocks, so the filter is matched against those blocks' logs alone, and each
    # distinct block number string is parsed once (a poll of 5,000 logs spent ~8 ms here).
    checked = {h.number for h in maybe}
    with_logs: set[int] = set()
    numbers: dict[str, int] = {}
    for entry in answer.logs:
        raw = entry.get("blockNumber")
        number = numbers.get(raw) if isinstance(raw, str) else None
        if number is None:
            number = hex_int(raw)  # raises unless raw is a str
            numbers[str(raw)] = number
        if number in checked and number not in with_logs and events.filter.matches(entry):
            with_logs.add(number)
    return [header for header in maybe if header.number not in with_logs]


def found_logs(
    found: Sequence[list[Log]], wanted: Sequence[tuple[LogFilter, BlockHeader]]
) -> list[Log]:
    """The logs a re-read by block hash returned, checked to be of that block and the
    filter's addresses (anything else is the node's error: the poll is asked again)."""
    out: list[Log] = []
    for (log_filter, header), logs in zip(wanted, found, strict=True):
        for entry in logs:
            number = hex_int(entry.get("blockNumber"))
            block_hash = str(entry.get("blockHash", "")).lower()
            if number != header.number or block_hash != header.hash:
                raise RpcTransportError(
                    f"eth_getLogs by hash {header.hash} answered a log of block {number}"
                )
            if str(entry.get("address", "")).lower() not in log_filter.lowercase_addresses:
                raise RpcTransportError(
                    f"eth_getLogs by hash answered a log of {entry.get('address')}"
                )
            if entry.get("removed") is not True:
                out.append(entry)
    return out


async def with_hidden_logs(
    scanner: ChainScanner, blooms: Sequence[EventBloom], answer: PollAnswer
) -> tuple[list[Log], int]:
    """The answer's logs, plus those of checked blocks whose bloom shows one of a filter's
    logs the batch did not return (read again by block hash), in chain order; and how many
    such hidden logs there were."""
    wanted = [(b.filter, header) for b in blooms for header in suspects(answer, b)]
    if not wanted:
        return answer.logs, 0
    found = found_logs(await scanner.logs_by_hash(wanted), wanted)
    if not found:
        return answer.logs, 0  # bloom false positives
    log.warning(
        "hidden_logs_found",
        logs=len(found),
        blocks=sorted({hex_int(e.get("blockNumber")) for e in found})[:10],
        first_block=answer.range.first,
        last_block=answer.range.last,
        action="raise HODLAI_CONFIRMATIONS above the lag of this RPC's backends",
    )
    return merged([answer.logs, found]), len(found)
