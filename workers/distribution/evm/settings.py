"""Settings of the EVM payer (``HODLAI_DIST_…``), on top of the frame's
:class:`~workers.distribution.settings.DistSettings`.

- ``HODLAI_DIST_MULTISEND_ADDRESS``: the multisend contract (contracts/Multisend.sol) on the
  default network; ``HODLAI_DIST_MULTISEND_ADDRESSES__<network>`` one per named network.
- The spend policy of the source key (shared/tx/policy.py): it may call ``disperseToken`` on
  the multisend and ``approve`` on the configured tokens only: ``HODLAI_DIST_TOKEN_ADDRESS``
  (the devnet's) and ``HODLAI_DIST_TOKENS`` (comma-separated). A task on another token is
  refused by the policy before anything is signed, and its run fails with that reason.
- Batches: at most ``HODLAI_DIST_MAX_BATCH`` recipients (200, what bulk senders report as the
  practical limit) and at most ``HODLAI_DIST_BATCH_GAS`` gas per transaction.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from workers.distribution.settings import DistSettings

WEI_PER_GWEI: Final = 10**9

FaultPoint = Literal["", "after_record", "after_broadcast"]


class EvmPaySettings(DistSettings):
    dist_multisend_addresses: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "the multisend contract per named network: HODLAI_DIST_MULTISEND_ADDRESSES__<network>"
        ),
    )
    dist_token_address: str = Field(
        default="", description="the devnet's distribution token (written by hodlai devnet)"
    )
    dist_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="tokens the source key may approve for the multisend (comma-separated)",
    )
    dist_max_batch: int = Field(
        default=200, ge=1, le=1000, description="recipients per multisend transaction at most"
    )
    dist_batch_gas: int = Field(
        default=8_000_000,
        ge=100_000,
        le=60_000_000,
        description="gas budget of one multisend transaction (batches are sized to it)",
    )
    dist_gas_per_transfer: int = Field(
        default=32_000,
        ge=10_000,
        le=1_000_000,
        description="gas one recipient of a batch is planned with (sizing and the gas pre-flight)",
    )
    dist_max_fee_gwei: float = Field(
        default=500.0, gt=0, description="fee cap of the source's transactions (gwei per gas)"
    )
    dist_max_priority_fee_gwei: float = Field(
        default=2.0, ge=0, description="tip cap of the source's transactions (gwei per gas)"
    )
    dist_window: int = Field(
        default=16, ge=1, le=64, description="the source's transactions in flight at most"
    )
    dist_poll_s: float = Field(
        default=0.5, gt=0, le=60, description="seconds between polls of the source's transactions"
    )
    dist_fault_point: FaultPoint = Field(
        default="", description="test only: SIGKILL the process after the record or broadcast"
    )

    @field_validator("dist_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def dist_max_fee_wei(self) -> int:
        return int(self.dist_max_fee_gwei * WEI_PER_GWEI)

    @property
    def dist_max_priority_fee_wei(self) -> int:
        return int(self.dist_max_priority_fee_gwei * WEI_PER_GWEI)

    def multisend(self, network: str) -> str:
        """The multisend address of ``network`` ("" when none is configured)."""
        key = network.lower()
        return self.dist_multisend_addresses.get(key) or (
            self.dist_multisend_address
            if key == "devnet" or not self.dist_multisend_addresses
            else ""
        )


def pay_settings(settings: DistSettings) -> EvmPaySettings:
    """``settings`` with the payer's own (from the environment when ``settings`` is the
    frame's class)."""
    if isinstance(settings, EvmPaySettings):
        return settings
    return EvmPaySettings(**settings.model_dump())
