"""EIP-3009 as Circle's FiatTokenV2 defines it: the typed-data kinds, their EIP-712 types, the
calls and events the ledger and its reconciler use, computed from their signatures (never
copied from an artifact), and the digest a token verifies.

Guarantees:

- :func:`typed_data` builds exactly the ``eth_signTypedData_v4`` structure whose digest the
  token contract (contracts/Eip3009Token.sol, USDC) recomputes: a test signs with it and the
  token accepts the signature on anvil.
- :func:`domain_separator` is the token's ``DOMAIN_SEPARATOR()`` for (name, version, chain id,
  address); the allowlist compares the two, so a domain the contract does not use is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Final

from eth_abi.abi import encode as abi_encode
from eth_utils.crypto import keccak


class Kind(StrEnum):
    """The EIP-712 primary types of EIP-3009: each is money (or unmakes money) once signed."""

    TRANSFER = "TransferWithAuthorization"
    RECEIVE = "ReceiveWithAuthorization"
    CANCEL = "CancelAuthorization"


#: the kinds that move value (a cancel moves none)
PAYMENT_KINDS: Final = frozenset({Kind.TRANSFER, Kind.RECEIVE})

_DOMAIN_FIELDS: Final = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]
_PAYMENT_FIELDS: Final = [
    {"name": "from", "type": "address"},
    {"name": "to", "type": "address"},
    {"name": "value", "type": "uint256"},
    {"name": "validAfter", "type": "uint256"},
    {"name": "validBefore", "type": "uint256"},
    {"name": "nonce", "type": "bytes32"},
]
_CANCEL_FIELDS: Final = [
    {"name": "authorizer", "type": "address"},
    {"name": "nonce", "type": "bytes32"},
]

UINT256_MAX: Final = 2**256 - 1
#: seconds: validAfter/validBefore are stored as SQLite INTEGERs; a deadline past 2^63-1 s
#: (292 billion years) means "never expires", which the ledger does not sign
MAX_TIMESTAMP: Final = 2**63 - 1


def _selector(signature: str) -> str:
    return "0x" + keccak(text=signature).hex()[:8]


def _topic(signature: str) -> str:
    return "0x" + keccak(text=signature).hex()


NAME_SELECTOR: Final = _selector("name()")
VERSION_SELECTOR: Final = _selector("version()")
DOMAIN_SEPARATOR_SELECTOR: Final = _selector("DOMAIN_SEPARATOR()")
AUTHORIZATION_STATE_SELECTOR: Final = _selector("authorizationState(address,bytes32)")
TRANSFER_WITH_AUTHORIZATION_SELECTOR: Final = _selector(
    "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)"
)
RECEIVE_WITH_AUTHORIZATION_SELECTOR: Final = _selector(
    "receiveWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)"
)
CANCEL_AUTHORIZATION_SELECTOR: Final = _selector(
    "cancelAuthorization(address,bytes32,uint8,bytes32,bytes32)"
)
AUTHORIZATION_USED_TOPIC: Final = _topic("AuthorizationUsed(address,bytes32)")
AUTHORIZATION_CANCELED_TOPIC: Final = _topic("AuthorizationCanceled(address,bytes32)")
TRANSFER_TOPIC: Final = _topic("Transfer(address,address,uint256)")

_DOMAIN_TYPEHASH: Final = keccak(
    text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)


def domain_separator(*, name: str, version: str, chain_id: int, token: str) -> bytes:
    """The EIP-712 domain separator a FiatTokenV2-style token computes for itself."""
    return keccak(
        abi_encode(
            ["bytes32", "bytes32", "bytes32", "uint256", "address"],
            [_DOMAIN_TYPEHASH, keccak(text=name), keccak(text=version), chain_id, token],
        )
    )


def eip712_domain(*, name: str, version: str, chain_id: int, token: str) -> dict[str, Any]:
    return {"name": name, "version": version, "chainId": chain_id, "verifyingContract": token}


def typed_data(kind: Kind, domain: Mapping[str, Any], message: Mapping[str, Any]) -> dict[str, Any]:
    """The ``eth_signTypedData_v4`` structure of one EIP-3009 authorization."""
    fields = _CANCEL_FIELDS if kind is Kind.CANCEL else _PAYMENT_FIELDS
    return {
        "types": {"EIP712Domain": _DOMAIN_FIELDS, kind.value: fields},
        "primaryType": kind.value,
        "domain": dict(domain),
        "message": dict(message),
    }


def address_topic(address: str) -> str:
    """An address as an indexed event topic (32 bytes, left-padded), lowercase hex."""
    return "0x" + "00" * 12 + address.lower().removeprefix("0x")


def encode_call(selector: str, types: list[str], args: list[Any]) -> str:
    return selector + abi_encode(types, args).hex()
