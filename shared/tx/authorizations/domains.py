"""The domain allowlist: the (token, chain) pairs the node may sign EIP-3009 authorizations
for, with each token's EIP-712 domain read from the contract itself.

Guarantees:

- Only a listed (token, chain id) resolves; anything else is a DomainNotAllowedError.
- A resolved :class:`TokenDomain` holds what the contract says, read in one JSON-RPC batch:
  ``eth_chainId`` (the RPC must serve the listed chain), ``name()``, ``version()`` and
  ``DOMAIN_SEPARATOR()``; the separator computed from the first three must equal the
  contract's, so the node never signs under a domain the token does not verify with. Names
  and versions are never hard-coded (Base's USDC is "USD Coin"/"2", Base Sepolia's "USDC"/"2").
- Resolved domains are cached for ``ttl_s`` (a proxy upgrade can change them; one batch call
  per token per TTL is the cost). The ledger signs only with a domain this allowlist resolved
  and still holds (:meth:`DomainAllowlist.check`).
- :meth:`TokenDomain.require_matches` refuses a domain proposed from outside (an x402
  server's requirements) that differs from the contract's in any field, naming the field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import structlog
from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_utils.address import is_hex_address, to_checksum_address

from shared.chain.rpc import RpcCall, RpcClient, hex_int
from shared.tx.authorizations.eip3009 import (
    DOMAIN_SEPARATOR_SELECTOR,
    NAME_SELECTOR,
    VERSION_SELECTOR,
    domain_separator,
    eip712_domain,
)
from shared.tx.authorizations.ledger import DomainMismatchError, DomainNotAllowedError

log = structlog.get_logger(__name__)

# Seconds a token's domain read from the chain is trusted before it is read again: USDC is
# an upgradeable proxy, so its name/version can change, but only by a governed upgrade;
# re-reading every 10 minutes costs one batch call per token.
DOMAIN_CACHE_TTL_S: Final = 600.0


@dataclass(frozen=True)
class TokenDomain:
    """A token's EIP-712 domain as its contract reports it."""

    token: str  # checksummed
    chain_id: int
    name: str
    version: str
    separator: bytes
    read_at: float = field(compare=False)

    def eip712(self) -> dict[str, Any]:
        return eip712_domain(
            name=self.name, version=self.version, chain_id=self.chain_id, token=self.token
        )

    def require_matches(self, proposed: Mapping[str, Any]) -> None:
        """Refuse ``proposed`` (an EIP-712 domain mapping) unless every field equals this
        domain's; a missing field is refused too."""
        expected = self.eip712()
        for key, want in expected.items():
            got = proposed.get(key)
            same = (
                isinstance(got, str) and is_hex_address(got) and got.lower() == want.lower()
                if key == "verifyingContract"
                else _as_int(got) == want
                if key == "chainId"
                else got == want
            )
            if not same:
                raise DomainMismatchError(
                    f"EIP-712 domain field {key} is {got!r}, but the token {self.token} on "
                    f"chain {self.chain_id} says {want!r}"
                )
        extra = set(proposed) - set(expected)
        if extra:
            raise DomainMismatchError(
                f"EIP-712 domain has fields the token does not use: {sorted(extra)}"
            )


