"""The reference remote queue (``hodlai mock-queue``): the contract of docs/API.md ("The
remote queue"), strict, in memory.

Guarantees, which the tests and the benchmark count on:

- Every call needs ``Authorization: Bearer <token>``; anything else is 401 (counted).
- A fetched job stays hidden for its visibility lease; unacknowledged, it is handed out
  again afterwards (``deliveries`` + 1) with a new receipt. An acknowledged job is never
  handed out again.
- A job has at most one outcome (a result or a failure). Posting it again with the same
  ``Idempotency-Key`` and the same body is a replay: 200, the first answer, counted as a
  replay. Any other second outcome is refused (409 ``already_finished``, or 422
  ``idempotency_key_reused`` for the same key with another body) and counted in
  ``second_deliveries``: the figure exactly-once delivery must keep at zero.
"""

from __future__ import annotations

import hashlib
import json
import random
import secrets
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

from workers.dispatch.mock.http import Request, Response

#: The result schema of the generated jobs (and of the mock agents' answers).
ANSWER_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["answer"],
    "properties": {"answer": {"type": "string", "minLength": 1}},
}
CATEGORIES: Final = ("summarize", "translate", "classify")
TAGS: Final = ("en", "fr", "de", "fast", "long")


@dataclass
class QueuedJob:
    job_id: str
    body: dict[str, Any]
    state: str = "visible"  # visible | leased | acked | completed | failed
    receipt: str | None = None
    visible_at: float = 0.0
    deliveries: int = 0
    outcome: dict[str, Any] | None = None


@dataclass
class MockQueue:
    token: str
    jobs: dict[str, QueuedJob] = field(default_factory=dict)
    stats: Counter[str] = field(default_factory=Counter)
    second_by_job: Counter[str] = field(default_factory=Counter)
    clock: Any = time.time

    def add(self, bodies: list[dict[str, Any]]) -> int:
        added = 0
        for body in bodies:
            job_id = str(body.get("id") or uuid.uuid4())
            if job_id not in self.jobs:
                self.jobs[job_id] = QueuedJob(job_id, body)
                added += 1
        self.stats["enqueued"] += added
        return added

    async def handle(self, request: Request) -> Response:  # noqa: PLR0911 -- one route each
        presented = request.headers.get("authorization", "").removeprefix("Bearer ")
        if not secrets.compare_digest(presented.encode(), self.token.encode()):
            self.stats["unauthorized"] += 1
            return Response(401, {"error": "unauthorized", "message": "bad bearer token"})
        path, method = request.path.rstrip("/"), request.method
        if method == "POST" and path == "/v1/jobs/fetch":
            return self._fetch(request.json() or {})
        if method == "POST" and path == "/v1/jobs/ack":
            return self._ack(request.json() or {})
        if method == "POST" and path.startswith("/v1/jobs/"):
            job_id, _, kind = path.removeprefix("/v1/jobs/").rpartition("/")
            if kind in ("result", "failure"):
                return self._outcome(job_id, kind, request)
        if method == "POST" and path == "/v1/admin/jobs":
            return Response(200, {"added": self.add(list(request.json()["jobs"]))})
        if method == "GET" and path == "/v1/admin/stats":
            return Response(200, self.snapshot())
        if method == "GET" and path == "/v1/admin/outcomes":
            return Response(200, {j.job_id: j.outcome for j in self.jobs.values() if j.outcome})
        return Response(404, {"error": "not_found", "message": f"no route {method} {path}"})

    def _fetch(self, body: dict[str, Any]) -> Response:
        limit = max(0, min(int(body.get("max", 10)), 1000))
        visibility = max(0.1, float(body.get("visibility_s", 30.0)))
        now = self.clock()
        out: list[dict[str, Any]] = []
        for job in self.jobs.values():
            if len(out) >= limit:
                break
            free = job.state == "visible" or (job.state == "leased" and job.visible_at <= now)
            if not free:
                continue
            job.state, job.receipt = "leased", uuid.uuid4().hex
            job.visible_at, job.deliveries = now + visibility, job.deliveries + 1
            out.append({"id": job.job_id, "receipt": job.receipt, "deliveries": job.deliveries,
                        "job": job.body})  # fmt: skip
        self.stats["fetches"] += 1
        self.stats["handed_out"] += len(out)
        self.stats["redelivered"] += sum(1 for j in out if int(j["deliveries"]) > 1)
        return Response(200, {"jobs": out})

    def _ack(self, body: dict[str, Any]) -> Response:
        by_receipt = {j.receipt: j for j in self.jobs.values() if j.receipt}
        acked, stale = [], []
        for receipt in body.get("receipts", []):
            job = by_receipt.get(receipt)
            if job is None or job.state not in ("leased", "acked", "completed", "failed"):
                stale.append(receipt)
                continue
            if job.state == "leased":
                job.state = "acked"
            acked.append(job.job_id)
        self.stats["acks"] += len(acked)
        self.stats["stale_acks"] += len(stale)
        return Response(200, {"acked": acked, "stale": stale})

    def _outcome(self, job_id: str, kind: str, request: Request) -> Response:  # noqa: PLR0911
        job = self.jobs.get(job_id)
        if job is None:
            self.stats["unknown_job_posts"] += 1
            return Response(404, {"error": "not_found", "message": f"no job {job_id}"})
        key = request.headers.get("idempotency-key", "")
        if not key:
            self.stats["posts_without_key"] += 1
            return Response(400, {"error": "idempotency_key_required",
                                  "message": "send an Idempotency-Key header"})  # fmt: skip
        body = request.json()
        if (
            not isinstance(body, dict)
            or (kind == "result" and "result" not in body)
            or (kind == "failure" and not body.get("reason"))
        ):
            self.stats["malformed_posts"] += 1
            return Response(422, {"error": "invalid_body", "message": f"not a {kind} body"})
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        if job.outcome is None:
            job.outcome = {"kind": kind, "key": key, "digest": digest, "at": self.clock(),
                           "body": body}  # fmt: skip
            job.state = "completed" if kind == "result" else "failed"
            self.stats["completed" if kind == "result" else "failed"] += 1
            return Response(200, {"status": "accepted", "replay": False})
        if job.outcome["key"] == key and job.outcome["digest"] == digest:
            self.stats["replays"] += 1
            return Response(200, {"status": "accepted", "replay": True})
        self.stats["second_deliveries"] += 1
        self.second_by_job[job_id] += 1
        if job.outcome["key"] == key:
            return Response(422, {"error": "idempotency_key_reused",
                                  "message": "this key was used with another body"})  # fmt: skip
        return Response(
            409,
            {
                "error": "already_finished",
                "message": f"job {job_id} already has a {job.outcome['kind']}",
            },
        )

    def snapshot(self) -> dict[str, Any]:
        states = Counter(j.state for j in self.jobs.values())
        return {"jobs": len(self.jobs), "states": dict(states), **dict(self.stats),
                "second_deliveries": self.stats["second_deliveries"],
                "second_by_job": dict(self.second_by_job)}  # fmt: skip


