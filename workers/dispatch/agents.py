"""The agent registry: register, update, disable and enable agents (CLI and API), and read
them. Status changes go through shared.state (machine ``dispatch.agent``); an update of an
agent's other columns leaves an audit row in the same transaction.

A new agent, a re-enabled one and one whose endpoint changed have ``health = 'unknown'``: the
dispatcher calls them only after one passing health check (workers/dispatch/matcher.py).

An endpoint is a plain ``http(s)://host[:port][/path]`` base URL, without userinfo, query
or fragment: those are where credentials hide, and the endpoint is shown in the API.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
import uuid
from typing import Any, Final
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator

from shared import state
from shared.db import atomic
from shared.errors import InvalidRequestError, NotFoundError
from workers.dispatch.machine import AGENTS, AgentStatus

_WORD: Final = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")
_AGENT_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


def check_endpoint(value: str) -> str:
    value = value.strip().rstrip("/")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"endpoint is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("endpoint must be an http(s) URL with a host")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError("endpoint may not carry userinfo, a query or a fragment (credentials)")
    del port
    return value


class AgentSpec(BaseModel):
    """What an operator gives to register an agent."""

    agent_id: str | None = Field(default=None, description="default: a new UUID")
    name: str = Field(min_length=1, max_length=128)
    endpoint: str = Field(description="base URL: POST {endpoint}/execute, GET {endpoint}/health")
    category: str
    tags: list[str] = Field(default_factory=list, max_length=64)
    skill_level: int = Field(default=0, ge=0, le=100)
    reputation: float = Field(default=0.5, ge=0, le=1, description="0..1, the operator's prior")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        return check_endpoint(value)

    @field_validator("category")
    @classmethod
    def _category(cls, value: str) -> str:
        if not _WORD.match(value):
            raise ValueError("a lower-case word of 1..64 characters")
        return value

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        for tag in value:
            if not _WORD.match(tag):
                raise ValueError(f"tag {tag[:40]!r} is not a lower-case word of 1..64 characters")
        return sorted(set(value))

    @field_validator("agent_id")
    @classmethod
    def _agent_id(cls, value: str | None) -> str | None:
        if value is not None and not _AGENT_ID.match(value):
            raise ValueError("1..128 letters, digits and _ . : -")
        return value


class AgentChanges(BaseModel):
    """An update: only the fields given change."""

    name: str | None = Field(default=None, min_length=1, max_length=128)
    endpoint: str | None = None
    category: str | None = None
    tags: list[str] | None = Field(default=None, max_length=64)
    skill_level: int | None = Field(default=None, ge=0, le=100)
    reputation: float | None = Field(default=None, ge=0, le=1)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return None if value is None else check_endpoint(value)

    @field_validator("category")
    @classmethod
    def _category(cls, value: str | None) -> str | None:
        return None if value is None else AgentSpec._category(value)

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else AgentSpec._tags(value)


def register(
    conn: sqlite3.Connection, spec: AgentSpec, *, actor: str, now: float | None = None
) -> str:
    agent_id = spec.agent_id or str(uuid.uuid4())
    row = {
        "agent_id": agent_id, "name": spec.name, "endpoint": spec.endpoint,
        "tags": json.dumps(spec.tags), "category": spec.category,
        "skill_level": spec.skill_level, "reputation": spec.reputation,
    }  # fmt: skip
    with atomic(conn):
        clash = conn.execute(
            "SELECT agent_id FROM agents WHERE agent_id = ? OR endpoint = ?",
            (agent_id, spec.endpoint),
        ).fetchone()
        if clash is not None:
            raise InvalidRequestError(
                f"an agent with this id or endpoint is registered already ({clash[0]})"
            )
        state.insert(conn, AGENTS, row, status=AgentStatus.ACTIVE, actor=actor, note="registered",
                     now=now)  # fmt: skip
    return agent_id


def update(
    conn: sqlite3.Connection, agent_id: str, changes: AgentChanges, *, actor: str,
    now: float | None = None,
) -> None:  # fmt: skip
    fields = changes.model_dump(exclude_none=True)
    if not fields:
        raise InvalidRequestError("nothing to change")
    if "tags" in fields:
        fields["tags"] = json.dumps(fields["tags"])
    at = time.time() if now is None else now
    with atomic(conn):
        current = get(conn, agent_id)
        if "endpoint" in fields:
            clash = conn.execute(
                "SELECT agent_id FROM agents WHERE endpoint = ? AND agent_id != ?",
                (fields["endpoint"], agent_id),
            ).fetchone()
            if clash is not None:
                raise InvalidRequestError(f"agent {clash[0]} has this endpoint already")
        assignments = ", ".join(f"{column} = ?" for column in fields)  # names from the model
        if "endpoint" in fields and fields["endpoint"] != current["endpoint"]:
            assignments += ", health = 'unknown'"  # another server: check it before calling
        conn.execute(
            f"UPDATE agents SET {assignments}, updated_at = ? WHERE agent_id = ?",
            (*fields.values(), at, agent_id),
        )
        status = current["status"]
        state.audit(conn, AGENTS, agent_id, status, status, actor=actor,
                    note="updated: " + ", ".join(sorted(fields)), at=at)  # fmt: skip


def set_enabled(
    conn: sqlite3.Connection, agent_id: str, enabled: bool, *, actor: str,
    now: float | None = None,
) -> None:  # fmt: skip
    get(conn, agent_id)
    frm, to = (
        (AgentStatus.DISABLED, AgentStatus.ACTIVE) if enabled
        else (AgentStatus.ACTIVE, AgentStatus.DISABLED)
    )  # fmt: skip
    with atomic(conn):
        state.transition(conn, AGENTS, agent_id, frm, to, actor=actor,
                         note="enabled" if enabled else "disabled", now=now)  # fmt: skip
        if enabled:  # it may have changed while disabled: check it before calling it
            conn.execute("UPDATE agents SET health = 'unknown' WHERE agent_id = ?", (agent_id,))


def get(conn: sqlite3.Connection, agent_id: str) -> sqlite3.Row:
    row = conn.execute("SELECT * FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
    if row is None:
        raise NotFoundError(f"no agent {agent_id}")
    return row  # type: ignore[no-any-return]


def list_agents(conn: sqlite3.Connection, *, status: str | None = None) -> list[sqlite3.Row]:
    if status is None:
        return conn.execute("SELECT * FROM agents ORDER BY created_at, agent_id").fetchall()
    return conn.execute(
        "SELECT * FROM agents WHERE status = ? ORDER BY created_at, agent_id", (status,)
    ).fetchall()


def public(row: sqlite3.Row) -> dict[str, Any]:
    """An agent row as the API and ``--json`` show it (tags as a list; no lease columns)."""
    out = {k: row[k] for k in row.keys() if k not in ("lease_owner", "lease_until")}  # noqa: SIM118 -- sqlite3.Row
    out["tags"] = json.loads(out["tags"])
    return out
