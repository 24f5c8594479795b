"""Decoding the provider's logs: the fast reader agrees with eth-abi on every input, valid or
not, and bad content becomes a FAILED request instead of an exception."""

from __future__ import annotations

from typing import Any

import pytest
from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_abi.exceptions import NonEmptyPaddingBytes
from eth_utils.address import to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import RpcTransportError
from workers.oracle.contracts import (
    REASONING_FULFILLED_TOPIC0,
    REASONING_REQUESTED_TOPIC0,
    MalformedEventError,
    decode_reasoning_requested,
)
from workers.oracle.event_data import DECODE_ERRORS, decode_fulfilled_data, decode_requested_data
from workers.oracle.indexer.logs_decode import content_hash, decode_logs

REQUESTED = ("bytes", "bytes", "bytes", "bytes[]")
REQUESTER = "0x" + "00" * 12 + "ab" * 20
PROVIDER = "0x5fbdb2315678afecb367f032d93f642f64180aa3"

texts = st.text(max_size=80)
requests = st.tuples(texts, texts, texts, st.lists(texts, max_size=12))


def _encode(model: str, prompt: str, state: str, actions: list[str]) -> bytes:
    return abi_encode(["string", "string", "string", "string[]"], [model, prompt, state, actions])


def _reference(data: bytes) -> tuple[bytes, bytes, bytes, list[bytes]] | type[Exception]:
    try:
        model, prompt, state, actions = abi_decode(REQUESTED, data)
    except DECODE_ERRORS as exc:
        return type(exc)
    return model, prompt, state, list(actions)


def _ours(data: bytes) -> tuple[bytes, bytes, bytes, list[bytes]] | type[Exception]:
    try:
        return decode_requested_data(data)
    except DECODE_ERRORS as exc:
        return type(exc)


@settings(max_examples=300, deadline=None)
@given(requests)
def test_fast_reader_returns_what_eth_abi_returns_for_valid_data(
    request: tuple[str, str, str, list[str]],
) -> None:
    data = _encode(*request)
    assert _ours(data) == _reference(data)
    model, prompt, state, actions = decode_requested_data(data)
    assert (model.decode(), prompt.decode(), state.decode()) == request[:3]
    assert [a.decode() for a in actions] == request[3]


@settings(max_examples=500, deadline=None)
@given(requests, st.data())
def test_fast_reader_agrees_with_eth_abi_on_corrupted_data(
    request: tuple[str, str, str, list[str]], data: st.DataObject
) -> None:
    raw = bytearray(_encode(*request))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    for candidate in (bytes(raw), bytes(raw[:cut])):
        assert _ours(candidate) == _reference(candidate)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_fast_reader_agrees_with_eth_abi_on_arbitrary_bytes(raw: bytes) -> None:
    assert _ours(raw) == _reference(raw)


@settings(max_examples=300, deadline=None)
@given(requests, st.data())
def test_the_contracts_module_decodes_with_the_same_reader_and_only_raises_malformed(
    request: tuple[str, str, str, list[str]], data: st.DataObject
) -> None:
    """shared.contracts reads a request log with the indexer's reader: the same values for
    good data, and for corrupted data a MalformedEventError, never eth-abi's own error."""
    raw = bytearray(_encode(*request))
    topics = [REASONING_REQUESTED_TOPIC0, "0x" + "00" * 31 + "07", REQUESTER]
    event = decode_reasoning_requested(topics, bytes(raw))
    assert (event.model, event.system_prompt, event.state_string) == request[:3]
    assert event.action_set == tuple(request[3])
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    expected = _reference(bytes(raw))
    try:
        decoded = decode_reasoning_requested(topics, bytes(raw))
    except MalformedEventError:
        assert isinstance(expected, type) or any(
            _not_utf8(value) for value in (*expected[:3], *expected[3])
        )
    else:
        assert not isinstance(expected, type)
        assert decoded.model.encode() == expected[0]


def _not_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def test_non_canonical_layout_is_decoded_by_eth_abi_the_same_way() -> None:
    # The same values with the tails of model and prompt swapped: valid ABI, not what solc
    # emits; the fast reader still reads it (pointers are followed), eth-abi agrees.
    model, prompt = abi_encode(["bytes"], [b"model"]), abi_encode(["bytes"], [b"prompt"])
    canonical = _encode("model", "prompt", "state", ["A"])
    head = bytearray(canonical[:128])
    tail_model, tail_prompt = model[32:], prompt[32:]
    rest = canonical[128 + len(tail_model) + len(tail_prompt) :]
    head[0:32] = (128 + len(tail_prompt)).to_bytes(32, "big")
    head[32:64] = (128).to_bytes(32, "big")
    swapped = bytes(head) + tail_prompt + tail_model + rest
    assert swapped != canonical
    assert _ours(swapped) == _reference(swapped) == _reference(canonical)


def test_non_zero_padding_is_refused_like_eth_abi_refuses_it() -> None:
    data = bytearray(_encode("m", "p", "s", ["A"]))
    data[128 + 32 + 5] = 1  # a padding byte of the model's tail
    assert _reference(bytes(data)) is NonEmptyPaddingBytes
    assert _ours(bytes(data)) is NonEmptyPaddingBytes


