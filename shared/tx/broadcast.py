"""eth_sendRawTransaction, many at once, with every answer sorted into what it means.

Guarantees:

- Up to ``BROADCAST_CHUNK`` raw transactions go in one JSON-RPC batch (one HTTP POST): web3
  refuses eth_sendRawTransaction in a batch, plain JSON-RPC does not (FACTS.md).
- Every transaction gets exactly one :class:`BroadcastOutcome`; nothing raises for a single
  refused transaction, and a failed POST marks its whole chunk UNAVAILABLE (to be retried),
  so a caller never has to guess whether a node saw a transaction: the ledger already holds
  it, and sending the same signed bytes twice is harmless.
- Unknown refusals are UNAVAILABLE (retried later), never REJECTED: only refusals that the
  same signed bytes can never overcome give up on a nonce.
- An outcome is what one node said, read from its error text: a REJECTED transaction may
  still sit in another node's pool and mine. The manager answers REJECTED with a cancel on
  the nonce and tells no purpose anything until the nonce settles; UNDERPRICED is sent again
  only once the market moved (shared/tx/manager.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import structlog

from shared.chain.rpc import RpcCall, RpcClient
from shared.errors import HodlaiError, RetryableError

log = structlog.get_logger(__name__)

# Raw transactions per HTTP POST. A fulfilment is ~0.5 KB signed (1 KB as hex); 200 stay far
# below the 2 MB request limit of anvil and common providers.
BROADCAST_CHUNK: Final = 200


class BroadcastOutcome(StrEnum):
    ACCEPTED = "accepted"  # the node took it into its pool
    ALREADY_KNOWN = "already_known"  # the node has it already: as good as accepted
    NONCE_TOO_LOW = "nonce_too_low"  # the nonce is used up: a receipt will tell by whom
    UNDERPRICED = "underpriced"  # below the base fee, minimum price or replacement bump
    INSUFFICIENT_FUNDS = "insufficient_funds"  # the sender cannot pay for gas * price + value
    REJECTED = "rejected"  # can never be accepted as signed (gas above the block limit, ...)
    UNAVAILABLE = "unavailable"  # transport trouble or an unknown refusal: try again later


# Messages of geth, erigon, nethermind, BSC, anvil/reth and common providers.
_PATTERNS: Final = (
    (
        BroadcastOutcome.ALREADY_KNOWN,
        re.compile(
            r"already known|known transaction|already imported|alreadyknown|already exists|"
            r"already in (the )?(mem)?pool",
            re.IGNORECASE,
        ),
    ),
    (
        BroadcastOutcome.NONCE_TOO_LOW,
        re.compile(r"nonce too low|nonce has already been used|oldnonce", re.IGNORECASE),
    ),
    (BroadcastOutcome.INSUFFICIENT_FUNDS, re.compile(r"insufficient funds", re.IGNORECASE)),
    (
        BroadcastOutcome.UNDERPRICED,
        re.compile(
            r"underpriced|less than block base fee|fee too low|gas price too low|"
            r"feecap.*below|tip.*below|max fee per gas less|gasprice.*too low",
            re.IGNORECASE,
        ),
    ),
    (
        BroadcastOutcome.REJECTED,
        re.compile(
            r"intrinsic gas too (low|high)|exceeds block gas limit|gas limit reached|"
            r"invalid sender|oversized data|tx fee .* exceeds|transaction type not supported|"
            r"invalid chain ?id|gas_limit > env\.block\.gas_limit",
            re.IGNORECASE,
        ),
    ),
)


@dataclass(frozen=True)
class BroadcastResult:
    tx_hash: str
    outcome: BroadcastOutcome
    detail: str = ""

    @property
    def in_pool(self) -> bool:
        """A node holds the transaction (it may be mined)."""
        return self.outcome in (BroadcastOutcome.ACCEPTED, BroadcastOutcome.ALREADY_KNOWN)


def classify_send_error(error: HodlaiError) -> BroadcastOutcome:
    """What an eth_sendRawTransaction error means for the transaction."""
    text = str(error)
    for outcome, pattern in _PATTERNS:
        if pattern.search(text):
            return outcome
    return BroadcastOutcome.UNAVAILABLE


async def broadcast(rpc: RpcClient, txs: Sequence[tuple[str, str]]) -> list[BroadcastResult]:
    """Send ``(tx_hash, raw)`` pairs; one result per pair, in order."""
    results: list[BroadcastResult] = []
    for start in range(0, len(txs), BROADCAST_CHUNK):
        chunk = txs[start : start + BROADCAST_CHUNK]
        calls = [RpcCall("eth_sendRawTransaction", [raw]) for _, raw in chunk]
        try:
            answers = await rpc.batch_settled(calls)
        except RetryableError as exc:
            log.warning("broadcast_unavailable", txs=len(chunk), error=str(exc))
            results += [
                BroadcastResult(h, BroadcastOutcome.UNAVAILABLE, str(exc)) for h, _ in chunk
            ]
            continue
        for (tx_hash, _), answer in zip(chunk, answers, strict=True):
            results.append(_result(tx_hash, answer))
    return results


def _result(tx_hash: str, answer: object) -> BroadcastResult:
    if isinstance(answer, HodlaiError):
        outcome = classify_send_error(answer)
        return BroadcastResult(tx_hash, outcome, str(answer))
    if isinstance(answer, str) and answer.lower() != tx_hash.lower():
        # A node that hashes differently than we do would break every receipt lookup.
        return BroadcastResult(
            tx_hash, BroadcastOutcome.UNAVAILABLE, f"node reported hash {answer}"
        )
    return BroadcastResult(tx_hash, BroadcastOutcome.ACCEPTED)
