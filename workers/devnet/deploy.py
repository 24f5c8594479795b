"""Deploy the HoldAIProvider and the example vault, and write the node's settings for them.

Guarantees:

- :func:`deploy_stack` returns only when every transaction is mined with status 1: both
  contracts deployed, every model priced, the oracle holding ORACLE_ROLE (and funded, when
  asked). A failure raises; a revert carries the decoded reason
  (:class:`~shared.errors.ExecutionRevertedError`).
- Transactions are signed locally with the admin key, so any JSON-RPC endpoint works, not
  only a dev node with unlocked accounts. The key is never logged.
- :func:`write_env_file` and :func:`write_deployment_json` replace their file atomically, so a
  process reading them never sees half a file.

This is a one-off operator step, so it uses web3.py's synchronous HTTP provider.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, cast

import structlog
from eth_abi.abi import encode as abi_encode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress, HexStr
from eth_utils.address import to_checksum_address
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError, TimeExhausted, Web3RPCError
from web3.types import Nonce, TxParams, TxReceipt, Wei

from shared.contracts import artifact, decode_revert
from shared.errors import (
    ExecutionRevertedError,
    PermanentError,
    RpcResponseError,
    RpcTransportError,
)
from workers.oracle.contracts import ORACLE_ROLE, PROVIDER_CONTRACT, VAULT_CONTRACT

log = structlog.get_logger(__name__)

ETHER: Final = 10**18

#: Model prices a fresh deployment offers, in wei.
DEFAULT_MODEL_FEES: Final[Mapping[str, int]] = {
    "hodlai-local": ETHER // 1000,  # 0.001: the deterministic demo backend
    "gpt-4o-mini": 2 * ETHER // 1000,  # 0.002
    "llama-3.1-8b-instruct": ETHER // 1000,  # 0.001
}
#: The gas the vault callback gets; the integration plan promises vaults 1,000,000.
DEFAULT_CALLBACK_GAS_LIMIT: Final = 1_000_000
DEFAULT_VAULT_MODEL: Final = "hodlai-local"
DEFAULT_VAULT_PROMPT: Final = (
    "You manage a token vault. Given its state, choose whether to BUY, SELL or HOLD."
)

# Seconds to wait for one receipt: generous for a public chain, instant on a dev node.
RECEIPT_TIMEOUT: Final = 180.0
# Seconds between receipt polls; web3's 0.1 s default made sequential sends crawl (FACTS.md).
_RECEIPT_POLL: Final = 0.05
# Estimates are padded because state can move between estimate and inclusion.
_GAS_HEADROOM_PERCENT: Final = 25
# Tip when the node cannot suggest one (wei): 1 gwei, accepted by BSC and dev nodes.
_FALLBACK_PRIORITY_FEE: Final = 10**9


class DeploymentError(PermanentError):
    """A deployment transaction failed or was not mined in time."""


@dataclass(frozen=True)
class Deployment:
    """Where the stack lives and who runs it."""

    chain_id: int
    provider_address: ChecksumAddress
    vault_address: ChecksumAddress
    #: block of the provider's deployment: no request event can be older
    deploy_block: int
    admin: ChecksumAddress
    treasury: ChecksumAddress
    oracle_address: ChecksumAddress
    callback_gas_limit: int = DEFAULT_CALLBACK_GAS_LIMIT
    models: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "provider_address": self.provider_address,
            "vault_address": self.vault_address,
            "deploy_block": self.deploy_block,
            "admin": self.admin,
            "treasury": self.treasury,
            "oracle_address": self.oracle_address,
            "callback_gas_limit": self.callback_gas_limit,
            # Fees as strings: wei amounts exceed what JSON readers keep exact as numbers.
            "models": {name: str(fee) for name, fee in sorted(self.models.items())},
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Deployment:
        return cls(
            chain_id=int(raw["chain_id"]),
            provider_address=to_checksum_address(raw["provider_address"]),
            vault_address=to_checksum_address(raw["vault_address"]),
            deploy_block=int(raw["deploy_block"]),
            admin=to_checksum_address(raw["admin"]),
            treasury=to_checksum_address(raw["treasury"]),
            oracle_address=to_checksum_address(raw["oracle_address"]),
            callback_gas_limit=int(raw["callback_gas_limit"]),
            models={str(k): int(v) for k, v in raw.get("models", {}).items()},
        )


def deploy_stack(
    rpc_url: str,
    admin_private_key: str | bytes,
    *,
    oracle_address: str,
    models: Mapping[str, int] | None = None,
    treasury: str | None = None,
    fund_wei: int = 0,
    callback_gas_limit: int = DEFAULT_CALLBACK_GAS_LIMIT,
    vault_model: str = DEFAULT_VAULT_MODEL,
    vault_prompt: str = DEFAULT_VAULT_PROMPT,
) -> Deployment:
    """Deploy HoldAIProvider + ExampleDecisionVault, price the models, empower the oracle.

    ``treasury`` defaults to the admin; ``fund_wei`` is sent to the oracle for gas.
    """
    prices = dict(DEFAULT_MODEL_FEES if models is None else models)
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
    try:
        return _deploy(
            w3,
            rpc_url,
            Account.from_key(admin_private_key),
            oracle=to_checksum_address(oracle_address),
            prices=prices,
            treasury=treasury,
            fund_wei=fund_wei,
            callback_gas_limit=callback_gas_limit,
            vault_model=vault_model,
            vault_prompt=vault_prompt,
        )
    except OSError as exc:  # requests' connection errors are OSErrors
        raise RpcTransportError(f"cannot reach {rpc_url}: {exc}") from exc
    except Web3RPCError as exc:
        raise RpcResponseError(f"{rpc_url} refused a deployment call: {exc}") from exc


def _deploy(
    w3: Web3,
    rpc_url: str,
    admin: LocalAccount,
    *,
    oracle: ChecksumAddress,
    prices: dict[str, int],
    treasury: str | None,
    fund_wei: int,
    callback_gas_limit: int,
    vault_model: str,
    vault_prompt: str,
) -> Deployment:
    sender = _Sender(w3, admin)
    treasury_address = to_checksum_address(treasury or admin.address)
    log.info(
        "deploy_started",
        rpc_url=rpc_url,
        chain_id=sender.chain_id,
        admin=admin.address,
        treasury=treasury_address,
        oracle=oracle,
    )

    provider_artifact = artifact(PROVIDER_CONTRACT)
    provider_tx = sender.send(
        {
            "data": _deploy_data(
                provider_artifact.bytecode,
                ["address", "address"],
                [admin.address, treasury_address],
            )
        },
        what="deploy HoldAIProvider",
    )
    (provider_receipt,) = sender.wait([provider_tx])
    provider_address = _created_address(provider_receipt, "HoldAIProvider")
    provider = w3.eth.contract(address=provider_address, abi=provider_artifact.abi)

    # Everything below only needs the provider to exist, so it is sent in one go and mined
    # together: one block wait instead of one per transaction on an interval-mined chain.
    vault_artifact = artifact(VAULT_CONTRACT)
    pending = [
        sender.send(
            {
                "data": _deploy_data(
                    vault_artifact.bytecode,
                    ["address", "string", "string"],
                    [provider_address, vault_model, vault_prompt],
                )
            },
            what="deploy ExampleDecisionVault",
        )
    ]
    for name, fee in sorted(prices.items()):
        pending.append(sender.call(provider, "setModelFee", [name, fee], what=f"price {name}"))
    if callback_gas_limit != DEFAULT_CALLBACK_GAS_LIMIT:
        pending.append(
            sender.call(provider, "setCallbackGasLimit", [callback_gas_limit], what="gas cap")
        )
    pending.append(
        sender.call(provider, "grantRole", [ORACLE_ROLE, oracle], what="grant ORACLE_ROLE")
    )
    if fund_wei > 0:
        pending.append(sender.send({"to": oracle, "value": Wei(fund_wei)}, what="fund oracle"))
    receipts = sender.wait(pending)
    vault_address = _created_address(receipts[0], "ExampleDecisionVault")

    deployment = Deployment(
        chain_id=sender.chain_id,
        provider_address=provider_address,
        vault_address=vault_address,
        deploy_block=int(provider_receipt["blockNumber"]),
        admin=admin.address,
        treasury=treasury_address,
        oracle_address=oracle,
        callback_gas_limit=callback_gas_limit,
        models=prices,
    )
    log.info(
        "deploy_finished",
        chain_id=deployment.chain_id,
        provider=provider_address,
        vault=vault_address,
        deploy_block=deployment.deploy_block,
        oracle=oracle,
        funded_wei=fund_wei,
    )
    return deployment


def _deploy_data(bytecode: str, types: list[str], args: list[Any]) -> HexStr:
    return HexStr(bytecode + abi_encode(types, args).hex())


def _created_address(receipt: TxReceipt, name: str) -> ChecksumAddress:
    address = receipt.get("contractAddress")
    if not address:
        raise DeploymentError(f"{name} deployment receipt has no contract address")
    return to_checksum_address(address)


class _Sender:
    """Signs and sends the admin's transactions with locally tracked, consecutive nonces."""

    def __init__(self, w3: Web3, account: LocalAccount) -> None:
        self._w3 = w3
        self._account = account
        self.chain_id = w3.eth.chain_id
        self._nonce: int = w3.eth.get_transaction_count(account.address, "pending")
        self._fees = self._fee_fields()
        self._what: dict[HexBytes, str] = {}

    def _fee_fields(self) -> TxParams:
        base_fee = self._w3.eth.get_block("latest").get("baseFeePerGas")
        if base_fee is None:  # a chain without EIP-1559
            return {"gasPrice": self._w3.eth.gas_price}
        try:
            tip = int(self._w3.eth.max_priority_fee)
        except ValueError:  # the node does not implement eth_maxPriorityFeePerGas
            tip = _FALLBACK_PRIORITY_FEE
        # Twice the base fee keeps the transactions valid through several full blocks.
        return {"maxPriorityFeePerGas": Wei(tip), "maxFeePerGas": Wei(2 * int(base_fee) + tip)}

    def call(self, contract: Contract, function: str, args: list[Any], *, what: str) -> HexBytes:
        data = contract.encode_abi(function, args=args)
        return self.send({"to": contract.address, "data": data}, what=what)

    def send(self, tx: TxParams, *, what: str) -> HexBytes:
        full: TxParams = {
            **tx,
            **self._fees,
            "from": self._account.address,
            "nonce": Nonce(self._nonce),
            "chainId": self.chain_id,
        }
        full.setdefault("value", Wei(0))
        try:
            estimate = self._w3.eth.estimate_gas(full)
        except ContractLogicError as exc:
            reason = decode_revert(_revert_bytes(exc.data))
            raise ExecutionRevertedError(
                f"{what} would revert: {reason}", reason=reason, data=exc.data
            ) from None
        full["gas"] = estimate * (100 + _GAS_HEADROOM_PERCENT) // 100
        signed = self._account.sign_transaction(cast(dict[str, Any], full))
        tx_hash = self._w3.eth.send_raw_transaction(signed.raw_transaction)
        self._nonce += 1
        self._what[HexBytes(tx_hash)] = what
        log.debug("deploy_tx_sent", what=what, tx_hash=HexBytes(tx_hash).to_0x_hex())
        return HexBytes(tx_hash)

    def wait(self, hashes: Iterable[HexBytes]) -> list[TxReceipt]:
        receipts = []
        for tx_hash in hashes:
            what = self._what.get(tx_hash, "transaction")
            try:
                receipt = self._w3.eth.wait_for_transaction_receipt(
                    tx_hash, timeout=RECEIPT_TIMEOUT, poll_latency=_RECEIPT_POLL
                )
            except TimeExhausted:
                raise DeploymentError(
                    f"{what} ({tx_hash.to_0x_hex()}) not mined within {RECEIPT_TIMEOUT:.0f}s"
                ) from None
            if receipt["status"] != 1:
                raise DeploymentError(f"{what} ({tx_hash.to_0x_hex()}) reverted on chain")
            receipts.append(receipt)
        return receipts


