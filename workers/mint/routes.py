"""The mint executor's REST API on the seed's paths (docs/API.md, "AI mint"):

- ``POST /api/ai-agent/chat`` {userAddress, message} → {reply, task}
- ``POST /api/ai-agent/task/{taskId}/fund`` {authorization, signature} → the funding's answer
- ``GET /api/ai-agent/tasks/{userAddress}`` → {tasks}
- ``GET /api/ai-agent/task/{taskId}`` → a task
- ``POST /api/ai-agent/task/{taskId}/cancel`` | ``/retry`` | ``/refund``

Guarantees:

- Chat, fund and the reads are open to end users (no operator token) and rate-limited per
  user address and per client IP (``HODLAI_MINT_RATE_PER_MIN``): a limited call is a 429
  with ``Retry-After``.
- Cancel, retry and refund need the task's user (``{"siwe": {"message", "signature"}}``,
  statement ``hodlai: <action> task <taskId>``, the API's host as domain, the USDC's chain
  id, a client nonce of at least 8 alphanumerics accepted once while the message is valid)
  or an admin token (``Authorization: Bearer``). Another user is a 403.
- The fund route checks everything before anything is recorded (workers/mint/funding.py);
  the same body twice gets the same answer and records nothing new; the relayer of
  ``hodlai mint-executor`` submits it.
- A task's answer never holds a key; errors are the core's JSON errors: 400 with the reason
  as ``error``, 404 unknown task, 409 wrong state.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import sqlite3
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import Annotated, Any, Final

import structlog
from eth_utils.address import is_hex_address, to_checksum_address
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from shared.api.auth import PUBLIC, Access, OperatorIdentity, authenticate, declares
from shared.api.deps import Database
from shared.api.errors import Refusal
from shared.api.siwe import verify_user_proof
from shared.api.tokens import Role
from shared.chain.rpc import RpcClient
from shared.db import atomic, connect
from shared.errors import NotFoundError
from shared.tx import authorizations as ledger
from shared.tx.authorizations import DomainAllowlist, PaymentOrder, sign_authorization
from workers.mint import store
from workers.mint.funding import FundingRefused, check_funding, funding_row, parse_funding
from workers.mint.machine import PaymentStatus, TaskStatus, TransferStatus
from workers.mint.settings import MintSettings
from workers.mint.store import Task
from workers.mint.views import task_public

log = structlog.get_logger(__name__)

ACTOR_USER: Final = "user"
# Seconds a refund authorization stays valid: the relayer submits it within seconds.
REFUND_VALIDITY_S: Final = 3600
_CLIENT_NONCE = re.compile(r"^[A-Za-z0-9]{8,}$")
_bearer = HTTPBearer(auto_error=False, scheme_name="operator")

router = APIRouter(prefix="/api/ai-agent", tags=["ai-agent"])


# --- the context ----------------------------------------------------------------------------


class RateLimiter:
    """At most ``per_min`` calls per key in any 60 s (a sliding window, in memory)."""

    def __init__(self, per_min: int) -> None:
        self._per_min = per_min
        self._calls: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str, *, now: float) -> float | None:
        """Seconds to wait when ``key`` is over its limit (the call is not counted)."""
        with self._lock:
            calls = self._calls.setdefault(key, deque())
            while calls and calls[0] <= now - 60:
                calls.popleft()
            if len(calls) >= self._per_min:
                return 60 - (now - calls[0])
            calls.append(now)
            if len(self._calls) > 100_000:
                self._calls = {k: v for k, v in self._calls.items() if v}
            return None


class MintApi:
    """What the routes share in one API process: settings, the limiter, the keys (loaded on
    first use: only chat and refund sign), the signing allowlist."""

    def __init__(self, settings: MintSettings) -> None:
        self.settings = settings
        self.limiter = RateLimiter(settings.mint_rate_per_min)
        self._keys: Any = None
        self._lock = threading.Lock()
        self._allowlists: dict[int, DomainAllowlist] = {}

    def keys(self) -> Any:
        from workers.mint.keyfile import load_mint_keys

        with self._lock:
            if self._keys is None:
                self._keys = load_mint_keys(self.settings.mint_key_file)
            return self._keys

    def rpc(self) -> RpcClient:
        chain = self.settings.chain(self.settings.mint_chain)
        return RpcClient(list(chain.rpc_urls), chain_id=chain.chain_id)

    def allowlist(self, usdc: str, chain_id: int) -> DomainAllowlist:
        with self._lock:
            found = self._allowlists.get(chain_id)
            if found is None:
                found = DomainAllowlist([(usdc, chain_id)])
                self._allowlists[chain_id] = found
            return found

    def limit(self, request: Request, user: str | None) -> None:
        now = time.time()
        client = request.client.host if request.client else "unknown"
        keys = [f"ip:{client}"] + ([f"user:{user.lower()}"] if user else [])
        for key in keys:
            wait = self.limiter.hit(key, now=now)
            if wait is not None:
                log.warning("mint_rate_limited", key=key.split(":", 1)[0])
                raise Refusal(
                    429,
                    "rate_limited",
                    f"more than {self.settings.mint_rate_per_min} calls a minute; retry later",
                    {"Retry-After": str(max(1, int(wait + 0.999)))},
                )


def _api(request: Request) -> MintApi:
    api: MintApi = request.app.state.mint_api
    return api


Api = Annotated[MintApi, Depends(_api)]


def register(app: FastAPI) -> None:
    """Add the routes (entry point ``hodlai.routers`` ``mint``), unless disabled."""
    from shared.config import load_settings

    settings = load_settings(MintSettings)
    if not settings.mint_enabled:
        log.info("mint_routes_disabled")
        return
    app.state.mint_api = MintApi(settings)
    app.include_router(router)


def _checksum(value: str, what: str) -> str:
    if not is_hex_address(value):
        raise Refusal(400, "invalid_address", f"{what} is not a 20-byte hex address")
    return str(to_checksum_address(value))


def _durable(api: MintApi) -> sqlite3.Connection:
    return connect(api.settings.db_path, durable=True)


# --- chat -----------------------------------------------------------------------------------


class ChatBody(BaseModel):
    userAddress: str = Field(min_length=1, max_length=64)
    message: str = Field(min_length=1, max_length=4000)


@router.post("/chat", dependencies=[PUBLIC], summary="talk to the mint agent")
def chat(request: Request, api: Api, body: ChatBody) -> dict[str, Any]:
    user = _checksum(body.userAddress, "userAddress")
    api.limit(request, user)
    from workers.mint import chat as talk

    conn = _durable(api)
    try:
        history = [
            talk.Turn("assistant" if role == "assistant" else "user", text)
            for role, text in store.turns(conn, user)
        ]
        reply = asyncio.run(_converse(api, history, body.message))
        task_json: dict[str, Any] | None = None
        text = reply.reply
        task_id: str | None = None
        if reply.order is not None:
            task = _create_task(api, conn, user, reply.order)
            task_id = task.id
            text = talk.task_created_reply(
                reply.order,
                agent_address=task.agent_address,
                task_id=task.id,
                payment_deadline=datetime.fromtimestamp(task.payment_deadline, UTC),
                language=reply.language,
            )
            task_json = task_public(conn, task)
            log.info(
                "mint_task_created",
                task=task.id,
                user=user,
                quantity=task.quantity,
                token=task.token_address,
                total=str(task.total_cost),
            )
        store.add_turns(conn, user, [("user", body.message), ("assistant", text)], task_id=task_id)
    finally:
        conn.close()
    return {"reply": text, "task": task_json}


async def _converse(api: MintApi, history: list[Any], message: str) -> Any:
    import httpx

    from workers.mint import chat as talk
    from workers.mint.buyer import ServerCatalog

    s = api.settings
    chain = s.chain(s.mint_chain)
    rpc = api.rpc()
    try:
        from shared.chain.rpc import hex_int

        chain_id = chain.chain_id or hex_int(await rpc.call("eth_chainId"))
    finally:
        await rpc.aclose()
    backend, model = _chat_backend(s)
    async with httpx.AsyncClient(timeout=s.mint_http_timeout_s) as http:
        catalog = ServerCatalog(
            s.servers(),
            usdc=s.mint_usdc_address,
            chain_id=chain_id,
            pay_to=s.mint_pay_to,
            http=http,
            tokens=s.mint_tokens,
        )
        return await talk.converse(
            history,
            message,
            backend=backend,
            model=model,
            catalog=catalog,
            max_quantity=s.mint_max_quantity,
        )


def _chat_backend(s: MintSettings) -> tuple[Any, str]:
    if s.mint_llm_base_url:
        from shared.llm.backends.openai import OpenAIBackend

        model = s.mint_chat_model or "hodlai-mint"
        key = s.mint_llm_api_key.get_secret_value() if s.mint_llm_api_key else None
        return OpenAIBackend(
            base_url=s.mint_llm_base_url, model_map={model: model}, api_key=key
        ), model
    from shared.llm.backends.local import DEFAULT_LOCAL_MODELS, LocalBackend

    model = s.mint_chat_model or next(iter(DEFAULT_LOCAL_MODELS))
    return LocalBackend(), model


def _create_task(api: MintApi, conn: sqlite3.Connection, user: str, order: Any) -> Task:
    from shared.keys.vault import Vault

    s = api.settings
    offer = order.offer
    chain_id = int(str(offer.network).split(":", 1)[1])
    vault = Vault(conn, api.keys().master_key())
    wallet_id, agent = store.ensure_agent_wallet(conn, vault.ensure_wallet, user, now=time.time())
    return store.create_task(
        conn,
        store.NewTask(
            user_address=user,
            token_address=order.token_address,
            quantity=order.quantity,
            price_per_mint=offer.price_per_mint,
            chain_id=chain_id,
            usdc_address=s.mint_usdc_address,
            server_url=offer.server_url,
            pay_to=offer.pay_to,
        ),
        wallet_id=wallet_id,
        agent_address=agent,
        timeout_s=s.mint_payment_timeout_s,
        now=time.time(),
    )


# --- funding --------------------------------------------------------------------------------


@router.post(
    "/task/{task_id}/fund",
    dependencies=[PUBLIC],
    summary="submit the user's EIP-3009 authorization funding the task's agent wallet",
)
def fund(request: Request, api: Api, task_id: str, body: dict[str, Any]) -> dict[str, Any]:
    try:
        auth = parse_funding(body)
    except FundingRefused as exc:
        api.limit(request, None)
        raise Refusal(400, exc.reason, str(exc)) from None
    api.limit(request, auth.from_address)
    conn = _durable(api)
    try:
        task = store.find_task(conn, task_id)
        if task is None:
            raise NotFoundError(f"no task {task_id}")
        key = store.transfer_key(task.usdc_address, auth.from_address, auth.nonce)
        known = store.find_transfer(conn, key)
        if known is not None:
            if known.task_id != task.id or known.kind != "funding":
                raise Refusal(
                    409, "funding_elsewhere", "this authorization already funds another task"
                )
            return known.answer or {}
        if task.status is not TaskStatus.PENDING_PAYMENT:
            raise Refusal(
                409, "wrong_state", f"task {task.id} is {task.status.value}, not pending_payment"
            )
        now = time.time()
        allowlist = api.allowlist(task.usdc_address, task.chain_id)
        try:
            asyncio.run(_check(api, allowlist, task, auth, now))
        except FundingRefused as exc:
            log.info("mint_funding_refused", task=task.id, reason=exc.reason)
            raise Refusal(400, exc.reason, str(exc)) from None
        answer = {
            "taskId": task.id,
            "fundingId": key,
            "status": "submitted",
            "from": auth.from_address,
            "to": auth.to_address,
            "value": str(auth.value),
            "nonce": auth.nonce,
            "relayer": api.settings.mint_relayer_address or None,
        }
        transfer, new = store.insert_transfer(conn, funding_row(task, auth, answer), now=now)
        if new:
            log.info("mint_funding_recorded", task=task.id, id=key, value=str(auth.value))
        return transfer.answer or answer
    finally:
        conn.close()


async def _check(
    api: MintApi, allowlist: DomainAllowlist, task: Task, auth: Any, now: float
) -> None:
    rpc = api.rpc()
    try:
        await check_funding(rpc, allowlist, task, auth, now=now)
    finally:
        await rpc.aclose()


# --- reads ----------------------------------------------------------------------------------


@router.get("/tasks/{user_address}", dependencies=[PUBLIC], summary="a user's tasks")
def list_tasks(request: Request, api: Api, conn: Database, user_address: str) -> dict[str, Any]:
    user = _checksum(user_address, "userAddress")
    api.limit(request, user)
    return {"tasks": [task_public(conn, t) for t in store.tasks_of(conn, user)]}


@router.get("/task/{task_id}", dependencies=[PUBLIC], summary="one task")
def get_task(request: Request, api: Api, conn: Database, task_id: str) -> dict[str, Any]:
    api.limit(request, None)
    return task_public(conn, store.get_task(conn, task_id))


# --- cancel, retry, refund ------------------------------------------------------------------


class Proof(BaseModel):
    message: str = Field(max_length=4000)
    signature: str = Field(max_length=200)


class ActionBody(BaseModel):
    siwe: Proof | None = None


@declares(Access.USER)
def _operator(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> OperatorIdentity | None:
    """An admin token, when one is presented; else the route asks for the user's proof."""
    if credentials is None:
        return None
    return authenticate(request, Role.ADMIN, credentials)


