"""A read-only view of the chain at a confirmed block, for a purpose's :meth:`invalid`.

An EIP-3009 purpose must know whether its authorization is still usable before its
transaction is sent again: ``authorizationState(signer, nonce)`` and ``validBefore`` against
``now``. It reads them through a :class:`ChainView` at ``head - confirmations``: a state a
reorg of ordinary depth does not change, and that a node a few blocks behind still has.

Guarantees:

- Lazy: a view costs no RPC until a purpose reads from it, so a poll whose purposes do not
  look at the chain (the oracle's) costs what it did before.
- One block per view: the block is fixed at the first read (its number, hash and timestamp
  from one header) and every ``call`` runs at that block's hash (EIP-1898), so the answers of
  one poll describe one state, whatever the node's head does meanwhile.
- A node that lacks the block (behind, or pruned) is no answer: StaleNodeError, retryable,
  never a guess.

Why synchronous, and how: :meth:`PurposeHandler.invalid` runs on the database thread inside
the snapshot's read transaction (shared/tx/watch.py), which gives the poll one consistent
picture of the ledger. Prefetching cannot work (only the purpose knows which signer and nonce
to ask about), and calling ``invalid()`` outside the transaction would judge a ledger other
than the one the poll acts on. A second, synchronous HTTP client would duplicate the RPC
client's failover, chain check and deadline. So :class:`RpcChainView` hands each read to the
event loop that owns the :class:`~shared.chain.rpc.RpcClient` and waits for it on the
database thread. The loop is free meanwhile (the poll is awaiting the database thread), so
this cannot deadlock; a read from the loop's own thread would, and is refused. The price is
that the database thread and the read transaction wait for the round trips; in WAL mode a
read transaction blocks no writer, and only purposes that read pay it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

from shared.chain.rpc import RpcClient, hex_int
from shared.errors import RpcDeadlineError, RpcTransportError, StaleNodeError

T = TypeVar("T")

# Seconds a read may wait for the event loop's answer: a backstop above the RPC client's own
# deadline (which fails over first), so a wedged loop cannot hold the database thread forever.
VIEW_READ_TIMEOUT_S: Final = 60.0


class ChainView(Protocol):
    """The chain as of one confirmed block (see the module docstring)."""

    @property
    def block_number(self) -> int:
        """The block every read is made at: ``head - confirmations``."""
        ...

    @property
    def block_timestamp(self) -> int:
        """That block's timestamp (seconds): compare an authorization's ``validBefore``
        with it (and with ``now``) to know whether the chain would still accept it."""
        ...

    def call(self, to: str, data: bytes) -> bytes:
        """``eth_call`` of ``data`` on ``to`` at that block; a revert raises
        ExecutionRevertedError."""
        ...


@dataclass(frozen=True)
class _Block:
    number: int
    hash: str
    timestamp: int


class RpcChainView:
    """A :class:`ChainView` over an async RPC client, for use on the database thread.

    ``head``: the highest head the caller has seen (None before the first poll: the view
    then asks the node for its head at the first read)."""

    def __init__(
        self,
        rpc: RpcClient,
        loop: asyncio.AbstractEventLoop,
        *,
        head: int | None,
        confirmations: int,
    ) -> None:
        self._rpc = rpc
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._head = head
        self._confirmations = confirmations
        self._block: _Block | None = None
        #: RPC round trips made (for tests and for the poll's accounting)
        self.reads = 0

    @classmethod
    def here(cls, rpc: RpcClient, *, head: int | None, confirmations: int) -> RpcChainView:
        """A view bound to the running event loop (call from a coroutine)."""
        return cls(rpc, asyncio.get_running_loop(), head=head, confirmations=confirmations)

    @property
    def block_number(self) -> int:
        return self._at().number

    @property
    def block_timestamp(self) -> int:
        return self._at().timestamp

    def call(self, to: str, data: bytes) -> bytes:
        block = self._at()
        answer = self._run(
            self._rpc.call(
                "eth_call", [{"to": to, "data": "0x" + data.hex()}, {"blockHash": block.hash}]
            )
        )
        if not isinstance(answer, str) or not answer.startswith("0x"):
            raise RpcTransportError(f"eth_call answered {answer!r}, not hex data")
        return bytes.fromhex(answer[2:])

    def _at(self) -> _Block:
        if self._block is None:
            head = self._head
            if head is None:
                head = hex_int(self._run(self._rpc.call("eth_blockNumber", [])))
            number = max(0, head - self._confirmations)
            header = self._run(self._rpc.call("eth_getBlockByNumber", [hex(number), False]))
            if not isinstance(header, dict) or not isinstance(header.get("hash"), str):
                raise StaleNodeError(f"the node does not have block {number} yet")
            self._block = _Block(
                number=number,
                hash=str(header["hash"]).lower(),
                timestamp=hex_int(header.get("timestamp")),
            )
        return self._block

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.get_ident() == self._loop_thread:
            coro.close()
            raise RuntimeError(
                "a ChainView read on the event loop's own thread would deadlock; "
                "read it on the database thread (inside PurposeHandler.invalid)"
            )
        self.reads += 1
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout=VIEW_READ_TIMEOUT_S)
        except TimeoutError as exc:
            future.cancel()
            raise RpcDeadlineError(f"no chain view answer within {VIEW_READ_TIMEOUT_S} s") from exc