class DomainAllowlist:
    """The (token, chain id) pairs this process may sign for, and their resolved domains."""

    def __init__(self, allowed: Iterable[tuple[str, int]], *, ttl_s: float = DOMAIN_CACHE_TTL_S):
        self._allowed = {(_checksum(token), int(chain)) for token, chain in allowed}
        self._ttl_s = ttl_s
        self._cache: dict[tuple[str, int], TokenDomain] = {}

    def allows(self, token: str, chain_id: int) -> bool:
        return is_hex_address(token) and (_checksum(token), chain_id) in self._allowed

    def _require_allowed(self, token: str, chain_id: int) -> str:
        if not isinstance(token, str) or not is_hex_address(token):
            raise DomainNotAllowedError("the token is not a 20-byte hex address")
        checksummed = _checksum(token)
        if (checksummed, chain_id) not in self._allowed:
            raise DomainNotAllowedError(
                f"token {checksummed} on chain {chain_id} is not on the signing allowlist"
            )
        return checksummed

    async def resolve(
        self, rpc: RpcClient, token: str, chain_id: int, *, now: float
    ) -> TokenDomain:
        """The domain of an allowed token, from the cache or read from the chain."""
        token = self._require_allowed(token, chain_id)
        cached = self._cache.get((token, chain_id))
        if cached is not None and now - cached.read_at < self._ttl_s:
            return cached
        reported, name_raw, version_raw, separator_raw = await rpc.batch(
            [
                RpcCall("eth_chainId", []),
                RpcCall("eth_call", [{"to": token, "data": NAME_SELECTOR}, "latest"]),
                RpcCall("eth_call", [{"to": token, "data": VERSION_SELECTOR}, "latest"]),
                RpcCall("eth_call", [{"to": token, "data": DOMAIN_SEPARATOR_SELECTOR}, "latest"]),
            ]
        )
        if hex_int(reported) != chain_id:
            raise DomainMismatchError(
                f"token {token} is allowed on chain {chain_id}, but the RPC serves chain "
                f"{hex_int(reported)}"
            )
        name = _decode_string(name_raw, token=token, what="name()")
        version = _decode_string(version_raw, token=token, what="version()")
        separator = _decode_bytes32(separator_raw, token=token)
        computed = domain_separator(name=name, version=version, chain_id=chain_id, token=token)
        if separator != computed:
            raise DomainMismatchError(
                f"token {token}: DOMAIN_SEPARATOR() 0x{separator.hex()} is not the EIP-712 "
                f"separator of name {name!r}, version {version!r}, chain {chain_id}"
            )
        domain = TokenDomain(token, chain_id, name, version, separator, read_at=now)
        if cached is not None and cached != domain:
            log.warning(
                "authorization_domain_changed",
                token=token,
                chain_id=chain_id,
                name=name,
                version=version,
                was_name=cached.name,
                was_version=cached.version,
            )
        self._cache[(token, chain_id)] = domain
        log.info(
            "authorization_domain_read", token=token, chain_id=chain_id, name=name, version=version
        )
        return domain

    def check(self, domain: TokenDomain, *, now: float) -> None:
        """Refuse a domain that this allowlist did not resolve, or no longer trusts."""
        token = self._require_allowed(domain.token, domain.chain_id)
        cached = self._cache.get((token, domain.chain_id))
        if cached is None or cached != domain:
            raise DomainMismatchError(
                f"the domain given for token {token} on chain {domain.chain_id} is not the one "
                "read from the contract: resolve() it first"
            )
        if now - cached.read_at >= self._ttl_s:
            raise DomainMismatchError(
                f"the domain of token {token} on chain {domain.chain_id} was read "
                f"{now - cached.read_at:.0f} s ago: resolve() it again"
            )


def _checksum(token: str) -> str:
    return str(to_checksum_address(token))


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value, 0)
        except ValueError:
            return None
    return None


def _decode_string(raw: object, *, token: str, what: str) -> str:
    try:
        (text,) = abi_decode(["string"], bytes.fromhex(str(raw).removeprefix("0x")))
    except (DecodingError, ValueError, OverflowError) as exc:
        raise DomainMismatchError(f"token {token}: {what} did not return a string") from exc
    return str(text)


def _decode_bytes32(raw: object, *, token: str) -> bytes:
    try:
        data = bytes.fromhex(raw.removeprefix("0x")) if isinstance(raw, str) else b""
    except ValueError:
        data = b""
    if len(data) != 32:
        raise DomainMismatchError(f"token {token}: DOMAIN_SEPARATOR() did not return 32 bytes")
    return data