MaybeOperator = Annotated[OperatorIdentity | None, Depends(_operator)]


def _need_proof(operator: OperatorIdentity | None, body: ActionBody | None) -> None:
    if operator is None and (body is None or body.siwe is None):
        raise Refusal(
            401,
            "user_proof_missing",
            'send {"siwe": {"message", "signature"}} signed by the task\'s user, or an admin'
            " token (Authorization: Bearer)",
        )


def _actor(
    request: Request,
    conn: sqlite3.Connection,
    operator: OperatorIdentity | None,
    body: ActionBody | None,
    task: Task,
    action: str,
) -> str:
    if operator is not None:
        return operator.actor
    if body is None or body.siwe is None:
        raise Refusal(
            401,
            "user_proof_missing",
            'send {"siwe": {"message", "signature"}} signed by the task\'s user, or an admin token',
        )
    from siwe import SiweMessage

    try:
        message = SiweMessage.from_message(body.siwe.message)
    except Exception:  # noqa: BLE001 - any parse failure is a malformed proof
        raise Refusal(401, "user_proof_malformed", "the message is not EIP-4361") from None
    if not _CLIENT_NONCE.match(message.nonce or ""):
        raise Refusal(401, "user_proof_nonce", "the nonce is at least 8 alphanumerics")
    now = time.time()
    expires = (
        datetime.fromisoformat(message.expiration_time.replace("Z", "+00:00")).timestamp()
        if message.expiration_time
        else now + 300
    )
    with atomic(conn):  # the client's own nonce: accepted once while the message is valid
        conn.execute(
            "INSERT OR IGNORE INTO siwe_nonces (nonce, issued_at, expires_at) VALUES (?, ?, ?)",
            (message.nonce, now, max(expires, now + 1)),
        )
    proof = base64.b64encode(json.dumps(body.siwe.model_dump()).encode()).decode()
    user = verify_user_proof(
        conn,
        proof,
        statement=f"hodlai: {action} task {task.id}",
        domains=[request.headers.get("host", "")],
        chain_ids=[task.chain_id],
        now=now,
    )
    if user.address.lower() != task.user_address.lower():
        log.warning("mint_task_not_owner", task=task.id, action=action)
        raise Refusal(403, "not_task_owner", f"task {task.id} is not {user.address}'s")
    return user.actor


