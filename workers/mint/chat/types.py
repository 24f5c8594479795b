"""The values the chat hands to the mint executor (the interface of issue 20's streams).

An :class:`Order` exists only when every guard of :func:`workers.mint.chat.converse` held:
its address is one the user wrote and a mint server sells, its quantity a number the user
wrote within 1..max, its price the :class:`Offer`'s. Nothing in it comes from the model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

Language = Literal["zh", "en"]


@dataclass(frozen=True)
class Offer:
    """What a mint server sells, from its 402 requirements."""

    token_address: str  # checksum
    price_per_mint: int  # USDC base units
    server_url: str
    network: str  # "eip155:31337"
    pay_to: str


class Catalog(Protocol):
    """The tokens the configured mint servers sell."""

    async def offer(self, token_address: str) -> Offer | None:
        """The offer for ``token_address`` (checksum), None when nobody sells it."""
        ...


class StaticCatalog:
    """A :class:`Catalog` of fixed offers (tests, and a node whose offers are configured
    rather than read from the servers' 402 requirements). Look-ups ignore address case."""

    def __init__(self, offers: Iterable[Offer]) -> None:
        self._offers = {offer.token_address.lower(): offer for offer in offers}

    async def offer(self, token_address: str) -> Offer | None:
        return self._offers.get(token_address.lower())


@dataclass(frozen=True)
class Turn:
    """One message of a conversation."""

    role: Literal["user", "assistant"]
    content: str


@dataclass(frozen=True)
class Order:
    """A complete, checked order: what a task is created from."""

    token_address: str
    quantity: int
    offer: Offer

    @property
    def total_cost(self) -> int:
        """USDC base units: quantity times the offer's price, never the model's figure."""
        return self.quantity * self.offer.price_per_mint


@dataclass(frozen=True)
class ChatReply:
    """What to answer the user, and the order when it is complete."""

    reply: str
    order: Order | None
    language: Language
