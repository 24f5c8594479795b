"""A Solana cluster as the distribution frame sees it (workers.distribution.networks.Network).

Guarantees:

- ``normalize_address`` is offline and pure: the canonical base58 of a 32-byte public key,
  or None. (Off-curve owners, program-derived addresses, are accepted: the associated token
  account program serves them.)
- ``decimals`` is read from the mint account (SPL Token or Token-2022, the account's owner
  says which); an account that is no initialized mint is an InvalidRequestError, never a
  guess. Balances are read at a finalized slot: the source's balance of a mint is its
  associated token account's (0 when that account does not exist).
- ``build_unsigned`` (the seed's ``buildTokenDistributionTransaction``) returns the
  serialized, unsigned messages a wallet signs (base64, legacy format, the source as fee
  payer), batched exactly as the payer batches: each recipient's associated token account is
  created idempotently and paid with ``transfer_checked``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, Literal

from solders.pubkey import Pubkey

from shared.errors import InvalidRequestError
from workers.distribution.solana.cluster import Cluster
from workers.distribution.solana.spl import (
    Mint,
    associated_account,
    batch_message,
    message_base64,
    parse_mint,
    plan_batches,
    token_amount,
)

#: base58 of 32 bytes is 32..44 characters
_MAX_ADDRESS_CHARS: Final = 44


def parse_pubkey(text: str) -> Pubkey | None:
    candidate = text.strip()
    if not 32 <= len(candidate) <= _MAX_ADDRESS_CHARS:
        return None
    try:
        key = Pubkey.from_string(candidate)
    except ValueError:
        return None
    return key if str(key) == candidate else None


class SolanaNetwork:
    kind: Literal["solana"] = "solana"

    def __init__(
        self,
        name: str,
        cluster: Cluster,
        *,
        batch_max: int = 10,
        priority_micro_lamports: int = 0,
        source: str = "",
    ) -> None:
        self.name = name
        self.cluster = cluster
        #: the paying public key, when this process knows it ("" otherwise): the frame records
        #: it on a run it creates (networks.source_of), and the payer pays only runs of its own
        self.source = source
        self.batch_max = batch_max
        self.priority_micro_lamports = priority_micro_lamports
        self._mints: dict[str, Mint] = {}

    def normalize_address(self, text: str) -> str | None:
        key = parse_pubkey(text)
        return None if key is None else str(key)

    async def mint(self, token: str) -> Mint:
        """The mint's program and decimals (cached: neither changes once initialized)."""
        cached = self._mints.get(token)
        if cached is not None:
            return cached
        address = parse_pubkey(token)
        if address is None:
            raise InvalidRequestError(f"{token!r} is not a Solana address")
        account = await self.cluster.account(address)
        if account is None:
            raise InvalidRequestError(f"mint {token} does not exist on {self.name}")
        mint = parse_mint(address, account.owner, account.data)
        self._mints[token] = mint
        return mint

    async def decimals(self, token: str) -> int:
        return (await self.mint(token)).decimals

    async def token_balance(self, token: str, owner: str) -> int:
        mint = await self.mint(token)
        account = await self.cluster.account(associated_account(self._key(owner), mint))
        return 0 if account is None else token_amount(account.data)

    async def native_balance(self, owner: str) -> int:
        account = await self.cluster.account(self._key(owner))
        return 0 if account is None else account.lamports

    async def build_unsigned(
        self, token: str, source: str, manifest: Sequence[tuple[str, int]]
    ) -> dict[str, Any]:
        mint = await self.mint(token)
        payer = self._key(source)
        items = [(self._key(address), int(amount)) for address, amount in manifest]
        if any(amount <= 0 for _, amount in items):
            raise InvalidRequestError("every amount must be > 0")
        recent = await self.cluster.recent_blockhash()
        batches = plan_batches(
            payer, mint, items, max_per_batch=self.batch_max,
            priority_micro_lamports=self.priority_micro_lamports,
        )  # fmt: skip
        priority = self.priority_micro_lamports
        messages = [
            message_base64(
                batch_message(
                    payer, mint, batch, recent.blockhash, priority_micro_lamports=priority
                )
            )
            for batch in batches
        ]
        return {
            "network": self.name,
            "kind": self.kind,
            "encoding": "base64",
            "format": "legacy",
            "feePayer": str(payer),
            "tokenMint": str(mint.address),
            "tokenProgram": str(mint.program),
            "decimals": mint.decimals,
            "recentBlockhash": str(recent.blockhash),
            "lastValidBlockHeight": recent.last_valid_block_height,
            "message": messages[0] if messages else None,
            "messages": messages,
            "recipientsPerMessage": [len(batch) for batch in batches],
        }

    async def aclose(self) -> None:
        await self.cluster.aclose()

    def _key(self, text: str) -> Pubkey:
        key = parse_pubkey(text)
        if key is None:
            raise InvalidRequestError(f"{text!r} is not a Solana address")
        return key
