"""Settings every oracle process understands, on top of the core's: the provider contract
it serves and its inference shards. They were core settings before the oracle had a package
of its own; the environment variables keep their names (``HODLAI_PROVIDER_ADDRESS``,
``HODLAI_WORKER_ID``, ``HODLAI_WORKER_COUNT``)."""

from __future__ import annotations

from typing import Self

from eth_utils.address import is_hex_address, to_checksum_address
from pydantic import Field, field_validator, model_validator

from shared.config import MAX_PORT, CoreSettings


class OracleSettings(CoreSettings):
    """Settings of every ``hodlai`` oracle process (indexer, inference, fulfiller)."""

    provider_address: str | None = Field(default=None, description="HoldAIProvider address")
    worker_id: int = Field(default=0, ge=0)
    # At most 42: shards are computed from request_id mod lcm(1..42) (see
    # workers.oracle.request_id).
    worker_count: int = Field(default=1, ge=1, le=42)

    @field_validator("provider_address")
    @classmethod
    def _check_address(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not is_hex_address(value):
            raise ValueError(f"not a 20-byte hex address: {value!r}")
        return to_checksum_address(value)

    @model_validator(mode="after")
    def _shard_port_fits(self) -> Self:
        # Inference shards serve on HODLAI_METRICS_PORT + their worker id (one env file, one
        # systemd template): refuse a sum that is no port, before any process binds.
        if self.metrics_port and self.metrics_port + self.worker_id > MAX_PORT:
            raise ValueError(
                f"HODLAI_METRICS_PORT ({self.metrics_port}) + HODLAI_WORKER_ID "
                f"({self.worker_id}) = {self.metrics_port + self.worker_id} is above {MAX_PORT}: "
                "shards serve metrics on the port plus their worker id; lower HODLAI_METRICS_PORT"
            )
        return self
