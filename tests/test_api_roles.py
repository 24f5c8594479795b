"""The API's access rules: every route against no token, a read token and an admin token in a
real ``hodlai api`` process; the Host check; undeclared write routes in a test app; the
settings that refuse an exposed configuration."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from structlog.testing import capture_logs

from shared.api.app import create_app
from shared.api.auth import PUBLIC, Operator, Reader, require_admin
from shared.api.settings import ApiSettings
from shared.config import load_settings
from shared.errors import ConfigError
from tests.test_api import TOKEN_A, TOKEN_R, Api, _fill, _start, _tokens_file

# Every route the installed executors and the core serve, and the access it must demand.
# A new route fails test_every_route_is_listed until it is added here with its access.
EXPECTED: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): "public",
    ("GET", "/api/auth/nonce"): "public",
    ("GET", "/api/oracle/status"): "read",
    ("GET", "/api/oracle/requests"): "read",
    ("GET", "/api/oracle/requests/{request_id}"): "read",
    ("POST", "/api/oracle/requests/{request_id}/retry"): "admin",
    ("GET", "/api/dispatch/stats"): "read",
    ("GET", "/api/dispatch/jobs"): "read",
    ("POST", "/api/ai-agent/chat"): "public",
    ("POST", "/api/ai-agent/task/{task_id}/fund"): "public",
    ("GET", "/api/ai-agent/tasks/{user_address}"): "public",
    ("GET", "/api/ai-agent/task/{task_id}"): "public",
    ("POST", "/api/ai-agent/task/{task_id}/cancel"): "user",
    ("POST", "/api/ai-agent/task/{task_id}/retry"): "user",
    ("POST", "/api/ai-agent/task/{task_id}/refund"): "user",
    ("GET", "/api/dispatch/jobs/{job_id}"): "read",
    ("POST", "/api/dispatch/jobs/{job_id}/cancel"): "admin",
    ("GET", "/api/dispatch/agents"): "read",
    ("POST", "/api/dispatch/agents"): "admin",
    ("POST", "/api/dispatch/agents/{agent_id}"): "admin",
    ("POST", "/api/dispatch/agents/{agent_id}/disable"): "admin",
    ("POST", "/api/dispatch/agents/{agent_id}/enable"): "admin",
    ("GET", "/api/execution/kmt-automation"): "read",
    ("POST", "/api/execution/kmt-automation"): "admin",
    ("PATCH", "/api/execution/kmt-automation"): "admin",
    ("POST", "/api/execution/kmt-automation/preview"): "read",
    ("GET", "/api/execution/kmt-automation/runs"): "read",
    ("GET", "/api/execution/kmt-automation/runs/{run_id}"): "read",
    ("GET", "/api/execution/kmt-automation/templates"): "read",
}
# Values for path parameters that name nothing: an admin call then fails after the access
# check (404/422) and changes nothing.
PATH_VALUES = {
    "{request_id}": "99", "{job_id}": "nope", "{agent_id}": "nope", "{task_id}": "nope",
    "{user_address}": "nope", "{run_id}": "nope",
}  # fmt: skip


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    directory = tmp_path_factory.mktemp("roles")
    db_path = directory / "node.db"
    _fill(db_path)
    server = _start(db_path, HODLAI_API_TOKENS_FILE=str(_tokens_file(directory)))
    yield server
    server.stop()


def _call(api: Api, method: str, path: str, token: str | None) -> httpx.Response:
    for name, value in PATH_VALUES.items():
        path = path.replace(name, value)
    with api.client(token=token) as client:
        return client.request(method, path)


def test_every_route_is_listed(api: Api) -> None:
    with api.client() as client:
        spec = client.get("/openapi.json").json()
    served = {(m.upper(), p) for p, item in spec["paths"].items() for m in item}
    assert served == set(EXPECTED)


@pytest.mark.parametrize(("method", "path"), sorted(EXPECTED))
def test_every_route_against_no_token_a_read_token_and_an_admin_token(
    api: Api, method: str, path: str
) -> None:
    access = EXPECTED[(method, path)]
    none, read, admin = (_call(api, method, path, t) for t in (None, TOKEN_R, TOKEN_A))
    outcome = tuple(r.status_code not in (401, 403) for r in (none, read, admin))
    assert (
        outcome
        == {
            "public": (True, True, True),
            "read": (False, True, True),
            "admin": (False, False, True),
            # the task's user (a SIWE proof in the body) or an admin token
            "user": (False, False, True),
        }[access]
    ), (none.text, read.text, admin.text)
    if access == "user":
        assert none.status_code == 401 and none.json()["error"] == "user_proof_missing"
    elif access != "public":
        assert none.status_code == 401 and none.json()["error"] == "unauthorized"
        assert none.headers["www-authenticate"] == "Bearer"
    if access in ("admin", "user"):
        assert read.status_code == 403 and read.json()["error"] == "forbidden"


def test_a_wrong_host_is_a_json_400_on_every_kind_of_route(api: Api) -> None:
    port = api.url.rsplit(":", 1)[1]
    with api.client(token=TOKEN_A) as client:
        refused = [
            client.request(method, path.replace("{request_id}", "3"), headers={"Host": host})
            for host in ("evil.example", f"evil.example:{port}", "127.0.0.2", "localhost.evil")
            for method, path in (("GET", "/healthz"), ("GET", "/api/oracle/status"),
                                 ("POST", "/api/oracle/requests/{request_id}/retry"))
        ]  # fmt: skip
        allowed = [
            client.get("/healthz", headers={"Host": host})
            for host in (f"127.0.0.1:{port}", "127.0.0.1", f"localhost:{port}", "LOCALHOST.")
        ]
    assert {r.status_code for r in refused} == {400}
    assert {r.json()["error"] for r in refused} == {"bad_request"}
    assert all("HODLAI_API_ALLOWED_HOSTS" in r.json()["message"] for r in refused)
    assert all("evil" not in r.text for r in refused)
    assert [r.status_code for r in allowed] == [200] * 4
    assert "api_host_refused" in api.log()


def test_a_request_without_a_host_header_is_refused(api: Api) -> None:
    host, port = api.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        answer = b""
        while chunk := conn.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400") and b'"bad_request"' in answer


# --- a test app: what an executor that forgets to declare gets --------------------------

probe = APIRouter(prefix="/api/probe")


@probe.post("/forgot")
def forgot() -> dict[str, bool]:
    return {"ran": True}


@probe.get("/plain")
def plain() -> dict[str, bool]:
    return {"ran": True}


@probe.post("/declared")
def declared(operator: Operator) -> dict[str, str]:
    return {"actor": operator.actor}


@probe.post("/open", dependencies=[PUBLIC])
def open_write() -> dict[str, bool]:
    return {"ran": True}


@probe.get("/who")
def who(reader: Reader) -> dict[str, str | None]:
    return {"actor": reader.actor if reader else None}


@probe.delete("/nested", dependencies=[Depends(require_admin)])
def nested() -> dict[str, bool]:
    return {"ran": True}


def _register(app: FastAPI) -> None:
    def late(request: Request) -> dict[str, str]:
        return {"path": request.url.path}

    app.add_api_route("/api/probe/late", late, methods=["PUT"])


def _settings(tmp_path: Path, **values: object) -> ApiSettings:
    tokens = _tokens_file(tmp_path)
    return ApiSettings(db_path=tmp_path / "node.db", api_tokens_file=tokens, **values)


@pytest.fixture
async def probe_app(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(_settings(tmp_path), [probe, _register])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
        yield client


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_write_route_that_declares_no_access_cannot_be_called_even_by_an_admin(
    probe_app: httpx.AsyncClient,
) -> None:
    with capture_logs() as logs:
        answers = [
            await probe_app.post("/api/probe/forgot", headers=_auth(TOKEN_A)),
            await probe_app.post("/api/probe/forgot"),
            await probe_app.put("/api/probe/late", headers=_auth(TOKEN_A)),
        ]
    assert [a.status_code for a in answers] == [403, 403, 403]
    assert all(a.json()["error"] == "forbidden" for a in answers)
    assert "declares no access level" in answers[0].json()["message"]
    assert [e["path"] for e in logs if e["event"] == "api_route_undeclared"] == [
        "/api/probe/forgot", "/api/probe/forgot", "/api/probe/late"
    ]  # fmt: skip


async def test_declared_routes_get_the_access_they_declare(
    probe_app: httpx.AsyncClient,
) -> None:
    declared_admin = await probe_app.post("/api/probe/declared", headers=_auth(TOKEN_A))
    declared_read = await probe_app.post("/api/probe/declared", headers=_auth(TOKEN_R))
    nested_admin = await probe_app.delete("/api/probe/nested", headers=_auth(TOKEN_A))
    nested_read = await probe_app.delete("/api/probe/nested", headers=_auth(TOKEN_R))
    public_write = await probe_app.post("/api/probe/open")
    plain_none = await probe_app.get("/api/probe/plain")
    plain_read = await probe_app.get("/api/probe/plain", headers=_auth(TOKEN_R))
    who_read = await probe_app.get("/api/probe/who", headers=_auth(TOKEN_R))
    assert declared_admin.json() == {"actor": "operator:api:alice"}
    assert declared_read.status_code == 403 and nested_read.status_code == 403
    assert nested_admin.status_code == 200 and public_write.status_code == 200
    assert plain_none.status_code == 401 and plain_read.status_code == 200
    assert who_read.json() == {"actor": "operator:api:grafana"}


async def test_public_reads_open_the_get_routes_and_nothing_else(tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path, api_public_reads=True), [probe])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
        plain = await client.get("/api/probe/plain")
        who_anyone = await client.get("/api/probe/who")
        declared_none = await client.post("/api/probe/declared")
        declared_read = await client.post("/api/probe/declared", headers=_auth(TOKEN_R))
    assert plain.status_code == 200 and who_anyone.json() == {"actor": None}
    assert declared_none.status_code == 401 and declared_read.status_code == 403


async def test_without_a_tokens_file_reads_are_refused_naming_both_settings(
    tmp_path: Path,
) -> None:
    app = create_app(ApiSettings(db_path=tmp_path / "node.db"), [probe])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        read = await client.get("/api/probe/plain", headers=_auth(TOKEN_R))
        health = await client.get("/healthz")
    assert read.status_code == 401
    assert "HODLAI_API_TOKENS_FILE" in read.json()["message"]
    assert "HODLAI_API_PUBLIC_READS" in read.json()["message"]
    assert health.status_code == 200


def test_a_plain_starlette_write_route_stops_the_app_at_start(tmp_path: Path) -> None:
    def register(app: FastAPI) -> None:
        async def raw(_request: Request) -> JSONResponse:
            return JSONResponse({})

        app.add_route("/api/probe/raw", raw, methods=["POST"])

    with pytest.raises(ConfigError, match=r"/api/probe/raw \(POST\) is not a FastAPI route"):
        create_app(_settings(tmp_path), [register])


# --- settings that refuse an exposed configuration ---------------------------------------


def test_cors_any_origin_is_refused_with_a_tokens_file_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HODLAI_API_CORS_ORIGINS", "*")
    monkeypatch.setenv("HODLAI_API_TOKENS_FILE", str(_tokens_file(tmp_path)))
    with pytest.raises(ConfigError, match=r"HODLAI_API_CORS_ORIGINS: '\*'.*credentials"):
        load_settings(ApiSettings)
    monkeypatch.delenv("HODLAI_API_TOKENS_FILE")
    assert load_settings(ApiSettings).api_cors_origins == ["*"]  # public data only: allowed
    monkeypatch.setenv("HODLAI_API_CORS_ORIGINS", "*, https://ops.example")
    with pytest.raises(ConfigError, match="HODLAI_API_CORS_ORIGINS"):
        load_settings(ApiSettings)


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"HODLAI_API_HOST": "0.0.0.0"}, "HODLAI_API_ALLOWED_HOSTS: must be set"),
        ({"HODLAI_API_HOST": "::"}, "HODLAI_API_ALLOWED_HOSTS: must be set"),
        ({"HODLAI_API_ALLOWED_HOSTS": "node.example, bad host"}, "HODLAI_API_ALLOWED_HOSTS"),
        ({"HODLAI_API_ALLOWED_HOSTS": "node.example:99999"}, "HODLAI_API_ALLOWED_HOSTS"),
        ({"HODLAI_API_SIWE_CHAIN_IDS": "8453, zero"}, "HODLAI_API_SIWE_CHAIN_IDS"),
        ({"HODLAI_API_PUBLIC_READS": "maybe"}, "HODLAI_API_PUBLIC_READS"),
    ],
)
def test_a_bad_exposure_setting_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, values: dict[str, str], named: str
) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=named):
        load_settings(ApiSettings)


def test_allowed_hosts_default_to_the_bind_address_and_localhost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HODLAI_API_HOST", "::1")
    assert [tuple(h) for h in load_settings(ApiSettings).allowed_hosts()] == [
        ("::1", None), ("localhost", None)
    ]  # fmt: skip
    monkeypatch.setenv("HODLAI_API_HOST", "0.0.0.0")
    monkeypatch.setenv("HODLAI_API_ALLOWED_HOSTS", "Node.Example:8443,[::1]")
    assert [tuple(h) for h in load_settings(ApiSettings).allowed_hosts()] == [
        ("node.example", 8443), ("::1", None)
    ]  # fmt: skip


def test_a_container_service_name_may_be_an_allowed_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HODLAI_API_ALLOWED_HOSTS", "hodlai_api:8000")
    assert [tuple(h) for h in load_settings(ApiSettings).allowed_hosts()] == [("hodlai_api", 8000)]