def test_fulfilled_data_decodes_like_eth_abi() -> None:
    data = abi_encode(["string", "string"], ["HOLD", "bafybeigdyrzt"])
    assert decode_fulfilled_data(data) == tuple(abi_decode(("bytes", "bytes"), data))


def _log(topic0: str, request_id: int, data: bytes, **overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "address": PROVIDER,
        "topics": [topic0, f"0x{request_id:064x}", REQUESTER],
        "data": "0x" + data.hex(),
        "blockNumber": "0x10",
        "blockHash": "0x" + "aa" * 32,
        "transactionHash": "0x" + "bb" * 32,
        "logIndex": "0x3",
        "removed": False,
    }
    entry.update(overrides)
    return entry


def test_decode_logs_turns_both_events_into_domain_objects() -> None:
    request_data = _encode("hodlai-local", "Choose.", "état 1 — ₿", ["BUY", "SELL 🔴"])
    decoded = decode_logs(
        [
            _log(REASONING_REQUESTED_TOPIC0, 2**256 - 1, request_data),
            _log(REASONING_FULFILLED_TOPIC0, 7, abi_encode(["string", "string"], ["BUY", "cid"])),
        ]
    )
    (request,) = decoded.requests
    assert request.request_id == 2**256 - 1
    assert request.requester == to_checksum_address("0x" + "ab" * 20)
    assert request.state_string == "état 1 — ₿"
    assert request.action_set == ("BUY", "SELL 🔴")
    assert (request.block_number, request.log_index) == (16, 3)
    assert request.content_hash == content_hash(request.requester, request_data)
    (fulfilment,) = decoded.fulfillments
    assert (fulfilment.request_id, fulfilment.result_action, fulfilment.reasoning_cid) == (
        7, "BUY", "cid")  # fmt: skip
    assert decoded.log_blocks == {16: "0x" + "aa" * 32}


def test_content_hash_changes_with_any_content_and_with_the_requester() -> None:
    base = content_hash("0x" + "ab" * 20, _encode("m", "p", "s", ["A"]))
    assert base != content_hash("0x" + "ab" * 20, _encode("m", "p", "s", ["B"]))
    assert base != content_hash("0x" + "cd" * 20, _encode("m", "p", "s", ["A"]))
    assert base == content_hash("0x" + "AB" * 20, _encode("m", "p", "s", ["A"]))


def test_request_with_invalid_utf8_becomes_malformed_not_an_exception() -> None:
    data = abi_encode(REQUESTED, [b"m", b"bad \xff here", b"s", [b"A"]])
    decoded = decode_logs([_log(REASONING_REQUESTED_TOPIC0, 5, data)])
    assert decoded.requests == []
    (bad,) = decoded.malformed
    assert bad.request.request_id == 5
    assert bad.reason == "systemPrompt is not valid UTF-8 (invalid start byte at byte 4)"
    assert bad.request.system_prompt == "bad \ufffd here"


def test_request_with_undecodable_data_becomes_malformed() -> None:
    decoded = decode_logs([_log(REASONING_REQUESTED_TOPIC0, 6, b"\x01" * 40)])
    (bad,) = decoded.malformed
    assert bad.request.request_id == 6 and "undecodable" in bad.reason
    assert bad.request.action_set == ()


def test_logs_of_other_topics_and_removed_logs_are_ignored_and_unreadable_ones_counted() -> None:
    data = _encode("m", "p", "s", ["A"])
    decoded = decode_logs(
        [
            _log("0x" + "11" * 32, 1, data),
            _log(REASONING_REQUESTED_TOPIC0, 2, data, removed=True),
            _log(REASONING_REQUESTED_TOPIC0, 3, data, topics=[REASONING_REQUESTED_TOPIC0]),
        ]
    )
    assert decoded.count == 0 and decoded.unreadable == 1


@pytest.mark.parametrize(
    "broken",
    [{"blockHash": None}, {"blockNumber": "16"}, {"data": "zz"}, {"transactionHash": "0x12"},
     {"topics": []}],
)  # fmt: skip
def test_a_log_object_the_node_got_wrong_is_a_transport_error(broken: dict[str, Any]) -> None:
    entry = _log(REASONING_REQUESTED_TOPIC0, 1, _encode("m", "p", "s", ["A"])) | broken
    with pytest.raises(RpcTransportError):
        decode_logs([entry])


def test_pointer_into_the_head_is_refused_as_eth_abi_refuses_it() -> None:
    # Found by hypothesis: the model's offset word set to 0 points into the head itself.
    raw = bytearray(_encode("", "", "", []))
    raw[31] = 0
    assert _ours(bytes(raw)) == _reference(bytes(raw))
    raw = bytearray(_encode("m", "p", "s", ["A", "B"]))
    raw[128 + 32 + 31] = 0  # the first action's offset points into the array's own head
    assert _ours(bytes(raw)) == _reference(bytes(raw))
