"""The devnet's API part: operator tokens for the node's one ``hodlai api``.

Every executor's outside tests and the demo call the node's API with a bearer token. This
part (the ``api`` entry point of ``hodlai.devnet``) writes:

- ``<state-dir>/api-tokens``, the tokens file (mode 0600): ``devnet-admin`` (role admin) and
  ``devnet-read`` (role read), fresh random tokens on every devnet start;
- ``<state-dir>/admin-token`` (mode 0600), holding only the admin token;

and names them in the env file: ``HODLAI_API_TOKENS_FILE``, ``HODLAI_API_PORT``,
``HODLAI_API_URL`` (``http://127.0.0.1:<port>``) and ``HODLAI_DEVNET_ADMIN_TOKEN_FILE``.
No token is logged or printed; the summary names the files.
"""

from __future__ import annotations

import secrets
from typing import Final

from shared.keys.files import write_secret_file
from workers.devnet.parts import DevnetChain, DevnetPart, EnvSetting

TOKENS_FILE_NAME: Final = "api-tokens"
ADMIN_TOKEN_FILE_NAME: Final = "admin-token"


def setup(chain: DevnetChain) -> DevnetPart:
    admin, read = secrets.token_hex(32), secrets.token_hex(32)
    tokens_file = (chain.state_dir / TOKENS_FILE_NAME).resolve()
    admin_file = (chain.state_dir / ADMIN_TOKEN_FILE_NAME).resolve()
    write_secret_file(
        tokens_file,
        f"# id role token (written by hodlai devnet)\ndevnet-admin admin {admin}\n"
        f"devnet-read read {read}",
        overwrite=True,
    )
    write_secret_file(admin_file, admin, overwrite=True)
    url = f"http://127.0.0.1:{chain.api_port}"
    return DevnetPart(
        settings=[
            EnvSetting(
                "Operator tokens of hodlai api (id role token; mode 0600): devnet-admin, "
                "devnet-read",
                "HODLAI_API_TOKENS_FILE",
                str(tokens_file),
            ),
            EnvSetting("Port of the node's one hodlai api", "HODLAI_API_PORT", str(chain.api_port)),
            EnvSetting("The node's one hodlai api, for clients", "HODLAI_API_URL", url),
            EnvSetting(
                "A file (mode 0600) holding only the devnet's admin API token, for tests and "
                "the demo: Authorization: Bearer $(cat FILE)",
                "HODLAI_DEVNET_ADMIN_TOKEN_FILE",
                str(admin_file),
            ),
        ],
        summary=[f"  api        {url}  (admin token in {admin_file})"],
        deployment={"api_url": url, "admin_token_file": str(admin_file)},
    )
