"""Deploying the distribution's contracts and funding accounts (the devnet part, tests, the
demo and the benchmark): a one-off operator step, synchronous like workers/devnet/deploy.py,
whose sender it reuses.

Guarantees:

- Every function returns only when each of its transactions is mined with status 1; a revert
  raises ExecutionRevertedError with the decoded reason, a failure DeploymentError.
- Transactions are signed locally; no key is logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eth_account import Account
from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address
from hexbytes import HexBytes
from web3 import Web3
from web3.types import BlockIdentifier, Wei

from shared.contracts import artifact
from workers.devnet.deploy import _created_address, _deploy_data, _Sender
from workers.distribution.evm.contracts import (
    MULTISEND_CONTRACT,
    TOKEN_CONTRACT,
    approve_calldata,
    balance_of_calldata,
    decode_uint,
)


class Deployer:
    """One key's deployments and calls on one chain, consecutive nonces, waited for."""

    def __init__(self, rpc_url: str, private_key: str | bytes) -> None:
        self.w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
        self.account = Account.from_key(private_key)
        self._sender = _Sender(self.w3, self.account)

    @property
    def address(self) -> ChecksumAddress:
        return to_checksum_address(self.account.address)

    def deploy(
        self, name: str, types: Sequence[str] = (), args: Sequence[Any] = ()
    ) -> ChecksumAddress:
        code = artifact(name).bytecode
        tx = self._sender.send(
            {"data": _deploy_data(code, list(types), list(args))}, what=f"deploy {name}"
        )
        (receipt,) = self._sender.wait([tx])
        return _created_address(receipt, name)

    def deploy_token(self, name: str = TOKEN_CONTRACT, *, label: str = "Distribution Test Token",
                     symbol: str = "DIST") -> ChecksumAddress:  # fmt: skip
        """A DistToken (name, symbol) or a test token whose constructor takes no arguments."""
        if name == TOKEN_CONTRACT:
            return self.deploy(name, ["string", "string"], [label, symbol])
        return self.deploy(name)

    def deploy_multisend(self) -> ChecksumAddress:
        return self.deploy(MULTISEND_CONTRACT)

    def transact(self, to: str, data: bytes, *, what: str, value: int = 0) -> HexBytes:
        """Send one call (not waited for; see :meth:`wait`)."""
        tx: dict[str, Any] = {"to": to_checksum_address(to), "data": "0x" + data.hex()}
        if value:
            tx["value"] = Wei(value)
        return self._sender.send(tx, what=what)  # type: ignore[arg-type]

    def wait(self, hashes: Sequence[HexBytes]) -> None:
        self._sender.wait(hashes)

    def mint(self, token: str, pairs: Sequence[tuple[str, int]]) -> None:
        """``mint(to, value)`` for each pair, pipelined, all waited for."""
        contract = self.w3.eth.contract(address=to_checksum_address(token),
                                        abi=artifact(TOKEN_CONTRACT).abi)  # fmt: skip
        sent = [
            self._sender.call(contract, "mint", [to_checksum_address(to), value], what="mint")
            for to, value in pairs
        ]
        self._sender.wait(sent)

    def fund(self, pairs: Sequence[tuple[str, int]]) -> None:
        """Send ether (wei) to each address, all waited for."""
        sent = [
            self._sender.send({"to": to_checksum_address(to), "value": Wei(wei)}, what="fund")
            for to, wei in pairs
        ]
        self._sender.wait(sent)

    def invoke(self, contract_name: str, address: str, function: str, args: Sequence[Any]) -> None:
        """Call ``function(args)`` of the compiled ``contract_name`` at ``address``; waited for."""
        contract = self.w3.eth.contract(
            address=to_checksum_address(address), abi=artifact(contract_name).abi
        )
        self._sender.wait([self._sender.call(contract, function, list(args), what=function)])

    def approve(self, token: str, spender: str, amount: int) -> None:
        self.wait([self.transact(token, approve_calldata(spender, amount), what="approve")])

    def call(self, to: str, data: bytes) -> bytes:
        return bytes(self.w3.eth.call({"to": to_checksum_address(to), "data": HexBytes(data)}))


def token_balance(w3: Web3, token: str, owner: str, *, block: BlockIdentifier = "latest") -> int:
    raw = w3.eth.call(
        {"to": to_checksum_address(token), "data": HexBytes(balance_of_calldata(owner))},
        block_identifier=block,
    )
    return decode_uint("0x" + bytes(raw).hex())
