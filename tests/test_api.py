"""``hodlai api`` as an operator runs it: the real process on a free loopback port, a real
SQLite file filled through the store, real HTTP (httpx). No mocks."""

from __future__ import annotations

import json
import os
import re
import secrets
import selectors
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from shared.api.tokens import legacy_id
from shared.db import check_identity, connect
from tests.conftest import make_request
from workers.oracle import store
from workers.oracle.store import Status

PROVIDER = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
BIG = 2**70  # an id beyond 64 bits: must come back exact, as a string
# Seconds to wait for "hodlai api listening on ..." (imports take ~1 s on this box).
START_TIMEOUT_S = 20.0

TOKEN_A = secrets.token_hex(32)  # admin, id "alice"
TOKEN_B = secrets.token_urlsafe(40)  # admin, on a line of its own (the format before roles)
TOKEN_R = secrets.token_hex(32)  # read, id "grafana"


@dataclass
class Api:
    process: subprocess.Popen[str]
    url: str
    log_path: Path
    db_path: Path

    def client(self, token: str | None = TOKEN_R) -> httpx.Client:
        """A client presenting ``token`` (by default a read token) unless a call says else."""
        headers = {"Authorization": f"Bearer {token}"} if token else None
        return httpx.Client(base_url=self.url, timeout=10.0, headers=headers)

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def _env(db_path: Path, **settings: str) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HODLAI_DB_PATH": str(db_path)}
    env["HODLAI_API_PORT"] = "0"
    env.update(settings)
    return env


def _command() -> list[str]:
    return [sys.executable, "-m", "shared.cli", "api"]


def _start(db_path: Path, **settings: str) -> Api:
    log_path = db_path.parent / f"api-{time.monotonic_ns()}.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            _command(), env=_env(db_path, **settings), cwd=db_path.parent,
            stdout=subprocess.PIPE, stderr=log_file, text=True,
        )  # fmt: skip
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if not selector.select(timeout=0.1):
            if process.poll() is not None:
                break
            continue
        line = process.stdout.readline()
        if line.startswith("hodlai api listening on "):
            return Api(process, line.split()[-1], log_path, db_path)
        if not line and process.poll() is not None:
            break
    process.kill()
    process.wait()
    raise AssertionError(f"hodlai api did not start: {log_path.read_text()}")


def _tokens_file(directory: Path, mode: int = 0o600) -> Path:
    path = directory / "operator-tokens"
    path.write_text(
        f"# operators of this node\nalice admin {TOKEN_A}\n\n{TOKEN_B}\ngrafana  read  {TOKEN_R}\n"
    )
    path.chmod(mode)
    return path


def _fill(db_path: Path) -> None:
    conn = connect(db_path)
    check_identity(conn, chain_id=31337, provider_address=PROVIDER)
    for request_id, block in ((1, 10), (2, 11), (3, 12), (4, 13), (BIG, 14)):
        store.insert_request(
            conn, make_request(request_id, block_number=block), actor="indexer", now=1000.0
        )
    for request_id in (3, 4, BIG):
        store.transition(conn, request_id, Status.PENDING, Status.FAILED, actor="inference-0/1",
                         set_columns={"fail_reason": f"bad answer {request_id}"})  # fmt: skip
    answer = {"answer_action": "HOLD", "reasoning": '{"answer": "HOLD"}'}
    store.transition(conn, 2, Status.PENDING, Status.ANSWERED, actor="inference-0/1",
                     set_columns=answer)  # fmt: skip
    conn.close()


