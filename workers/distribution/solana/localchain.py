"""Setting up an in-process chain (``SvmCluster``) for tests and demos: SOL, a mint, tokens.

Everything here sends real transactions to the SVM (the token programs do the work); only
``airdrop`` is LiteSVM's own faucet. Nothing here is used on a real cluster.
"""

from __future__ import annotations

from collections.abc import Sequence

from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.system_program import CreateAccountParams, create_account
from solders.transaction import VersionedTransaction
from solders.transaction_metadata import FailedTransactionMetadata
from spl.token.constants import TOKEN_2022_PROGRAM_ID, TOKEN_PROGRAM_ID
from spl.token.instructions import (
    create_idempotent_associated_token_account,
    freeze_account,
    initialize_mint2,
    initialize_transfer_fee_config,
    mint_to_checked,
)
from spl.token.models import (
    FreezeAccountParams,
    InitializeMint2Params,
    InitializeTransferFeeConfigParams,
    MintToCheckedParams,
)

from workers.distribution.solana.cluster import SvmCluster
from workers.distribution.solana.spl import MINT_SIZE, Mint, associated_account, token_amount

#: lamports in one SOL
LAMPORTS_PER_SOL = 1_000_000_000


class LocalChainError(RuntimeError):
    """A set-up transaction failed on the in-process chain."""


def execute(cluster: SvmCluster, payer: Keypair, instructions: Sequence[Instruction],
            *signers: Keypair) -> None:  # fmt: skip
    blockhash = cluster.svm.latest_blockhash()
    message = Message.new_with_blockhash(list(instructions), payer.pubkey(), blockhash)
    result = cluster.svm.send_transaction(VersionedTransaction(message, [payer, *signers]))
    if isinstance(result, FailedTransactionMetadata):
        raise LocalChainError(f"{result.err()}: {list(result.meta().logs())[-3:]}")


def airdrop(cluster: SvmCluster, owner: Pubkey, lamports: int) -> None:
    result = cluster.svm.airdrop(owner, lamports)
    if isinstance(result, FailedTransactionMetadata):
        raise LocalChainError(f"airdrop failed: {result.err()}")


def create_mint(
    cluster: SvmCluster,
    authority: Keypair,
    *,
    decimals: int,
    program: Pubkey = TOKEN_PROGRAM_ID,
    freeze_authority: Pubkey | None = None,
) -> Mint:
    mint = Keypair()
    rent = cluster.svm.minimum_balance_for_rent_exemption(MINT_SIZE)
    execute(
        cluster, authority,
        [
            create_account(CreateAccountParams(
                from_pubkey=authority.pubkey(), to_pubkey=mint.pubkey(), lamports=rent,
                space=MINT_SIZE, owner=program,
            )),
            initialize_mint2(InitializeMint2Params(
                decimals=decimals, program_id=program, mint=mint.pubkey(),
                mint_authority=authority.pubkey(), freeze_authority=freeze_authority,
            )),
        ],
        mint,
    )  # fmt: skip
    return Mint(mint.pubkey(), program, decimals)


def _create(payer: Keypair, owner: Pubkey, mint: Mint) -> Instruction:
    return create_idempotent_associated_token_account(
        payer.pubkey(), owner, mint.address, mint.program
    )


def create_token_account(cluster: SvmCluster, payer: Keypair, owner: Pubkey, mint: Mint) -> Pubkey:
    execute(cluster, payer, [_create(payer, owner, mint)])
    return associated_account(owner, mint)


# Each helper sends ONE transaction (the account's creation included): LiteSVM keeps one
# blockhash until it is expired, so a second identical transaction would be AlreadyProcessed.


def mint_to(
    cluster: SvmCluster, authority: Keypair, mint: Mint, owner: Pubkey, amount: int
) -> None:
    account = associated_account(owner, mint)
    execute(
        cluster, authority,
        [_create(authority, owner, mint), mint_to_checked(MintToCheckedParams(
            program_id=mint.program, mint=mint.address, dest=account,
            mint_authority=authority.pubkey(), amount=amount, decimals=mint.decimals,
        ))],
    )  # fmt: skip


def freeze(cluster: SvmCluster, authority: Keypair, mint: Mint, owner: Pubkey) -> None:
    """Freeze ``owner``'s token account (created first if missing): the SPL analogue of a
    blacklisted recipient — every transfer to it fails with AccountFrozen."""
    account = associated_account(owner, mint)
    execute(
        cluster, authority,
        [_create(authority, owner, mint), freeze_account(FreezeAccountParams(
            program_id=mint.program, account=account, mint=mint.address,
            authority=authority.pubkey(),
        ))],
    )  # fmt: skip


def balance(cluster: SvmCluster, owner: Pubkey, mint: Mint) -> int:
    """``owner``'s token balance read from the SVM (0 without an account)."""
    found = cluster.svm.get_account(associated_account(owner, mint))
    return 0 if found is None else token_amount(bytes(found.data))


def has_account(cluster: SvmCluster, owner: Pubkey, mint: Mint) -> bool:
    return cluster.svm.get_account(associated_account(owner, mint)) is not None


def create_fee_mint(
    cluster: SvmCluster, authority: Keypair, *, decimals: int, basis_points: int
) -> Pubkey:
    """A Token-2022 mint with a transfer fee (TransferFeeConfig): what the rail refuses."""
    mint = Keypair()
    size = 278  # the mint, padding, the account type and one TransferFeeConfig extension
    rent = cluster.svm.minimum_balance_for_rent_exemption(size)
    execute(
        cluster, authority,
        [
            create_account(CreateAccountParams(
                from_pubkey=authority.pubkey(), to_pubkey=mint.pubkey(), lamports=rent,
                space=size, owner=TOKEN_2022_PROGRAM_ID,
            )),
            initialize_transfer_fee_config(InitializeTransferFeeConfigParams(
                program_id=TOKEN_2022_PROGRAM_ID, mint=mint.pubkey(),
                transfer_fee_config_authority=authority.pubkey(),
                withdraw_withheld_authority=authority.pubkey(),
                transfer_fee_basis_points=basis_points, maximum_fee=2**63 - 1,
            )),
            initialize_mint2(InitializeMint2Params(
                decimals=decimals, program_id=TOKEN_2022_PROGRAM_ID, mint=mint.pubkey(),
                mint_authority=authority.pubkey(), freeze_authority=None,
            )),
        ],
        mint,
    )  # fmt: skip
    return mint.pubkey()
