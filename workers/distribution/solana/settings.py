"""Settings of the Solana rail (``HODLAI_DIST_SOLANA_…``, plus the core's ``HODLAI_…``).

The Solana network is off unless ``HODLAI_DIST_SOLANA_NETWORK`` names it: ``devnet`` or
``mainnet-beta`` (the seed's two, each with its public RPC URL unless
``HODLAI_DIST_SOLANA_RPC_URL`` names another), ``testnet``, or ``local`` (an in-process SVM:
tests and in-process demos only, since no other process can see it). The source key
(``HODLAI_DIST_SOLANA_KEY_FILE``) is a secret: only its public key appears in logs, errors
and answers. An RPC URL may carry an API key in its path or query, so it is logged redacted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final, Literal

from pydantic import Field, field_validator

from shared.config import CoreSettings, expand_credentials, redact_url
from shared.errors import ConfigError

SolanaNetworkName = Literal["", "devnet", "mainnet-beta", "testnet", "local"]

PUBLIC_RPC_URLS: Final = {
    "devnet": "https://api.devnet.solana.com",
    "mainnet-beta": "https://api.mainnet-beta.solana.com",
    "testnet": "https://api.testnet.solana.com",
}
NETWORK_ENV: Final = "HODLAI_DIST_SOLANA_NETWORK"
KEY_FILE_ENV: Final = "HODLAI_DIST_SOLANA_KEY_FILE"


class SolanaSettings(CoreSettings):
    dist_solana_network: SolanaNetworkName = Field(
        default="",
        description=(
            "the Solana cluster tasks may name: devnet, mainnet-beta, testnet, or local (an"
            " in-process SVM, tests only); empty: no Solana network"
        ),
    )
    dist_solana_rpc_url: str = Field(
        default="",
        description="the cluster's JSON-RPC URL (default: the network's public URL)",
    )
    dist_solana_key_file: Path | None = Field(
        default=None,
        description=(
            "the Solana source keypair (solana-keygen's JSON array of 64 bytes, 0600); may"
            " start with $CREDENTIALS_DIRECTORY"
        ),
    )
    dist_solana_source_address: str = Field(
        default="",
        description="the Solana source's public key, for processes without the key file",
    )
    # 10: the packet (1232 bytes) holds 10 recipients' account creation + transfer_checked;
    # a smaller number makes a failed batch cheaper to isolate, never a larger one.
    dist_solana_batch_max: int = Field(
        default=10, ge=1, le=10, description="recipients per transaction at most"
    )
    dist_solana_priority_micro_lamports: int = Field(
        default=0,
        ge=0,
        le=10_000_000,
        description="compute unit price (micro-lamports) added to each transaction; 0: none",
    )
    # 2 s: a dropped packet is re-sent well inside the ~60 s a blockhash lives, without
    # flooding the RPC node; sending the same bytes again can never pay twice.
    dist_solana_resend_s: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="seconds between re-sends of a transaction's same bytes while unconfirmed",
    )

    @field_validator("dist_solana_key_file", mode="before")
    @classmethod
    def _credentials_path(cls, value: object) -> object:
        return expand_credentials(value)

    def solana_rpc_url(self) -> str:
        if self.dist_solana_rpc_url:
            return self.dist_solana_rpc_url
        url = PUBLIC_RPC_URLS.get(self.dist_solana_network)
        if url is None:
            raise ConfigError(
                f"HODLAI_DIST_SOLANA_RPC_URL: no URL for network {self.dist_solana_network!r}"
            )
        return url

    def solana_rpc_label(self) -> str:
        return redact_url(self.solana_rpc_url())
