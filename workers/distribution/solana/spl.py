"""SPL token facts and the distribution transaction: mint reading, batch building, reasons.

A batch is one legacy transaction signed by the source alone, holding for each recipient
two instructions: ``create_idempotent_associated_token_account`` (the source pays the rent
when the account is missing; a no-op when it exists, so a batch sent again after a partial
history never fails on it) and ``transfer_checked`` (the mint and its decimals asserted by
the token program, from the source's associated account). A batch is as many recipients as
fit the 1232-byte packet (about 10), so a failed batch's instructions map back to
recipients by index: :func:`failure_reason` decodes the error into the recipient it names
and a reason an operator can act on. Token-2022 mints work the same way: the token program
is the mint account's owner.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from solders.compute_budget import set_compute_unit_price
from solders.hash import Hash
from solders.instruction import Instruction
from solders.message import Message
from solders.pubkey import Pubkey
from solders.transaction_status import (
    InstructionErrorCustom,
    TransactionErrorInstructionError,
    TransactionErrorType,
)
from spl.token.constants import TOKEN_2022_PROGRAM_ID, TOKEN_PROGRAM_ID
from spl.token.instructions import (
    create_idempotent_associated_token_account,
    get_associated_token_address,
    transfer_checked,
)
from spl.token.models import TransferCheckedParams

from shared.errors import InvalidRequestError

#: bytes of a transaction packet the cluster accepts (PACKET_DATA_SIZE)
PACKET_BYTES: Final = 1232
#: a mint account's layout (spl-token's Mint): decimals at 44, is_initialized at 45
MINT_SIZE: Final = 82
_DECIMALS_AT: Final = 44
_INITIALIZED_AT: Final = 45
#: a token account's layout: mint 0..32, owner 32..64, amount 64..72 (u64 little-endian)
_AMOUNT_AT: Final = 64
#: instructions per recipient in a batch: create the account, transfer
PER_RECIPIENT: Final = 2
TOKEN_PROGRAMS: Final = frozenset({TOKEN_PROGRAM_ID, TOKEN_2022_PROGRAM_ID})


@dataclass(frozen=True)
class Mint:
    address: Pubkey
    #: the token program that owns the mint (SPL Token or Token-2022)
    program: Pubkey
    decimals: int


# Token-2022 mint extensions with which a transfer_checked of N does not credit exactly N
# to the recipient, or cannot be made by this batch at all: refused with the reason.
UNSUPPORTED_EXTENSIONS: Final = {
    1: "a transfer fee (TransferFeeConfig): recipients would receive less than the manifest",
    9: "non-transferable tokens (NonTransferable)",
    14: "a transfer hook (TransferHook), whose extra accounts this transfer does not carry",
}
#: where a Token-2022 account's type byte and then its extensions (type u16, length u16,
#: value) start: after the base layout padded to a token account's 165 bytes
_ACCOUNT_TYPE_AT: Final = 165


def mint_extensions(data: bytes) -> frozenset[int]:
    """The Token-2022 extension types of a mint account (empty for SPL Token)."""
    found: set[int] = set()
    at = _ACCOUNT_TYPE_AT + 1
    while at + 4 <= len(data):
        kind = int.from_bytes(data[at : at + 2], "little")
        length = int.from_bytes(data[at + 2 : at + 4], "little")
        if kind == 0:
            break
        found.add(kind)
        at += 4 + length
    return frozenset(found)


def parse_mint(address: Pubkey, owner: Pubkey, data: bytes) -> Mint:
    if owner not in TOKEN_PROGRAMS:
        raise InvalidRequestError(f"{address} is not an SPL token mint (owner {owner})")
    if len(data) < MINT_SIZE or not data[_INITIALIZED_AT]:
        raise InvalidRequestError(f"{address} is not an initialized SPL token mint")
    for kind in sorted(mint_extensions(data)):
        if kind in UNSUPPORTED_EXTENSIONS:
            raise InvalidRequestError(
                f"mint {address} has {UNSUPPORTED_EXTENSIONS[kind]}; not supported"
            )
    return Mint(address, owner, data[_DECIMALS_AT])


def token_amount(data: bytes) -> int:
    """The balance held by a token account (SPL Token or Token-2022)."""
    return int.from_bytes(data[_AMOUNT_AT : _AMOUNT_AT + 8], "little")


def associated_account(owner: Pubkey, mint: Mint) -> Pubkey:
    return get_associated_token_address(owner, mint.address, mint.program)


def recipient_instructions(
    source: Pubkey, mint: Mint, recipient: Pubkey, amount: int
) -> list[Instruction]:
    return [
        create_idempotent_associated_token_account(source, recipient, mint.address, mint.program),
        transfer_checked(
            TransferCheckedParams(
                program_id=mint.program,
                source=associated_account(source, mint),
                mint=mint.address,
                dest=associated_account(recipient, mint),
                owner=source,
                amount=amount,
                decimals=mint.decimals,
            )
        ),
    ]


def preamble(priority_micro_lamports: int) -> list[Instruction]:
    """Instructions before the recipients' (a compute unit price, when one is set)."""
    if priority_micro_lamports <= 0:
        return []
    return [set_compute_unit_price(priority_micro_lamports)]


