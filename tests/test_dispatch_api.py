"""The dispatcher's routes in a real ``hodlai api`` process: the agent registry behind the
operator token, the reads, the one error shape, and the audit trail naming the operator."""

from __future__ import annotations

from pathlib import Path

from shared import state
from shared.db import connect
from tests.test_api import TOKEN_A, _start, _tokens_file
from workers.dispatch.machine import AGENTS

AGENT = {"name": "summarizer", "endpoint": "http://127.0.0.1:9/agent", "category": "summarize",
         "tags": ["fr", "en"], "skill_level": 3, "reputation": 0.7}  # fmt: skip


def test_agents_are_registered_updated_and_disabled_by_operators_only(tmp_path: Path) -> None:
    db = tmp_path / "node.db"
    connect(db).close()
    api = _start(db, HODLAI_API_TOKENS_FILE=str(_tokens_file(tmp_path)))
    auth = {"Authorization": f"Bearer {TOKEN_A}"}
    try:
        with api.client() as client:
            refused = client.post("/api/dispatch/agents", json=AGENT)  # a read token
            assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
            created = client.post("/api/dispatch/agents", json=AGENT, headers=auth)
            assert created.status_code == 200, created.text
            agent_id = created.json()["agent_id"]
            twice = client.post("/api/dispatch/agents", json=AGENT, headers=auth)
            assert twice.status_code == 422 and "registered already" in twice.json()["message"]
            secret = client.post(
                "/api/dispatch/agents",
                headers=auth,
                json={**AGENT, "endpoint": "http://u:pw@127.0.0.1:9/x"},
            )
            assert secret.status_code == 422 and "pw" not in secret.text
            changed = client.post(f"/api/dispatch/agents/{agent_id}", headers=auth,
                                  json={"skill_level": 7})  # fmt: skip
            assert changed.status_code == 200
            off = client.post(f"/api/dispatch/agents/{agent_id}/disable", headers=auth)
            assert off.json()["status"] == "DISABLED"
            again = client.post(f"/api/dispatch/agents/{agent_id}/disable", headers=auth)
            assert again.status_code == 409
            (listed,) = client.get("/api/dispatch/agents").json()["agents"]
            assert (listed["status"], listed["skill_level"], listed["tags"]) == (
                "DISABLED", 7, ["en", "fr"])  # fmt: skip
            assert client.get("/api/dispatch/jobs").json() == {"jobs": []}
            missing = client.get("/api/dispatch/jobs/nope")
            assert missing.status_code == 404 and missing.json()["error"] == "not_found"
            cancel = client.post("/api/dispatch/jobs/nope/cancel")
            assert cancel.status_code == 403
            figures = client.get("/api/dispatch/stats").json()
            assert figures["jobs"]["OPEN"] == 0 and figures["agents"] == []
    finally:
        api.stop()
    conn = connect(db)
    trail = [(h["from_status"], h["to_status"], h["actor"], h["note"])
             for h in state.history(conn, AGENTS, agent_id)]  # fmt: skip
    assert trail == [
        (None, "ACTIVE", "operator:api:alice", "registered"),
        ("ACTIVE", "ACTIVE", "operator:api:alice", "updated: skill_level"),
        ("ACTIVE", "DISABLED", "operator:api:alice", "disabled"),
    ]
