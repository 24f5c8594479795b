"""Settings of the mint executor and its routes (``HODLAI_MINT_…``, plus the core's
``HODLAI_…``).

The seed's constants keep their values: ``CHECK_INTERVAL`` 10 s, ``PAYMENT_TIMEOUT`` 10
minutes, ``MAX_BATCH_SIZE`` 10, ``MINT_INTERVAL`` 5 s, ``MAX_RETRY_COUNT`` 3. The key file is
the seed's ``private.key`` (``HODLAI_MINT_KEY_FILE``, read by workers/mint/keyfile.py; never
echoed). The chain is a named chain of the node (``HODLAI_MINT_CHAIN``, default: the default
chain, ``HODLAI_RPC_URLS``).
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated, Final

from eth_utils.address import is_hex_address, to_checksum_address
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from shared.config import DEFAULT_CHAIN, CoreSettings

KEY_FILE_ENV: Final = "HODLAI_MINT_KEY_FILE"


def _split(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class MintSettings(CoreSettings):
    # The named chain the USDC and the mint servers are on (HODLAI_CHAINS__<name>__RPC_URLS).
    mint_chain: str = Field(default=DEFAULT_CHAIN, description="the node's named chain")
    mint_usdc_address: str = Field(default="", description="the USDC-like EIP-3009 token")
    # Mint servers (the seed's "Server URL"): each one's GET /tokens says what it sells.
    mint_server_url: str = Field(default="", description="the x402 mint server's base URL")
    mint_server_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="further mint servers (comma-separated)"
    )
    # The tokens the servers sell, when given (the devnet writes them); empty: ask the servers.
    mint_tokens: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # payTo addresses the agent wallets may pay (comma-separated); empty: the servers' own.
    mint_pay_to: Annotated[list[str], NoDecode] = Field(default_factory=list)
    mint_key_file: Path | None = Field(default=None, description="the seed's private.key")
    mint_relayer_address: str = Field(default="", description="checked against the key file")
    mint_check_interval_s: float = Field(
        default=10.0, gt=0, le=3600, description="seconds between checks of pending tasks"
    )
    mint_payment_timeout_s: int = Field(
        default=600, ge=1, le=86_400, description="seconds a task waits for its USDC"
    )
    mint_max_batch: int = Field(default=10, ge=1, le=1000, description="mints per batch")
    mint_interval_s: float = Field(
        default=5.0, ge=0, le=3600, description="seconds between two batches of one task"
    )
    mint_max_retries: int = Field(
        default=3, ge=0, le=100, description="retries of one mint after it failed"
    )
    mint_max_quantity: int = Field(default=1000, ge=1, le=1_000_000)
    mint_rate_per_min: int = Field(
        default=60, ge=1, le=100_000, description="user calls per minute per address and per IP"
    )
    mint_enabled: bool = Field(default=True, description="serve the mint routes")
    # Seconds an x402 purchase's authorization may stay valid at most: the server names it
    # (maxTimeoutSeconds); one that asks for more is refused before anything is signed.
    mint_max_authorization_s: int = Field(default=600, ge=10, le=86_400)
    # Concurrent purchases of one batch (and tasks processed at once).
    mint_concurrency: int = Field(default=10, ge=1, le=200)
    mint_http_timeout_s: float = Field(default=30.0, gt=0, le=600)
    # The relayer's fee caps (gwei per gas) and its sending window.
    mint_max_fee_gwei: Decimal = Field(default=Decimal(100), gt=0, le=100_000)
    mint_max_priority_fee_gwei: Decimal = Field(default=Decimal(2), ge=0, le=100_000)
    mint_relayer_window: int = Field(default=16, ge=1, le=256)
    mint_relayer_poll_s: float = Field(default=0.5, gt=0, le=60)
    # LLM of the chat (shared/llm); the mock LLM of the devnet answers by default there.
    mint_chat_model: str = Field(default="", description="the chat's model")
    # An OpenAI-compatible endpoint for the chat (the devnet's mock LLM, a hosted model);
    # empty: the embedded deterministic backend.
    mint_llm_base_url: str = Field(default="", description="the chat's OpenAI-compatible URL")
    mint_llm_api_key: SecretStr | None = Field(default=None, description="its API key")

    @field_validator("mint_server_urls", "mint_tokens", "mint_pay_to", mode="before")
    @classmethod
    def _lists(cls, value: object) -> object:
        return _split(value)

    @field_validator("mint_tokens", "mint_pay_to")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            if not is_hex_address(address):
                raise ValueError("not a 20-byte hex address")
        return [str(to_checksum_address(a)) for a in value]

    @field_validator("mint_usdc_address", "mint_relayer_address")
    @classmethod
    def _address(cls, value: str) -> str:
        if value and not is_hex_address(value):
            raise ValueError("not a 20-byte hex address")
        return str(to_checksum_address(value)) if value else value

    @property
    def max_fee_wei(self) -> int:
        return int(self.mint_max_fee_gwei * 10**9)

    @property
    def max_priority_fee_wei(self) -> int:
        return int(self.mint_max_priority_fee_gwei * 10**9)

    def servers(self) -> list[str]:
        """Every configured mint server's base URL, without a trailing slash, in order."""
        urls = [self.mint_server_url, *self.mint_server_urls]
        seen: list[str] = []
        for given in urls:
            url = given.rstrip("/")
            if url and url not in seen:
                seen.append(url)
        return seen
