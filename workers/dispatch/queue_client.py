"""The client of the remote queue (contract: docs/API.md, "The remote queue").

Every call carries ``Authorization: Bearer <token>``; a delivery (result or failure)
carries the ``Idempotency-Key`` fixed when the outcome was decided, so posting it again
after a crash is the same delivery, never a second one. Errors are translated here:
transport failures and 5xx are QueueUnavailableError (retry later), 401/403 a
QueueAuthError naming the token setting, other refusals a QueueRejectedError with the
status. No error or log carries more of the queue's URL than scheme, host and port.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import aiohttp
import structlog

from shared.config import redact_url
from workers.dispatch.errors import QueueAuthError, QueueRejectedError, QueueUnavailableError
from workers.dispatch.settings import QUEUE_TOKEN_ENV

log = structlog.get_logger(__name__)

FETCH_PATH: Final = "/v1/jobs/fetch"
ACK_PATH: Final = "/v1/jobs/ack"
# Seconds one queue call may take: the queue answers in milliseconds; 10 s rides out a
# pause without holding the dispatcher's loop for long.
QUEUE_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True)
class Delivered:
    replay: bool


class QueueClient:
    def __init__(self, base_url: str, token: str, client: aiohttp.ClientSession) -> None:
        self._base = base_url.rstrip("/")
        self._shown = redact_url(base_url)
        self._headers = {"Authorization": f"Bearer {token}"}
        self._client = client

    async def fetch(self, limit: int, visibility_s: float) -> list[Any]:
        body = await self._post(FETCH_PATH, {"max": limit, "visibility_s": visibility_s})
        jobs = body.get("jobs") if isinstance(body, dict) else None
        if not isinstance(jobs, list):
            raise QueueUnavailableError(f"the queue at {self._shown} answered a fetch without jobs")
        return jobs

    async def ack(self, receipts: list[str]) -> list[str]:
        """Acknowledge; returns the receipts the queue called stale (lease expired)."""
        body = await self._post(ACK_PATH, {"receipts": receipts})
        stale = body.get("stale", []) if isinstance(body, dict) else []
        return [str(s) for s in stale] if isinstance(stale, list) else []

    async def post_result(self, job_id: str, key: str, body: dict[str, Any]) -> Delivered:
        return await self._deliver(job_id, "result", key, body)

    async def post_failure(self, job_id: str, key: str, body: dict[str, Any]) -> Delivered:
        return await self._deliver(job_id, "failure", key, body)

    async def _deliver(self, job_id: str, kind: str, key: str, body: dict[str, Any]) -> Delivered:
        answer = await self._post(
            f"/v1/jobs/{quote(job_id, safe='')}/{kind}", body, headers={"Idempotency-Key": key}
        )
        return Delivered(replay=bool(isinstance(answer, dict) and answer.get("replay")))

    async def _post(
        self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> Any:
        try:
            async with asyncio.timeout(QUEUE_TIMEOUT_S):
                async with self._client.post(
                    self._base + path, data=json.dumps(body),
                    headers={**self._headers, "Content-Type": "application/json",
                             **(headers or {})},
                ) as response:  # fmt: skip
                    status = response.status
                    raw = await response.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise QueueUnavailableError(
                f"the queue at {self._shown} did not answer ({type(exc).__name__})"
            ) from exc
        if status in (401, 403):
            raise QueueAuthError(
                f"the queue at {self._shown} refused our token ({status}): check {QUEUE_TOKEN_ENV}"
            )
        if status >= 500 or status == 429:
            raise QueueUnavailableError(f"the queue at {self._shown} answered {status}")
        try:
            answer = json.loads(raw)
        except ValueError as exc:
            raise QueueUnavailableError(
                f"the queue at {self._shown} answered {status} with a body that is not JSON"
            ) from exc
        if status >= 400:
            code = str(answer.get("error", "")) if isinstance(answer, dict) else ""
            message = str(answer.get("message", ""))[:200] if isinstance(answer, dict) else ""
            raise QueueRejectedError(
                f"the queue refused {path.rsplit('/', 1)[-1]} ({status} {code}): {message}",
                status=status, code=code,
            )  # fmt: skip
        return answer
