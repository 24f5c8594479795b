"""The Solana batch: what fits a packet, and what a failed batch's error says and names."""

from __future__ import annotations

from solders.hash import Hash
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.transaction_status import (
    InstructionErrorCustom,
    InstructionErrorFieldless,
    TransactionErrorFieldless,
    TransactionErrorInstructionError,
)
from spl.token.constants import TOKEN_2022_PROGRAM_ID, TOKEN_PROGRAM_ID

from workers.distribution.solana.spl import (
    PACKET_BYTES,
    Mint,
    batch_message,
    failure_reason,
    plan_batches,
    signed_size,
)

SOURCE = Keypair().pubkey()


def _items(n: int) -> list[tuple[Pubkey, int]]:
    return [(Keypair().pubkey(), 10**18 + i) for i in range(n)]


def test_batches_fill_the_packet_in_order_and_never_exceed_it() -> None:
    for program in (TOKEN_PROGRAM_ID, TOKEN_2022_PROGRAM_ID):
        mint = Mint(Keypair().pubkey(), program, 9)
        items = _items(37)
        batches = plan_batches(SOURCE, mint, items, max_per_batch=50)
        assert [len(b) for b in batches] == [10, 10, 10, 7]
        assert [i for b in batches for i in b] == items
        for batch in batches:
            size = signed_size(batch_message(SOURCE, mint, batch, Hash.default()))
            assert size <= PACKET_BYTES
        eleven = batch_message(SOURCE, mint, items[:11], Hash.default())
        assert signed_size(eleven) > PACKET_BYTES
        assert [len(b) for b in plan_batches(SOURCE, mint, items, max_per_batch=4)] == [4] * 9 + [1]


def test_a_failed_instruction_names_its_recipient_and_the_token_programs_reason() -> None:
    frozen = failure_reason(TransactionErrorInstructionError(7, InstructionErrorCustom(17)))
    assert frozen.position == 3
    assert frozen.reason.startswith("transfer_checked failed: AccountFrozen (custom error 17)")
    assert "frozen by the mint's freeze authority" in frozen.reason

    ata = failure_reason(TransactionErrorInstructionError(4, InstructionErrorCustom(0)))
    assert ata.position == 2
    assert (
        ata.reason == "creating the associated token account failed: InvalidOwner (custom error 0)"
    )

    shifted = failure_reason(
        TransactionErrorInstructionError(4, InstructionErrorCustom(1)), offset=1
    )  # after a compute-budget instruction
    assert shifted.position == 1 and "InsufficientFunds" in shifted.reason

    fieldless = failure_reason(
        TransactionErrorInstructionError(1, InstructionErrorFieldless.InvalidAccountData)
    )
    assert fieldless.position == 0 and fieldless.reason.endswith("InvalidAccountData")
    assert (
        "custom program error 4242"
        in failure_reason(TransactionErrorInstructionError(1, InstructionErrorCustom(4242))).reason
    )


def test_a_transaction_level_error_blames_no_recipient() -> None:
    fee = failure_reason(TransactionErrorFieldless.InsufficientFundsForFee)
    assert fee.position is None
    assert fee.reason == "transaction failed: InsufficientFundsForFee"
    budget = failure_reason(
        TransactionErrorInstructionError(0, InstructionErrorCustom(1)), offset=1
    )
    assert budget.position is None and budget.reason.startswith("instruction 0 failed")
