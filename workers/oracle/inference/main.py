"""Composition root of ``hodlai inference``: settings in, a running worker out.

Nothing here connects at import time. Order: settings (validated by the caller), database,
the backend (for ``llama`` the model is checked and loaded here, so a missing or damaged
model stops the worker at once with a message naming HODLAI_LOCAL_MODEL_PATH), the chain
identity (the provider address is required; the chain id comes from
``HODLAI_CHAIN_ID`` or from the database, where the indexer records it; with neither, the
worker waits and says so), metrics, the contract's string limits (read once
over ``HODLAI_RPC_URLS`` before the first claim, when set), signal handlers, the loop, and on
the way out the drain that finishes or releases in-flight work.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog

from shared.chain.rpc import RpcClient
from shared.db import AsyncDatabase, check_identity, stored_identity
from shared.llm import LlmBackend
from shared.llm.backends import LocalBackend, OpenAIBackend
from shared.llm.backends.llama import LlamaBackend
from shared.runtime import WorkerSpec, run_worker, sleep_or_stop
from workers.oracle.inference.health import InferenceHealth
from workers.oracle.inference.limits import ContractStringLimits
from workers.oracle.inference.settings import InferenceSettings
from workers.oracle.inference.worker import PROCESS, InferenceWorker, WorkerConfig

log = structlog.get_logger(__name__)

EXECUTOR = "oracle"

# Seconds between checks for the chain identity while no indexer has recorded it yet.
IDENTITY_POLL_S = 1.0
# Seconds between the log lines that say we are still waiting for it.
IDENTITY_NAG_S = 15.0


def build_backend(settings: InferenceSettings) -> LlmBackend:
    """The configured backend, ready to answer (blocking: llama loads its model here)."""
    models = settings.served_models()
    if settings.llm_backend == "local":
        return LocalBackend(models)
    if settings.llm_backend == "llama":
        path, expected_sha256 = settings.model_source()
        return LlamaBackend.load(
            path, params=settings.load_params(), model_map=models,
            expected_sha256=expected_sha256,
        )  # fmt: skip
    assert settings.llm_base_url is not None  # check_backend() ran in the CLI
    key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
    return OpenAIBackend(
        base_url=settings.llm_base_url,
        model_map=models,
        api_key=key,
        timeout_s=settings.llm_timeout_s,
        max_tokens=settings.llm_max_tokens,
        constraint=settings.llm_constrained,
        max_connections=settings.llm_max_concurrency,
        max_response_bytes=settings.llm_max_response_bytes,
    )


def lease_owner(worker_id: int, worker_count: int) -> str:
    """Unique per process start, readable in the audit trail: shard, pid, random."""
    return f"inference-{worker_id}/{worker_count}:{os.getpid()}:{secrets.token_hex(3)}"


async def resolve_chain_id(
    adb: AsyncDatabase, settings: InferenceSettings, stop: asyncio.Event
) -> int | None:
    """The chain id to work for, checked against the database; None if stopped first."""
    assert settings.provider_address is not None  # required by the CLI
    waited = 0.0
    while True:
        stored = await adb.run(stored_identity)
        chain_id = settings.chain_id if settings.chain_id is not None else (
            stored[0] if stored else None
        )  # fmt: skip
        if chain_id is not None:
            # Records the identity on first use; raises DatabaseMismatchError on another one.
            await adb.run(
                check_identity, chain_id=chain_id, provider_address=settings.provider_address
            )
            return chain_id
        if waited % IDENTITY_NAG_S == 0:
            log.warning(
                "waiting_for_chain_identity", db_path=str(settings.db_path),
                hint="set HODLAI_CHAIN_ID, or start the indexer, which records it",
            )  # fmt: skip
        if await sleep_or_stop(stop, IDENTITY_POLL_S):
            return None
        waited += IDENTITY_POLL_S


def serve_inference(settings: InferenceSettings) -> int:
    """Run one inference shard until SIGTERM (shared.runtime.run_worker); the exit code."""
    health = InferenceHealth(stale_after_s=max(30.0, settings.inference_lease_s))
    spec = WorkerSpec(
        process=PROCESS,
        executor=EXECUTOR,
        db_path=settings.db_path,
        health=health,
        # Shards share one HODLAI_METRICS_PORT (one env file, one systemd template): each
        # serves on that port plus its worker id.
        metrics_port=settings.metrics_port + settings.worker_id if settings.metrics_port else 0,
        # NORMAL: a power cut can roll back its last commits, which costs answering those
        # requests again; it signs nothing.
        durable=False,
    )
    return run_worker(
        spec, lambda db, stop: inference_service(settings, db, stop, health),
        log_level=settings.log_level,
    )  # fmt: skip


class InferenceService:
    """One inference shard as shared.runtime.run_worker runs it."""

    def __init__(
        self,
        settings: InferenceSettings,
        adb: AsyncDatabase,
        stop: asyncio.Event,
        health: InferenceHealth,
        rpc: RpcClient | None,
    ) -> None:
        self._settings = settings
        self._adb = adb
        self._stop = stop
        self._health = health
        self._rpc = rpc
        self.worker: InferenceWorker | None = None
        self._backend: LlmBackend | None = None

    async def start(self, stop: asyncio.Event) -> bool:
        settings = self._settings
        self._backend = backend = await asyncio.to_thread(build_backend, settings)
        chain_id = await resolve_chain_id(self._adb, settings, stop)
        if chain_id is None:
            return False
        assert settings.provider_address is not None
        limits = ContractStringLimits(
            self._rpc, settings.provider_address, refresh_s=settings.inference_limits_refresh_s
        )
        await limits.refresh()
        config = WorkerConfig(
            owner=lease_owner(settings.worker_id, settings.worker_count),
            shard=settings.worker_id,
            worker_count=settings.worker_count,
            chain_id=chain_id,
            provider=settings.provider_address,
            max_concurrency=settings.llm_max_concurrency,
            attempts=settings.llm_attempts,
            lease_s=settings.inference_lease_s,
            claim_batch=settings.inference_claim_batch,
            poll_s=settings.inference_poll_s,
            ipfs_api_url=settings.ipfs_api_url,
        )
        self.worker = InferenceWorker(
            config, adb=self._adb, backend=backend, stop=stop, health=self._health, limits=limits
        )
        log.info(
            "inference_started", owner=config.owner, shard=config.shard,
            worker_count=config.worker_count, backend=backend.name, chain_id=chain_id,
            models=sorted(settings.served_models()), max_concurrency=config.max_concurrency,
            constrained=settings.llm_constrained, ipfs=bool(settings.ipfs_api_url),
        )  # fmt: skip
        return True

    async def step(self) -> float:
        assert self.worker is not None  # start() returned True
        return await self.worker.step()

    async def stop(self) -> None:
        if self.worker is not None:
            await self.worker.drain(self._settings.inference_shutdown_grace_s)
            log.info("inference_stopped", owner=self.worker.config.owner)
        if self._backend is not None:
            await self._backend.aclose()


@asynccontextmanager
async def inference_service(
    settings: InferenceSettings, adb: AsyncDatabase, stop: asyncio.Event, health: InferenceHealth
) -> AsyncIterator[InferenceService]:
    rpc = RpcClient(settings.rpc_urls) if settings.rpc_urls else None
    try:
        yield InferenceService(settings, adb, stop, health, rpc)
    finally:
        if rpc is not None:
            await rpc.aclose()
