"""Nonce allocation for the one process that signs with a key.

Guarantees:

- The next nonce is never below one that was recorded in the ledger (a signed transaction
  may be in some node's pool even if this process never saw it accepted), nor below what the
  chain has already consumed (``latest``), nor below what the node's pool holds for the key
  at start (``pending``: transactions signed elsewhere with the same key are not overwritten).
- A nonce is handed out by :meth:`NonceTracker.peek` and only consumed by
  :meth:`NonceTracker.consume` after its transaction is committed to the ledger, so a record
  that fails leaves no gap.
- :func:`gaps` names the nonces below our highest open one that hold no open transaction of
  ours and are not yet mined: later nonces cannot be mined until each is filled.
"""

from __future__ import annotations

from collections.abc import Iterable

import structlog

log = structlog.get_logger(__name__)


class NonceTracker:
    """The next nonce to assign for one sender."""

    def __init__(self) -> None:
        self._next: int | None = None

    @property
    def ready(self) -> bool:
        return self._next is not None

    def reconcile(self, *, recorded_next: int, chain_latest: int, chain_pending: int) -> int:
        """Set the next nonce from the ledger and the chain (at start); returns it."""
        self._next = max(recorded_next, chain_latest, chain_pending)
        log.info(
            "nonce_reconciled",
            next_nonce=self._next,
            recorded_next=recorded_next,
            chain_latest=chain_latest,
            chain_pending=chain_pending,
        )
        return self._next

    def observe_chain(self, chain_latest: int) -> None:
        """The chain consumed nonces up to ``chain_latest``: a transaction signed elsewhere
        with this key may have used some; never hand those out again."""
        current = self.peek()
        if chain_latest > current:
            log.warning("nonce_consumed_elsewhere", next_nonce=current, chain_latest=chain_latest)
            self._next = chain_latest

    def peek(self) -> int:
        if self._next is None:
            raise RuntimeError("NonceTracker.reconcile() must run before nonces are handed out")
        return self._next

    def consume(self, count: int) -> None:
        """``count`` nonces from :meth:`peek` on are now recorded in the ledger."""
        self._next = self.peek() + count


def gaps(open_nonces: Iterable[int], chain_latest: int) -> list[int]:
    """Nonces between the chain's next one and our highest open nonce with nothing of ours
    to mine there."""
    held = set(open_nonces)
    if not held:
        return []
    return [n for n in range(chain_latest, max(held)) if n not in held]
