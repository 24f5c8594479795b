"""Composition root of ``hodlai fulfiller``.

Order of start-up, each step refusing to go on with a clear message when it fails:

1. settings (``HODLAI_RPC_URLS``, ``HODLAI_PROVIDER_ADDRESS``, ``HODLAI_KEY_FILE`` required);
2. the key (file permissions, keystore passphrase), held only by the signer from here on;
3. the fulfiller lock on the database file (shared.instance: keyed by its inode, so a
   symlink or a hard link to it is refused too): two processes allocating one key's nonces
   would sign different transactions for the same nonces;
4. the database, opened durable (fsync on every commit: a recorded transaction survives a
   power cut) and migrated;
5. its identity checked against ``eth_chainId`` and the provider;
6. ORACLE_ROLE: without it the process exits (code 2) saying how to grant it;
7. the loop: the core's sending service (shared/tx/service.py) with the oracle's source
   (workers/oracle/fulfiller/worker.py); its first step reconciles nonces and re-broadcasts what is
   in flight. The database thread checks every second that the file is still the one opened.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog

from shared import keys
from shared.chain.rpc import RpcClient, hex_int
from shared.db import AsyncDatabase, check_identity
from shared.errors import ConfigError
from shared.logs import configure_logging
from shared.metrics import Health
from shared.runtime import WorkerSpec, run_worker
from shared.tx.fees import FeePolicy
from shared.tx.manager import TxManager, TxPolicy
from shared.tx.senders import claim_sender
from shared.tx.service import SendingService
from shared.tx.signer import LocalSigner
from shared.tx.simulation import GasRule
from workers.oracle.fulfiller.provider import spend_policy
from workers.oracle.fulfiller.purpose import FULFIL_PURPOSE, FulfilmentPurpose
from workers.oracle.fulfiller.readiness import await_role
from workers.oracle.fulfiller.settings import FulfillerSettings
from workers.oracle.fulfiller.worker import FulfillerConfig, FulfillerWorker
from workers.oracle.store import Claimed

log = structlog.get_logger(__name__)

ROLE = "fulfiller"
EXECUTOR = "oracle"

# Health turns 503 when no loop iteration succeeded for this many poll intervals (at least
# HEALTH_MIN_S seconds): long enough to ride out an RPC back-off, short enough to alert.
HEALTH_POLLS = 120
HEALTH_MIN_S = 60.0


def run(settings: FulfillerSettings) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code."""
    configure_logging(settings.log_level)
    settings.require("rpc_urls", "provider_address", "key_file")
    assert settings.key_file is not None and settings.provider_address is not None
    passphrase = keys.read_passphrase(
        passphrase=(
            settings.key_passphrase.get_secret_value() if settings.key_passphrase else None
        ),
        passphrase_file=settings.key_passphrase_file,
    )
    private_key = keys.load_private_key(settings.key_file, passphrase)
    spec = WorkerSpec(
        process=ROLE,
        executor=EXECUTOR,
        db_path=settings.db_path,
        health=Health(stale_after_s=max(HEALTH_MIN_S, HEALTH_POLLS * settings.fulfiller_poll_s)),
        metrics_port=settings.metrics_port,
        role=ROLE,
        durable=True,  # a recorded transaction survives a power cut (fsync on every commit)
    )
    return run_worker(
        spec,
        lambda db, _stop: fulfiller_service(settings, private_key, db),
        log_level=settings.log_level,
    )


@asynccontextmanager
async def fulfiller_service(
    settings: FulfillerSettings, private_key: bytes, db: AsyncDatabase
) -> AsyncIterator[SendingService[Claimed]]:
    """Checks the chain, the database and the key belong together, claims the key, then
    yields the fulfiller's sending service (steps 5 and 6 of the module docstring); its
    stop gives back the leases, then the key."""
    assert settings.provider_address is not None
    rpc = RpcClient(settings.rpc_urls, chain_id=settings.chain_id)
    try:
        chain_id = hex_int(await rpc.call("eth_chainId"))
        if settings.chain_id is not None and settings.chain_id != chain_id:
            raise ConfigError(
                f"HODLAI_CHAIN_ID is {settings.chain_id} but the RPC serves chain {chain_id}"
            )
        await db.run(check_identity, chain_id=chain_id, provider_address=settings.provider_address)
        # Every URL must serve the database's chain before anything is signed: a failover
        # URL on another chain is quarantined, never asked for answers.
        await rpc.expect_chain(chain_id)
        signer = LocalSigner(private_key, chain_id=chain_id)
        claim = await db.run(
            lambda conn: claim_sender(
                settings.db_path, conn, signer.address, owner=ROLE, chain_id=signer.chain_id
            )
        )
        try:
            readiness = await await_role(
                rpc,
                provider=settings.provider_address,
                oracle=signer.address,
                min_balance_wei=settings.min_balance_wei,
                wait_s=settings.fulfiller_startup_wait_s,
            )
            if not readiness.has_role:
                raise ConfigError(
                    f"the oracle address {signer.address} (from HODLAI_KEY_FILE) does not hold "
                    f"ORACLE_ROLE on provider {settings.provider_address}; an admin must call "
                    f"grantRole(ORACLE_ROLE, {signer.address}) first"
                )
            fees = FeePolicy(
                max_fee_per_gas=settings.max_fee_wei,
                max_priority_fee_per_gas=settings.max_priority_fee_wei,
            )
            manager = TxManager(
                db=db,
                rpc=rpc,
                signer=signer,
                policy=TxPolicy(
                    fees=fees,
                    window=settings.fulfiller_window,
                    stuck_after_s=settings.fulfiller_stuck_after_s,
                    rebroadcast_after_s=settings.fulfiller_rebroadcast_after_s,
                    confirmations=settings.confirmations,
                ),
                handlers={FULFIL_PURPOSE: FulfilmentPurpose()},
                claim=claim,
                spend_policy=spend_policy(settings.provider_address),
            )
            worker = FulfillerWorker(
                db=db,
                rpc=rpc,
                manager=manager,
                config=FulfillerConfig(
                    provider=settings.provider_address,
                    batch=settings.fulfiller_batch,
                    gas=GasRule(
                        margin_percent=settings.fulfiller_gas_margin_percent,
                        cap=settings.fulfiller_gas_cap,
                    ),
                    fees=fees,
                    min_balance_wei=settings.min_balance_wei,
                    poll_s=settings.fulfiller_poll_s,
                    checks_s=settings.fulfiller_checks_s,
                    lease_s=settings.fulfiller_lease_s,
                    recheck_s=settings.fulfiller_recheck_s,
                    fault_point=settings.fault_point,
                ),
            )
            if settings.fault_point:
                log.warning("fault_point_armed", point=settings.fault_point, test_only=True)
            log.info(
                "fulfiller_starting",
                oracle=signer.address,
                chain_id=chain_id,
                provider=settings.provider_address,
                window=settings.fulfiller_window,
                balance_wei=readiness.balance_wei,
            )
        except BaseException:
            await db.run(claim.release)  # nothing was signed: give the key back
            raise
        yield worker.service
    finally:
        await rpc.aclose()
