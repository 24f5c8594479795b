"""What the chat says, in Chinese and English: the seed's lines where the seed has them.

Every reply is a fixed template filled with checked values (addresses the user wrote, amounts
from the mint server's offer); no reply quotes the model.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from workers.mint.chat.types import Language, Order

#: How a task-created reply starts: a conversation's new order begins after it.
TASK_CREATED_MARK = "✅"
USDC_DECIMALS = 6
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_LATIN_WORD = re.compile(r"[A-Za-z]{2,}")
_HEX = re.compile(r"0[xX][0-9a-fA-F]+")

REPLIES: dict[str, dict[Language, str]] = {
    "ask_everything": {
        "zh": "请告诉我 token 地址和 mint 数量，例如：我想 mint 100 个 0x…",
        "en": 'Please tell me the token address and how many mints, e.g. "mint 100 of 0x…".',
    },
    "ask_address": {"zh": "请告诉我 token 地址", "en": "Please tell me the token address."},
    "ask_quantity": {
        "zh": "请告诉我要 mint 多少次（1 到 {max_quantity}）",
        "en": "How many mints would you like (1 to {max_quantity})?",
    },
    "two_addresses": {
        "zh": "你提到了多个地址：{addresses}。请只告诉我一个 token 地址",
        "en": "You named more than one address: {addresses}. Please tell me exactly one token"
        " address.",
    },
    "address_not_written": {
        "zh": "我只能使用你自己写下的 token 地址。请告诉我 token 地址",
        "en": "I can only use a token address you wrote yourself. Please tell me the token"
        " address.",
    },
    "quantity_not_written": {
        "zh": "我只能使用你自己写下的数量。请告诉我要 mint 多少次（1 到 {max_quantity}）",
        "en": "I can only use a quantity you wrote yourself. How many mints would you like"
        " (1 to {max_quantity})?",
    },
    "quantity_out_of_range": {
        "zh": "数量必须在 1 到 {max_quantity} 之间。请告诉我要 mint 多少次",
        "en": "The quantity must be between 1 and {max_quantity}. How many mints would you like?",
    },
    "not_sold": {
        "zh": "没有已配置的 mint 服务器出售 {token}。请告诉我另一个 token 地址",
        "en": "No configured mint server sells {token}. Please tell me another token address.",
    },
    "not_an_order": {
        "zh": "我可以帮你 mint token：请告诉我 token 地址和 mint 数量，例如：我想 mint 100 个 0x…",
        "en": "I can mint tokens for you: tell me the token address and how many mints, e.g."
        ' "mint 100 of 0x…".',
    },
    "bad_answer": {
        "zh": "抱歉，我没有理解。请告诉我 token 地址和 mint 数量",
        "en": "Sorry, I did not understand. Please tell me the token address and how many mints.",
    },
    "too_long": {
        "zh": "消息太长了（最多 {limit} 个字符）。请简短地告诉我 token 地址和 mint 数量",
        "en": "That message is too long (at most {limit} characters). Please tell me the token"
        " address and how many mints.",
    },
    "order": {
        "zh": "好的：mint {quantity} 次 {token}，总成本 {cost} USDC。正在创建任务…",
        "en": "OK: {quantity} mints of {token}, total cost {cost} USDC. Creating the task…",
    },
}


def reply(reason: str, language: Language, **values: object) -> str:
    """The template for ``reason`` in ``language``, filled with ``values``."""
    return REPLIES[reason][language].format(**values)


def detect_language(text: str) -> Language | None:
    """ "zh" for any Chinese character, "en" for Latin words (0x-hex aside), else None (an
    address or a number alone says nothing about the user's language)."""
    if _CJK.search(text):
        return "zh"
    if _LATIN_WORD.search(_HEX.sub(" ", text)):
        return "en"
    return None


def format_usdc(amount: int) -> str:
    """Base units as USDC with all 6 decimals: 10000000 -> "10.000000"."""
    scale = 10**USDC_DECIMALS
    sign = "-" if amount < 0 else ""
    whole, fraction = divmod(abs(amount), scale)
    return f"{sign}{whole}.{fraction:0{USDC_DECIMALS}d}"


def format_deadline(moment: datetime) -> str:
    """``YYYY-MM-DD HH:MM:SS UTC`` (a naive datetime is taken as UTC)."""
    utc = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%d %H:%M:%S UTC")


def task_created_reply(
    order: Order, *, agent_address: str, task_id: str, payment_deadline: datetime, language: str
) -> str:
    """The seed's success message: token, quantity, total cost, agent wallet, task id, and
    the payment deadline; Chinese for ``language == "zh"``, else English."""
    cost = format_usdc(order.total_cost)
    deadline = format_deadline(payment_deadline)
    if language == "zh":
        lines = [
            f"{TASK_CREATED_MARK} 任务创建成功！",
            f"Token: {order.token_address}",
            f"数量: {order.quantity} 次",
            f"总成本: {cost} USDC",
            "",
            f"请转账 {cost} USDC 到你的 AI Agent 钱包:",
            f"地址: {agent_address}",
            f"任务ID: {task_id}",
            f"付款截止时间: {deadline}",
        ]
    else:
        lines = [
            f"{TASK_CREATED_MARK} Task created!",
            f"Token: {order.token_address}",
            f"Quantity: {order.quantity} mints",
            f"Total cost: {cost} USDC",
            "",
            f"Please transfer {cost} USDC to your AI Agent wallet:",
            f"Address: {agent_address}",
            f"Task ID: {task_id}",
            f"Payment deadline: {deadline}",
        ]
    return "\n".join(lines)
