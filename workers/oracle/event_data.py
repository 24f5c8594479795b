"""The data of the provider's two events, ``HoldAI_ReasoningRequested`` (model,
systemPrompt, stateString, actionSet) and ``HoldAI_ReasoningFulfilled`` (resultAction,
reasoningIpfsCid), decoded to raw bytes: the one decoder the indexer and
:mod:`workers.oracle.contracts` share.

Guarantees:
- The values are exactly what eth-abi decodes. Solidity emits the canonical ABI layout, and
  a specialised reader for these two fixed layouts handles it ~10x faster than eth-abi's
  generic decoder (measured by scripts/bench_indexer.py; decoding was the indexer's
  bottleneck). Any data the fast reader does not accept in full - a non-canonical pointer, a
  length past the end, non-zero padding - is handed to eth-abi itself, which then decides.
  tests/test_indexer_decode.py checks both paths agree on random and corrupted data.
- Data eth-abi refuses raises one of :data:`DECODE_ERRORS`; nothing else escapes.
"""

from __future__ import annotations

from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import DecodingError

_WORD = 32
_REQUESTED_TYPES = ("bytes", "bytes", "bytes", "bytes[]")
_FULFILLED_TYPES = ("bytes", "bytes")
# What eth-abi raises on hostile data: its DecodingError family, and OverflowError for a length
# word too large to even seek to (found by the property tests).
DECODE_ERRORS: tuple[type[Exception], ...] = (DecodingError, ValueError, OverflowError, IndexError)
# A bytes[] with more entries than this is not something our contract emits (it allows 10);
# the fast reader leaves such data to eth-abi rather than looping over a hostile count.
_FAST_MAX_ITEMS = 256


class _NotCanonical(Exception):
    """The fast reader declines; eth-abi decides."""


# --- the fast reader ----------------------------------------------------------------------


def _tail(data: bytes, start: int, size: int) -> bytes:
    """The ``bytes`` value whose length word is at ``start``; checks what eth-abi checks."""
    if start + _WORD > size:
        raise _NotCanonical
    length = int.from_bytes(data[start : start + _WORD], "big")
    begin = start + _WORD
    end = begin + length
    padded_end = begin + ((length + _WORD - 1) // _WORD) * _WORD
    if padded_end > size:
        raise _NotCanonical
    if padded_end != end and data[end:padded_end].strip(b"\x00"):
        raise _NotCanonical  # eth-abi refuses non-zero padding; let it say so
    return data[begin:end]


def _pointer(data: bytes, at: int, origin: int, head_end: int, size: int) -> int:
    """The offset word at ``at``, relative to ``origin``, as an absolute position. eth-abi
    refuses a pointer into the head it belongs to or past the end of the data
    (InvalidPointer); such data goes to eth-abi, so that it says so."""
    target = origin + int.from_bytes(data[at : at + _WORD], "big")
    if target < head_end or target >= size:
        raise _NotCanonical
    return target


def _fast_requested(data: bytes) -> tuple[bytes, bytes, bytes, list[bytes]]:
    size = len(data)
    head_end = 4 * _WORD
    if size < head_end:
        raise _NotCanonical
    model, prompt, state, array_start = (
        _pointer(data, at, 0, head_end, size) for at in range(0, head_end, _WORD)
    )
    model_bytes = _tail(data, model, size)
    prompt_bytes = _tail(data, prompt, size)
    state_bytes = _tail(data, state, size)
    if array_start + _WORD > size:
        raise _NotCanonical
    count = int.from_bytes(data[array_start : array_start + _WORD], "big")
    base = array_start + _WORD
    items_end = base + count * _WORD
    if count > _FAST_MAX_ITEMS or items_end > size:
        raise _NotCanonical
    actions = [
        _tail(data, _pointer(data, head, base, items_end, size), size)
        for head in range(base, items_end, _WORD)
    ]
    return model_bytes, prompt_bytes, state_bytes, actions


def _fast_fulfilled(data: bytes) -> tuple[bytes, bytes]:
    size = len(data)
    head_end = 2 * _WORD
    if size < head_end:
        raise _NotCanonical
    action = _tail(data, _pointer(data, 0, 0, head_end, size), size)
    return action, _tail(data, _pointer(data, _WORD, 0, head_end, size), size)


def decode_requested_data(data: bytes) -> tuple[bytes, bytes, bytes, list[bytes]]:
    """(model, systemPrompt, stateString, actionSet) as raw bytes, exactly as eth-abi decodes
    them; raises one of DECODE_ERRORS when eth-abi refuses the data."""
    try:
        return _fast_requested(data)
    except _NotCanonical:
        model, prompt, state, actions = abi_decode(_REQUESTED_TYPES, data)
        return model, prompt, state, list(actions)


def decode_fulfilled_data(data: bytes) -> tuple[bytes, bytes]:
    """(resultAction, reasoningIpfsCid) as raw bytes, exactly as eth-abi decodes them."""
    try:
        return _fast_fulfilled(data)
    except _NotCanonical:
        action, cid = abi_decode(_FULFILLED_TYPES, data)
        return action, cid