def _revert_bytes(data: object) -> bytes:
    # web3 puts the revert data in `data` as a hex string, sometimes wrapped in a dict.
    if isinstance(data, dict):
        data = data.get("data")
    if isinstance(data, str):
        try:
            return bytes.fromhex(data.removeprefix("0x"))
        except ValueError:
            return b""
    return b""


# --- settings files -------------------------------------------------------------------------

_PLAIN_VALUE = re.compile(r"^[A-Za-z0-9_./:,@+-]*$")


def _env_value(value: str) -> str:
    if _PLAIN_VALUE.match(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def write_env_file(
    path: Path | str,
    deployment: Deployment,
    *,
    db_path: Path | str,
    key_file: Path | str | None,
    rpc_url: str,
    confirmations: int = 0,
    llm_backend: str = "llama",
    log_level: str = "INFO",
    extra: Mapping[str, str] | None = None,
    parts: Sequence[tuple[str, str, str]] = (),
) -> Path:
    """Write a ready-to-use ``.env`` for the node (paths made absolute). Returns the path.

    ``parts`` are (comment, name, value) settings the devnet's executor parts add
    (workers/devnet/parts.py), written after the oracle's.
    """
    settings = oracle_env_settings(
        deployment,
        db_path=db_path,
        key_file=key_file,
        rpc_url=rpc_url,
        confirmations=confirmations,
        llm_backend=llm_backend,
        log_level=log_level,
    )
    settings += list(parts)
    for name, value in (extra or {}).items():
        settings.append(("extra setting given to the deploy step", name, value))
    lines = [
        f"# hodlai node settings for chain {deployment.chain_id}, "
        f"written {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}",
        "",
    ]
    for comment, name, value in settings:
        lines += [f"# {comment}", f"{name}={_env_value(value)}", ""]
    target = Path(path)
    write_text_atomically(target, "\n".join(lines).rstrip("\n") + "\n")
    log.info("env_file_written", path=str(target))
    return target


def oracle_env_settings(
    deployment: Deployment,
    *,
    db_path: Path | str,
    key_file: Path | str | None,
    rpc_url: str,
    confirmations: int = 0,
    llm_backend: str = "llama",
    log_level: str = "INFO",
) -> list[tuple[str, str, str]]:
    """The (comment, name, value) settings of the core and the oracle's stack."""
    settings: list[tuple[str, str, str]] = [
        (
            "SQLite database every process of the node shares",
            "HODLAI_DB_PATH",
            str(Path(db_path).resolve()),
        ),
        (
            "JSON-RPC endpoints, comma-separated; later ones are failovers",
            "HODLAI_RPC_URLS",
            rpc_url,
        ),
        (
            "Chain the database is bound to; processes refuse any other",
            "HODLAI_CHAIN_ID",
            str(deployment.chain_id),
        ),
        (
            "HoldAIProvider contract the node serves",
            "HODLAI_PROVIDER_ADDRESS",
            deployment.provider_address,
        ),
        (
            "ExampleDecisionVault, for demos and benchmarks (not read by the node)",
            "HODLAI_VAULT_ADDRESS",
            deployment.vault_address,
        ),
        (
            "First block to index: the provider's deployment block",
            "HODLAI_START_BLOCK",
            str(deployment.deploy_block),
        ),
        (
            "Blocks below the head before a log is accepted (0 on a devnet, 3+ on BSC)",
            "HODLAI_CONFIRMATIONS",
            str(confirmations),
        ),
        (
            "Oracle key file (JSON, mode 0600); only the fulfiller reads it"
            + (" -- SET THIS: the oracle was given by address" if key_file is None else ""),
            "HODLAI_KEY_FILE",
            "" if key_file is None else str(Path(key_file).resolve()),
        ),
        (
            "LLM backend: llama (the embedded SmolLM2 model, in process; the default), openai"
            " (any OpenAI-compatible HTTP API: HodlAI router, OpenRouter, vLLM, Ollama,"
            " llama.cpp server; set HODLAI_LLM_BASE_URL) or local (a deterministic hash rule"
            " for tests, not a model)",
            "HODLAI_LLM_BACKEND",
            llm_backend,
        ),
        (
            "The oracle's processes (indexer, inference shards, fulfiller) run; false: they"
            " stand down (one log line, exit 0; under honcho they wait for Ctrl-C)",
            "HODLAI_ORACLE_ENABLED",
            "true",
        ),
        (
            "The agent job dispatcher: set true once HODLAI_DISPATCH_QUEUE_URL and"
            " HODLAI_DISPATCH_QUEUE_TOKEN name your remote queue and agents are registered"
            " (docs/OPERATIONS.md, 'The dispatcher'); make demo runs it on a mock queue",
            "HODLAI_DISPATCH_ENABLED",
            "false",
        ),
        ("DEBUG, INFO, WARNING or ERROR", "LOG_LEVEL", log_level),
    ]
    return settings


def write_deployment_json(path: Path | str, deployment: Deployment) -> Path:
    """Write the deployment as sorted JSON. Returns the path."""
    target = Path(path)
    write_text_atomically(target, json.dumps(deployment.to_json(), indent=2, sort_keys=True) + "\n")
    log.info("deployment_file_written", path=str(target))
    return target


def load_deployment_json(path: Path | str) -> Deployment:
    """Read a file written by :func:`write_deployment_json`."""
    return Deployment.from_json(json.loads(Path(path).read_text(encoding="utf-8")))


def write_text_atomically(target: Path, text: str) -> None:
    """Replace ``target`` with ``text`` so that readers see the old or the new file, whole."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, target)
