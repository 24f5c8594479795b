"""The ``mint`` part of ``hodlai devnet`` (entry point ``hodlai.devnet`` ``mint``).

On the local chain it:

- deploys the USDC-like token (contracts/Eip3009Token.sol as "USD Coin" / "2" / USDC, 6
  decimals) and a MintToken ("HodlAI Mint", HMINT: 1,000 tokens per mint, 1,000,000 mints);
- keeps the node's keys in the state directory, generated once and reused across runs (mode
  0600): ``mint-private.key`` (the seed's private.key: relayer = serverPrivateKey, minter =
  minterPrivateKey, agentEncryptionKey) and ``mint-pay-to.json`` (the key of the payTo
  address, so what the server earns can be moved on). None is one of anvil's ten accounts;
- grants the minter the MintToken's minter role, sends 100 ETH each to the relayer and the
  minter (gas) from account 0, and credits 1,000,000 USDC to each of anvil's ten accounts;
- names it all in the env file (docs/API.md): ``HODLAI_MINT_USDC_ADDRESS``,
  ``HODLAI_MINT_SERVER_URL``, ``HODLAI_MINT_TOKENS``, ``HODLAI_MINT_RELAYER_ADDRESS``,
  ``HODLAI_MINT_PAY_TO``, ``HODLAI_MINT_KEY_FILE``, ``HODLAI_MINT_SERVER_PORT`` (a port free
  when the part ran) and ``HODLAI_MINT_SERVER_CONFIRMATIONS=0`` (a local chain does not
  reorganise; on an auto-mined chain a deeper setting would wait for blocks nobody mines).

No private key is logged or printed: the summary names the files.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Final

from eth_abi.abi import encode as abi_encode
from eth_account import Account
from eth_typing import HexStr
from web3 import Web3
from web3.types import Wei

from shared.contracts import artifact
from shared.keys.files import generate_key_file, key_file_address
from workers.devnet.deploy import _created_address, _Sender
from workers.devnet.parts import DevnetChain, DevnetPart, EnvSetting
from workers.mint.keyfile import MintKeys, generate_mint_key_file, load_mint_keys

KEY_FILE_NAME: Final = "mint-private.key"
PAY_TO_FILE_NAME: Final = "mint-pay-to.json"
USDC_NAME, USDC_VERSION, USDC_SYMBOL = "USD Coin", "2", "USDC"
TOKEN_NAME, TOKEN_SYMBOL = "HodlAI Mint", "HMINT"
TOKENS_PER_MINT: Final = 1_000 * 10**18
MAX_MINTS: Final = 1_000_000
USDC_PER_ACCOUNT: Final = 1_000_000 * 10**6
GAS_FUNDING_WEI: Final = 100 * 10**18


def setup(chain: DevnetChain) -> DevnetPart:
    keys = _mint_keys(chain.state_dir / KEY_FILE_NAME)
    pay_to = _pay_to(chain.state_dir / PAY_TO_FILE_NAME)
    w3 = Web3(Web3.HTTPProvider(chain.rpc_url))
    deployer = Account.from_key(chain.accounts[0].private_key)
    sender = _Sender(w3, deployer)

    usdc_artifact, token_artifact = artifact("Eip3009Token"), artifact("MintToken")
    usdc_tx = sender.send(
        {"data": _deploy_data(usdc_artifact.bytecode, ["string", "string", "string"],
                              [USDC_NAME, USDC_VERSION, USDC_SYMBOL])},
        what="deploy the USDC-like token",
    )  # fmt: skip
    token_tx = sender.send(
        {"data": _deploy_data(token_artifact.bytecode, ["string", "string", "uint256", "uint256"],
                              [TOKEN_NAME, TOKEN_SYMBOL, TOKENS_PER_MINT,
                               TOKENS_PER_MINT * MAX_MINTS])},
        what="deploy the MintToken",
    )  # fmt: skip
    usdc_receipt, token_receipt = sender.wait([usdc_tx, token_tx])
    usdc = _created_address(usdc_receipt, "Eip3009Token")
    token = _created_address(token_receipt, "MintToken")
    usdc_contract = w3.eth.contract(address=usdc, abi=usdc_artifact.abi)
    token_contract = w3.eth.contract(address=token, abi=token_artifact.abi)
    pending = [
        sender.call(
            token_contract, "configureMinter", [keys.minter_address, True], what="grant minter"
        ),
        sender.send({"to": keys.minter_address, "value": Wei(GAS_FUNDING_WEI)}, what="fund minter"),
        sender.send(
            {"to": keys.relayer_address, "value": Wei(GAS_FUNDING_WEI)}, what="fund relayer"
        ),
    ]
    pending += [
        sender.call(usdc_contract, "mint", [a.address, USDC_PER_ACCOUNT], what="credit USDC")
        for a in chain.accounts
    ]
    sender.wait(pending)

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    key_file = str((chain.state_dir / KEY_FILE_NAME).resolve())
    settings = [
        EnvSetting("The USDC-like EIP-3009 token (6 decimals)", "HODLAI_MINT_USDC_ADDRESS", usdc),
        EnvSetting("Port of hodlai mint-server", "HODLAI_MINT_SERVER_PORT", str(port)),
        EnvSetting(
            "The x402 token-mint server (hodlai mint-server)", "HODLAI_MINT_SERVER_URL", url
        ),
        EnvSetting("Tokens the mint server sells (comma-separated)", "HODLAI_MINT_TOKENS", token),
        EnvSetting(
            "The relayer (serverPrivateKey): submits users' funding authorizations",
            "HODLAI_MINT_RELAYER_ADDRESS",
            keys.relayer_address,
        ),
        EnvSetting("Where the mint server is paid (payTo)", "HODLAI_MINT_PAY_TO", pay_to),
        EnvSetting(
            "The seed's private.key (mode 0600): relayer, minter, agent wallets' master key",
            "HODLAI_MINT_KEY_FILE",
            key_file,
        ),
        EnvSetting(
            "A local chain does not reorganise: settles and mints are final once mined",
            "HODLAI_MINT_SERVER_CONFIRMATIONS",
            "0",
        ),
    ]
    return DevnetPart(
        settings=settings,
        summary=[
            f"  mint       USDC {usdc}, MintToken {token}, server {url}",
            f"             minter {keys.minter_address}, relayer {keys.relayer_address}, "
            f"payTo {pay_to} (keys in {key_file})",
        ],
        deployment={
            "usdc": usdc,
            "tokens": [token],
            "server_url": url,
            "minter": keys.minter_address,
            "relayer": keys.relayer_address,
            "pay_to": pay_to,
            "key_file": key_file,
            "tokens_per_mint": str(TOKENS_PER_MINT),
        },
    )


def _mint_keys(path: Path) -> MintKeys:
    return load_mint_keys(path) if path.exists() else generate_mint_key_file(path)


def _pay_to(path: Path) -> str:
    return key_file_address(path) if path.exists() else generate_key_file(path)


def _deploy_data(bytecode: str, types: list[str], args: list[Any]) -> HexStr:
    return HexStr(bytecode + abi_encode(types, args).hex())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
