"""Composition root of ``hodlai mint-server``.

Order of start-up, each step refusing to go on with a clear message when it fails (exit 2):

1. settings: ``HODLAI_MINT_KEY_FILE``, ``HODLAI_MINT_USDC_ADDRESS``, ``HODLAI_MINT_TOKENS``,
   ``HODLAI_MINT_PAY_TO`` and the chain's RPC URLs are required;
2. the minter key from the key file (0600), held only by the signers from here on;
3. the listening socket (a port in use names the setting);
4. the role lock (one mint server per database) and the database, durable and migrated;
5. the chain: its id against the RPC (every URL) and the database's identity of the mint
   server (the USDC address on that chain), the USDC's ``name()``/``version()``, each
   token's sale, and the minter role on every token (without it: exit 2 saying how to
   grant it);
6. the minter key's sender claim, its transaction manager (spend policy: only
   ``transferWithAuthorization`` on the USDC and ``mint(address)`` on the tokens; a foreign
   nonce halts the key), the sending service with the purchases as its source; its first
   step reconciles nonces and re-broadcasts what is in flight, and purchases left owed by a
   killed predecessor (a settle FINAL without its mint) are minted;
7. uvicorn on the socket, in the same event loop as the sending service, until SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Generator
from contextlib import asynccontextmanager
from typing import Final, Literal

import structlog
import uvicorn

from shared.api.server import _route_server_logs, bind
from shared.chain.rpc import RpcClient, hex_int
from shared.config import Chain
from shared.db import AsyncDatabase, check_executor_identity
from shared.errors import ConfigError
from shared.logs import configure_logging
from shared.metrics import Health
from shared.runtime import WorkerSpec, run_worker
from shared.tx.fees import FeePolicy
from shared.tx.manager import TxManager, TxPolicy
from shared.tx.policy import SpendPolicy, selectors
from shared.tx.senders import claim_sender
from shared.tx.service import SendingConfig, SendingEvents, SendingService, balance_check
from shared.tx.signer import LocalSigner
from workers.mint.keyfile import load_mint_keys
from workers.mint.server import chain as reads
from workers.mint.server.app import MintServerContext, create_app
from workers.mint.server.check import SettleChecker
from workers.mint.server.facilitator import (
    CoreFacilitatorSigner,
    LocalFacilitatorClient,
    SettleBridge,
)
from workers.mint.server.purpose import MINT_PURPOSE, SETTLE_PURPOSE, MintPurpose, SettlePurpose
from workers.mint.server.settings import MintServerSettings
from workers.mint.server.source import MINT_SIGNATURE, PurchaseSource
from workers.mint.server.store import Purchase

log = structlog.get_logger(__name__)

ROLE: Final = "mint-server"
EXECUTOR: Final = "mint"
IDENTITY: Final = "mint_server"
GRACEFUL_SHUTDOWN_S: Final = 10
HEALTH_MIN_S: Final = 60.0
SETTLE_SIGNATURES: Final = (
    "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)",
    "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)",
)
EVENTS: Final = SendingEvents(
    started="mint_server_sending_started",
    paused="mint_server_sending_paused",
    resumed="mint_server_sending_resumed",
    check_skipped="mint_server_check_skipped",
    waiting_for_fees="mint_server_waiting_for_fees",
    sender_key="minter",
)


def run(settings: MintServerSettings) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code."""
    configure_logging(settings.log_level)
    _route_server_logs(settings.log_level)  # uvicorn's own lines through structlog, as the API's
    settings.require("mint_key_file", "mint_usdc_address", "mint_tokens", "mint_pay_to")
    chain = settings.chain(settings.mint_server_chain)
    if not chain.rpc_urls:
        raise ConfigError(f"missing required setting {chain.rpc_setting}")
    keys = load_mint_keys(settings.mint_key_file)
    sock = bind(settings.mint_server_host, settings.mint_server_port)
    spec = WorkerSpec(
        process=ROLE,
        executor=EXECUTOR,
        db_path=settings.db_path,
        health=Health(stale_after_s=max(HEALTH_MIN_S, 600 * settings.mint_server_poll_s)),
        metrics_port=settings.metrics_port,
        role=ROLE,
        durable=True,  # a recorded settle or mint survives a power cut
    )
    try:
        return run_worker(
            spec,
            lambda db, _stop: mint_server(settings, chain, keys.minter_key, db, sock),
            log_level=settings.log_level,
        )
    finally:
        sock.close()


class _Server(uvicorn.Server):
    """uvicorn inside the worker's event loop: the worker owns SIGTERM (shared.runtime)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class MintServerService:
    """The sending service's loop, with uvicorn serving beside it (shared.runtime Service)."""

    def __init__(self, sending: SendingService[Purchase], server: _Server, sock: socket.socket,
                 url: str) -> None:  # fmt: skip
        self.sending = sending
        self._server = server
        self._sock = sock
        self._url = url
        self._task: asyncio.Task[None] | None = None

    async def start(self, stop: asyncio.Event) -> bool:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]))
        while not self._server.started:
            if self._task.done():
                await self._task  # raises what stopped it before it served
                return False
            if stop.is_set():
                return False
            await asyncio.sleep(0.02)
        log.info("mint_server_listening", url=self._url)
        print(f"hodlai mint-server listening on {self._url}", flush=True)  # noqa: T201
        return True

    async def step(self) -> float:
        if self._task is not None and self._task.done():
            # Serving is half the process: without it, end (exit 1) for the supervisor to
            # restart, rather than send on while no buyer can reach the server.
            error = None if self._task.cancelled() else self._task.exception()
            log.error("mint_server_http_stopped", error=str(error))
            raise SystemExit(1)
        return await self.sending.step()

    async def stop(self) -> None:
        try:
            self._server.should_exit = True
            if self._task is not None:
                with contextlib.suppress(Exception):
                    await self._task
        finally:
            await self.sending.stop()


