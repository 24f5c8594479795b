"""The mint executor's chat: a user's messages become a checked order, or a question back.

:func:`converse` asks the model (through the core LLM interface, a JSON-schema answer) and
then applies the guards that make the model's word irrelevant to safety;
:func:`task_created_reply` renders the seed's success message once the executor created the
task. The values exchanged with the executor are in :mod:`workers.mint.chat.types`.
"""

from workers.mint.chat.converse import MAX_MESSAGE_CHARS, ORDER_SCHEMA, converse
from workers.mint.chat.replies import TASK_CREATED_MARK, format_usdc, task_created_reply
from workers.mint.chat.types import (
    Catalog,
    ChatReply,
    Language,
    Offer,
    Order,
    StaticCatalog,
    Turn,
)

__all__ = [
    "MAX_MESSAGE_CHARS",
    "ORDER_SCHEMA",
    "TASK_CREATED_MARK",
    "Catalog",
    "ChatReply",
    "Language",
    "Offer",
    "Order",
    "StaticCatalog",
    "Turn",
    "converse",
    "format_usdc",
    "task_created_reply",
]
