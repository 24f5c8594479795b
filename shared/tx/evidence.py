"""Judging the chain from evidence when the node answering may be behind.

Behind a load balancer one request can reach a backend some blocks behind, and one JSON-RPC
batch can even be split across backends. A lagging backend does not lie; it leaves things
out: a receipt it has not seen, a nonce count from some blocks ago, a header it lacks. So:

- :class:`HeadTracker`: an answer is *fresh* only when its head is at least the highest head
  seen before. Answers from behind are not used for any verdict. A chain that really got
  shorter (a deep reorg) is accepted after its lower head is reported repeatedly for a while.
- :class:`Absences`: "not there" becomes a verdict only when it was seen on two polls some
  time apart, the second from a node at or past the head of the first.
- :func:`find_nonce_user`: "someone else used this nonce" is never concluded from an
  absence: it is the hash of the transaction the chain shows at that nonce, found by a
  search of the sender's nonce count over recent blocks and a look at that block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import structlog

from shared.chain.rpc import RpcCall, RpcClient, hex_int
from shared.errors import HodlaiError

log = structlog.get_logger(__name__)

# Polls in a row that must report a head below the highest seen, over at least
# LOWER_HEAD_ACCEPT_S seconds, before a shorter chain is believed: a lagging backend answers
# some polls, never all of them for that long, while a chain reverted by a deep reorg does.
LOWER_HEAD_ACCEPT_POLLS: Final = 5
LOWER_HEAD_ACCEPT_S: Final = 5.0
# Blocks below the head searched for the transaction that used a nonce: a nonce we sent is
# consumed within minutes, and most nodes keep state for at least the last 128 blocks; an
# older consumption is reported as unexplained rather than guessed.
NONCE_SEARCH_BLOCKS: Final = 4096
# Nonce counts asked for per round of the search: 4,096 blocks take three rounds of 16.
NONCE_SEARCH_FANOUT: Final = 16


class HeadTracker:
    """The highest chain head this process has seen, and whether an answer is fresh."""

    def __init__(self) -> None:
        self.best: int | None = None
        self._lower_polls = 0
        self._lower_since: float | None = None
        self._lower_max = 0

    def observe(self, head: int, now: float) -> bool:
        """Record one answer's head; True when it is fresh enough to judge from."""
        if self.best is None or head >= self.best:
            self.best = head
            self._lower_polls = 0
            self._lower_since = None
            return True
        if self._lower_since is None:
            self._lower_since = now
            self._lower_max = head
        self._lower_polls += 1
        self._lower_max = max(self._lower_max, head)
        if (
            self._lower_polls >= LOWER_HEAD_ACCEPT_POLLS
            and now - self._lower_since >= LOWER_HEAD_ACCEPT_S
        ):
            log.warning("chain_head_lowered", was=self.best, now=self._lower_max)
            self.best = self._lower_max
            self._lower_polls = 0
            self._lower_since = None
            return head >= self.best
        return False


@dataclass(frozen=True)
class _Absence:
    since: float
    head: int


class Absences:
    """Things (receipts, nonce users) looked for and not found, by key."""

    def __init__(self, confirm_after_s: float) -> None:
        self.confirm_after_s = confirm_after_s
        self._seen: dict[str, _Absence] = {}

    def missing(self, key: str, *, now: float, head: int) -> bool:
        """``key`` was not found in an answer at ``head``. True when that is now a verdict:
        it was also missing at least ``confirm_after_s`` ago, from a node at a head not
        above this one."""
        first = self._seen.get(key)
        if first is None:
            self._seen[key] = _Absence(now, head)
            return False
        return now - first.since >= self.confirm_after_s and head >= first.head

    def found(self, key: str) -> None:
        self._seen.pop(key, None)

    def forget_except(self, keys: set[str]) -> None:
        """Drop what is no longer being looked for."""
        for key in list(self._seen):
            if key not in keys:
                del self._seen[key]


@dataclass(frozen=True)
class NonceUser:
    """The transaction the chain shows at a nonce of ``sender``."""

    tx_hash: str
    block: int


async def find_nonce_user(
    rpc: RpcClient, sender: str, nonce: int, *, head: int
) -> NonceUser | None:
    """The transaction that consumed ``sender``'s ``nonce`` at or below ``head``, or None when
    the chain's answers do not show it (a node behind, pruned state, an older consumption).

    A search over block numbers for the first block after which the sender's nonce count
    exceeds ``nonce`` (each round one batch of NONCE_SEARCH_FANOUT counts), then that block's
    transactions. Every answer is checked: a batch whose own head is below the blocks asked
    about, or counts that are not monotonic, ends the search without a result."""
    low = max(0, head - NONCE_SEARCH_BLOCKS)
    high = head
    try:
        counts = await _counts(rpc, sender, [low, high])
        if counts is None or counts[0] > nonce or counts[1] <= nonce:
            return None  # consumed before the window, or not consumed at all at ``head``
        while high - low > 1:
            step = max(1, (high - low) // (NONCE_SEARCH_FANOUT + 1))
            points = list(range(low + step, high, step))[:NONCE_SEARCH_FANOUT]
            found = await _counts(rpc, sender, points)
            if found is None:
                return None
            for point, count in zip(points, found, strict=True):
                if count > nonce:
                    high = point
                    break
                low = point
        block = await rpc.call("eth_getBlockByNumber", [hex(high), True])
    except HodlaiError as exc:
        log.info("nonce_search_inconclusive", nonce=nonce, error=str(exc))
        return None
    if not isinstance(block, dict):
        return None
    for tx in block.get("transactions") or []:
        if (
            isinstance(tx, dict)
            and str(tx.get("from", "")).lower() == sender.lower()
            and tx.get("nonce") is not None
            and hex_int(tx["nonce"]) == nonce
            and isinstance(tx.get("hash"), str)
        ):
            return NonceUser(tx_hash=str(tx["hash"]).lower(), block=high)
    return None


async def _counts(rpc: RpcClient, sender: str, blocks: list[int]) -> list[int] | None:
    """Nonce counts of ``sender`` at ``blocks`` (ascending) from one batch, or None when the
    answering node is behind the highest of them or its answers are inconsistent."""
    calls = [RpcCall("eth_blockNumber", [])]
    calls += [RpcCall("eth_getTransactionCount", [sender, hex(b)]) for b in blocks]
    answers = await rpc.batch_settled(calls)
    if any(isinstance(a, HodlaiError) for a in answers):
        return None
    if hex_int(answers[0]) < max(blocks):
        return None
    counts = [hex_int(a) for a in answers[1:]]
    if counts != sorted(counts):
        return None
    return counts