def generate_jobs(
    count: int, *, seed: int = 0, deadline_s: float = 60.0, invalid: int = 0,
    categories: tuple[str, ...] = CATEGORIES, now: float | None = None, prefix: str = "job",
) -> list[dict[str, Any]]:  # fmt: skip
    """``count`` valid jobs (and ``invalid`` more that fail validation in assorted ways)."""
    rng = random.Random(seed)
    at = time.time() if now is None else now
    jobs = [
        {
            "id": f"{prefix}-{n:05d}",
            "category": categories[n % len(categories)],
            "tags": sorted(rng.sample(("en", "fr"), 1)),
            "skill_level": rng.randint(0, 3),
            "input": {"text": f"document {n}: " + " ".join(rng.choices(TAGS, k=8))},
            "result_schema": ANSWER_SCHEMA,
            "deadline": at + deadline_s,
        }
        for n in range(count)
    ]
    broken: list[dict[str, Any]] = [
        {"id": "", "category": categories[0]},  # no deadline, no schema
        {"category": categories[0], "deadline": at - 5, "result_schema": ANSWER_SCHEMA},  # past
        {"category": categories[0], "deadline": at + 60, "result_schema": {"type": 12}},
        {
            "category": categories[0],
            "deadline": at + 60,
            "result_schema": ANSWER_SCHEMA,
            "tags": "en",
        },
    ]
    for n in range(invalid):
        job = dict(broken[n % len(broken)])
        job["id"] = f"{prefix}-invalid-{n:03d}"
        jobs.append(job)
    return jobs
