"""GBNF grammars that let a model say only ``{"reasoning": "…", "action": <one action>}``.

Guarantees of :func:`reasoned_action_grammar`:
- Every string the grammar accepts is one JSON object, in exactly the form
  ``{"reasoning": "<text>", "action": <action>}``, whose ``action`` decodes (``json.loads``)
  to exactly one member of the action set, byte for byte: the action is written as its own
  JSON string literal, and that literal as a GBNF literal with every character outside
  printable ASCII escaped (``\\uXXXX`` / ``\\UXXXXXXXX``). Quotes, backslashes, emoji,
  zero-width and other invisible characters, markdown fences and near-duplicates that differ
  only by case all stay distinct alternatives.
- The reasoning is at most ``reasoning_chars`` characters of JSON string content without
  escapes (no ``"``, no ``\\``, no control character), so it can neither end the string early
  nor smuggle an escape, and its length is bounded by the grammar, not by the model's goodwill.
- :func:`max_answer_bytes` bounds the UTF-8 size of any accepted string. Every token the
  model emits is at least one byte, so a token budget of that many bytes can never cut an
  answer short.
- The same action set always yields the same grammar text (a re-run and the trace rely on it).
"""

from __future__ import annotations

import json

# Characters of reasoning the grammar admits: one short sentence, one line of the demo's
# printout. Each ~4 characters are a token, and a token costs a 135M model ~15-20 ms on one
# core under the grammar, so 100 characters keep an answer near half a second.
REASONING_MAX_CHARS = 100
# Bytes of one UTF-8 character at most.
_MAX_CHAR_BYTES = 4
# The fixed parts of the object: {"reasoning": "", "action": } is 29 bytes.
_FRAME = '{"reasoning": "", "action": }'

#: One character of reasoning: JSON string content with no quote, backslash or control char.
REASONING_CHAR = r'[^"\\\x00-\x1F\x7F]'


def gbnf_literal(text: str) -> str:
    """``text`` as a GBNF string literal that matches exactly its characters."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= code < 0x7F:
            out.append(char)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04X}")
        else:
            out.append(f"\\U{code:08X}")
    out.append('"')
    return "".join(out)


def action_json(action: str) -> str:
    """The JSON string literal the model writes for ``action`` (non-ASCII kept as is: a
    ``\\u`` escape would cost the model six tokens per character)."""
    return json.dumps(action, ensure_ascii=False)


def reasoned_action_grammar(
    action_set: tuple[str, ...], *, reasoning_chars: int = REASONING_MAX_CHARS
) -> str:
    """The GBNF grammar of the answer object for ``action_set`` (see the module docstring)."""
    if not action_set:
        raise ValueError("an action set needs at least one action")
    if reasoning_chars < 0:
        raise ValueError("reasoning_chars must be >= 0")
    actions = " | ".join(gbnf_literal(action_json(action)) for action in action_set)
    return "\n".join(
        (
            'root ::= "{\\"reasoning\\": \\"" reasoning "\\", \\"action\\": " action "}"',
            f"reasoning ::= char{{0,{reasoning_chars}}}",
            f"char ::= {REASONING_CHAR}",
            f"action ::= {actions}",
        )
    )


def max_answer_bytes(
    action_set: tuple[str, ...], *, reasoning_chars: int = REASONING_MAX_CHARS
) -> int:
    """The most UTF-8 bytes any string of the grammar for ``action_set`` can have."""
    longest_action = max(len(action_json(action).encode("utf-8")) for action in action_set)
    return len(_FRAME) + _MAX_CHAR_BYTES * reasoning_chars + longest_action
