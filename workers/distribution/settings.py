"""Settings of ``hodlai distributor`` and of the distribution routes (``HODLAI_DIST_…``, plus
the core's ``HODLAI_…``).

Networks. A task's ``network`` names a configured network. The EVM ones are listed in
``HODLAI_DIST_NETWORKS`` (comma-separated, default ``devnet``); each is the named chain
``HODLAI_CHAINS__<name>__…`` (shared.config), and ``devnet``, unless defined that way, is the
default chain (``HODLAI_RPC_URLS``…), the local anvil of ``hodlai devnet``. Solana clusters
are configured by the Solana rail's ``HODLAI_DIST_SOLANA_…`` settings.

The source key (``HODLAI_DIST_KEY_FILE``) is a secret: only its address appears in logs,
errors and answers. ``HODLAI_DIST_SOURCE_ADDRESS`` names the paying address for processes
that hold no key (``hodlai api`` records it on a run created by ``execute``); the distributor
refuses to start when it disagrees with the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from shared.config import DEFAULT_CHAIN, Chain, CoreSettings, expand_credentials

#: The network name of the local anvil (the default chain unless HODLAI_CHAINS__devnet__… is set).
DEVNET: Final = "devnet"

MissedSlots = Literal["latest", "skip"]


class DistSettings(CoreSettings):
    dist_enabled: bool = Field(
        default=True,
        description=(
            "run hodlai distributor (false: it logs executor_disabled and runs nothing; a node"
            " without a distribution source sets it)"
        ),
    )
    dist_pay: bool = Field(
        default=True,
        description=(
            "false: this distributor only schedules (records the runs of due slots and fired"
            " conditions) and holds no key; a distributor with the key pays them"
        ),
    )
    dist_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [DEVNET],
        description=(
            "EVM networks served (comma-separated): each a named chain HODLAI_CHAINS__<name>__…;"
            " devnet is the default chain unless defined by name"
        ),
    )
    dist_check_interval_s: float = Field(
        default=15.0,
        gt=0,
        le=86_400,
        description="seconds between checks of a conditional task's condition",
    )
    dist_missed_slots: MissedSlots = Field(
        default="latest",
        description=(
            "cron slots missed while the distributor was down: latest (run the latest one"
            " once) or skip (run none); each decision is logged"
        ),
    )
    dist_max_recipients: int = Field(
        default=5000, ge=1, le=100_000, description="recipients a task may have at most"
    )
    dist_missed_grace_s: float = Field(
        default=60.0,
        ge=0,
        le=86_400,
        description=(
            "seconds after a cron slot within which it counts as on time; an older due slot"
            " is missed and follows HODLAI_DIST_MISSED_SLOTS"
        ),
    )
    dist_condition_checks: int = Field(
        default=3,
        ge=1,
        le=1000,
        description="consecutive true checks before a conditional task fires (flicker guard)",
    )
    dist_cooldown_s: float = Field(
        default=3600.0,
        ge=0,
        le=365 * 86_400,
        description="seconds after a conditional task fired before its condition is checked again",
    )
    dist_tick_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="seconds between scheduler passes (due slots, conditions) and payer ticks",
    )
    dist_lease_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="seconds a scheduler or payer holds a task or run it works on",
    )
    dist_key_file: Path | None = Field(
        default=None,
        description=(
            "the EVM source key (JSON key file or encrypted keystore, 0600); may start with"
            " $CREDENTIALS_DIRECTORY"
        ),
    )
    dist_key_passphrase: SecretStr | None = Field(
        default=None, description="passphrase of a keystore source key"
    )
    dist_key_passphrase_file: Path | None = Field(
        default=None, description="a 0600 file holding the source key's passphrase"
    )
    dist_source_address: str = Field(
        default="",
        description=(
            "the EVM source's address, for processes without the key (hodlai api); checked"
            " against the key by the distributor"
        ),
    )
    dist_multisend_address: str = Field(
        default="",
        description=(
            "the multisend contract on the EVM networks (hodlai devnet deploys one): batched"
            " payments and the unsigned transaction of a preview"
        ),
    )
    dist_oracle_provider: str = Field(
        default="",
        description=(
            "the oracle provider whose treasury an oracle_fees condition watches, unless the"
            " condition names one"
        ),
    )

    @field_validator("dist_networks", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip().lower() for part in value.split(",") if part.strip()]
        return value

    @field_validator("dist_key_file", "dist_key_passphrase_file", mode="before")
    @classmethod
    def _credentials_path(cls, value: object) -> object:
        return expand_credentials(value)

    def evm_chain(self, network: str) -> Chain:
        """The chain of an EVM network: its named chain, or for ``devnet`` without one the
        default chain. Raises ConfigError naming the setting when it is not configured."""
        key = network.lower()
        if key == DEVNET and key not in self.chains:
            chain = self.chain(DEFAULT_CHAIN)
            return Chain(
                name=DEVNET,
                rpc_urls=chain.rpc_urls,
                chain_id=chain.chain_id,
                confirmations=chain.confirmations,
                rpc_setting=chain.rpc_setting,
            )
        return self.chain(key)
