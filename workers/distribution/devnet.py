"""The devnet's ``distribution`` part (issue 21 §8): the token and multisend the distributor
pays with on the local anvil, and its source key.

``hodlai devnet`` (entry point ``distribution`` of ``hodlai.devnet``) then:

- deploys a test ERC-20 with 18 decimals (contracts/DistToken.sol, "Distribution Test Token",
  DIST) and the multisend (contracts/Multisend.sol);
- generates the distributor's source key in ``<state-dir>/dist-source-key.json`` (mode 0600,
  reused across runs; never one of anvil's ten accounts), funds it with 10^9 whole tokens and
  100 ether for gas;
- credits 10^6 whole tokens to each of anvil's ten default accounts, so outside tests can top
  up a source;
- names ``HODLAI_DIST_TOKEN_ADDRESS``, ``HODLAI_DIST_MULTISEND_ADDRESS``,
  ``HODLAI_DIST_SOURCE_ADDRESS`` and ``HODLAI_DIST_KEY_FILE`` in the env file
  (``HODLAI_API_URL`` and ``HODLAI_DEVNET_ADMIN_TOKEN_FILE`` come from the ``api`` part).

The key is never printed or logged; the summary names its file and address.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from shared.keys import generate_key_file, key_file_address
from workers.devnet.parts import DevnetChain, DevnetPart, EnvSetting
from workers.distribution.evm.deploy import Deployer

TOKEN_DECIMALS: Final = 18
WHOLE: Final = 10**TOKEN_DECIMALS
#: Whole tokens the source key is funded with, and each of anvil's ten accounts.
SOURCE_TOKENS: Final = 10**9
ACCOUNT_TOKENS: Final = 10**6
#: Ether (wei) the source key gets for gas.
SOURCE_GAS_WEI: Final = 100 * 10**18
SOURCE_KEY_FILE_NAME: Final = "dist-source-key.json"


def source_key(state_dir: Path, devnet_keys: set[str]) -> tuple[Path, str]:
    """The source key file in ``state_dir`` (created 0600 when missing), and its address; a
    key that is one of anvil's accounts is refused."""
    path = (state_dir / SOURCE_KEY_FILE_NAME).resolve()
    address = key_file_address(path) if path.exists() else generate_key_file(path)
    if address.lower() in devnet_keys:
        raise ValueError(f"{path} holds one of anvil's default accounts; delete it")
    return path, address


def setup(chain: DevnetChain) -> DevnetPart:
    admin = chain.accounts[0]
    deployer = Deployer(chain.rpc_url, admin.private_key)
    key_file, source = source_key(chain.state_dir, {a.address.lower() for a in chain.accounts})
    token = deployer.deploy_token()
    multisend = deployer.deploy_multisend()
    deployer.mint(
        token,
        [(source, SOURCE_TOKENS * WHOLE)]
        + [(a.address, ACCOUNT_TOKENS * WHOLE) for a in chain.accounts],
    )
    deployer.fund([(source, SOURCE_GAS_WEI)])
    return DevnetPart(
        settings=[
            EnvSetting(
                "The devnet's distribution token (ERC-20, 18 decimals)",
                "HODLAI_DIST_TOKEN_ADDRESS",
                token,
            ),
            EnvSetting(
                "The multisend contract the distributor pays through (disperseToken)",
                "HODLAI_DIST_MULTISEND_ADDRESS",
                multisend,
            ),
            EnvSetting(
                f"The distributor's source: {SOURCE_TOKENS:,} tokens and ether for gas",
                "HODLAI_DIST_SOURCE_ADDRESS",
                source,
            ),
            EnvSetting(
                "The distributor's source key (mode 0600)", "HODLAI_DIST_KEY_FILE", str(key_file)
            ),
        ],
        summary=[
            f"  dist token {token}  (DIST, 18 decimals)",
            f"  multisend  {multisend}",
            f"  source     {source}  ({SOURCE_TOKENS:,} DIST; key in {key_file})",
        ],
        deployment={
            "token": token,
            "multisend": multisend,
            "source": source,
            "decimals": TOKEN_DECIMALS,
            "source_key_file": str(key_file),
        },
    )
