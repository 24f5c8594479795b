"""The distribution executor's contracts on EVM chains: the multisend (contracts/Multisend.sol),
the devnet's token (contracts/DistToken.sol) and the test tokens that blacklist, charge a fee
or return false (contracts/test/), declared to the core (pyproject.toml ``hodlai.abis``) so
that revert decoding names their errors; and the calldata and logs the payer builds and reads.

Guarantees:

- :func:`disperse_calldata` is ``disperseToken(token, recipients, values)``, the one call the
  source key makes to the multisend; :func:`approve_calldata` the one it makes to a token.
  Both are exactly what shared/tx/policy.py's ``MOVEMENTS`` decodes, so the spend policy caps
  what they move.
- :func:`paid_transfers` reads a receipt's ``Transfer(from, to, value)`` logs of one token from
  one payer (the multisend): it emits no event of its own, each payment is the token's log.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Final

from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from shared.contracts import ContractAbis
from shared.tx.receipts import ReceiptLog

MULTISEND_CONTRACT: Final = "Multisend"
TOKEN_CONTRACT: Final = "DistToken"
BLACKLIST_TOKEN_CONTRACT: Final = "BlacklistToken"
FEE_TOKEN_CONTRACT: Final = "FeeToken"
FALSE_TOKEN_CONTRACT: Final = "FalseToken"

ABIS: Final = ContractAbis(
    contracts=(
        MULTISEND_CONTRACT,
        TOKEN_CONTRACT,
        BLACKLIST_TOKEN_CONTRACT,
        FEE_TOKEN_CONTRACT,
        FALSE_TOKEN_CONTRACT,
    )
)

DISPERSE_SIGNATURE: Final = "disperseToken(address,address[],uint256[])"
APPROVE_SIGNATURE: Final = "approve(address,uint256)"
DISPERSE_SELECTOR: Final = keccak(text=DISPERSE_SIGNATURE)[:4]
APPROVE_SELECTOR: Final = keccak(text=APPROVE_SIGNATURE)[:4]
BALANCE_OF_SELECTOR: Final = keccak(text="balanceOf(address)")[:4]
ALLOWANCE_SELECTOR: Final = keccak(text="allowance(address,address)")[:4]
DECIMALS_SELECTOR: Final = keccak(text="decimals()")[:4]
TRANSFER_TOPIC: Final = "0x" + keccak(text="Transfer(address,address,uint256)").hex()
#: The custom errors (OpenZeppelin's ERC20) that mean the source is short, not the recipient.
SHORTFALL_ERRORS: Final = frozenset({"ERC20InsufficientBalance", "ERC20InsufficientAllowance"})


def disperse_calldata(token: str, manifest: Sequence[tuple[str, int]]) -> bytes:
    """``disperseToken(token, [address…], [amount…])``."""
    recipients = [to_checksum_address(address) for address, _ in manifest]
    values = [int(amount) for _, amount in manifest]
    body = abi_encode(["address", "address[]", "uint256[]"], [token, recipients, values])
    return DISPERSE_SELECTOR + body


def approve_calldata(spender: str, amount: int) -> bytes:
    return APPROVE_SELECTOR + abi_encode(["address", "uint256"], [spender, amount])


def balance_of_calldata(owner: str) -> bytes:
    return BALANCE_OF_SELECTOR + abi_encode(["address"], [owner])


def allowance_calldata(owner: str, spender: str) -> bytes:
    return ALLOWANCE_SELECTOR + abi_encode(["address", "address"], [owner, spender])


def decode_uint(raw: str) -> int:
    """A ``uint256`` answer of ``eth_call`` (0x-hex)."""
    data = bytes.fromhex(raw.removeprefix("0x"))
    if len(data) < 32:
        raise ValueError(f"expected a uint256, got {len(data)} bytes")
    (value,) = abi_decode(["uint256"], data[:32])
    return int(value)


def address_topic(address: str) -> str:
    return "0x" + "00" * 12 + address.lower().removeprefix("0x")


def paid_transfers(
    logs: Iterable[ReceiptLog], *, token: str, source: str
) -> Counter[tuple[str, int]]:
    """(recipient checksummed, value) -> how many ``Transfer(source, recipient, value)`` logs
    of ``token`` the receipt holds."""
    token_cs, from_topic = to_checksum_address(token), address_topic(source)
    found: Counter[tuple[str, int]] = Counter()
    for entry in logs:
        topics = entry["topics"]
        if (
            entry["address"] != token_cs
            or len(topics) != 3
            or topics[0] != TRANSFER_TOPIC
            or topics[1] != from_topic
            or len(entry["data"]) != 32
        ):
            continue
        recipient = to_checksum_address("0x" + topics[2][-40:])
        found[(recipient, int.from_bytes(entry["data"], "big"))] += 1
    return found