@router.post("/task/{task_id}/cancel", summary="cancel a task (its user, or an admin)")
def cancel(
    request: Request,
    api: Api,
    operator: MaybeOperator,
    task_id: str,
    body: ActionBody | None = None,
) -> dict[str, Any]:
    _need_proof(operator, body)
    conn = _durable(api)
    try:
        task = store.get_task(conn, task_id)
        actor = _actor(request, conn, operator, body, task, "cancel")
        if task.terminal:
            raise Refusal(409, "wrong_state", f"task {task.id} is {task.status.value}")
        now = time.time()
        who = "operator" if operator is not None else "user"
        store.move_task(
            conn,
            task,
            TaskStatus.CANCELLED,
            actor=actor,
            now=now,
            note=f"cancelled by the {who}",
            completed_at=now,
            error_message=f"Cancelled by the {who}",
        )
        log.info("mint_task_cancelled", task=task.id, by=who)
        return task_public(conn, store.get_task(conn, task.id))
    finally:
        conn.close()


@router.post("/task/{task_id}/retry", summary="retry a failed task (its user, or an admin)")
def retry(
    request: Request,
    api: Api,
    operator: MaybeOperator,
    task_id: str,
    body: ActionBody | None = None,
) -> dict[str, Any]:
    _need_proof(operator, body)
    conn = _durable(api)
    try:
        task = store.get_task(conn, task_id)
        actor = _actor(request, conn, operator, body, task, "retry")
        if task.status is not TaskStatus.FAILED:
            raise Refusal(409, "wrong_state", f"task {task.id} is {task.status.value}, not failed")
        account = store.account(conn, task)
        remaining = (task.quantity - task.mints_completed) * task.price_per_mint
        if account.held < remaining:
            raise Refusal(
                409,
                "no_funds",
                f"the task holds {account.held}, less than the "
                f"{remaining} its remaining mints cost",
            )
        if store.transfers(
            conn, task_id=task.id, statuses=(TransferStatus.RECORDED, TransferStatus.SUBMITTED)
        ):
            raise Refusal(409, "transfer_in_flight", "a transfer of this task is in flight")
        store.move_task(
            conn,
            task,
            TaskStatus.FUNDED,
            actor=actor,
            now=time.time(),
            note="retry",
            error_message=None,
            retry_round=task.retry_round + 1,
        )
        log.info("mint_task_retried", task=task.id)
        return task_public(conn, store.get_task(conn, task.id))
    finally:
        conn.close()


