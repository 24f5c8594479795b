"""Settings of ``hodlai mint-server`` (``HODLAI_MINT_SERVER_…``, the shared ``HODLAI_MINT_…``
names of the devnet env file, and the core's ``HODLAI_…``).

The key file (``HODLAI_MINT_KEY_FILE``, the seed's ``private.key``) holds the minter key; the
server signs with nothing else. Amounts are integers in base units.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated, Final, Literal

from eth_utils.address import is_hex_address, to_checksum_address
from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from shared.config import CoreSettings, _split_comma_list, expand_credentials

WEI_PER_GWEI: Final = 10**9
WEI_PER_COIN: Final = 10**18

#: Test-only fault points (HODLAI_MINT_SERVER_FAULT_POINT): the process SIGKILLs itself there.
#: ``after_settle``: the settle is FINAL (the mint is owed, recorded) and the mint not yet sent.
FaultPoint = Literal["", "after_record", "after_broadcast", "after_settle"]


class MintServerSettings(CoreSettings):
    mint_key_file: Path | None = Field(
        default=None,
        description="the seed's private.key (0600); the server signs with its minterPrivateKey",
    )
    mint_usdc_address: str | None = Field(
        default=None, description="the USDC-like EIP-3009 token payments are made in"
    )
    mint_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated MintToken addresses this server sells"
    )
    mint_pay_to: str | None = Field(
        default=None, description="the address the USDC of every purchase is paid to (payTo)"
    )
    mint_server_host: str = Field(default="127.0.0.1", description="address to listen on")
    mint_server_port: int = Field(default=8090, ge=0, le=65535, description="port (0: any)")
    mint_server_chain: str = Field(
        default="default", description="the named chain it serves (HODLAI_CHAINS__<name>__…)"
    )
    mint_server_confirmations: int | None = Field(
        default=None,
        ge=0,
        le=10_000,
        description="blocks before a settle or mint is final (default: the chain's)",
    )
    mint_server_price_per_mint: int = Field(
        default=1_000_000,
        ge=1,
        description="price of one mint in the USDC's base units (1000000 = 1 USDC)",
    )
    mint_server_max_timeout_s: int = Field(
        default=300,
        ge=10,
        le=86_400,
        description="maxTimeoutSeconds of the 402 requirements (an authorization's lifetime)",
    )
    mint_server_settle_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="seconds a request waits for its settle (then its mint) to be final",
    )
    mint_server_poll_s: float = Field(
        default=0.1, gt=0, le=60, description="seconds between rounds of the sending loop"
    )
    mint_server_window: int = Field(
        default=64, ge=1, le=1024, description="the minter key's transactions in flight at most"
    )
    mint_server_batch: int = Field(
        default=32, ge=1, le=512, description="settles and mints recorded per round at most"
    )
    mint_server_gas_limit: int = Field(
        default=300_000, ge=21_000, le=10_000_000, description="gas of a settle or a mint"
    )
    mint_server_max_fee_gwei: Decimal = Field(
        default=Decimal(100), gt=0, le=10_000, description="cap on maxFeePerGas, gwei"
    )
    mint_server_max_priority_fee_gwei: Decimal = Field(
        default=Decimal(5), ge=0, le=10_000, description="cap on the priority fee, gwei"
    )
    mint_server_min_balance: Decimal = Field(
        default=Decimal("0.01"),
        ge=0,
        description="minter balance (native coin) below which sending pauses",
    )
    mint_server_stuck_after_s: float = Field(
        default=30.0, gt=0, description="seconds unmined before a fee bump"
    )
    mint_server_rebroadcast_after_s: float = Field(
        default=5.0, gt=0, description="seconds before checking a node still holds a transaction"
    )
    mint_server_fault_point: FaultPoint = Field(
        default="", description="TEST ONLY: SIGKILL the process at this point"
    )

    @field_validator("mint_key_file", mode="before")
    @classmethod
    def _credentials_path(cls, value: object) -> object:
        return expand_credentials(value)

    @field_validator("mint_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        return _split_comma_list(value)

    @field_validator("mint_tokens")
    @classmethod
    def _check_tokens(cls, value: list[str]) -> list[str]:
        out: list[str] = []
        for token in value:
            if not is_hex_address(token):
                raise ValueError("every entry must be a 0x-prefixed 20-byte address")
            checksummed = to_checksum_address(token)
            if checksummed in out:
                raise ValueError(f"{checksummed} is listed twice")
            out.append(checksummed)
        return out

    @field_validator("mint_usdc_address", "mint_pay_to")
    @classmethod
    def _check_address(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not is_hex_address(value):
            raise ValueError("must be a 0x-prefixed 20-byte address")
        return str(to_checksum_address(value))

    @property
    def max_fee_wei(self) -> int:
        return int(self.mint_server_max_fee_gwei * WEI_PER_GWEI)

    @property
    def max_priority_fee_wei(self) -> int:
        return int(self.mint_server_max_priority_fee_gwei * WEI_PER_GWEI)

    @property
    def min_balance_wei(self) -> int:
        return int(self.mint_server_min_balance * WEI_PER_COIN)
