"""The backup re-scan: reading recent accepted blocks again, for logs a lagging backend hid.

The bloom check (bloom.py) catches a batch split across backends as it happens; the re-scan
is the second line. Once caught up, every few polls the poller reads the last accepted
blocks again (the indexer: ``HODLAI_INDEXER_RESCAN_EVERY`` polls, the last
``HODLAI_INDEXER_RESCAN_BLOCKS`` blocks) and hands whatever it finds to the sinks, which
store only what they did not have (their ``apply`` is idempotent).

Guarantees (:func:`read_again` decides; the poller acts on its :class:`RescanRead`):
- Nothing of a re-scan is used unless its answer passes :func:`~shared.chain.scan.judge`
  and its last header is the cursor's stored hash: otherwise it is skipped, or, for another
  hash at the cursor, the poller looks for a reorg.
- Every log it finds is from the chain the cursor is on: a log block whose hash is not the
  stored one is checked against the node's header for that block; a log from another view
  of the chain skips the re-scan.
- A stored block that the chain has with another hash (logs once stored from another fork,
  in a batch split across backends) is undone from there and read again (``REPLACED``).
- Its writes (:func:`store`) happen only while the cursor is still where it read
  (history.commit_rescan), and each sink hears of them only once they committed.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from shared.chain import history
from shared.chain.filters import Log, Registration, merged_stats, route
from shared.chain.history import Anchor
from shared.chain.scan import ChainScanner, LogRange, Verdict, judge
from shared.db import AsyncDatabase

log = structlog.get_logger(__name__)


class RescanVerdict(enum.Enum):
    #: nothing to do (not started yet, an answer that cannot be used)
    SKIPPED = "skipped"
    #: the cursor's block has another hash now: look for a reorg
    REORG_SUSPECTED = "reorg_suspected"
    #: stored log blocks are not on the chain: roll back to ``ancestor`` and read again
    REPLACED = "replaced"
    #: ``logs`` are from the chain the cursor is on: hand them to the sinks
    VERIFIED = "verified"


@dataclass(frozen=True, slots=True)
class RescanRead:
    verdict: RescanVerdict
    reason: str = ""
    #: the blocks read again (VERIFIED)
    range: LogRange | None = None
    logs: list[Log] = field(default_factory=list)
    #: REPLACED: the block to roll back to, and how many stored log blocks are off the chain
    ancestor: int | None = None
    replaced: int = 0


async def read_again(
    scanner: ChainScanner,
    db: AsyncDatabase,
    registrations: Sequence[Registration],
    anchor: Anchor,
    *,
    name: str,
    start_block: int,
    blocks: int,
) -> RescanRead:
    """Read the last ``blocks`` accepted blocks up to ``anchor`` of poller ``name`` again,
    and say what of it may be used (see the module docstring)."""
    if anchor.header is None or anchor.number < start_block:
        return RescanRead(RescanVerdict.SKIPPED)
    rng = LogRange(max(start_block, anchor.number - blocks + 1), anchor.number)
    # No bloom window here: every accepted block's bloom was checked when it was accepted,
    # and a re-scan only ever adds what it finds.
    answer = await scanner.poll(rng, None)
    judgement = judge(answer, anchor=None, confirmations=0, addresses=scanner.addresses)
    if judgement.verdict is not Verdict.ACCEPT or answer.range_end is None:
        log.info("backup_rescan_skipped", reason=judgement.reason or judgement.verdict.value)
        return RescanRead(RescanVerdict.SKIPPED)
    if answer.range_end.hash != anchor.header.hash:
        return RescanRead(RescanVerdict.REORG_SUSPECTED, "re-scan sees another hash for the cursor")
    log_blocks = route(registrations, answer.logs, rng.first).blocks
    stored = await db.run(history.stored_hashes, name, rng.first, rng.last)
    doubtful = sorted(n for n, h in log_blocks.items() if stored.get(n) != h)
    if doubtful:
        chain = await scanner.headers(doubtful)
        confirmed = {n for n, h in chain.items() if h is not None and h.hash == log_blocks[n]}
        if len(confirmed) != len(doubtful):
            log.info("backup_rescan_skipped", reason="logs from another view of the chain")
            return RescanRead(RescanVerdict.SKIPPED)
        replaced = [n for n in doubtful if n in stored]
        if replaced:
            # We stored logs of these blocks from another fork (a batch split across
            # backends): undo from the first of them and read the range again.
            log.warning("stored_log_blocks_not_on_chain", blocks=replaced[:10])
            return RescanRead(
                RescanVerdict.REPLACED, ancestor=min(replaced) - 1, replaced=len(replaced)
            )
    return RescanRead(RescanVerdict.VERIFIED, range=rng, logs=answer.logs)


async def store(
    db: AsyncDatabase,
    registrations: Sequence[Registration],
    found: RescanRead,
    *,
    name: str,
    cursor: int,
    now: float,
) -> None:
    """Hand a VERIFIED re-scan's logs to the sinks, in one transaction with the blocks they
    came from; tell each sink once it committed."""
    assert found.verdict is RescanVerdict.VERIFIED and found.range is not None
    rng = found.range
    stats = await db.run(
        history.write_rescan, registrations, found.logs, name=name, cursor=cursor, rng=rng,
        now=now,
    )  # fmt: skip
    for registration, own in zip(registrations, stats, strict=True):
        registration.sink.committed(own)
    changed, fields = merged_stats(stats)
    if changed:
        log.warning("backup_rescan_found", first_block=rng.first, last_block=rng.last, **fields)
    else:
        log.debug("backup_rescan_clean", first_block=rng.first, last_block=rng.last)