@asynccontextmanager
async def mint_server(
    settings: MintServerSettings,
    chain: Chain,
    minter_key: bytes,
    db: AsyncDatabase,
    sock: socket.socket,
) -> AsyncIterator[MintServerService]:
    """Steps 5 to 7 of the module docstring."""
    assert settings.mint_usdc_address is not None and settings.mint_pay_to is not None
    rpc = RpcClient(list(chain.rpc_urls), chain_id=chain.chain_id)
    try:
        chain_id = hex_int(await rpc.call("eth_chainId"))
        if chain.chain_id is not None and chain.chain_id != chain_id:
            raise ConfigError(f"the chain id is {chain.chain_id} but the RPC serves {chain_id}")
        await rpc.expect_chain(chain_id)
        usdc = await reads.read_usdc(rpc, settings.mint_usdc_address)
        await db.run(
            lambda conn: check_executor_identity(
                conn, executor=IDENTITY, chain_id=chain_id, anchor=usdc.address
            )
        )
        signer = LocalSigner(minter_key, chain_id=chain_id)
        confirmations = (
            chain.confirmations
            if settings.mint_server_confirmations is None
            else settings.mint_server_confirmations
        )
        sales = {token: await reads.read_sale(rpc, token) for token in settings.mint_tokens}
        for token in sales:
            if not await reads.is_minter(rpc, token, signer.address):
                raise ConfigError(
                    f"the minter {signer.address} (minterPrivateKey of HODLAI_MINT_KEY_FILE) "
                    f"may not mint {token}; its owner must call "
                    f"configureMinter({signer.address}, true) first"
                )
        claim = await db.run(
            lambda conn: claim_sender(
                settings.db_path, conn, signer.address, owner=ROLE, chain_id=chain_id
            )
        )
        try:
            fees = FeePolicy(
                max_fee_per_gas=settings.max_fee_wei,
                max_priority_fee_per_gas=settings.max_priority_fee_wei,
            )
            contracts: dict[str, frozenset[bytes] | None] = {
                usdc.address: selectors(*SETTLE_SIGNATURES)
            }
            contracts |= {token: selectors(MINT_SIGNATURE) for token in sales}
            manager = TxManager(
                db=db,
                rpc=rpc,
                signer=signer,
                policy=TxPolicy(
                    fees=fees,
                    window=settings.mint_server_window,
                    stuck_after_s=settings.mint_server_stuck_after_s,
                    rebroadcast_after_s=settings.mint_server_rebroadcast_after_s,
                    confirmations=confirmations,
                ),
                handlers={SETTLE_PURPOSE: SettlePurpose(), MINT_PURPOSE: MintPurpose()},
                claim=claim,
                spend_policy=SpendPolicy(contracts=contracts),
                halt_on_foreign_nonce=True,
            )
            fault = settings.mint_server_fault_point
            core_fault: Literal["", "after_record", "after_broadcast"] = (
                "" if fault == "after_settle" else fault
            )
            checker = SettleChecker(db=db, rpc=rpc, usdc=usdc.address, confirmations=confirmations)
            source = PurchaseSource(
                db=db, gas_limit=settings.mint_server_gas_limit, checker=checker,
                fault_point=fault,
            )  # fmt: skip
            sending: SendingService[Purchase] = SendingService(
                db=db,
                rpc=rpc,
                manager=manager,
                config=SendingConfig(
                    fees=fees,
                    batch=settings.mint_server_batch,
                    poll_s=settings.mint_server_poll_s,
                    checks_s=30.0,
                    events=EVENTS,
                    fault_point=core_fault,
                ),
                source=source,
                readiness=balance_check(
                    rpc, signer.address, min_balance_wei=settings.min_balance_wei
                ),
            )
            bridge = SettleBridge(
                db=db, loop=asyncio.get_running_loop(), usdc=usdc.address,
                timeout_s=settings.mint_server_settle_timeout_s,
            )  # fmt: skip
            facilitator = LocalFacilitatorClient(
                CoreFacilitatorSigner(
                    minter_key=minter_key, rpc_url=chain.rpc_urls[0], bridge=bridge
                ),
                network=f"eip155:{chain_id}",
            )
            ctx = MintServerContext(
                db=db,
                rpc=rpc,
                chain_id=chain_id,
                usdc=usdc,
                sales=sales,
                pay_to=settings.mint_pay_to,
                price_per_mint=settings.mint_server_price_per_mint,
                max_timeout_s=settings.mint_server_max_timeout_s,
                wait_timeout_s=settings.mint_server_settle_timeout_s,
                facilitator=facilitator,
            )
            server = _Server(
                uvicorn.Config(
                    create_app(ctx),
                    log_config=None,
                    access_log=False,
                    server_header=False,
                    timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
                )
            )
            host, port = sock.getsockname()[:2]
            url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
            if fault:
                log.warning("fault_point_armed", point=fault, test_only=True)
            log.info(
                "mint_server_starting",
                minter=signer.address,
                chain_id=chain_id,
                usdc=usdc.address,
                usdc_domain=f"{usdc.name}/{usdc.version}",
                tokens=list(sales),
                pay_to=settings.mint_pay_to,
                price_per_mint=settings.mint_server_price_per_mint,
                confirmations=confirmations,
                url=url,
            )
        except BaseException:
            await db.run(claim.release)  # nothing was signed: give the key back
            raise
        try:
            yield MintServerService(sending, server, sock, url)
        finally:
            facilitator.close()
    finally:
        await rpc.aclose()
