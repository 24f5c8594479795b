"""The Solana SPL rail of the distribution executor (issue 21 §5, the seed's own chain).

``build_network(settings)`` gives the frame its Network (validation, decimals, balances,
``build_unsigned``) and ``build_payer(settings, db=…)`` the Payer of that network, both for
the cluster ``HODLAI_DIST_SOLANA_NETWORK`` names (None when it names none). Modules:
``cluster`` (what a cluster must answer; LiteSVM in process, AsyncClient over JSON-RPC),
``spl`` (mints, batches, decoded failures), ``network``, ``payer``, ``store`` and ``machine``
(the send rows), ``keyfile`` (the source keypair), ``settings``, ``cli`` (``hodlai
dist-solana``) and ``localchain`` (setting up an in-process chain for tests and the demo).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from shared.config import CoreSettings
from shared.errors import ConfigError, KeyFileError

if TYPE_CHECKING:
    from shared.db import AsyncDatabase
    from workers.distribution.solana.cluster import Cluster
    from workers.distribution.solana.network import SolanaNetwork
    from workers.distribution.solana.payer import SolanaPayer
    from workers.distribution.solana.settings import SolanaSettings


def solana_settings(settings: CoreSettings) -> SolanaSettings:
    """``settings`` when it carries the Solana fields, else them read from the environment."""
    from workers.distribution.solana.settings import SolanaSettings

    return settings if isinstance(settings, SolanaSettings) else SolanaSettings()


def build_network(
    settings: CoreSettings, *, cluster: Cluster | None = None
) -> SolanaNetwork | None:
    """The configured Solana network, or None when ``HODLAI_DIST_SOLANA_NETWORK`` is empty.
    ``cluster`` replaces the one the settings name (tests: an SvmCluster)."""
    from workers.distribution.solana.cluster import RpcCluster, SvmCluster
    from workers.distribution.solana.network import SolanaNetwork

    sol = solana_settings(settings)
    name = sol.dist_solana_network
    if not name:
        return None
    if cluster is None:
        if name == "local":
            cluster = _local_cluster(SvmCluster)
        else:
            cluster = RpcCluster(sol.solana_rpc_url(), name=f"{name} {sol.solana_rpc_label()}")
    return SolanaNetwork(
        name, cluster, batch_max=sol.dist_solana_batch_max,
        priority_micro_lamports=sol.dist_solana_priority_micro_lamports,
        source=_source(sol),
    )  # fmt: skip


def _source(sol: SolanaSettings) -> str:
    """HODLAI_DIST_SOLANA_SOURCE_ADDRESS, else the key file's public key when this process
    may read it (the API process usually may not: then "")."""
    from workers.distribution.solana.keyfile import load_keypair
    from workers.distribution.solana.network import parse_pubkey

    declared = sol.dist_solana_source_address
    if declared:
        key = parse_pubkey(declared)
        if key is None:
            raise ConfigError(
                f"HODLAI_DIST_SOLANA_SOURCE_ADDRESS {declared!r} is no Solana address"
            )
        return str(key)
    if sol.dist_solana_key_file is None:
        return ""
    try:
        return str(load_keypair(sol.dist_solana_key_file).pubkey())
    except KeyFileError:
        return ""


def build_payer(
    settings: CoreSettings,
    *,
    db: AsyncDatabase | None = None,
    network: SolanaNetwork | None = None,
    lease_seconds: float | None = None,
) -> SolanaPayer | None:
    """The payer of the configured Solana network (None when there is none). Needs
    ``HODLAI_DIST_SOLANA_KEY_FILE``; refuses a ``HODLAI_DIST_SOLANA_SOURCE_ADDRESS`` that is
    not the key's public key. Without ``db`` it opens its own durable connection to
    ``HODLAI_DB_PATH`` (closed by ``aclose``)."""
    from shared.db import AsyncDatabase, connect
    from workers.distribution.solana.keyfile import load_keypair
    from workers.distribution.solana.payer import SolanaPayer

    sol = solana_settings(settings)
    owns_network = network is None
    network = network if network is not None else build_network(sol)
    if network is None:
        return None
    if sol.dist_solana_key_file is None:
        raise ConfigError(
            f"HODLAI_DIST_SOLANA_KEY_FILE: the {network.name} payer needs the source keypair file"
        )
    keypair = load_keypair(sol.dist_solana_key_file)
    network.source = str(keypair.pubkey())
    declared = sol.dist_solana_source_address
    if declared and declared != str(keypair.pubkey()):
        raise ConfigError(
            f"HODLAI_DIST_SOLANA_SOURCE_ADDRESS is {declared}, but the key file's public key is"
            f" {keypair.pubkey()}"
        )
    lease = lease_seconds if lease_seconds is not None else _lease_seconds(settings)
    owned = db is None
    database = db if db is not None else AsyncDatabase(connect(settings.db_path, durable=True))
    return SolanaPayer(
        db=database, network=network, keypair=keypair, lease_seconds=lease,
        resend_s=sol.dist_solana_resend_s, owns_db=owned, owns_network=owns_network,
    )  # fmt: skip


_LOCAL: list[Cluster] = []


def _local_cluster(make: Callable[[], Cluster]) -> Cluster:
    """The process's one in-process SVM: the frame's network and the payer's must be the
    same chain."""
    if not _LOCAL:
        _LOCAL.append(make())
    return _LOCAL[0]


def _lease_seconds(settings: CoreSettings) -> float:
    value = getattr(settings, "dist_lease_s", 60.0)
    return float(value)
