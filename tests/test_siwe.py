"""End-user proof (Sign-In with Ethereum, EIP-4361) in a test app on a real SQLite file: the
messages are written as the EIP text and signed by eth-account as a wallet signs them
(``personal_sign``: encode_defunct of the text)."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from fastapi import APIRouter, Depends
from structlog.testing import capture_logs

from shared.api import siwe
from shared.api.app import create_app
from shared.api.settings import ApiSettings
from shared.api.siwe import EndUser, require_user_proof

HOST = "127.0.0.1:8000"
CHAIN = 8453
USER: LocalAccount = Account.create()
OTHER: LocalAccount = Account.create()

router = APIRouter(prefix="/api/probe")
CANCEL_PROOF = require_user_proof("Cancel probe task", "{task_id}", chain_ids=[CHAIN])
TOUCH = "Touch: the default chain"


@router.post("/tasks/{task_id}/cancel")
def cancel_task(
    task_id: str,
    user: Annotated[EndUser, Depends(CANCEL_PROOF)],
) -> dict[str, Any]:
    return {"task_id": task_id, "address": user.address, "actor": user.actor}


@router.post("/default-chain")
def default_chain(
    user: Annotated[EndUser, Depends(require_user_proof("Touch", "the default chain"))],
) -> dict[str, int]:
    return {"chain_id": user.chain_id}


def _app(tmp_path: Path, **values: Any) -> httpx.AsyncClient:
    app = create_app(ApiSettings(db_path=tmp_path / "node.db", **values), [router])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{HOST}")


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with _app(tmp_path) as api:
        yield api


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Message:
    """The fields of an EIP-4361 message; :meth:`text` writes it as the EIP specifies."""

    nonce: str
    address: str = USER.address
    domain: str = HOST
    statement: str | None = "Cancel probe task: 42"
    uri: str = f"http://{HOST}/tasks/42"
    chain_id: int = CHAIN
    issued: timedelta = timedelta(0)  # relative to now
    lifetime: timedelta | None = timedelta(minutes=5)

    def text(self) -> str:
        now = datetime.now(UTC)
        lines = [f"{self.domain} wants you to sign in with your Ethereum account:", self.address]
        # address LF LF [ statement LF ] LF "URI: ": two empty lines when there is none
        lines += ["", self.statement, ""] if self.statement is not None else ["", ""]
        lines += [f"URI: {self.uri}", "Version: 1", f"Chain ID: {self.chain_id}",
                  f"Nonce: {self.nonce}", f"Issued At: {_iso(now + self.issued)}"]  # fmt: skip
        if self.lifetime is not None:
            lines.append(f"Expiration Time: {_iso(now + self.issued + self.lifetime)}")
        return "\n".join(lines)


def _proof(message: Message, signer: LocalAccount = USER) -> dict[str, str]:
    text = message.text()
    signature = signer.sign_message(encode_defunct(text=text)).signature.to_0x_hex()
    payload = json.dumps({"message": text, "signature": signature}).encode()
    return {siwe.HEADER: base64.b64encode(payload).decode()}


async def _nonce(client: httpx.AsyncClient) -> str:
    answer = await client.get("/api/auth/nonce")
    assert answer.status_code == 200, answer.text
    return str(answer.json()["nonce"])


async def _cancel(client: httpx.AsyncClient, headers: dict[str, str], task: str = "42") -> Any:
    return await client.post(f"/api/probe/tasks/{task}/cancel", headers=headers)


async def test_a_valid_proof_passes_once_and_names_the_user(client: httpx.AsyncClient) -> None:
    proof = _proof(Message(await _nonce(client)))
    with capture_logs() as logs:
        first = await _cancel(client, proof)
        replayed = await _cancel(client, proof)
    assert first.status_code == 200, first.text
    assert first.json() == {"task_id": "42", "address": USER.address,
                            "actor": f"user:{USER.address}"}  # fmt: skip
    assert replayed.status_code == 401 and replayed.json()["error"] == "user_proof_nonce"
    assert "already used" in replayed.json()["message"]
    assert replayed.headers["www-authenticate"] == siwe.HEADER
    events = [(e["event"], e.get("reason")) for e in logs if "user_proof" in e["event"]]
    assert events == [("user_proof_accepted", None), ("user_proof_refused", "nonce")]


async def test_the_nonce_route_issues_distinct_single_use_nonces_for_5_minutes(
    client: httpx.AsyncClient,
) -> None:
    first = (await client.get("/api/auth/nonce")).json()
    second = (await client.get("/api/auth/nonce")).json()
    assert first["nonce"] != second["nonce"] and len(first["nonce"]) == 32
    assert first["expires_at"] - first["issued_at"] == 300
    assert first["domains"] == [HOST] and first["chain_ids"] == []
    assert first["max_lifetime_s"] == 300 and first["header"] == "Sign-In-With-Ethereum"


@pytest.mark.parametrize(
    ("change", "signer", "status", "reason"),
    [
        ({"issued": timedelta(minutes=-10)}, USER, 401, "expired"),
        ({"lifetime": timedelta(minutes=5, seconds=1)}, USER, 401, "lifetime"),
        ({"lifetime": None}, USER, 401, "lifetime"),
        ({"issued": timedelta(minutes=2)}, USER, 401, "not_yet_valid"),
        ({}, OTHER, 401, "signature"),  # names USER's address, signed by another key
        ({"address": OTHER.address}, USER, 401, "signature"),
        ({"domain": "evil.example"}, USER, 401, "domain"),
        ({"domain": "127.0.0.1:8001"}, USER, 401, "domain"),
        ({"chain_id": 1}, USER, 401, "chain"),
        ({"statement": "Cancel probe task: 43"}, USER, 403, "statement"),
        ({"statement": "Refund probe task: 42"}, USER, 403, "statement"),
        ({"statement": None}, USER, 403, "statement"),
    ],
    ids=[
        "expired",
        "lives-too-long",
        "no-expiry",
        "future",
        "other-signer",
        "other-address",
        "other-domain",
        "other-port",
        "other-chain",
        "other-subject",
        "other-action",
        "no-statement",
    ],
)
async def test_a_proof_that_fails_a_check_is_refused_and_spends_no_nonce(
    client: httpx.AsyncClient,
    change: dict[str, Any],
    signer: LocalAccount,
    status: int,
    reason: str,
) -> None:
    nonce = await _nonce(client)
    refused = await _cancel(client, _proof(Message(nonce, **change), signer))
    assert refused.status_code == status, refused.text
    assert refused.json()["error"] == f"user_proof_{reason}" and refused.json()["message"]
    valid = await _cancel(client, _proof(Message(nonce)))
    assert valid.status_code == 200, valid.text


async def test_a_proof_for_another_subject_is_refused_by_that_subjects_route(
    client: httpx.AsyncClient,
) -> None:
    proof = _proof(Message(await _nonce(client)))  # "Cancel probe task: 42"
    answer = await _cancel(client, proof, task="7")
    assert answer.status_code == 403 and answer.json()["error"] == "user_proof_statement"


async def test_a_nonce_the_node_never_issued_or_that_expired_is_refused(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    invented = await _cancel(client, _proof(Message("0123456789abcdef0123456789abcdef")))
    nonce = await _nonce(client)
    with sqlite3.connect(tmp_path / "node.db") as conn:  # its 5 minutes have passed
        conn.execute("UPDATE siwe_nonces SET expires_at = expires_at - 301 WHERE nonce = ?",
                     (nonce,))  # fmt: skip
    expired = await _cancel(client, _proof(Message(nonce)))
    assert [invented.status_code, expired.status_code] == [401, 401]
    assert {invented.json()["error"], expired.json()["error"]} == {"user_proof_nonce"}


async def test_two_requests_racing_with_one_proof_pass_once(client: httpx.AsyncClient) -> None:
    proof = _proof(Message(await _nonce(client)))
    answers = await asyncio.gather(*(_cancel(client, proof) for _ in range(6)))
    assert sorted(a.status_code for a in answers) == [200] + [401] * 5


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing"),
        ({siwe.HEADER: "not base64 at all!"}, "malformed"),
        ({siwe.HEADER: base64.b64encode(b"[1, 2]").decode()}, "malformed"),
        (
            {siwe.HEADER: base64.b64encode(b'{"message": "hello", "signature": "0x00"}').decode()},
            "malformed",
        ),
        ({siwe.HEADER: "A" * 9000}, "malformed"),
    ],
    ids=["missing", "not-base64", "not-an-object", "not-eip4361", "too-long"],
)
async def test_a_missing_or_malformed_proof_is_a_401(
    client: httpx.AsyncClient, headers: dict[str, str], reason: str
) -> None:
    answer = await _cancel(client, headers)
    assert answer.status_code == 401 and answer.json()["error"] == f"user_proof_{reason}"


async def test_a_url_safe_unpadded_header_is_accepted(client: httpx.AsyncClient) -> None:
    (value,) = _proof(Message(await _nonce(client))).values()
    raw = base64.b64decode(value)
    answer = await _cancel(
        client, {siwe.HEADER: base64.urlsafe_b64encode(raw).decode().rstrip("=")}
    )
    assert answer.status_code == 200, answer.text


async def test_domains_and_chains_come_from_the_settings_when_set(tmp_path: Path) -> None:
    async with _app(tmp_path, api_siwe_domains=["app.example"], chain_id=56) as client:
        nonce = (await client.get("/api/auth/nonce")).json()
        assert nonce["domains"] == ["app.example"] and nonce["chain_ids"] == [56]
        own_host = await client.post(
            "/api/probe/default-chain",
            headers=_proof(Message(nonce["nonce"], chain_id=56, statement=TOUCH)),
        )
        app_domain = await client.post(
            "/api/probe/default-chain",
            headers=_proof(
                Message(nonce["nonce"], chain_id=56, domain="app.example", statement=TOUCH)
            ),
        )
    assert own_host.json()["error"] == "user_proof_domain"
    assert app_domain.status_code == 200 and app_domain.json() == {"chain_id": 56}


async def test_a_user_route_with_no_chain_configured_is_a_generic_500(
    client: httpx.AsyncClient,
) -> None:
    nonce = await _nonce(client)
    with capture_logs() as logs:
        answer = await client.post(
            "/api/probe/default-chain",
            headers=_proof(Message(nonce, statement=TOUCH)),
        )
    assert answer.status_code == 500 and answer.json()["error"] == "misconfigured"
    assert any("HODLAI_API_SIWE_CHAIN_IDS" in str(e.get("error")) for e in logs)


def test_an_action_with_a_colon_is_refused_when_the_route_is_declared() -> None:
    with pytest.raises(ValueError, match="without ':'"):
        require_user_proof("Cancel: now", "{task_id}")


def test_the_installed_siwe_library_is_the_one_no_deps_txt_pins() -> None:
    """`make setup` installs it from no-deps.txt (its metadata caps web3 below the node's):
    a drift between the file and the environment would test another verifier."""
    pins = [
        line.split("==")
        for line in (Path(__file__).resolve().parent.parent / "no-deps.txt")
        .read_text()
        .splitlines()
        if line and not line.startswith("#")
    ]
    assert [name for name, _ in pins] == ["signinwithethereum"]
    assert version("signinwithethereum") == pins[0][1]


async def test_a_deeply_nested_json_proof_is_a_401_not_a_crash(client: httpx.AsyncClient) -> None:
    nested = base64.b64encode(b"[" * 5000).decode()
    answer = await _cancel(client, {siwe.HEADER: nested})
    assert answer.status_code == 401 and answer.json()["error"] == "user_proof_malformed"