def batch_message(
    source: Pubkey,
    mint: Mint,
    items: Sequence[tuple[Pubkey, int]],
    blockhash: Hash,
    *,
    priority_micro_lamports: int = 0,
) -> Message:
    instructions = preamble(priority_micro_lamports)
    for recipient, amount in items:
        instructions += recipient_instructions(source, mint, recipient, amount)
    return Message.new_with_blockhash(instructions, source, blockhash)


def signed_size(message: Message) -> int:
    """Bytes of the transaction once signed by its one signer (a compact-u16 count, a
    64-byte signature, the message)."""
    return 1 + 64 * message.header.num_required_signatures + len(bytes(message))


def plan_batches(
    source: Pubkey,
    mint: Mint,
    items: Sequence[tuple[Pubkey, int]],
    *,
    max_per_batch: int,
    priority_micro_lamports: int = 0,
) -> list[list[tuple[Pubkey, int]]]:
    """Split ``items`` in order into batches that each fit one packet (and at most
    ``max_per_batch`` recipients)."""
    batches: list[list[tuple[Pubkey, int]]] = []
    current: list[tuple[Pubkey, int]] = []
    for item in items:
        trial = [*current, item]
        message = batch_message(
            source, mint, trial, Hash.default(), priority_micro_lamports=priority_micro_lamports
        )
        if current and (len(trial) > max_per_batch or signed_size(message) > PACKET_BYTES):
            batches.append(current)
            current = [item]
        else:
            current = trial
    if current:
        batches.append(current)
    return batches


def message_base64(message: Message) -> str:
    return base64.b64encode(bytes(message)).decode("ascii")


# --- failure reasons ------------------------------------------------------------------------

# spl-token's TokenError (Token-2022 shares the first 20), by custom error code.
TOKEN_ERRORS: Final = (
    "NotRentExempt", "InsufficientFunds", "InvalidMint", "MintMismatch", "OwnerMismatch",
    "FixedSupply", "AlreadyInUse", "InvalidNumberOfProvidedSigners",
    "InvalidNumberOfRequiredSigners", "UninitializedState", "NativeNotSupported",
    "NonNativeHasBalance", "InvalidInstruction", "InvalidState", "Overflow",
    "AuthorityTypeNotSupported", "MintCannotFreeze", "AccountFrozen", "MintDecimalsMismatch",
    "NonNativeNotSupported",
)  # fmt: skip
# What an operator does about the ones a recipient causes.
_TOKEN_HINTS: Final = {
    "AccountFrozen": "the recipient's token account is frozen by the mint's freeze authority",
    "InsufficientFunds": "the source's token balance is short",
    "OwnerMismatch": "the recipient's token account is not owned as expected",
}
# The associated token account program's custom errors.
ATA_ERRORS: Final = ("InvalidOwner",)


@dataclass(frozen=True)
class Failure:
    #: the position in the batch of the recipient the error names; None: the whole batch
    position: int | None
    reason: str


def failure_reason(error: TransactionErrorType, *, offset: int = 0) -> Failure:
    """Decode a transaction error of a batch whose recipients' instructions start at
    instruction ``offset`` into the recipient it names (if any) and a readable reason."""
    if isinstance(error, TransactionErrorInstructionError):
        index = error.index - offset
        if index < 0:
            return Failure(None, f"instruction {error.index} failed: {_instruction_error(error)}")
        position, step = divmod(index, PER_RECIPIENT)
        what = "creating the associated token account" if step == 0 else "transfer_checked"
        detail = _instruction_error(error, ata=step == 0)
        return Failure(position, f"{what} failed: {detail}")
    # Transaction-level: fees, blockhash, account locks; no single recipient is to blame.
    return Failure(None, f"transaction failed: {_name(error)}")


def _instruction_error(error: TransactionErrorInstructionError, *, ata: bool = False) -> str:
    inner = error.err
    if isinstance(inner, InstructionErrorCustom):
        code = inner.code
        names = ATA_ERRORS if ata else TOKEN_ERRORS
        if code < len(names):
            name = names[code]
            hint = "" if ata else _TOKEN_HINTS.get(name, "")
            return f"{name} (custom error {code})" + (f": {hint}" if hint else "")
        return f"custom program error {code}"
    return _name(inner)


def _name(error: object) -> str:
    text = str(error)
    return text.rsplit(".", 1)[-1] if "." in text and " " not in text else text
