"""Settings of ``hodlai dispatcher`` (``HODLAI_DISPATCH_…``, plus the core's ``HODLAI_…``).

The seed's names and defaults are kept: ``DEFAULT_AGENT_TIMEOUT`` (30 s; the seed writes
30000 ms), ``MAX_AGENTS_PER_JOB`` (3), ``EXECUTION_RETRY_COUNT`` (2), each with the
``HODLAI_DISPATCH_`` prefix; the remote queue is also found under the seed's own
``REMOTE_QUEUE_URL`` / ``REMOTE_QUEUE_TOKEN``. The queue token is a secret: it is never
echoed in an error, a log or an API answer.
"""

from __future__ import annotations

import textwrap
from typing import Annotated, Final, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from shared.config import ENV_PREFIX, CoreSettings, redact_url
from shared.errors import ConfigError

QUEUE_URL_ENV: Final = "HODLAI_DISPATCH_QUEUE_URL"
QUEUE_TOKEN_ENV: Final = "HODLAI_DISPATCH_QUEUE_TOKEN"
#: every category is hedged
ALL_CATEGORIES: Final = "*"


class DispatchSettings(CoreSettings):
    # The remote queue's base URL (docs/API.md, "The remote queue"), and its bearer token
    # (sent on every call, never logged). The seed's REMOTE_QUEUE_URL / REMOTE_QUEUE_TOKEN
    # work too: separate fields (not one field with AliasChoices), so that an error names
    # exactly the variable that was set; ``queue_url`` / ``queue_token`` pick the one given.
    dispatch_queue_url: str = ""
    dispatch_queue_token: SecretStr = SecretStr("")
    remote_queue_url: str = Field(default="", validation_alias="REMOTE_QUEUE_URL")
    remote_queue_token: SecretStr = Field(
        default=SecretStr(""), validation_alias="REMOTE_QUEUE_TOKEN"
    )
    # Seconds one agent call may take (the seed's DEFAULT_AGENT_TIMEOUT, 30000 ms); a job's
    # deadline cuts it shorter.
    dispatch_default_agent_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description=(
            "seconds one agent call may take (the job's deadline cuts it shorter); a call"
            " that hits it is sent a cancel"
        ),
    )
    # Agents called per job (the seed's MAX_AGENTS_PER_JOB); hedged jobs call them in turn.
    dispatch_max_agents_per_job: int = Field(
        default=3, ge=1, le=20, description="agents called per job (per round)"
    )
    # Further rounds, with the next-ranked agents, after every agent of a round failed (the
    # seed's EXECUTION_RETRY_COUNT).
    dispatch_execution_retry_count: int = Field(
        default=2,
        ge=0,
        le=10,
        description=(
            "further rounds, with the next-ranked agents, after every agent of a round failed"
        ),
    )
    # Seconds between health checks of each active agent (GET {endpoint}/health): 15 s notices
    # a dead agent within a few jobs' time and costs one request per agent per 15 s.
    dispatch_health_interval_s: float = Field(
        default=15.0,
        gt=0,
        le=3600,
        description="seconds between health checks (GET {endpoint}/health) of each active agent",
    )
    # Seconds a health check may take: a healthy agent answers in milliseconds.
    dispatch_health_timeout_s: float = Field(
        default=2.0, gt=0, le=60, description="seconds a health check may take"
    )
    # Consecutive failed calls (error, garbage, timeout) that open an agent's breaker.
    dispatch_breaker_failures: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="consecutive failed calls that open an agent's circuit breaker",
    )
    # Seconds an open breaker keeps the agent out before one probe call goes through.
    dispatch_breaker_cooldown_s: float = Field(
        default=30.0,
        gt=0,
        le=86_400,
        description="seconds an open breaker keeps the agent out before one probe call",
    )
    # Categories dispatched in hedged mode (comma-separated; "*" = all): the best agent
    # first, the next one only after the category's observed p95 latency.
    dispatch_hedged_categories: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "categories dispatched hedged (comma-separated, * = all): the best agent "
            "first, the next after the category's p95 latency"
        ),
    )
    # Extra calls a hedged job makes at most beyond the first (failovers after an error
    # count too): 1 bounds the extra load of hedging at one call per job.
    dispatch_hedge_max_extra: int = Field(
        default=1,
        ge=0,
        le=19,
        description="extra calls a hedged job makes at most beyond the first",
    )
    # Quantile of the category's latencies after which the backup call goes out (Dean &
    # Barroso, "The Tail at Scale": the 95th percentile, ~5 % extra load).
    dispatch_hedge_quantile: float = Field(
        default=0.95,
        gt=0,
        lt=1,
        description=(
            "latency quantile of the category after which a hedged job's backup call goes out"
        ),
    )
    # Latencies a category needs before its own quantile is trusted; until then the
    # initial delay below is used.
    dispatch_hedge_min_samples: int = Field(
        default=20,
        ge=1,
        le=100_000,
        description="latencies a category needs before its own quantile is used",
    )
    # Milliseconds before the backup call of a category without enough samples.
    dispatch_hedge_initial_delay_ms: float = Field(
        default=250.0,
        ge=0,
        le=600_000,
        description="milliseconds before the backup call while a category has too few samples",
    )
    # Jobs fetched per call to the queue: one call per 100 jobs keeps the queue's share of
    # the work small at hundreds of jobs a second.
    dispatch_fetch_batch: int = Field(
        default=100, ge=1, le=1000, description="jobs fetched per call to the queue"
    )
    # Seconds the queue hides a fetched job before handing it out again if we do not
    # acknowledge it (we acknowledge right after recording it).
    dispatch_visibility_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description=(
            "seconds the queue hides a fetched job before handing it out again unless acknowledged"
        ),
    )
    # Jobs executed at once: enough to keep 200+ jobs/s flowing with 2 s tail latencies.
    dispatch_max_in_flight: int = Field(
        default=512, ge=1, le=10_000, description="jobs executed at once"
    )
    # Seconds of the dispatcher's lease on a job, extended while it works on it. Only a
    # dispatcher that died leaves one behind; a restarted one takes such leases over at once
    # (it holds the database's dispatcher role lock, so the old holder is gone).
    dispatch_lease_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="seconds of the dispatcher's lease on a job, extended while it works on it",
    )
    # Seconds between queue polls while the queue has nothing for us.
    dispatch_poll_idle_s: float = Field(
        default=0.5, gt=0, le=60, description="seconds between queue polls while the queue is empty"
    )
    # A job whose deadline is further away than this is refused as invalid (a typo in
    # milliseconds instead of seconds would otherwise hold it for decades).
    dispatch_max_deadline_s: float = Field(
        default=7 * 86_400.0,
        gt=0,
        description="a job whose deadline is further away than this many seconds is refused",
    )
    # Bytes of a job's input, and of its result schema, accepted at most.
    dispatch_max_input_bytes: int = Field(
        default=256 * 1024,
        ge=1024,
        description=(
            "UTF-8 bytes of a job's input (and of its result_schema) as compact JSON, at most"
        ),
    )
    # Bytes of an agent's answer read at most; a larger one is an error, read no further.
    dispatch_max_result_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        description="bytes of an agent's answer read at most; a larger one is an error",
    )
    # Seconds for an observation's weight in an agent's score to halve: an hour lets the
    # score follow an agent that got worse today without forgetting last week at once.
    dispatch_score_half_life_s: float = Field(
        default=3600.0,
        gt=0,
        description="seconds for an observation's weight in an agent's score to halve",
    )
    # Seconds between attempts to deliver an outcome the queue did not accept yet.
    dispatch_delivery_retry_s: float = Field(
        default=2.0,
        gt=0,
        le=600,
        description="seconds between attempts to deliver an outcome the queue did not accept yet",
    )
    # Seconds between re-reads of the agents table (agents registered through the API or CLI).
    dispatch_agents_refresh_s: float = Field(
        default=2.0,
        gt=0,
        le=600,
        description=(
            "seconds between re-reads of the agent registry (agents added through the API or CLI)"
        ),
    )
    # Seconds before a job no agent could take is matched again (until its deadline).
    dispatch_rematch_s: float = Field(
        default=1.0,
        gt=0,
        le=600,
        description=(
            "seconds before a job whose matching agents are all unavailable is matched again"
        ),
    )

    @field_validator("dispatch_hedged_categories", mode="before")
    @classmethod
    def _split_categories(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("dispatch_queue_url", "remote_queue_url")
    @classmethod
    def _check_queue_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not value.startswith(("http://", "https://")):
            raise ValueError(f"not an http(s) URL: {redact_url(value)!r}")
        return value

    @model_validator(mode="after")
    def _one_queue(self) -> Self:
        both = self.dispatch_queue_url and self.remote_queue_url
        if both and self.dispatch_queue_url != self.remote_queue_url:
            raise ValueError(
                f"{QUEUE_URL_ENV} and REMOTE_QUEUE_URL name different queues "
                f"({redact_url(self.dispatch_queue_url)} and {redact_url(self.remote_queue_url)}): "
                "set one of them"
            )
        return self

    @property
    def queue_url(self) -> str:
        return self.dispatch_queue_url or self.remote_queue_url

    @property
    def queue_token(self) -> str:
        return (
            self.dispatch_queue_token.get_secret_value()
            or self.remote_queue_token.get_secret_value()
        )

    def require_queue(self) -> None:
        """Raise ConfigError unless a queue URL and token are set (under either name)."""
        missing = []
        if not self.queue_url:
            missing.append(f"{QUEUE_URL_ENV} (or REMOTE_QUEUE_URL)")
        if not self.queue_token:
            missing.append(f"{QUEUE_TOKEN_ENV} (or REMOTE_QUEUE_TOKEN)")
        if missing:
            raise ConfigError("missing required setting(s): " + ", ".join(missing))

    def hedged(self, category: str) -> bool:
        cats = self.dispatch_hedged_categories
        return ALL_CATEGORIES in cats or category in cats


#: Core settings a dispatcher operator may set: (field, environment variable, meaning).
_CORE_HELP: Final = (
    ("db_path", "HODLAI_DB_PATH", "the node's SQLite database; created and migrated if missing"),
    ("metrics_port", "HODLAI_METRICS_PORT", "port of /metrics and /healthz (0: not served)"),
    ("log_level", "LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR"),
)
_QUEUE_FIELDS: Final = frozenset(
    {"dispatch_queue_url", "dispatch_queue_token", "remote_queue_url", "remote_queue_token"}
)
_HELP_WIDTH: Final = 92


def _entry(name: str, default: object, meaning: str) -> str:
    shown = (",".join(default) or "none") if isinstance(default, list) else default
    body = textwrap.fill(meaning, _HELP_WIDTH, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return f"  {name} [{shown}]\n{body}"


def settings_help() -> str:
    """The settings of ``hodlai dispatcher``, for its ``--help``: the required ones, then every
    other one with its default and meaning (the fields' descriptions: a setting without one
    fails tests/test_dispatch_newcomer.py)."""
    fields = DispatchSettings.model_fields
    lines = [
        "required settings (environment or .env):",
        f"  {QUEUE_URL_ENV} (or REMOTE_QUEUE_URL)",
        "      the remote queue's base URL, http(s)://host[:port][/path] (docs/API.md)",
        f"  {QUEUE_TOKEN_ENV} (or REMOTE_QUEUE_TOKEN)",
        "      the queue's bearer token (a secret: never logged)",
        "",
        "core settings [default]:",
    ]
    lines += [_entry(env, fields[name].get_default(call_default_factory=True), meaning)
              for name, env, meaning in _CORE_HELP]  # fmt: skip
    lines += ["", "dispatcher settings [default]:"]
    for name, field in fields.items():
        if name.startswith("dispatch_") and name not in _QUEUE_FIELDS:
            default = field.get_default(call_default_factory=True)
            lines.append(_entry(f"{ENV_PREFIX}{name.upper()}", default, field.description or ""))
    lines += [
        "",
        "Register agents first (hodlai agents register --help): the dispatcher calls an agent",
        "only after one passing health check. More: docs/OPERATIONS.md, 'The dispatcher'.",
    ]
    return "\n".join(lines)