@router.post(
    "/task/{task_id}/refund",
    summary="return a finished task's unspent USDC to its user (its user, or an admin)",
)
def refund(
    request: Request,
    api: Api,
    operator: MaybeOperator,
    task_id: str,
    body: ActionBody | None = None,
) -> dict[str, Any]:
    _need_proof(operator, body)
    conn = _durable(api)
    try:
        task = store.get_task(conn, task_id)
        _actor(request, conn, operator, body, task, "refund")
        if not task.terminal:
            raise Refusal(
                409,
                "wrong_state",
                f"task {task.id} is {task.status.value}: only a "
                "completed, failed or cancelled task is refunded",
            )
        if any(
            p.status in (PaymentStatus.PREPARED, PaymentStatus.SIGNED)
            for p in store.payments(conn, task.id)
        ):
            raise Refusal(409, "payments_open", "a mint payment of this task is still open")
        existing = [
            t
            for t in store.transfers(conn, task_id=task.id)
            if t.kind == "refund" and t.status is not TransferStatus.FAILED
        ]
        account = store.account(conn, task)
        if account.held <= 0:
            if existing:
                return {
                    "taskId": task.id,
                    "refund": _refund_json(existing[-1]),
                    "account": account.public(),
                }
            raise Refusal(409, "nothing_to_refund", f"task {task.id} holds nothing")
        transfer = asyncio.run(_sign_refund(api, conn, task, account.held, account.refunded))
        log.info("mint_refund_recorded", task=task.id, value=str(transfer.value))
        return {
            "taskId": task.id,
            "refund": _refund_json(transfer),
            "account": store.account(conn, task).public(),
        }
    finally:
        conn.close()


