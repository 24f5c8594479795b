"""The mint executor's key file: the seed's ``private.key`` (``HODLAI_MINT_KEY_FILE``).

The file is the seed's JSON::

    {"serverPrivateKey": "0x…", "minterPrivateKey": "0x…",
     "lpDeployerPrivateKey": "0x…", "agentEncryptionKey": "1a2b3c…"}

- ``serverPrivateKey``: the relayer; it submits users' funding authorizations (it pays gas).
- ``minterPrivateKey``: the mint server's key; it settles x402 payments and calls
  ``MintToken.mint`` (it holds the minter role and pays gas).
- ``agentEncryptionKey``: 32 bytes, hex (``0x`` optional): the core vault's master key for the
  agent wallets, which are derived from it and so recoverable from it alone.
- ``lpDeployerPrivateKey`` is accepted and ignored (the seed's liquidity step is not ours).

Guarantees:

- The file is read by :func:`shared.keys.files.read_private`: a file the group or others may
  read or write is refused (mode 0600), checked on the descriptor that is read.
- Every refusal names ``HODLAI_MINT_KEY_FILE`` and the field, and never quotes a key or the
  file's content (a JSON parser's message would, so it is replaced).
- :class:`MintKeys` holds the keys in private slots: ``repr``/``str`` show the addresses only.
- :func:`generate_mint_key_file` writes fresh random keys (never one of anvil's ten default
  accounts) atomically with mode 0600 and never overwrites an existing file.
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import Final

import structlog
from eth_account import Account
from eth_typing import ChecksumAddress

from shared.errors import KeyFileError
from shared.keys.files import read_private, write_secret_file
from shared.keys.vault import MasterKey

log = structlog.get_logger(__name__)

MINT_KEY_FILE_ENV: Final = "HODLAI_MINT_KEY_FILE"
AGENT_MASTER_KEY_BYTES: Final = 32
_HEX_32: Final = re.compile(r"(0x)?[0-9a-fA-F]{64}")

# anvil's ten default accounts (mnemonic "test test … junk"): a generated key is never one.
ANVIL_DEFAULT_ADDRESSES: Final = frozenset(
    {
        "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
        "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
        "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
        "0x90F79bf6EB2c4f870365E785982E1f101E93b906",
        "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65",
        "0x9965507D1a55bcC2695C58ba16FB37d819B0A4dc",
        "0x976EA74026E726554dB657fA54763abd0C3a0aa9",
        "0x14dC79964da2C08b23698B3D3cc7Ca32193d9955",
        "0x23618e81E3f5cdF7f54C3d65f7FBc0aBf5B21E8f",
        "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720",
    }
)


class MintKeys:
    """The three keys of the mint key file. The private keys sit in private slots; ``repr``
    and ``str`` show the addresses (and the master key's id) only."""

    __slots__ = ("_agent_master_key", "_minter_key", "_server_key")

    def __init__(self, *, server_key: bytes, minter_key: bytes, agent_master_key: bytes) -> None:
        for name, value in (("server_key", server_key), ("minter_key", minter_key)):
            if len(value) != 32:
                raise KeyFileError(f"{name} must be 32 bytes, got {len(value)}")
        if len(agent_master_key) != AGENT_MASTER_KEY_BYTES:
            raise KeyFileError(
                f"agent_master_key must be {AGENT_MASTER_KEY_BYTES} bytes, "
                f"got {len(agent_master_key)}"
            )
        self._server_key = bytes(server_key)
        self._minter_key = bytes(minter_key)
        self._agent_master_key = bytes(agent_master_key)

    @property
    def server_key(self) -> bytes:
        """The relayer's private key (the seed's ``serverPrivateKey``)."""
        return self._server_key

    @property
    def minter_key(self) -> bytes:
        """The mint server's private key (the seed's ``minterPrivateKey``)."""
        return self._minter_key

    @property
    def agent_master_key(self) -> bytes:
        """The vault master key of the agent wallets (the seed's ``agentEncryptionKey``)."""
        return self._agent_master_key

    @property
    def server_address(self) -> ChecksumAddress:
        return ChecksumAddress(Account.from_key(self._server_key).address)

    @property
    def relayer_address(self) -> ChecksumAddress:
        """Same as :attr:`server_address`: the relayer is the seed's server key."""
        return self.server_address

    @property
    def minter_address(self) -> ChecksumAddress:
        return ChecksumAddress(Account.from_key(self._minter_key).address)

    def master_key(self) -> MasterKey:
        """The agent wallets' vault master key, as the core vault takes it."""
        return MasterKey(self._agent_master_key)

    def __repr__(self) -> str:
        return (
            f"MintKeys(server={self.server_address}, minter={self.minter_address}, "
            f"agent_master_key_id={self.master_key().key_id})"
        )

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MintKeys):
            return NotImplemented
        return (self._server_key, self._minter_key, self._agent_master_key) == (
            other._server_key,
            other._minter_key,
            other._agent_master_key,
        )

    def __hash__(self) -> int:
        return hash((self.server_address, self.minter_address))


