"""Settings of ``hodlai fulfiller`` (environment variables ``HODLAI_*``, see CoreSettings).

Every tunable has a default an operator can run with; the one-line comments give the unit
and the reason for the default.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Final, Literal

from pydantic import Field, SecretStr, field_validator

from shared.config import expand_credentials
from workers.oracle.settings import OracleSettings

WEI_PER_GWEI: Final = 10**9
WEI_PER_COIN: Final = 10**18
# Highest fee cap accepted, in gwei. Above any fee BSC or Ethereum mainnet has seen (spikes
# of a few thousand gwei); a larger value is a typo (1e30) that would let a spiking or lying
# node set the price of every fulfilment.
MAX_FEE_CEILING_GWEI: Final = Decimal(10_000)
# A fee cap below one wei would round to zero and pause sending for good.
ONE_WEI_IN_GWEI: Final = Decimal(1) / WEI_PER_GWEI

#: Test-only fault injection points (HODLAI_FAULT_POINT): the process SIGKILLs itself there.
FaultPoint = Literal["", "after_record", "after_broadcast"]


class FulfillerSettings(OracleSettings):
    # The oracle key: a JSON key file or an encrypted keystore, readable by its owner only.
    # May start with $CREDENTIALS_DIRECTORY (systemd LoadCredential=).
    key_file: Path | None = None
    # Passphrase of a keystore key file; or put it in a 0600 file named by ..._PASSPHRASE_FILE.
    key_passphrase: SecretStr | None = None
    key_passphrase_file: Path | None = None

    # Unconfirmed nonces in flight at most. 64 keeps a fee spike's exposure bounded while one
    # key still fills blocks (64 fulfilments per block is well above the expected load).
    fulfiller_window: int = Field(default=64, ge=1, le=1024)
    # ANSWERED rows claimed, simulated (one RPC batch) and signed per round.
    fulfiller_batch: int = Field(default=32, ge=1, le=512)
    # Percent added to eth_estimateGas: state can change between simulation and inclusion.
    fulfiller_gas_margin_percent: int = Field(default=25, ge=0, le=300)
    # Gas per fulfilment at most. The provider alone forwards 1,000,000 to the vault callback,
    # so ~1.1M is the floor; 3M leaves room for a raised callback cap without paying for bugs.
    fulfiller_gas_cap: int = Field(default=3_000_000, ge=21_000)
    # Cap on maxFeePerGas / gasPrice, in gwei. BSC runs at ~0.1-3 gwei; 100 stops a fee spike
    # or a misreporting node from draining the key.
    fulfiller_max_fee_gwei: Decimal = Field(
        default=Decimal(100), ge=ONE_WEI_IN_GWEI, le=MAX_FEE_CEILING_GWEI
    )
    # Cap on the priority fee (tip), in gwei.
    fulfiller_max_priority_fee_gwei: Decimal = Field(
        default=Decimal(5), ge=0, le=MAX_FEE_CEILING_GWEI
    )
    # Below this balance (native coin, e.g. BNB) sending pauses with a warning until funded:
    # ~0.05 BNB pays for several hundred fulfilments at BSC prices.
    fulfiller_min_balance: Decimal = Field(default=Decimal("0.05"), ge=0)
    # Seconds a transaction may stay unmined before it is replaced with bumped fees.
    fulfiller_stuck_after_s: float = Field(default=30.0, gt=0)
    # Seconds after acceptance before we check the node still holds a transaction (re-send).
    fulfiller_rebroadcast_after_s: float = Field(default=5.0, gt=0)
    # Seconds between receipt polls when idle: a fraction of a block on BSC (0.75-3 s).
    fulfiller_poll_s: float = Field(default=0.25, gt=0, le=60)
    # Seconds between checks of ORACLE_ROLE and the balance while sending normally.
    fulfiller_checks_s: float = Field(default=30.0, gt=0)
    # Seconds a claimed ANSWERED row is held while it is simulated and signed.
    fulfiller_lease_s: float = Field(default=60.0, gt=0)
    # Seconds before re-checking a request the chain reports already fulfilled (the indexer
    # normally marks it FULFILLED first).
    fulfiller_recheck_s: float = Field(default=30.0, gt=0)
    # Seconds the start-up ORACLE_ROLE check keeps asking before the process exits (code 2):
    # a load-balanced RPC can trail a fresh deployment by several blocks.
    fulfiller_startup_wait_s: float = Field(default=60.0, ge=0, le=3600)
    # TEST ONLY: SIGKILL this process at the named point, to prove crash safety.
    fault_point: FaultPoint = ""

    @field_validator("key_file", "key_passphrase_file", mode="before")
    @classmethod
    def _credentials_path(cls, value: object) -> object:
        return expand_credentials(value)

    @property
    def max_fee_wei(self) -> int:
        return int(self.fulfiller_max_fee_gwei * WEI_PER_GWEI)

    @property
    def max_priority_fee_wei(self) -> int:
        return int(self.fulfiller_max_priority_fee_gwei * WEI_PER_GWEI)

    @property
    def min_balance_wei(self) -> int:
        return int(self.fulfiller_min_balance * WEI_PER_COIN)