def _refund_json(t: store.Transfer) -> dict[str, Any]:
    return {
        "id": t.id,
        "value": str(t.value),
        "to": t.to_address,
        "status": t.status.value,
        "txHash": t.tx_hash,
    }


async def _sign_refund(
    api: MintApi, conn: sqlite3.Connection, task: Task, held: int, refunded: int
) -> store.Transfer:
    from shared.keys.vault import Vault

    now = time.time()
    allowlist = api.allowlist(task.usdc_address, task.chain_id)
    rpc = api.rpc()
    try:
        domain = await allowlist.resolve(rpc, task.usdc_address, task.chain_id, now=now)
    finally:
        await rpc.aclose()
    ledger.set_budget(
        conn,
        purpose=store.REFUND_PURPOSE,
        subject=task.id,
        token=task.usdc_address,
        chain_id=task.chain_id,
        budget=refunded + held,
        now=now,
    )
    (n,) = conn.execute(
        "SELECT COUNT(*) FROM mint_transfers WHERE task_id = ? AND kind = 'refund'", (task.id,)
    ).fetchone()
    vault = Vault(conn, api.keys().master_key())
    auth = sign_authorization(
        conn,
        vault,
        allowlist,
        domain,
        PaymentOrder(
            signer=task.agent_address,
            to=task.user_address,
            value=held,
            valid_after=0,
            valid_before=int(now) + REFUND_VALIDITY_S,
            purpose=store.REFUND_PURPOSE,
            subject=task.id,
            unit=f"refund-{n}",
        ),
        now=now,
    )
    row = {
        "id": store.transfer_key(task.usdc_address, task.agent_address, auth.nonce),
        "kind": "refund",
        "task_id": task.id,
        "token": task.usdc_address,
        "chain_id": task.chain_id,
        "from_address": task.agent_address,
        "to_address": task.user_address,
        "value": held,
        "valid_after": 0,
        "valid_before": auth.valid_before,
        "nonce": auth.nonce,
        "signature": auth.signature,
        "authorization_id": auth.id,
    }
    transfer, _ = store.insert_transfer(conn, row, now=now)
    return transfer
