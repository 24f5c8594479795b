"""The reasoning trace and its CID: known vectors, the multiformats package, chain data."""

from __future__ import annotations

import hashlib
import json

import pytest
from eth_abi.abi import encode
from hypothesis import given
from hypothesis import strategies as st
from multiformats import CID, multihash

from shared.llm.cid import cid_v1_raw, sha256_of_cid
from shared.llm.trace import TRACE_RAW_CHARS, build_trace, canonical_json, inputs_sha256
from shared.llm.types import Attempt, ChatMessage, InferenceRequest


def test_cid_of_hello_world_matches_the_published_ipfs_vector() -> None:
    assert cid_v1_raw(b"hello world") == (
        "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
    )


def test_cid_of_the_empty_string_matches_the_published_ipfs_vector() -> None:
    assert cid_v1_raw(b"") == "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


@given(st.binary(max_size=4096))
def test_cid_agrees_with_the_multiformats_package(data: bytes) -> None:
    expected = CID("base32", 1, "raw", multihash.digest(data, "sha2-256"))
    assert cid_v1_raw(data) == str(expected)
    assert sha256_of_cid(cid_v1_raw(data)) == hashlib.sha256(data).digest()


def test_sha256_of_cid_refuses_other_cid_forms() -> None:
    with pytest.raises(ValueError, match="base32"):
        sha256_of_cid("QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG")
    dag_pb = str(CID("base32", 1, "dag-pb", multihash.digest(b"x", "sha2-256")))
    with pytest.raises(ValueError, match="raw sha2-256"):
        sha256_of_cid(dag_pb)


REQUEST = InferenceRequest(
    request_id=2**256 - 1, model="hodlai-local", system_prompt="Manage.",
    state_string="price=1 ✓", action_set=("BUY", "SELL"), chain_id=56,
    provider="0x" + "12" * 20, requester="0x" + "34" * 20, content_hash="0xabc", generation=2,
)  # fmt: skip


def test_inputs_hash_is_the_sha256_of_the_request_event_data() -> None:
    # the log's data field is abi.encode of the non-indexed event parameters, in order
    data = encode(["string", "string", "string", "string[]"],
                  ["hodlai-local", "Manage.", "price=1 ✓", ["BUY", "SELL"]])  # fmt: skip
    assert inputs_sha256(REQUEST) == "0x" + hashlib.sha256(data).hexdigest()


def _trace() -> dict[str, object]:
    return build_trace(
        REQUEST, backend="openai", backend_model="m-1", params={"temperature": 0},
        messages=[ChatMessage("system", "s"), ChatMessage("user", "u")],
        attempts=[
            Attempt(1, "nope \udcff", "bad_answer", "not permitted", 0.5, {}),
            Attempt(2, "BUY", "answered", "BUY", 0.25, {"constraint": "none"}),
        ],
        action="BUY", prior_attempts=0, started_at=100.0, finished_at=101.0,
    )  # fmt: skip


def test_trace_holds_what_an_auditor_needs() -> None:
    trace = _trace()
    request = trace["request"]
    assert isinstance(request, dict)
    assert request["request_id"] == str(2**256 - 1)
    assert (request["chain_id"], request["provider"]) == (56, "0x" + "12" * 20)
    assert request["inputs_sha256"] == inputs_sha256(REQUEST)
    assert trace["backend"] == {"name": "openai", "model": "m-1", "params": {"temperature": 0}}
    assert [a["raw"] for a in trace["attempts"]] == ["nope \udcff", "BUY"]  # type: ignore[attr-defined]
    assert trace["action"] == "BUY" and trace["node_version"]
    assert trace["timings"] == {"started_at": 100.0, "finished_at": 101.0, "total_s": 1.0}


def test_canonical_json_is_ascii_sorted_compact_and_stable() -> None:
    text = canonical_json(_trace())
    assert text == canonical_json(json.loads(text))
    assert text.isascii() and ": " not in text and ", " not in text
    assert json.loads(text)["attempts"][0]["raw"] == "nope \udcff"  # survives a lone surrogate
    assert cid_v1_raw(text.encode()) == cid_v1_raw(canonical_json(_trace()).encode())


def test_a_long_raw_answer_is_cut_in_the_trace_with_its_full_length() -> None:
    long_raw = "SELL " * 20_000
    trace = build_trace(
        REQUEST, backend="openai", backend_model="m-1", params={},
        messages=[ChatMessage("system", "s")],
        attempts=[
            Attempt(1, long_raw, "bad_answer", "too long", 0.1, {}),
            Attempt(2, "x" * TRACE_RAW_CHARS, "bad_answer", "not permitted", 0.1, {}),
            Attempt(3, None, "bad_answer", "larger than 65536 bytes", 0.1, {}),
        ],
        action=None, prior_attempts=0, started_at=1.0, finished_at=2.0,
    )  # fmt: skip
    first, exact, unread = trace["attempts"]  # type: ignore[misc]
    assert first["raw"] == long_raw[:TRACE_RAW_CHARS]
    assert first["raw_cut"] == {"kept_chars": TRACE_RAW_CHARS, "full_chars": 100_000}
    assert exact["raw"] == "x" * TRACE_RAW_CHARS and "raw_cut" not in exact
    assert unread["raw"] is None and "raw_cut" not in unread
    assert len(canonical_json(trace)) < 4 * TRACE_RAW_CHARS
