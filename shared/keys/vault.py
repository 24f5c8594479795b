"""The key vault: wallets whose private keys the node holds, encrypted at rest in the state
store (table ``wallets``), for executors that create a wallet per user (the mint executor's
agent wallets) or send from configured wallets (distribution).

Each row holds one secp256k1 private key encrypted with AES-256-GCM under the vault's master
key: 32 random bytes, hex, in the file named by ``HODLAI_VAULT_KEY_FILE`` (mode 0600).

Guarantees:

- A wallet the vault creates cannot be lost while the master key is kept: its key is derived
  (HKDF-SHA256, :mod:`shared.keys.derivation`, which says why not BIP-32) from the master key
  and (label, owner, derivation index), and the index is stored in the row. A deleted or
  rolled-back row is re-derived from the master key alone by :meth:`Vault.recover`
  (``hodlai vault recover``). Indexes come from ``wallet_derivations``, one counter per
  (label, owner) that is only ever raised, in the same transaction as the insert: an owner's
  first wallet of a label has index 0, and an index is not handed out twice while its
  counter lives. :meth:`Vault.ensure_wallet` never tells an owner a second address because
  the first one's row is gone: it raises :class:`WalletMissingError` naming the recover
  command. Imported keys (random or external) have no index and are not claimed
  recoverable; they keep working as before.
- Every encryption uses a fresh random 96-bit nonce (``secrets``), and ``wallets.nonce`` is
  UNIQUE, so the database itself refuses a nonce used twice under one master key. Random
  nonces stay safe for about 2^32 encryptions under one key (NIST SP 800-38D), far beyond
  any number of wallets.
- The associated data binds the row's version, address, derivation index, label and owner
  (``aad_version`` 2): a ciphertext copied into another row, or a row whose owner or label
  was changed (two rows' owners swapped, say), does not decrypt, so one user's wallet cannot
  be handed to another by editing the table. Rows written before core migration 8
  (``aad_version`` 1) bind the address only; they still open, and :meth:`Vault.upgrade`
  (``hodlai vault check --upgrade``) re-seals them as version 2.
- A row that does not decrypt raises :class:`WalletDecryptError` naming the address and
  saying why: another master key (the row records its key id, a hash of the master key) or an
  altered row. A decrypted key must also derive the row's address, and a derived row's key
  must be the derivation of its (label, owner, index). A vault whose master key is not the
  one of the database's wallets adds no wallet (ConfigError naming both key ids): with the
  wrong key, "recovering" would insert an address nobody funded.
- Key material (a wallet's private key, the master key, the derivation secret) is never
  returned by a public function, never logged and never in an exception message: callers get
  addresses, :class:`~shared.tx.signer.LocalSigner` objects (``repr``/``str`` show the address
  only; the key is behind a private attribute) and signatures. A malformed address is not
  quoted back, as it may be a private key passed by mistake.
- The vault refuses a connection whose ``synchronous`` is below FULL
  (:func:`shared.db.require_durable`): a wallet whose address a user was told must not vanish
  in a power cut.
- Every write is one :func:`shared.db.atomic` transaction; :meth:`Vault.ensure_wallet` gives
  two processes asking for the same ``(label, owner)`` the same wallet.
- The master key file is created atomically with mode 0600 and never overwritten
  (:func:`generate_master_key_file`); one that group or others may read is refused.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eth_abi.exceptions import EncodingError
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_typing import ChecksumAddress
from eth_utils.address import is_hex_address, to_checksum_address
from pydantic import Field, SecretStr

from shared.config import CoreSettings
from shared.db import atomic, require_durable
from shared.errors import ConfigError, KeyFileError, PermanentError
from shared.keys.derivation import (
    AAD_V1,
    AAD_V2,
    MAX_DERIVATION_INDEX,
    PRIVATE_KEY_BYTES,
    associated_data,
    check_index,
    derivation_prk,
    derive_private_key,
)
from shared.keys.files import read_private, write_secret_file
from shared.tx.signer import LocalSigner

log = structlog.get_logger(__name__)

VAULT_KEY_FILE_ENV: Final = "HODLAI_VAULT_KEY_FILE"
MASTER_KEY_BYTES: Final = 32  # AES-256
NONCE_BYTES: Final = 12  # 96 bits: the nonce size GCM uses directly, without hashing it
# Bytes of SHA-256 shown as a master key's id: enough to tell two keys apart, useless for
# guessing one (it is a hash of 256 random bits).
KEY_ID_BYTES: Final = 8
_KEY_ID_CONTEXT: Final = b"hodlai vault master key id v1\x00"
# Characters a label or owner may have at most: they are identifiers, not documents.
MAX_NAME_CHARS: Final = 200

_MASTER_KEY_HEX: Final = re.compile(rb"[0-9a-fA-F]{%d}" % (MASTER_KEY_BYTES * 2))
_COLUMNS: Final = "address, label, owner, key_id, created_at, derivation_index"
# The owner column of wallet_derivations for wallets without an owner (an owner is never '').
_NO_OWNER: Final = ""


# --- errors ---------------------------------------------------------------------------------
# Kept next to the vault until the integrator files them into shared/errors.py's tree.


class VaultError(PermanentError):
    """A vault operation that fails the same way whenever it is retried."""


class UnknownWalletError(VaultError):
    """No wallet with that address is in the vault."""


class WalletExistsError(VaultError):
    """The wallet (address, or label and owner) is already in the vault."""


class WalletMissingError(VaultError):
    """An owner's wallet was created before but its row is gone: it is recovered, not
    silently replaced by a new address."""


class WalletDecryptError(VaultError):
    """A row does not decrypt: another master key, or the row was altered or moved."""


class TypedDataError(VaultError):
    """EIP-712 typed data that cannot be encoded, so it is not signed."""


class MoneyTypedDataError(TypedDataError):
    """EIP-712 typed data that is money (EIP-3009): only the authorizations ledger signs it."""


#: EIP-712 primary types that are money once signed (EIP-3009, Circle's FiatTokenV2): the
#: vault signs them only for shared.tx.authorizations, which records each one first.
MONEY_TYPED_DATA_KINDS: Final = frozenset(
    {"TransferWithAuthorization", "ReceiveWithAuthorization", "CancelAuthorization"}
)
#: EIP-712 primary types that grant a token allowance off chain (EIP-2612 ``Permit``, Uniswap's
#: Permit2): money as well, and no ledger of this node records them, so the vault never signs
#: them. An executor that needs one gets a ledger for it first, as EIP-3009 has.
ALLOWANCE_TYPED_DATA_KINDS: Final = frozenset(
    {
        "Permit",
        "PermitSingle",
        "PermitBatch",
        "PermitTransferFrom",
        "PermitBatchTransferFrom",
        "PermitWitnessTransferFrom",
        "PermitBatchWitnessTransferFrom",
    }
)


# --- settings and values --------------------------------------------------------------------


class VaultSettings(CoreSettings):
    """Settings of a process that signs with vault wallets (executors extend this)."""

    # The vault's master key: 32 random bytes as hex, mode 0600 (`hodlai vault init-key`).
    # Losing it loses every wallet in the vault: back it up apart from the database.
    vault_key_file: Path | None = None
    # For `hodlai vault import` of an encrypted keystore (same meaning as the fulfiller's).
    key_passphrase: SecretStr | None = None
    key_passphrase_file: Path | None = None
    # Wallets listed by `hodlai vault list` at most.
    vault_list_limit: int = Field(default=1000, ge=1)


@dataclass(frozen=True)
class Wallet:
    """What the vault tells about a wallet: never its key."""

    address: ChecksumAddress
    label: str  # what it is for: 'mint-agent', 'distribution', ...
    owner: str | None  # whom it serves (a user's address or id); None for the node's own
    key_id: str  # the id of the master key its key is encrypted under
    created_at: float  # Unix seconds
    # Its key is derived from the master key with this index (recoverable); None: imported.
    derivation_index: int | None = None

    @property
    def recoverable(self) -> bool:
        """Whether ``hodlai vault recover`` can re-derive it from the master key alone."""
        return self.derivation_index is not None


@dataclass(frozen=True)
class Recovery:
    """What :meth:`Vault.recover` found: the wallet, and whether its row was re-inserted."""

    wallet: Wallet
    inserted: bool


@dataclass(frozen=True)
class TypedDataSignature:
    """An EIP-712 signature (what ``transferWithAuthorization`` takes as v, r, s)."""

    signer: ChecksumAddress
    digest: bytes  # the 32-byte EIP-712 hash that was signed
    v: int
    r: int
    s: int
    signature: bytes  # 65 bytes: r || s || v


class MasterKey:
    """The vault's AES-256-GCM key and the secret wallet keys are derived from. Holds only the
    cipher object, the derivation secret (HKDF-Extract of the key, not the key) and the key's
    id: the raw bytes are not kept, and neither ``repr`` nor ``vars`` can show them."""

    __slots__ = ("_aead", "_prk", "key_id")

    def __init__(self, key: bytes) -> None:
        if len(key) != MASTER_KEY_BYTES:
            raise KeyFileError(f"a vault master key is {MASTER_KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self._prk = derivation_prk(key)
        self.key_id = hashlib.sha256(_KEY_ID_CONTEXT + key).digest()[:KEY_ID_BYTES].hex()

    def __repr__(self) -> str:
        return f"MasterKey(key_id={self.key_id})"

    __str__ = __repr__

    def _seal(self, private_key: bytes, aad: bytes) -> tuple[bytes, bytes]:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce, self._aead.encrypt(nonce, private_key, aad)

    def _open(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        return self._aead.decrypt(nonce, ciphertext, aad)

    def _derive(self, *, label: str, owner: str | None, index: int) -> bytes:
        return derive_private_key(self._prk, label=label, owner=owner, index=index)


# --- the master key file --------------------------------------------------------------------


def generate_master_key_file(path: Path | str) -> str:
    """Create a new master key in ``path`` (64 hex characters, mode 0600, written under a
    temporary name and linked into place, so never half-written and never replacing an
    existing file); return its key id."""
    key = secrets.token_bytes(MASTER_KEY_BYTES)
    target = Path(path)
    try:
        write_secret_file(target, key.hex(), overwrite=False)
    except KeyFileError as exc:
        raise KeyFileError(f"{VAULT_KEY_FILE_ENV}: {exc}") from None
    except OSError as exc:  # a missing permission, a parent that is a file, a full disk
        raise KeyFileError(
            f"{VAULT_KEY_FILE_ENV}: cannot create master key file {target}: {exc.strerror} "
            f"({exc.filename})"
        ) from None
    key_id = MasterKey(key).key_id
    log.info("vault_master_key_created", path=str(target), key_id=key_id)
    return key_id


def load_master_key(path: Path | str | None) -> MasterKey:
    """The master key in ``path`` (the value of ``HODLAI_VAULT_KEY_FILE``), after checking that
    only its owner may read it. Every refusal names the setting and never quotes the file."""
    if path is None or str(path) == "":
        raise ConfigError(
            f"missing required setting {VAULT_KEY_FILE_ENV}: the vault's master key file "
            "(create one with `hodlai vault init-key`)"
        )
    source = Path(path)
    if not source.exists():
        raise ConfigError(
            f"{VAULT_KEY_FILE_ENV}: master key file {source} does not exist; restore it from "
            "its backup, or create a new one with `hodlai vault init-key` for a new vault "
            "(wallets encrypted under another master key cannot be opened with it)"
        )
    try:
        raw = read_private(
            source, what="vault master key file", secret="the master key",
            rotate="treat every vault wallet's key as exposed if others did read it",
        )  # fmt: skip
    except KeyFileError as exc:
        raise KeyFileError(f"{VAULT_KEY_FILE_ENV}: {exc}") from None
    text = raw.removesuffix(b"\n").removesuffix(b"\r")
    # Exactly the hex digits: bytes.fromhex alone would also take spaces and newlines inside.
    if not _MASTER_KEY_HEX.fullmatch(text):
        raise KeyFileError(
            f"{VAULT_KEY_FILE_ENV}: master key file {source} does not hold "
            f"{MASTER_KEY_BYTES * 2} hex characters ({MASTER_KEY_BYTES} bytes)"
        )
    return MasterKey(bytes.fromhex(text.decode("ascii")))


def open_vault(conn: sqlite3.Connection, key_file: Path | str | None) -> Vault:
    """The vault of the database ``conn`` (opened with ``durable=True``), under the master key
    in ``key_file``."""
    return Vault(conn, load_master_key(key_file))


# --- reading the table (no master key needed) -----------------------------------------------


def parse_address(address: str) -> ChecksumAddress:
    """``address`` checksummed; a malformed one is refused without being quoted."""
    if not isinstance(address, str) or not is_hex_address(address):
        size = len(address) if isinstance(address, str) else type(address).__name__
        raise VaultError(f"not a 20-byte hex address (got {size} characters)")
    return to_checksum_address(address)


def list_wallets(
    conn: sqlite3.Connection, *, label: str | None = None, limit: int | None = None
) -> list[Wallet]:
    """Wallets in creation order, optionally only those with ``label``."""
    sql = f"SELECT {_COLUMNS} FROM wallets"
    params: list[object] = []
    if label is not None:
        sql += " WHERE label = ?"
        params.append(label)
    sql += " ORDER BY created_at, address"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return [_wallet(row) for row in conn.execute(sql, params)]


def find_wallet(conn: sqlite3.Connection, address: str) -> Wallet | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM wallets WHERE address = ?", (parse_address(address),)
    ).fetchone()
    return None if row is None else _wallet(row)


def wallet_of(conn: sqlite3.Connection, *, label: str, owner: str) -> Wallet | None:
    """The wallet ``owner`` has for ``label`` (at most one: a unique index says so)."""
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM wallets WHERE label = ? AND owner = ?", (label, owner)
    ).fetchone()
    return None if row is None else _wallet(row)


def _wallet(row: sqlite3.Row | tuple[Any, ...]) -> Wallet:
    address, label, owner, key_id, created_at, index = tuple(row)
    return Wallet(to_checksum_address(address), label, owner, key_id, float(created_at), index)


# --- the vault ------------------------------------------------------------------------------


class Vault:
    """Creates, imports, recovers and signs with the wallets of one database under one master
    key."""

    def __init__(self, conn: sqlite3.Connection, master_key: MasterKey) -> None:
        require_durable(conn, who="the vault")
        self._conn = conn
        self._master = master_key

    def __repr__(self) -> str:
        return f"Vault(key_id={self._master.key_id})"

    __str__ = __repr__

    @property
    def key_id(self) -> str:
        return self._master.key_id

    def create_wallet(
        self, *, label: str, owner: str | None = None, now: float | None = None
    ) -> ChecksumAddress:
        """A new wallet whose key is derived from the master key at the next index of
        (``label``, ``owner``); returns its address only."""
        _check_names(label, owner)
        with atomic(self._conn):
            if owner is not None and wallet_of(self._conn, label=label, owner=owner):
                raise WalletExistsError(f"{owner!r} already has a {label!r} wallet")
            address, index = self._insert_derived(label=label, owner=owner, now=now)
        log.info("vault_wallet_created", address=address, label=label, owner=owner, index=index)
        return address

    def ensure_wallet(self, *, label: str, owner: str, now: float | None = None) -> ChecksumAddress:
        """The address of ``owner``'s wallet for ``label``, created (derived) on first use.
        Concurrent callers (other processes included) get the same wallet. If the owner had
        one whose row is gone (its index was handed out, see ``wallet_derivations``), this
        raises WalletMissingError instead of telling the owner a second address: the
        operator recovers it (``hodlai vault recover``) or creates a new one on purpose."""
        _check_names(label, owner)
        with atomic(self._conn):
            found = wallet_of(self._conn, label=label, owner=owner)
            if found is not None:
                return found.address
            issued = self._next_index(label=label, owner=owner)
            if issued:
                raise WalletMissingError(
                    f"the {label!r} wallet of {owner!r} (index {issued - 1}) is missing from "
                    f"the vault: recover it with `hodlai vault recover --label {label} --owner "
                    f"{owner} --index {issued - 1}`, or make a new one on purpose with "
                    f"`hodlai vault create --label {label} --owner {owner}`"
                )
            address, index = self._insert_derived(label=label, owner=owner, now=now)
        log.info("vault_wallet_created", address=address, label=label, owner=owner, index=index)
        return address

    def import_key(
        self,
        private_key: bytes,
        *,
        label: str,
        owner: str | None = None,
        now: float | None = None,
    ) -> ChecksumAddress:
        """Add an existing key (an operator's distribution wallet, say); returns its address.
        An address already in the vault is refused, never re-encrypted or replaced. The row
        has no derivation index: only a backup of the database (or of the key) restores it."""
        if not isinstance(private_key, bytes) or len(private_key) != PRIVATE_KEY_BYTES:
            raise VaultError(f"a private key to import is {PRIVATE_KEY_BYTES} bytes")
        _check_names(label, owner)
        address = _address_of(private_key)
        with atomic(self._conn):
            if owner is not None and wallet_of(self._conn, label=label, owner=owner):
                raise WalletExistsError(f"{owner!r} already has a {label!r} wallet")
            self._insert(private_key, address, label=label, owner=owner, index=None, now=now)
        log.info("vault_wallet_imported", address=address, label=label, owner=owner)
        return address

    def derived_address(self, *, label: str, owner: str | None, index: int) -> ChecksumAddress:
        """The address of wallet ``index`` of (``label``, ``owner``), from the master key
        alone; the database is not read (``hodlai vault recover --scan``)."""
        _check_names(label, owner)
        return _address_of(self._derive(label=label, owner=owner, index=index))

    def recover(
        self, *, label: str, owner: str | None, index: int, now: float | None = None
    ) -> Recovery:
        """Re-derive wallet ``index`` of (``label``, ``owner``) from the master key and put
        its row back if it is missing. A row already there for that address is left as it
        is if it says the same (label, owner, index), and refused otherwise; an owner who
        already has another wallet for ``label`` is refused: nothing is ever overwritten."""
        _check_names(label, owner)
        key = self._derive(label=label, owner=owner, index=index)
        address = _address_of(key)
        with atomic(self._conn):
            found = find_wallet(self._conn, address)
            if found is not None:
                if (found.label, found.owner, found.derivation_index) != (label, owner, index):
                    raise WalletExistsError(
                        f"wallet {address} is in the vault with other names (label "
                        f"{found.label!r}, owner {found.owner!r}, index "
                        f"{found.derivation_index}); it is left as it is"
                    )
                return Recovery(found, inserted=False)
            held = None if owner is None else wallet_of(self._conn, label=label, owner=owner)
            if held is not None:
                raise WalletExistsError(
                    f"{owner!r} already has a {label!r} wallet {held.address} (index "
                    f"{held.derivation_index}), not {address}; it is left as it is"
                )
            self._insert(key, address, label=label, owner=owner, index=index, now=now)
            self._raise_counter(label=label, owner=owner, past=index)
            wallet = find_wallet(self._conn, address)
        assert wallet is not None  # inserted in this transaction
        log.warning(
            "vault_wallet_recovered", address=address, label=label, owner=owner, index=index
        )
        return Recovery(wallet, inserted=True)

    def signer(self, address: str, *, chain_id: int) -> LocalSigner:
        """A transaction signer for the wallet ``address`` on ``chain_id`` (what
        :class:`shared.tx.manager.TxManager` takes)."""
        return LocalSigner(self._private_key(address), chain_id=chain_id)

    def sign_typed_data(self, address: str, typed: Mapping[str, Any]) -> TypedDataSignature:
        """Sign EIP-712 typed data (the ``eth_signTypedData_v4`` structure: ``types``,
        ``primaryType``, ``domain``, ``message``) with the wallet ``address``. Money kinds
        (EIP-3009's TransferWithAuthorization, ReceiveWithAuthorization, CancelAuthorization)
        are refused: they are signed only through the authorizations ledger
        (shared.tx.authorizations), which records each one before it leaves the process."""
        wallet = parse_address(address)
        _check_typed_shape(wallet, typed)
        if typed["primaryType"] in MONEY_TYPED_DATA_KINDS:
            raise MoneyTypedDataError(
                f"{typed['primaryType']} for {wallet} is an EIP-3009 authorization (money): "
                "sign it through the authorizations ledger (shared.tx.authorizations."
                "sign_authorization / sign_cancel), which records it before it is returned"
            )
        if typed["primaryType"] in ALLOWANCE_TYPED_DATA_KINDS:
            raise MoneyTypedDataError(
                f"{typed['primaryType']} for {wallet} grants a token allowance (money) and no "
                "ledger of this node records it: the vault does not sign it"
            )
        return self._sign_typed(wallet, typed)

    def _sign_money_typed_data(self, address: str, typed: Mapping[str, Any]) -> TypedDataSignature:
        """Sign an EIP-3009 kind. For shared.tx.authorizations only, which calls it inside the
        transaction that records the signature; everything else uses sign_typed_data."""
        wallet = parse_address(address)
        _check_typed_shape(wallet, typed)
        if typed["primaryType"] not in MONEY_TYPED_DATA_KINDS:
            raise TypedDataError(f"{typed['primaryType']} is not an EIP-3009 kind")
        return self._sign_typed(wallet, typed)

    def _sign_typed(self, wallet: ChecksumAddress, typed: Mapping[str, Any]) -> TypedDataSignature:
        try:
            signable = encode_typed_data(full_message=dict(typed))
        except (ValueError, TypeError, KeyError, AttributeError, EncodingError) as exc:
            raise TypedDataError(
                f"typed data for {wallet} cannot be encoded: {str(exc)[:200]}"
            ) from exc
        signed = Account.sign_message(signable, private_key=self._private_key(wallet))
        log.info(
            "vault_typed_data_signed",
            address=wallet,
            primary_type=typed["primaryType"],
            digest="0x" + bytes(signed.message_hash).hex(),
        )
        return TypedDataSignature(
            signer=wallet,
            digest=bytes(signed.message_hash),
            v=signed.v,
            r=signed.r,
            s=signed.s,
            signature=bytes(signed.signature),
        )

    def check(self) -> int:
        """Decrypt every wallet, in creation order, and check each key derives its address;
        return how many. Raises WalletDecryptError at the first that does not: after restoring
        a database or a master key file, this says whether the two belong together."""
        addresses = [r[0] for r in self._conn.execute("SELECT address FROM wallets ORDER BY rowid")]
        for address in addresses:
            self._private_key(address)
        log.info("vault_checked", wallets=len(addresses), key_id=self._master.key_id)
        return len(addresses)

    def legacy_rows(self) -> int:
        """Rows whose associated data binds the address only (written before core migration
        8): their owner or label could be edited without the row failing to decrypt."""
        sql = "SELECT count(*) FROM wallets WHERE aad_version = ?"
        return int(self._conn.execute(sql, (AAD_V1,)).fetchone()[0])

    def upgrade(self) -> int:
        """Re-seal every version-1 row as version 2 (a fresh nonce, the full associated
        data), each in its own transaction; return how many. A row that does not decrypt
        stops it with WalletDecryptError, leaving that row and the rest as they were."""
        sql = "SELECT address FROM wallets WHERE aad_version = ? ORDER BY rowid"
        addresses = [r[0] for r in self._conn.execute(sql, (AAD_V1,))]
        done = 0
        for address in addresses:
            with atomic(self._conn):
                row = self._row(address)
                if row is None or row.aad_version != AAD_V1:
                    continue  # gone or re-sealed by another process meanwhile
                key = self._open_row(row)
                aad = associated_data(
                    AAD_V2, row.address, label=row.label, owner=row.owner, index=row.index
                )
                nonce, ciphertext = self._master._seal(key, aad)
                self._conn.execute(
                    "UPDATE wallets SET nonce = ?, ciphertext = ?, aad_version = ?"
                    " WHERE address = ? AND aad_version = ? AND nonce = ?",
                    (nonce, ciphertext, AAD_V2, row.address, AAD_V1, row.nonce),
                )
            done += 1
            log.info("vault_wallet_resealed", address=row.address, aad_version=AAD_V2)
        return done

    # --- internals ----------------------------------------------------------------------

    def _derive(self, *, label: str, owner: str | None, index: int) -> bytes:
        try:
            check_index(index)
        except ValueError as exc:
            raise VaultError(str(exc)) from None
        return self._master._derive(label=label, owner=owner, index=index)

    def _insert_derived(
        self, *, label: str, owner: str | None, now: float | None
    ) -> tuple[ChecksumAddress, int]:
        """Allocate the next index of (label, owner), derive its key and insert the row, in
        the caller's transaction. The next index is past both the counter and every row of
        (label, owner), so a lost counter row does not hand out an index again; an address
        already in the vault (its row outlived its counter) is skipped, never replaced."""
        assert self._conn.in_transaction
        highest = self._conn.execute(
            "SELECT max(derivation_index) FROM wallets WHERE label = ? AND owner IS ?",
            (label, owner),
        ).fetchone()[0]
        index = max(
            self._next_index(label=label, owner=owner), -1 if highest is None else highest + 1
        )
        while True:
            if index > MAX_DERIVATION_INDEX:
                raise VaultError(f"no derivation index left for {label!r} wallets of {owner!r}")
            key = self._derive(label=label, owner=owner, index=index)
            address = _address_of(key)
            if find_wallet(self._conn, address) is None:
                break
            index += 1
        self._insert(key, address, label=label, owner=owner, index=index, now=now)
        self._raise_counter(label=label, owner=owner, past=index)
        return address, index

    def _next_index(self, *, label: str, owner: str | None) -> int:
        """The counter of (label, owner): how many indexes were handed out (0: none)."""
        counter = self._conn.execute(
            "SELECT next_index FROM wallet_derivations WHERE label = ? AND owner = ?",
            (label, _NO_OWNER if owner is None else owner),
        ).fetchone()
        return 0 if counter is None else int(counter[0])

    def _raise_counter(self, *, label: str, owner: str | None, past: int) -> None:
        self._conn.execute(
            "INSERT INTO wallet_derivations (label, owner, next_index) VALUES (?, ?, ?)"
            " ON CONFLICT (label, owner) DO UPDATE"
            " SET next_index = max(next_index, excluded.next_index)",
            (label, _NO_OWNER if owner is None else owner, past + 1),
        )

    def _insert(
        self,
        private_key: bytes,
        address: ChecksumAddress,
        *,
        label: str,
        owner: str | None,
        index: int | None,
        now: float | None,
    ) -> None:
        """Encrypt and insert one row in the caller's transaction; the caller logs once its
        transaction has committed."""
        assert self._conn.in_transaction
        self._refuse_another_master_key()
        if find_wallet(self._conn, address) is not None:
            raise WalletExistsError(f"wallet {address} is already in the vault")
        aad = associated_data(AAD_V2, address, label=label, owner=owner, index=index)
        nonce, ciphertext = self._master._seal(private_key, aad)
        created_at = time.time() if now is None else now
        self._conn.execute(
            "INSERT INTO wallets (address, label, owner, key_id, nonce, ciphertext,"
            " created_at, derivation_index, aad_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                address, label, owner, self._master.key_id, nonce, ciphertext, created_at,
                index, AAD_V2,
            ),
        )  # fmt: skip

    def _refuse_another_master_key(self) -> None:
        """A process started with the wrong master key file must not add wallets (above all,
        not "recover" one that belongs to no one) beside those of the right one. The first
        row stands for the database: rows of several master keys only come from this mistake."""
        first = self._conn.execute("SELECT key_id FROM wallets ORDER BY rowid LIMIT 1").fetchone()
        if first is not None and first[0] != self._master.key_id:
            raise ConfigError(
                f"{VAULT_KEY_FILE_ENV}: this database's wallets are encrypted under master key "
                f"{first[0]}, but the file holds master key {self._master.key_id}; point it at "
                "the master key file of this database (no wallet was added)"
            )

    def _row(self, address: ChecksumAddress) -> _SealedRow | None:
        row = self._conn.execute(
            "SELECT address, label, owner, key_id, nonce, ciphertext, derivation_index,"
            " aad_version FROM wallets WHERE address = ?",
            (address,),
        ).fetchone()
        if row is None:
            return None
        address_, label, owner, key_id, nonce, ciphertext, index, version = tuple(row)
        return _SealedRow(
            to_checksum_address(address_), label, owner, key_id, bytes(nonce), bytes(ciphertext),
            index, version,
        )  # fmt: skip

    def _private_key(self, address: str) -> bytes:
        wallet = parse_address(address)
        row = self._row(wallet)
        if row is None:
            raise UnknownWalletError(f"no wallet {wallet} in the vault")
        return self._open_row(row)

    def _open_row(self, row: _SealedRow) -> bytes:
        wallet = row.address
        if row.key_id != self._master.key_id:
            raise WalletDecryptError(
                f"wallet {wallet} is encrypted under master key {row.key_id}, but "
                f"{VAULT_KEY_FILE_ENV} holds master key {self._master.key_id}: point it at the "
                "master key file this database's wallets were created with"
            )
        try:
            aad = associated_data(
                row.aad_version, wallet, label=row.label, owner=row.owner, index=row.index
            )
            key = self._master._open(row.nonce, row.ciphertext, aad)
        except (InvalidTag, ValueError, TypeError, OverflowError):
            raise WalletDecryptError(
                f"wallet {wallet}: its encrypted key does not authenticate under master key "
                f"{row.key_id} (the row was altered: its key, address, label, owner or index; "
                "or copied from another row); restore the row from a backup"
            ) from None
        try:
            holder: ChecksumAddress | None = _address_of(key)
        except VaultError:
            holder = None
        if holder != wallet:
            raise WalletDecryptError(
                f"wallet {wallet}: its decrypted key belongs to another address (the row was "
                "forged with the master key); restore the row from a backup"
            )
        if row.index is not None and not secrets.compare_digest(
            key, self._derive(label=row.label, owner=row.owner, index=row.index)
        ):
            raise WalletDecryptError(
                f"wallet {wallet}: its key is not the derivation of its label, owner and index "
                f"{row.index} (the row was forged with the master key); restore it with "
                "`hodlai vault recover`"
            )
        return key


@dataclass(frozen=True)
class _SealedRow:
    """A ``wallets`` row as stored: what opening it needs. Private: it carries the sealed key."""

    address: ChecksumAddress
    label: str
    owner: str | None
    key_id: str
    nonce: bytes
    ciphertext: bytes
    index: int | None
    aad_version: int

    def __repr__(self) -> str:
        return f"_SealedRow(address={self.address}, aad_version={self.aad_version})"


def _address_of(private_key: bytes) -> ChecksumAddress:
    """The address of ``private_key``; an invalid key is refused without being quoted."""
    try:
        return to_checksum_address(Account.from_key(private_key).address)
    except ValueError:
        raise VaultError("the key is not a valid secp256k1 private key") from None


def _check_names(label: object, owner: object) -> None:
    _check_name(label, what="label")
    if owner is not None:
        _check_name(owner, what="owner")


def _check_name(value: object, *, what: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise VaultError(f"a wallet's {what} must be a non-empty string")
    if len(value) > MAX_NAME_CHARS or not value.isprintable():
        raise VaultError(f"a wallet's {what} must be at most {MAX_NAME_CHARS} printable characters")


def _check_typed_shape(address: ChecksumAddress, typed: object) -> None:
    # eth-account guesses a missing primaryType; the vault signs only what the caller named.
    if not isinstance(typed, Mapping):
        raise TypedDataError(f"typed data for {address} must be a mapping")
    missing = [k for k in ("types", "primaryType", "domain", "message") if k not in typed]
    if missing:
        raise TypedDataError(f"typed data for {address} lacks {', '.join(missing)}")
    types, primary = typed["types"], typed["primaryType"]
    if not isinstance(types, Mapping) or not isinstance(primary, str) or primary not in types:
        raise TypedDataError(f"typed data for {address}: primaryType must name one of its types")
