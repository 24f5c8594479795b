"""Validation of a fetched job: its shape, its deadline, its requirements, its result
schema. A job that fails any check is an :class:`InvalidJobError` with the reason; the
dispatcher records it as FAILED, posts the reason to the queue and never dispatches it.

Sizes are UTF-8 bytes of the value's compact JSON text (``json.dumps(v, ensure_ascii=False,
separators=(",", ":"))``): what the queue sent for it, give or take its whitespace. Not the
length of an ASCII-escaped dump, where one Chinese character counts six and an emoji twelve.

A result is *valid* when it matches the job's result schema (JSON Schema, draft 2020-12).
Validators are compiled once per distinct schema text (jobs of one kind share one).
"""

from __future__ import annotations

import json
import math
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final

import jsonschema

from workers.dispatch.errors import InvalidJobError

# Characters of a queue job id kept as our key; longer ids are refused (not truncated: two
# jobs would share a key).
MAX_JOB_ID_CHARS: Final = 256
# A category or tag is a short lower-case word, so matching is exact and cheap.
_WORD: Final = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")
MAX_TAGS: Final = 32
MAX_SKILL_LEVEL: Final = 100
# A job needs at least this many seconds before its deadline to be worth dispatching.
MIN_TIME_LEFT_S: Final = 0.05
# Distinct result schemas whose compiled validators are kept.
VALIDATOR_CACHE: Final = 1024


@dataclass(frozen=True)
class Job:
    """A fetched job that passed validation."""

    job_id: str
    category: str
    tags: tuple[str, ...]
    skill_level: int
    input: Any
    result_schema: dict[str, Any]
    deadline: float
    receipt: str
    deliveries: int

    def row(self, *, fetched_at: float) -> dict[str, Any]:
        return {
            "job_id": self.job_id, "category": self.category, "tags": json.dumps(self.tags),
            "skill_level": self.skill_level, "input": json.dumps(self.input),
            "result_schema": json.dumps(self.result_schema, sort_keys=True),
            "deadline": self.deadline, "queue_deliveries": self.deliveries,
            "fetched_at": fetched_at,
        }  # fmt: skip


@dataclass(frozen=True)
class Envelope:
    """What the queue handed out: its id and receipt, and the job body (not yet checked)."""

    job_id: str
    receipt: str
    deliveries: int
    body: Any


def parse_envelope(item: Any) -> Envelope:
    """The queue's wrapper around one job; raises ValueError when even that is broken (the
    job cannot be failed back without an id: it is logged and left to the queue)."""
    if not isinstance(item, dict):
        raise ValueError("a fetched item is not an object")
    job_id, receipt = item.get("id"), item.get("receipt")
    if not isinstance(job_id, str) or not 0 < len(job_id) <= MAX_JOB_ID_CHARS:
        raise ValueError(f"a fetched item has no usable id (1..{MAX_JOB_ID_CHARS} characters)")
    if not isinstance(receipt, str) or not receipt:
        raise ValueError(f"fetched job {job_id!r} has no receipt")
    deliveries = item.get("deliveries", 1)
    deliveries = deliveries if isinstance(deliveries, int) and deliveries > 0 else 1
    return Envelope(job_id, receipt, deliveries, item.get("job"))


def validate(  # noqa: PLR0912 -- one check per rule, each with its own message
    envelope: Envelope, *, now: float, max_deadline_s: float, max_input_bytes: int
) -> Job:
    body = envelope.body
    if not isinstance(body, dict):
        raise InvalidJobError("the job is not a JSON object")
    category = body.get("category")
    if not isinstance(category, str) or not _WORD.match(category):
        raise InvalidJobError(
            f"category must be a lower-case word of 1..64 characters, got {_show(category)}"
        )
    tags = body.get("tags", [])
    if not isinstance(tags, list) or len(tags) > MAX_TAGS:
        raise InvalidJobError(f"tags must be a list of at most {MAX_TAGS} words")
    for tag in tags:
        if not isinstance(tag, str) or not _WORD.match(tag):
            raise InvalidJobError(f"tag {_show(tag)} is not a lower-case word of 1..64 characters")
    skill = body.get("skill_level", 0)
    if isinstance(skill, bool) or not isinstance(skill, int) or not 0 <= skill <= MAX_SKILL_LEVEL:
        raise InvalidJobError(f"skill_level must be a whole number 0..{MAX_SKILL_LEVEL}")
    deadline = body.get("deadline")
    if isinstance(deadline, bool) or not isinstance(deadline, int | float):
        raise InvalidJobError("deadline (unix seconds) is missing or not a number")
    deadline = float(deadline)
    if not math.isfinite(deadline):
        raise InvalidJobError("deadline is not a finite number")
    if deadline - now < MIN_TIME_LEFT_S:
        raise InvalidJobError(
            f"deadline passed {now - deadline:.1f} s before the job was fetched", code="expired"
        )
    if deadline - now > max_deadline_s:
        raise InvalidJobError(
            f"deadline is {(deadline - now) / 86_400:.0f} days away, beyond the "
            f"{max_deadline_s / 86_400:.0f}-day limit (milliseconds instead of seconds?)"
        )
    if "input" not in body:
        raise InvalidJobError("input is missing")
    size = json_size(body["input"])
    if size > max_input_bytes:
        raise InvalidJobError(
            f"input is {size} bytes of UTF-8 JSON, larger than the {max_input_bytes}-byte limit"
        )
    schema = body.get("result_schema")
    if not isinstance(schema, dict):
        raise InvalidJobError("result_schema (a JSON Schema object) is missing")
    size = json_size(schema)
    if size > max_input_bytes:
        raise InvalidJobError(
            f"result_schema is {size} bytes of UTF-8 JSON, larger than the "
            f"{max_input_bytes}-byte limit"
        )
    text = json.dumps(schema, sort_keys=True)
    try:
        validator_for(text)
    except jsonschema.SchemaError as exc:
        raise InvalidJobError(f"result_schema is not a valid JSON Schema: {exc.message}") from exc
    return Job(
        job_id=envelope.job_id, category=category, tags=tuple(sorted(set(tags))),
        skill_level=skill, input=body["input"], result_schema=schema, deadline=deadline,
        receipt=envelope.receipt, deliveries=envelope.deliveries,
    )  # fmt: skip


def json_size(value: Any) -> int:
    """Bytes of ``value``'s compact JSON text in UTF-8. A lone surrogate (JSON allows
    ``"\\ud800"``) counts the three bytes its escape-free form takes, instead of raising."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return len(text.encode("utf-8", "surrogatepass"))


_validators: OrderedDict[str, Any] = OrderedDict()


def validator_for(schema_text: str) -> Any:
    """The compiled validator of a schema (its JSON text, keys sorted); SchemaError if the
    schema itself is not valid."""
    found = _validators.get(schema_text)
    if found is not None:
        _validators.move_to_end(schema_text)
        return found
    schema = json.loads(schema_text)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    _validators[schema_text] = validator
    while len(_validators) > VALIDATOR_CACHE:
        _validators.popitem(last=False)
    return validator


def result_problem(schema_text: str, result: Any) -> str | None:
    """Why ``result`` does not match the schema (the first error, one line), or None."""
    validator = validator_for(schema_text)
    if validator.is_valid(result):
        return None
    error = next(iter(validator.iter_errors(result)))
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"result outside the job's schema at {where}: {error.message}"[:300]


def _show(value: object) -> str:
    return repr(value)[:80]