def load_mint_keys(path: Path | str | None) -> MintKeys:
    """The keys in ``path`` (the value of ``HODLAI_MINT_KEY_FILE``), after checking that only
    its owner may read it. Every refusal names the setting and never quotes the file."""
    if path is None or str(path) == "":
        raise KeyFileError(
            f"missing required setting {MINT_KEY_FILE_ENV}: the mint key file (the seed's "
            "private.key: serverPrivateKey, minterPrivateKey, agentEncryptionKey)"
        )
    source = Path(path)
    try:
        raw = read_private(
            source, what="mint key file", secret="the relayer, minter and agent master keys",
            rotate="rotate every key in it, agent wallets included, if others did read it",
        )  # fmt: skip
    except KeyFileError as exc:
        raise KeyFileError(f"{MINT_KEY_FILE_ENV}: {exc}") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError included; the message would quote the file
        raise KeyFileError(
            f"{MINT_KEY_FILE_ENV}: mint key file {source} is not valid JSON"
        ) from None
    if not isinstance(data, dict):
        raise KeyFileError(f"{MINT_KEY_FILE_ENV}: mint key file {source} is not a JSON object")
    server = _field(data, "serverPrivateKey", source)
    minter = _field(data, "minterPrivateKey", source)
    master = _field(data, "agentEncryptionKey", source)
    for name, key in (("serverPrivateKey", server), ("minterPrivateKey", minter)):
        try:
            Account.from_key(key)
        except ValueError:
            raise KeyFileError(
                f"{MINT_KEY_FILE_ENV}: mint key file {source}: {name} is not a valid "
                "secp256k1 private key"
            ) from None
    if server == minter:
        raise KeyFileError(
            f"{MINT_KEY_FILE_ENV}: mint key file {source}: serverPrivateKey and "
            "minterPrivateKey must be different keys (their nonces would collide)"
        )
    return MintKeys(server_key=server, minter_key=minter, agent_master_key=master)


def generate_mint_key_file(path: Path | str) -> MintKeys:
    """Write fresh random keys to ``path`` in the seed's format (mode 0600, atomic, never
    overwriting an existing file) and return them. None is one of anvil's default accounts."""
    server, minter, lp = _fresh_key(), _fresh_key(), _fresh_key()
    while minter == server:
        minter = _fresh_key()
    master = secrets.token_bytes(AGENT_MASTER_KEY_BYTES)
    payload = json.dumps(
        {
            "serverPrivateKey": "0x" + server.hex(),
            "minterPrivateKey": "0x" + minter.hex(),
            "lpDeployerPrivateKey": "0x" + lp.hex(),
            "agentEncryptionKey": master.hex(),
        },
        indent=2,
    )
    target = Path(path)
    try:
        write_secret_file(target, payload, overwrite=False)
    except KeyFileError as exc:
        raise KeyFileError(f"{MINT_KEY_FILE_ENV}: {exc}") from None
    except OSError as exc:
        raise KeyFileError(
            f"{MINT_KEY_FILE_ENV}: cannot create mint key file {target}: {exc.strerror}"
        ) from None
    keys = MintKeys(server_key=server, minter_key=minter, agent_master_key=master)
    log.info(
        "mint_key_file_created",
        path=str(target),
        relayer=keys.server_address,
        minter=keys.minter_address,
    )
    return keys


def _fresh_key() -> bytes:
    while True:
        account = Account.create()
        if account.address not in ANVIL_DEFAULT_ADDRESSES:
            return bytes(account.key)


def _field(data: dict[str, object], name: str, source: Path) -> bytes:
    value = data.get(name)
    if value is None:
        raise KeyFileError(f"{MINT_KEY_FILE_ENV}: mint key file {source} has no field {name!r}")
    if not isinstance(value, str) or not _HEX_32.fullmatch(value.strip()):
        raise KeyFileError(
            f"{MINT_KEY_FILE_ENV}: mint key file {source}: {name} must be 32 bytes as 64 hex "
            "characters (0x optional)"
        )
    return bytes.fromhex(value.strip().removeprefix("0x"))