def _row(db_path: Path, request_id: int) -> tuple[str, list[tuple[str | None, str, str]]]:
    conn = sqlite3.connect(db_path)
    status = conn.execute(
        "SELECT status FROM requests WHERE request_id = ?", (str(request_id),)
    ).fetchone()[0]
    audit = conn.execute(
        "SELECT from_status, to_status, actor FROM transitions WHERE entity_id = ? ORDER BY id",
        (str(request_id),),
    ).fetchall()
    conn.close()
    return status, audit


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One process for the read and auth tests; each test uses its own request ids."""
    directory = tmp_path_factory.mktemp("api")
    db_path = directory / "node.db"
    _fill(db_path)
    server = _start(db_path, HODLAI_API_TOKENS_FILE=str(_tokens_file(directory)))
    yield server
    server.stop()


# --- the documentation and the read routes -----------------------------------------------


def test_docs_page_loads_and_openapi_lists_the_oracle_routes(api: Api) -> None:
    with api.client() as client:
        docs = client.get("/docs")
        spec = client.get("/openapi.json").json()
        health = client.get("/healthz")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert {
        "/healthz", "/api/oracle/status", "/api/oracle/requests",
        "/api/oracle/requests/{request_id}", "/api/oracle/requests/{request_id}/retry",
    } <= set(spec["paths"])  # fmt: skip
    retry = spec["paths"]["/api/oracle/requests/{request_id}/retry"]["post"]
    assert retry["security"] == [{"operator": []}]
    assert {"401", "404", "409", "422"} <= set(retry["responses"])
    assert health.status_code == 200 and health.json() == {"ok": True}


def test_docs_page_needs_nothing_from_outside_the_node(api: Api) -> None:
    """Every script, stylesheet and icon /docs names is served by the node itself: a node
    with no way out to a CDN still shows its operator the API."""
    with api.client() as client:
        page = client.get("/docs").text
        assets = re.findall(r'(?:src|href)=["\']([^"\']+)["\']', page)
        assert assets, page
        assert not [a for a in assets if "//" in a], assets  # no absolute or CDN address
        served = {a: client.get(a) for a in assets}
    assert {a: r.status_code for a, r in served.items()} == dict.fromkeys(assets, 200)
    scripts = [r for a, r in served.items() if a.endswith(".js")]
    assert scripts and all(b"SwaggerUIBundle" in r.content for r in scripts)
    assert any(r.headers["content-type"].startswith("text/css") for r in served.values())


def test_status_counts_requests_per_status_and_names_the_chain(api: Api) -> None:
    with api.client() as client:
        answer = client.get("/api/oracle/status")
    assert answer.status_code == 200
    body = answer.json()
    assert body["counts"] == {
        "PENDING": 1, "ANSWERED": 1, "PROCESSED": 0, "FULFILLED": 0, "FAILED": 3,
    }  # fmt: skip
    assert body["chain_id"] == 31337 and body["provider"] == PROVIDER
    assert body["oldest_pending_age_s"] > 0


def test_listing_filters_by_status_and_limits_newest_first(api: Api) -> None:
    with api.client() as client:
        everything = client.get("/api/oracle/requests").json()["requests"]
        failed = client.get("/api/oracle/requests", params={"status": "FAILED"}).json()
        two = client.get("/api/oracle/requests", params={"limit": 2}).json()
        lower = client.get("/api/oracle/requests", params={"status": "failed"}).json()
        empty = client.get("/api/oracle/requests?status=&limit=3").json()["requests"]
    assert [r["request_id"] for r in everything] == [str(BIG), "4", "3", "2", "1"]
    assert [r["request_id"] for r in failed["requests"]] == [str(BIG), "4", "3"]
    assert lower == failed and [r["request_id"] for r in empty] == [str(BIG), "4", "3"]
    assert failed["requests"][0]["fail_reason"] == f"bad answer {BIG}"
    assert [r["request_id"] for r in two["requests"]] == [str(BIG), "4"]


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"status": "LOST"}, "query.status"),
        ({"status": "FAILED,PENDING"}, "query.status"),
        ({"limit": 0}, "query.limit"),
        ({"limit": 1001}, "query.limit"),
        ({"limit": "ten"}, "query.limit"),
    ],
)
def test_listing_refuses_a_bad_parameter_with_a_json_422(
    api: Api, params: dict[str, object], named: str
) -> None:
    with api.client() as client:
        answer = client.get("/api/oracle/requests", params=params)
    assert answer.status_code == 422
    body = answer.json()
    assert set(body) == {"error", "message"} and body["error"] == "invalid_request"
    assert named in body["message"]


def test_a_request_comes_with_its_history(api: Api) -> None:
    with api.client() as client:
        big = client.get(f"/api/oracle/requests/{BIG}").json()
        answered = client.get("/api/oracle/requests/2").json()
    assert big["request_id"] == str(BIG) and big["status"] == "FAILED"
    assert big["action_set"] == ["BUY", "SELL", "HOLD"] and big["reasoning"] is None
    assert [(h["from_status"], h["to_status"], h["actor"]) for h in big["history"]] == [
        (None, "PENDING", "indexer"),
        ("PENDING", "FAILED", "inference-0/1"),
    ]
    assert answered["answer_action"] == "HOLD" and answered["reasoning"] == {"answer": "HOLD"}


@pytest.mark.parametrize(
    ("request_id", "status", "error"),
    [
        ("99", 404, "not_found"),
        ("abc", 422, "invalid_request"),
        ("-1", 422, "invalid_request"),
        ("0x10", 422, "invalid_request"),
        (str(2**256), 422, "invalid_request"),  # 78 digits, one past uint256
        ("1" * 79, 422, "invalid_request"),
    ],
)
def test_an_unknown_or_malformed_id_is_a_json_error(
    api: Api, request_id: str, status: int, error: str
) -> None:
    with api.client() as client:
        answer = client.get(f"/api/oracle/requests/{request_id}")
    assert answer.status_code == status, answer.text
    assert answer.json()["error"] == error and answer.json()["message"]


def test_an_unknown_route_and_a_wrong_method_are_json_errors(api: Api) -> None:
    with api.client() as client:
        missing = client.get("/api/oracle/nothing")
        wrong = client.delete("/api/oracle/requests/1")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"


# --- the operator's write route -----------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": f"Bearer {TOKEN_A[:-1]}x"},
        {"Authorization": f"Bearer {TOKEN_A}{TOKEN_A}"},
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {TOKEN_A}"},
        {"Authorization": TOKEN_A},
    ],
    ids=["none", "wrong", "two-tokens", "empty", "basic", "no-scheme"],
)
def test_retry_without_the_operator_token_is_a_401_and_changes_nothing(
    api: Api, headers: dict[str, str]
) -> None:
    before = _row(api.db_path, 3)
    with api.client(token=None) as client:
        answer = client.post("/api/oracle/requests/3/retry", headers=headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert answer.json()["error"] == "unauthorized"
    assert _row(api.db_path, 3) == before and before[0] == "FAILED"


def test_retry_is_refused_before_the_request_is_looked_up(api: Api) -> None:
    with api.client(token=None) as client:
        unknown = client.post("/api/oracle/requests/99/retry")
        malformed = client.post("/api/oracle/requests/abc/retry")
    with api.client() as client:  # a read token: known, but not an admin's
        read_only = client.post("/api/oracle/requests/abc/retry")
    assert unknown.status_code == 401 and malformed.status_code == 401
    assert read_only.status_code == 403 and read_only.json()["error"] == "forbidden"
    assert "grafana has role read" in read_only.json()["message"]


def test_retry_with_an_operator_token_reopens_the_request_with_an_audit_row(api: Api) -> None:
    with api.client() as client:
        answer = client.post(
            f"/api/oracle/requests/{BIG}/retry", headers={"Authorization": f"Bearer {TOKEN_B}"}
        )
        shown = client.get(f"/api/oracle/requests/{BIG}").json()
    assert answer.status_code == 200
    assert answer.json() == {"request_id": str(BIG), "status": "PENDING"}
    status, audit = _row(api.db_path, BIG)
    # TOKEN_B is on a line of its own: the audit names it by a digest, never by the token.
    actor = f"operator:api:{legacy_id(TOKEN_B)}"
    assert status == "PENDING" and audit[-1] == ("FAILED", "PENDING", actor)
    assert shown["status"] == "PENDING" and shown["attempts"] == 0 and shown["fail_reason"] is None
    assert shown["history"][-1]["note"] == "operator retry"


def test_retry_of_a_request_that_is_not_failed_is_a_409(api: Api) -> None:
    auth = {"Authorization": f"Bearer {TOKEN_A}"}
    with api.client() as client:
        first = client.post("/api/oracle/requests/4/retry", headers=auth)
        again = client.post("/api/oracle/requests/4/retry", headers=auth)
        answered = client.post("/api/oracle/requests/2/retry", headers=auth)
        unknown = client.post("/api/oracle/requests/99/retry", headers=auth)
    assert first.status_code == 200
    assert again.status_code == 409 and again.json() == {
        "error": "conflict",
        "message": "request 4 is PENDING, not FAILED",
    }
    assert answered.status_code == 409 and _row(api.db_path, 2)[0] == "ANSWERED"
    assert unknown.status_code == 404 and unknown.json()["error"] == "not_found"


# --- how the process is exposed -----------------------------------------------------------


def _listeners(port: int) -> list[tuple[str, str]]:
    """(table, local address in hex) of the sockets listening on ``port``, from /proc."""
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if int(port_hex, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.append((table, address))
    return found


def test_it_binds_loopback_only_by_default(api: Api) -> None:
    port = int(api.url.rsplit(":", 1)[1])
    assert api.url.startswith("http://127.0.0.1:")
    assert _listeners(port) == [("tcp", "0100007F")]  # 127.0.0.1, and no IPv6 socket


def test_no_cors_headers_by_default(api: Api) -> None:
    origin = {"Origin": "http://console.example:3000"}
    with api.client() as client:
        simple = client.get("/api/oracle/status", headers=origin)
        preflight = client.options(
            "/api/oracle/requests/1/retry",
            headers={**origin, "Access-Control-Request-Method": "POST"},
        )
    assert simple.status_code == 200
    assert not any(h.startswith("access-control-") for h in simple.headers)
    assert not any(h.startswith("access-control-") for h in preflight.headers)


def test_cors_headers_for_the_configured_origins_only(tmp_path: Path) -> None:
    db_path = tmp_path / "node.db"
    _fill(db_path)
    api = _start(
        db_path, HODLAI_API_CORS_ORIGINS="http://console.example:3000, https://ops.example",
        HODLAI_API_PUBLIC_READS="true",
    )  # fmt: skip
    try:
        with api.client() as client:
            preflight = client.options(
                "/api/oracle/requests/3/retry",
                headers={
                    "Origin": "https://ops.example",
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "authorization",
                },
            )
            simple = client.get(
                "/api/oracle/status", headers={"Origin": "http://console.example:3000"}
            )
            other = client.get("/api/oracle/status", headers={"Origin": "https://evil.example"})
            # No tokens file configured: the API is read-only.
            write = client.post(
                "/api/oracle/requests/3/retry", headers={"Authorization": f"Bearer {TOKEN_A}"}
            )
    finally:
        assert api.stop() == 0
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://ops.example"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    assert simple.headers["access-control-allow-origin"] == "http://console.example:3000"
    assert "access-control-allow-origin" not in other.headers
    assert write.status_code == 401 and "HODLAI_API_TOKENS_FILE" in write.json()["message"]
    assert _row(db_path, 3)[0] == "FAILED"


def test_sigterm_stops_it_with_exit_0_and_no_token_ever_reaches_the_log(tmp_path: Path) -> None:
    db_path = tmp_path / "node.db"
    _fill(db_path)
    api = _start(db_path, HODLAI_API_TOKENS_FILE=str(_tokens_file(tmp_path)), LOG_LEVEL="DEBUG")
    wrong = secrets.token_hex(32)
    with api.client() as client:
        refused = client.post(
            "/api/oracle/requests/3/retry", headers={"Authorization": f"Bearer {wrong}"}
        )
        accepted = client.post(
            "/api/oracle/requests/3/retry", headers={"Authorization": f"Bearer {TOKEN_A}"}
        )
        conflict = client.post(
            "/api/oracle/requests/3/retry", headers={"Authorization": f"Bearer {TOKEN_A}"}
        )
    assert (refused.status_code, accepted.status_code, conflict.status_code) == (401, 200, 409)
    assert api.stop() == 0
    log = api.log()
    events = [json.loads(line)["event"] for line in log.splitlines()]
    assert "operator_refused" in events and "operator_authorized" in events
    assert events[-1] == "api_stopped"
    for secret in (TOKEN_A, TOKEN_B, TOKEN_R, wrong):
        assert secret not in log
        assert secret not in "".join(r.text for r in (refused, accepted, conflict))


def test_a_broken_database_gives_a_generic_500_and_an_unhealthy_healthz(tmp_path: Path) -> None:
    db_path = tmp_path / "node.db"
    _fill(db_path)
    api = _start(db_path, HODLAI_API_PUBLIC_READS="true")
    try:
        for leftover in tmp_path.glob("node.db-*"):
            leftover.unlink()
        db_path.write_bytes(b"this is not an SQLite database file, just some text " * 100)
        with api.client() as client:
            status = client.get("/api/oracle/status")
            health = client.get("/healthz")
    finally:
        assert api.stop() == 0
    # The database layer names the problem (a file that is not SQLite: HODLAI_DB_PATH) in the
    # operator's log; the client gets the generic answer, with no path in it.
    assert status.status_code == 500
    assert status.json() == {
        "error": "misconfigured",
        "message": "the node is misconfigured; the operator's log says which setting",
    }
    assert health.status_code == 503 and health.json()["error"] == "unavailable"
    assert str(tmp_path) not in status.text + health.text
    assert "api_request_failed" in api.log() and "HODLAI_DB_PATH" in api.log()


# --- settings that stop the process before it serves --------------------------------------


def _refused(db_path: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _command(), env=_env(db_path, **settings), cwd=db_path.parent,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_a_tokens_file_readable_by_others_stops_it_with_exit_2(tmp_path: Path) -> None:
    tokens = _tokens_file(tmp_path, mode=0o644)
    proc = _refused(tmp_path / "node.db", HODLAI_API_TOKENS_FILE=str(tokens))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "HODLAI_API_TOKENS_FILE" in lines[0] and "mode 0644" in lines[0]
    assert f"chmod 600 {tokens}" in lines[0]
    assert TOKEN_A not in proc.stderr + proc.stdout and "listening" not in proc.stdout


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"HODLAI_API_TOKENS_FILE": "/nonexistent/tokens"}, "HODLAI_API_TOKENS_FILE"),
        ({"HODLAI_API_CORS_ORIGINS": "http://console.example/"}, "HODLAI_API_CORS_ORIGINS"),
        ({"HODLAI_API_HOST": "not a host"}, "HODLAI_API_HOST"),
        ({"HODLAI_API_PORT": "70000"}, "HODLAI_API_PORT"),
    ],
)
def test_a_bad_api_setting_stops_it_with_exit_2_naming_the_setting(
    tmp_path: Path, settings: dict[str, str], named: str
) -> None:
    proc = _refused(tmp_path / "node.db", **settings)
    assert proc.returncode == 2, proc.stderr
    assert named in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_port_in_use_stops_it_with_exit_2(api: Api, tmp_path: Path) -> None:
    port = api.url.rsplit(":", 1)[1]
    proc = _refused(tmp_path / "node.db", HODLAI_API_PORT=port)
    assert proc.returncode == 2
    assert "HODLAI_API_PORT" in proc.stderr and "in use" in proc.stderr
