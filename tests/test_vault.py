"""The key vault on real SQLite files with real AES-256-GCM: round trip, a fresh nonce per row,
the address bound as associated data, tampering and a wrong master key refused with the
address named, the master key file's permissions and absence, one wallet per (label, owner)
across processes, and the operator commands."""

from __future__ import annotations

import hashlib
import hmac
import json
import multiprocessing
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eth_account import Account

from shared.db import atomic, connect
from shared.errors import ConfigError, KeyFileError, NotDurableError, PermanentError
from shared.keys import generate_key_file
from shared.keys.vault import (
    VAULT_KEY_FILE_ENV,
    MasterKey,
    TypedDataError,
    UnknownWalletError,
    Vault,
    VaultError,
    WalletDecryptError,
    WalletExistsError,
    WalletMissingError,
    find_wallet,
    generate_master_key_file,
    list_wallets,
    load_master_key,
    open_vault,
    wallet_of,
)
from shared.migrations import SCHEMA_MIGRATIONS_DDL, core_set
from shared.tx.fees import Fees
from shared.tx.signer import Call, LocalSigner, Signer

CHAIN_ID = 31337
A_CALL = Call(to=Account.create().address, data=b"\x01\x02", value=7, gas_limit=50_000)
A_FEES = Fees(max_fee_per_gas=3 * 10**9, max_priority_fee_per_gas=10**9)


def new_vault(tmp_path: Path, name: str = "vault") -> tuple[Vault, Path, sqlite3.Connection]:
    """A vault on a fresh database file with a fresh master key file."""
    key_file = tmp_path / f"{name}.key"
    generate_master_key_file(key_file)
    conn = connect(tmp_path / f"{name}.db", durable=True)
    return open_vault(conn, key_file), key_file, conn


def field(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(4, "big") + raw


def documented_aad(
    version: int, address: str, label: str, owner: str | None, index: int | None
) -> bytes:
    """The associated data as shared/keys/derivation.py documents it, written out again."""
    if version == 1:
        return bytes.fromhex(address[2:])
    return (
        b"\x02"
        + bytes.fromhex(address[2:])
        + (b"\x00" if index is None else b"\x01" + index.to_bytes(8, "big"))
        + field(label)
        + (b"\x00" if owner is None else b"\x01" + field(owner))
    )


def decrypt_row(conn: sqlite3.Connection, address: str, key_file: Path) -> bytes:
    """The row's key, decrypted by hand from the documented format (an operator's recovery
    script does the same): AES-256-GCM, key = the file's 64 hex characters, AAD = the 20
    address bytes (version 1) or version, address, index, label and owner (version 2)."""
    nonce, ciphertext, label, owner, index, version = conn.execute(
        "SELECT nonce, ciphertext, label, owner, derivation_index, aad_version FROM wallets"
        " WHERE address = ?",
        (address,),
    ).fetchone()
    master = bytes.fromhex(key_file.read_text().strip())
    aad = documented_aad(version, address, label, owner, index)
    return AESGCM(master).decrypt(nonce, ciphertext, aad)


def documented_derivation(key_file: Path, label: str, owner: str | None, index: int) -> bytes:
    """A derived wallet's key as shared/keys/derivation.py documents it (HKDF-SHA256), with
    the standard library's HMAC only: the format does not depend on our code."""
    master = bytes.fromhex(key_file.read_text().strip())
    prk = hmac.new(b"hodlai vault derivation v1", master, hashlib.sha256).digest()
    owner_field = b"\x00" if owner is None else b"\x01" + field(owner)
    info = b"hodlai vault wallet v1\x00" + field(label) + owner_field + index.to_bytes(8, "big")
    info += (0).to_bytes(4, "big")  # counter 0: a candidate outside the curve order is ~2^-128
    # HKDF-Expand for one 32-byte block: T(1) = HMAC(PRK, info || 0x01).
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def write_private(path: Path, text: str, mode: int = 0o600) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    path.chmod(mode)
    return path


# --- round trip -----------------------------------------------------------------------------


def test_an_imported_key_comes_back_as_the_same_signer(tmp_path: Path) -> None:
    vault, key_file, conn = new_vault(tmp_path)
    key = bytes(Account.create().key)
    address = vault.import_key(key, label="distribution")
    assert address == Account.from_key(key).address
    # Signatures are deterministic (RFC 6979): equal raw transactions mean equal keys.
    expected = LocalSigner(key, chain_id=CHAIN_ID).sign(A_CALL, nonce=3, fees=A_FEES)
    assert vault.signer(address, chain_id=CHAIN_ID).sign(A_CALL, nonce=3, fees=A_FEES) == expected
    assert decrypt_row(conn, address, key_file) == key
    stored = conn.execute("SELECT ciphertext FROM wallets").fetchone()[0]
    assert key not in stored and key.hex().encode() not in stored


def test_a_created_wallet_signs_for_its_address_after_reopening(tmp_path: Path) -> None:
    vault, key_file, conn = new_vault(tmp_path)
    address = vault.create_wallet(label="mint-agent", owner="user-1", now=1_700_000_000.0)
    conn.close()
    reopened = open_vault(connect(tmp_path / "vault.db", durable=True), key_file)
    signer = reopened.signer(address.lower(), chain_id=CHAIN_ID)
    assert signer.address == address
    signed = signer.sign(A_CALL, nonce=0, fees=A_FEES)
    assert Account.recover_transaction(signed.raw) == address
    assert list_wallets(reopened._conn) == [
        find_wallet(reopened._conn, address) or pytest.fail("wallet not found after reopening")
    ]
    wallet = wallet_of(reopened._conn, label="mint-agent", owner="user-1")
    assert wallet is not None and wallet.created_at == 1_700_000_000.0
    assert wallet.key_id == reopened.key_id == load_master_key(key_file).key_id


def test_every_row_gets_a_fresh_nonce_over_a_thousand_wallets(tmp_path: Path) -> None:
    vault, _, conn = new_vault(tmp_path)
    for i in range(1000):
        vault.create_wallet(label="mint-agent", owner=f"user-{i}")
    nonces = [row[0] for row in conn.execute("SELECT nonce FROM wallets")]
    assert len(nonces) == 1000
    assert len(set(nonces)) == 1000
    assert {len(n) for n in nonces} == {12}
    assert vault.check() == 1000


def test_the_database_refuses_a_nonce_used_twice(tmp_path: Path) -> None:
    vault, _, conn = new_vault(tmp_path)
    address = vault.create_wallet(label="x")
    other = Account.create().address
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"), atomic(conn):
        conn.execute(
            "INSERT INTO wallets (address, label, owner, key_id, nonce, ciphertext, created_at)"
            " SELECT ?, label, owner, key_id, nonce, ciphertext, created_at FROM wallets"
            " WHERE address = ?",
            (other, address),
        )


# --- binding, tampering, wrong master key ---------------------------------------------------


def test_ciphertexts_swapped_between_rows_do_not_decrypt(tmp_path: Path) -> None:
    vault, _, conn = new_vault(tmp_path)
    first = vault.create_wallet(label="a")
    second = vault.create_wallet(label="b")
    rows = {
        address: conn.execute(
            "SELECT nonce, ciphertext FROM wallets WHERE address = ?", (address,)
        ).fetchone()
        for address in (first, second)
    }
    # Swap nonce and ciphertext together: only the associated data (the address) can tell.
    with atomic(conn):
        for address, other in ((first, second), (second, first)):
            conn.execute(
                "UPDATE wallets SET nonce = ?, ciphertext = ? WHERE address = ?",
                (b"\0" * 12 if address == first else b"\1" * 12, rows[other][1], address),
            )
        for address, other in ((first, second), (second, first)):
            conn.execute(
                "UPDATE wallets SET nonce = ? WHERE address = ?", (rows[other][0], address)
            )
    for address in (first, second):
        with pytest.raises(WalletDecryptError, match="does not authenticate") as caught:
            vault.signer(address, chain_id=CHAIN_ID)
        assert address in str(caught.value)
        with pytest.raises(WalletDecryptError, match="does not authenticate"):
            vault.sign_typed_data(address, order_typed_data(address))


@pytest.mark.parametrize("column", ["ciphertext", "nonce"])
def test_a_flipped_bit_in_a_row_is_detected(tmp_path: Path, column: str) -> None:
    vault, _, conn = new_vault(tmp_path)
    address = vault.create_wallet(label="a")
    value = bytearray(conn.execute(f"SELECT {column} FROM wallets").fetchone()[0])
    value[5] ^= 0x01
    with atomic(conn):
        conn.execute(f"UPDATE wallets SET {column} = ?", (bytes(value),))
    with pytest.raises(WalletDecryptError, match=f"wallet {address}: .* does not authenticate"):
        vault.signer(address, chain_id=CHAIN_ID)
    with pytest.raises(WalletDecryptError, match=address):
        vault.check()


def test_a_row_forged_under_the_master_key_for_another_address_is_refused(tmp_path: Path) -> None:
    vault, key_file, conn = new_vault(tmp_path)
    address = vault.create_wallet(label="a")
    foreign = bytes(Account.create().key)
    master = AESGCM(bytes.fromhex(key_file.read_text().strip()))
    nonce = os.urandom(12)
    forged = master.encrypt(nonce, foreign, documented_aad(2, address, "a", None, 0))
    with atomic(conn):
        conn.execute("UPDATE wallets SET nonce = ?, ciphertext = ?", (nonce, forged))
    with pytest.raises(
        WalletDecryptError, match=f"{address}: its decrypted key belongs to another"
    ):
        vault.signer(address, chain_id=CHAIN_ID)


def test_a_wrong_master_key_names_the_wallet_and_both_key_ids_not_the_key(tmp_path: Path) -> None:
    vault, _, conn = new_vault(tmp_path)
    address = vault.create_wallet(label="a")
    other_file = tmp_path / "other.key"
    generate_master_key_file(other_file)
    wrong = open_vault(conn, other_file)
    with pytest.raises(WalletDecryptError) as caught:
        wrong.signer(address, chain_id=CHAIN_ID)
    message = str(caught.value)
    assert isinstance(caught.value, PermanentError)
    assert address in message and VAULT_KEY_FILE_ENV in message
    assert vault.key_id in message and wrong.key_id in message
    assert other_file.read_text().strip() not in message
    # A row whose key id was rewritten to the wrong key's id still does not decrypt.
    with atomic(conn):
        conn.execute("UPDATE wallets SET key_id = ?", (wrong.key_id,))
    with pytest.raises(WalletDecryptError, match="does not authenticate"):
        wrong.signer(address, chain_id=CHAIN_ID)


def test_an_unknown_wallet_and_a_malformed_address_are_refused_without_quoting(
    tmp_path: Path,
) -> None:
    vault, _, _ = new_vault(tmp_path)
    stranger = Account.create().address
    with pytest.raises(UnknownWalletError, match=f"no wallet {stranger}"):
        vault.signer(stranger, chain_id=CHAIN_ID)
    # A private key passed where an address belongs must not be echoed into a log line.
    key_hex = "0x" + bytes(Account.create().key).hex()
    with pytest.raises(VaultError, match="not a 20-byte hex address") as caught:
        vault.signer(key_hex, chain_id=CHAIN_ID)
    assert key_hex[2:] not in str(caught.value)


# --- the master key file --------------------------------------------------------------------


def test_a_generated_master_key_file_is_0600_even_under_a_loose_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        key_id = generate_master_key_file(tmp_path / "deep" / "vault.key")
    finally:
        os.umask(old)
    path = tmp_path / "deep" / "vault.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(bytes.fromhex(path.read_text().strip())) == 32
    assert load_master_key(path).key_id == key_id
    assert [p.name for p in path.parent.iterdir()] == ["vault.key"]  # no temporary left


def test_an_existing_master_key_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "vault.key"
    generate_master_key_file(path)
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match=f"{VAULT_KEY_FILE_ENV}: .* already exists"):
        generate_master_key_file(path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_master_key_file_others_may_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "vault.key"
    generate_master_key_file(path)
    path.chmod(mode)
    with pytest.raises(KeyFileError, match=f"{VAULT_KEY_FILE_ENV}: .* mode {mode:04o}") as caught:
        load_master_key(path)
    assert "chmod 600" in str(caught.value)
    assert path.read_text().strip() not in str(caught.value)


def test_a_missing_master_key_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"missing required setting {VAULT_KEY_FILE_ENV}"):
        load_master_key(None)
    missing = tmp_path / "nowhere.key"
    with pytest.raises(ConfigError, match=f"{VAULT_KEY_FILE_ENV}: .*{missing} does not exist"):
        open_vault(connect(tmp_path / "x.db", durable=True), missing)


@pytest.mark.parametrize(
    "content",
    ["", "zz" * 32, "ab" * 31, "ab" * 33, "0x" + "ab" * 32, "\xff" * 64, "ab" * 32 + "\n\n"],
)
def test_a_malformed_master_key_file_is_refused_without_quoting_it(
    tmp_path: Path, content: str
) -> None:
    path = write_private(tmp_path / "vault.key", content)
    with pytest.raises(KeyFileError, match=f"{VAULT_KEY_FILE_ENV}: .* 64 hex characters") as c:
        load_master_key(path)
    assert content.strip() == "" or content.strip() not in str(c.value)


def test_the_master_key_object_shows_only_its_id() -> None:
    raw = os.urandom(32)
    master = MasterKey(raw)
    assert repr(master) == str(master) == f"MasterKey(key_id={master.key_id})"
    assert raw.hex() not in repr(master)
    with pytest.raises(TypeError):
        vars(master)  # no __dict__ to look into
    with pytest.raises(KeyFileError, match="32 bytes, got 16"):
        MasterKey(raw[:16])


# --- wallets per owner, imports -------------------------------------------------------------


def test_one_wallet_per_label_and_owner(tmp_path: Path) -> None:
    vault, _, conn = new_vault(tmp_path)
    first = vault.ensure_wallet(label="mint-agent", owner="user-1")
    assert vault.ensure_wallet(label="mint-agent", owner="user-1") == first
    assert vault.ensure_wallet(label="mint-agent", owner="user-2") != first
    assert vault.ensure_wallet(label="other", owner="user-1") != first
    with pytest.raises(WalletExistsError, match="'user-1' already has a 'mint-agent' wallet"):
        vault.create_wallet(label="mint-agent", owner="user-1")
    # Wallets without an owner (the node's own) are not limited.
    vault.create_wallet(label="distribution")
    vault.create_wallet(label="distribution")
    assert len(list_wallets(conn, label="distribution")) == 2
    assert len(list_wallets(conn)) == 5


def _ensure_in_child(db: str, key_file: str, queue: multiprocessing.Queue[str]) -> None:
    structlog.configure(processors=[structlog.processors.KeyValueRenderer()])
    vault = open_vault(connect(db, durable=True), key_file)
    queue.put(vault.ensure_wallet(label="mint-agent", owner="racing-user"))


def test_processes_racing_for_one_owners_wallet_get_the_same_one(tmp_path: Path) -> None:
    vault, key_file, conn = new_vault(tmp_path)
    context = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[str] = context.Queue()
    children = [
        context.Process(
            target=_ensure_in_child, args=(str(tmp_path / "vault.db"), str(key_file), queue)
        )
        for _ in range(4)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(30)
        assert child.exitcode == 0
    addresses = {queue.get(timeout=5) for _ in children}
    assert len(addresses) == 1
    assert len(list_wallets(conn)) == 1
    assert vault.ensure_wallet(label="mint-agent", owner="racing-user") in addresses


def test_importing_an_address_twice_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    vault, _, conn = new_vault(tmp_path)
    key = bytes(Account.create().key)
    address = vault.import_key(key, label="distribution")
    before = conn.execute("SELECT * FROM wallets").fetchall()
    with pytest.raises(WalletExistsError, match=f"wallet {address} is already") as caught:
        vault.import_key(key, label="something else")
    assert key.hex() not in str(caught.value)
    assert conn.execute("SELECT * FROM wallets").fetchall() == before


@pytest.mark.parametrize("key", [b"", b"\x00" * 32, b"\xff" * 32, b"\x01" * 31])
def test_an_invalid_key_is_not_imported(tmp_path: Path, key: bytes) -> None:
    vault, _, conn = new_vault(tmp_path)
    with pytest.raises(VaultError):
        vault.import_key(key, label="x")
    assert list_wallets(conn) == []


@pytest.mark.parametrize("label", ["", "   ", "a\nb", "x" * 201])
def test_a_label_must_be_a_short_printable_name(tmp_path: Path, label: str) -> None:
    vault, _, conn = new_vault(tmp_path)
    with pytest.raises(VaultError, match="label"):
        vault.create_wallet(label=label)
    assert list_wallets(conn) == []


# --- typed data -----------------------------------------------------------------------------


def transfer_typed_data(
    from_address: str,
    *,
    to: str = "0x" + "33" * 20,
    value: int = 10_000_000,
    token: str = "0x" + "11" * 20,
    chain_id: int = CHAIN_ID,
    nonce: bytes = b"\x07" * 32,
) -> dict[str, object]:
    """An EIP-3009 TransferWithAuthorization (Circle FiatTokenV2, FACTS.md) as EIP-712 data."""
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "TransferWithAuthorization": [
                {"name": "from", "type": "address"},
                {"name": "to", "type": "address"},
                {"name": "value", "type": "uint256"},
                {"name": "validAfter", "type": "uint256"},
                {"name": "validBefore", "type": "uint256"},
                {"name": "nonce", "type": "bytes32"},
            ],
        },
        "primaryType": "TransferWithAuthorization",
        "domain": {
            "name": "USD Coin",
            "version": "2",
            "chainId": chain_id,
            "verifyingContract": token,
        },
        "message": {
            "from": from_address,
            "to": to,
            "value": value,
            "validAfter": 0,
            "validBefore": 2**40,
            "nonce": nonce,
        },
    }


def order_typed_data(from_address: str, **fields: object) -> dict[str, object]:
    """:func:`transfer_typed_data`'s fields under a primary type that is not money: what
    ``Vault.sign_typed_data`` signs (it refuses the EIP-3009 kinds, which only the
    authorizations ledger signs)."""
    typed = transfer_typed_data(from_address, **fields)  # type: ignore[arg-type]
    types = dict(typed["types"])  # type: ignore[call-overload]
    types["Order"] = types.pop("TransferWithAuthorization")
    return {**typed, "types": types, "primaryType": "Order"}


def test_malformed_typed_data_is_refused_before_any_key_is_used(tmp_path: Path) -> None:
    vault, _, _ = new_vault(tmp_path)
    address = vault.create_wallet(label="a")
    good = order_typed_data(address)
    no_primary = {k: v for k, v in good.items() if k != "primaryType"}
    with pytest.raises(TypedDataError, match="lacks primaryType"):
        vault.sign_typed_data(address, no_primary)
    with pytest.raises(TypedDataError, match="primaryType must name one of its types"):
        vault.sign_typed_data(address, {**good, "primaryType": "Permit"})
    bad_value = json.loads(json.dumps({**good, "message": {}}))
    with pytest.raises(TypedDataError, match=f"typed data for {address} cannot be encoded"):
        vault.sign_typed_data(address, bad_value)
    with pytest.raises(TypedDataError, match="must be a mapping"):
        vault.sign_typed_data(address, [])  # type: ignore[arg-type]


# --- the operator commands ------------------------------------------------------------------
# Run as real processes: the commands configure the process's logging, as `hodlai` does.

ROOT = Path(__file__).resolve().parent.parent


def run_vault_cli(work: Path, *argv: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """``hodlai vault ARGV`` (as ``python -m shared.keys.cli``) in ``work`` with only the
    given HODLAI_ settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HODLAI_")}
    env.update(settings, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "shared.keys.cli", "vault", *argv],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_vault_commands_create_import_list_and_check(tmp_path: Path) -> None:
    settings = {"HODLAI_DB_PATH": "node.db", VAULT_KEY_FILE_ENV: "vault.key"}
    init = run_vault_cli(tmp_path, "init-key", **settings)
    assert init.returncode == 0, init.stderr
    assert "Back it up" in init.stdout
    assert stat.S_IMODE((tmp_path / "vault.key").stat().st_mode) == 0o600
    created = run_vault_cli(
        tmp_path, "create", "--label", "mint-agent", "--owner", "u1", **settings
    )
    assert created.returncode == 0, created.stderr
    key_file = tmp_path / "distribution.json"
    imported = generate_key_file(key_file)
    result = run_vault_cli(tmp_path, "import", str(key_file), "--label", "distribution", **settings)
    assert result.stdout.strip() == imported
    listing = run_vault_cli(tmp_path, "list", "--json", **settings)
    listed = json.loads(listing.stdout)
    assert [(w["address"], w["label"], w["owner"], w["derivation_index"]) for w in listed] == [
        (created.stdout.strip(), "mint-agent", "u1", 0),
        (imported, "distribution", None, None),  # imported: not recoverable, so no index
    ]
    assert set(listed[0]) == {"address", "label", "owner", "derivation_index", "created_at"}
    check = run_vault_cli(tmp_path, "check", **settings)
    assert "all 2 wallet(s) decrypt" in check.stdout
    # The same database under another master key: check refuses, naming the first wallet.
    generate_master_key_file(tmp_path / "other.key")
    wrong = run_vault_cli(tmp_path, "check", **{**settings, VAULT_KEY_FILE_ENV: "other.key"})
    assert wrong.returncode == 1
    assert created.stdout.strip() in wrong.stderr
    assert "Traceback" not in wrong.stderr


def test_the_vault_commands_name_a_missing_setting_in_one_line(tmp_path: Path) -> None:
    missing = run_vault_cli(tmp_path, "create", "--label", "x", HODLAI_DB_PATH="node.db")
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and VAULT_KEY_FILE_ENV in missing.stderr
    assert not (tmp_path / "node.db").exists()  # a refused command leaves no new database
    absent = run_vault_cli(
        tmp_path, "create", "--label", "x", HODLAI_DB_PATH="node.db", HODLAI_VAULT_KEY_FILE="no.key"
    )
    assert absent.returncode == 2
    assert f"{VAULT_KEY_FILE_ENV}: master key file no.key does not exist" in absent.stderr
    assert not (tmp_path / "node.db").exists()


def test_a_master_key_file_that_cannot_be_created_is_a_clear_refusal(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "a-file"
    not_a_directory.write_text("")
    with pytest.raises(KeyFileError, match=f"{VAULT_KEY_FILE_ENV}: cannot create .*a-file"):
        generate_master_key_file(not_a_directory / "vault.key")


# --- derivation, recovery, the bound associated data (issue 18, item 3) ----------------------


def test_derivation_is_deterministic_across_vaults_and_follows_the_documented_format(
    tmp_path: Path,
) -> None:
    first, key_file, _ = new_vault(tmp_path, "first")
    second = open_vault(connect(tmp_path / "second.db", durable=True), key_file)
    owner = "0x" + "ab" * 20
    address = first.ensure_wallet(label="mint-agent", owner=owner)
    assert second.ensure_wallet(label="mint-agent", owner=owner) == address  # another database
    expected = documented_derivation(key_file, "mint-agent", owner, 0)
    assert address == Account.from_key(expected).address
    assert first.derived_address(label="mint-agent", owner=owner, index=0) == address
    # A vault under another master key derives another wallet for the same names.
    other, _, _ = new_vault(tmp_path, "other")
    assert other.ensure_wallet(label="mint-agent", owner=owner) != address


def test_derived_wallets_differ_by_owner_label_and_index(tmp_path: Path) -> None:
    vault, _, _ = new_vault(tmp_path)
    names = [
        (label, owner, index)
        for label in ("mint-agent", "distribution", "mint-agent2")
        for owner in (None, "user-1", "user-12")
        for index in (0, 1, 2**32 - 1)
    ]
    addresses = {
        vault.derived_address(label=label, owner=owner, index=index)
        for label, owner, index in names
    }
    assert len(addresses) == len(names)
    # Length prefixes keep concatenations apart: ("ab", "c") is not ("a", "bc").
    assert vault.derived_address(label="ab", owner="c", index=0) != vault.derived_address(
        label="a", owner="bc", index=0
    )
    with pytest.raises(VaultError, match="derivation index"):
        vault.derived_address(label="x", owner=None, index=-1)
    with pytest.raises(VaultError, match="derivation index"):
        vault.derived_address(label="x", owner=None, index=2**32)


def test_indexes_are_allocated_per_label_and_owner_and_never_handed_out_twice(
    tmp_path: Path,
) -> None:
    vault, _, conn = new_vault(tmp_path)
    own = [vault.create_wallet(label="distribution") for _ in range(3)]
    assert [find_index(conn, a) for a in own] == [0, 1, 2]
    assert find_index(conn, vault.ensure_wallet(label="mint-agent", owner="u1")) == 0
    assert find_index(conn, vault.ensure_wallet(label="mint-agent", owner="u2")) == 0
    # A deleted row does not give its index again: the counter remembers it.
    with atomic(conn):
        conn.execute("DELETE FROM wallets WHERE address = ?", (own[2],))
    again = vault.create_wallet(label="distribution")
    assert again != own[2] and find_index(conn, again) == 3
    # A lost counter does not either: the rows still there are skipped past.
    with atomic(conn):
        conn.execute("DELETE FROM wallet_derivations")
    assert find_index(conn, vault.create_wallet(label="distribution")) == 4
    assert vault.check() == 6


def find_index(conn: sqlite3.Connection, address: str) -> int | None:
    wallet = find_wallet(conn, address)
    assert wallet is not None
    return wallet.derivation_index


def test_a_rolled_back_owner_wallet_is_derived_again_at_its_address(tmp_path: Path) -> None:
    # A restore from a backup older than the wallet loses its row and its counter together:
    # the owner's next ensure_wallet re-derives the address they were already told.
    vault, _, conn = new_vault(tmp_path)
    told = vault.ensure_wallet(label="mint-agent", owner="user-1")
    with atomic(conn):
        conn.execute("DELETE FROM wallets")
        conn.execute("DELETE FROM wallet_derivations")
    assert vault.ensure_wallet(label="mint-agent", owner="user-1") == told


def test_a_deleted_wallet_row_is_recovered_from_the_master_key_and_signs_again(
    tmp_path: Path,
) -> None:
    vault, key_file, conn = new_vault(tmp_path)
    address = vault.ensure_wallet(label="mint-agent", owner="user-1", now=1_700_000_000.0)
    before = vault.signer(address, chain_id=CHAIN_ID).sign(A_CALL, nonce=4, fees=A_FEES)
    with atomic(conn):
        conn.execute("DELETE FROM wallets WHERE address = ?", (address,))
    with pytest.raises(UnknownWalletError):
        vault.signer(address, chain_id=CHAIN_ID)
    # The owner is not silently given a second address: the operator is told to recover.
    with pytest.raises(
        WalletMissingError, match="recover --label mint-agent --owner user-1 --index 0"
    ):
        vault.ensure_wallet(label="mint-agent", owner="user-1")
    # Only the master key file: a new vault object on the same database.
    recovered = open_vault(conn, key_file).recover(label="mint-agent", owner="user-1", index=0)
    assert recovered.inserted and recovered.wallet.address == address
    assert recovered.wallet.derivation_index == 0 and recovered.wallet.recoverable
    # The same key: RFC 6979 signatures of the same transaction are byte for byte equal.
    assert vault.signer(address, chain_id=CHAIN_ID).sign(A_CALL, nonce=4, fees=A_FEES) == before
    again = vault.recover(label="mint-agent", owner="user-1", index=0)
    assert not again.inserted and again.wallet.address == address
    assert vault.ensure_wallet(label="mint-agent", owner="user-1") == address
    # The counter was raised past the recovered index: the next wallet is a new one.
    other = vault.create_wallet(label="mint-agent")
    assert other != address and vault.check() == 2


def test_recover_never_overwrites_a_different_row(tmp_path: Path) -> None:
    vault, _, conn = new_vault(tmp_path)
    first = vault.ensure_wallet(label="mint-agent", owner="user-1")
    before = conn.execute("SELECT * FROM wallets").fetchall()
    # The owner already holds a wallet of that label (index 0), and index 1 derives another.
    with pytest.raises(
        WalletExistsError, match=f"'user-1' already has a 'mint-agent' wallet {first}"
    ):
        vault.recover(label="mint-agent", owner="user-1", index=1)
    # The address is in the vault under other names (its owner column was rewritten).
    with atomic(conn):
        conn.execute("UPDATE wallets SET owner = 'user-9'")
    with pytest.raises(WalletExistsError, match=f"wallet {first} is in the vault with other"):
        vault.recover(label="mint-agent", owner="user-1", index=0)
    with atomic(conn):
        conn.execute("UPDATE wallets SET owner = 'user-1'")
    assert conn.execute("SELECT * FROM wallets").fetchall() == before
    assert [tuple(r) for r in conn.execute("SELECT * FROM wallet_derivations")] == [
        ("mint-agent", "user-1", 1)
    ]


def test_an_imported_key_has_no_index_and_is_not_recoverable(tmp_path: Path) -> None:
    vault, _, conn = new_vault(tmp_path)
    address = vault.import_key(bytes(Account.create().key), label="distribution", owner="ops")
    wallet = find_wallet(conn, address)
    assert wallet is not None and wallet.derivation_index is None and not wallet.recoverable
    assert conn.execute("SELECT aad_version FROM wallets").fetchone()[0] == 2
    # Nothing derives it: the derived wallet of the same names is another address.
    assert vault.derived_address(label="distribution", owner="ops", index=0) != address
    assert conn.execute("SELECT count(*) FROM wallet_derivations").fetchone()[0] == 0


def swap_column(conn: sqlite3.Connection, column: str, first: str, second: str) -> None:
    """Exchange ``column`` between two wallet rows (through a placeholder: the unique index
    on (label, owner) is checked row by row)."""
    sql = f"SELECT {column} FROM wallets WHERE address = ?"
    a, b = (conn.execute(sql, (x,)).fetchone()[0] for x in (first, second))
    update = f"UPDATE wallets SET {column} = ? WHERE address = ?"
    with atomic(conn):
        conn.execute(update, ("~swapping~", first))
        conn.execute(update, (a, second))
        conn.execute(update, (b, first))


@pytest.mark.parametrize("column", ["owner", "label"])
def test_swapping_two_rows_owners_or_labels_makes_both_fail_to_decrypt(
    tmp_path: Path, column: str
) -> None:
    vault, _, conn = new_vault(tmp_path)
    alice = vault.ensure_wallet(label="mint-agent", owner="alice")
    bob = vault.ensure_wallet(label="mint-agent-b", owner="bob")
    swap_column(conn, column, alice, bob)  # what someone with write access to the file can do
    assert find_index(conn, alice) == find_index(conn, bob) == 0  # only the names moved
    assert (find_wallet(conn, alice) or pytest.fail()).owner == (
        "bob" if column == "owner" else "alice"
    )
    for address in (alice, bob):
        with pytest.raises(WalletDecryptError, match=f"wallet {address}: .* does not authenticate"):
            vault.signer(address, chain_id=CHAIN_ID)
        with pytest.raises(WalletDecryptError, match="does not authenticate"):
            vault.sign_typed_data(address, transfer_typed_data(address))
    with pytest.raises(WalletDecryptError):
        vault.check()


def test_a_changed_derivation_index_makes_the_row_fail_to_decrypt(tmp_path: Path) -> None:
    vault, _, conn = new_vault(tmp_path)
    address = vault.create_wallet(label="distribution")
    with atomic(conn):
        conn.execute("UPDATE wallets SET derivation_index = 7")
    with pytest.raises(WalletDecryptError, match="does not authenticate"):
        vault.signer(address, chain_id=CHAIN_ID)
    # ...and a row forged with the master key that names another derivation is refused too.
    with atomic(conn):
        conn.execute("UPDATE wallets SET derivation_index = 0")
    key_file = tmp_path / "vault.key"
    master = AESGCM(bytes.fromhex(key_file.read_text().strip()))
    nonce = os.urandom(12)
    key = decrypt_row(conn, address, key_file)
    forged = master.encrypt(nonce, key, documented_aad(2, address, "distribution", None, 5))
    with atomic(conn):
        conn.execute(
            "UPDATE wallets SET nonce = ?, ciphertext = ?, derivation_index = 5", (nonce, forged)
        )
    with pytest.raises(
        WalletDecryptError, match="not the derivation of its label, owner and index 5"
    ):
        vault.signer(address, chain_id=CHAIN_ID)


def test_a_normal_connection_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    key_file = tmp_path / "vault.key"
    generate_master_key_file(key_file)
    conn = connect(tmp_path / "normal.db")  # synchronous=NORMAL, the default
    with pytest.raises(NotDurableError, match=r"the vault needs .* synchronous=FULL .*NORMAL"):
        open_vault(conn, key_file)
    with pytest.raises(NotDurableError):
        Vault(conn, load_master_key(key_file))
    assert list_wallets(conn) == []


# --- rows written before core migration 8 -----------------------------------------------------


def database_at_migration_7(path: Path) -> sqlite3.Connection:
    """A database as hodlai left it before core migration 8 (migrations 1-7 applied)."""
    old = sqlite3.connect(path, isolation_level=None)
    old.execute(SCHEMA_MIGRATIONS_DDL)
    for migration in core_set().migrations[:7]:
        for statement in migration.statements():
            old.execute(statement)
        old.execute(
            "INSERT INTO schema_migrations VALUES ('core', ?, ?, 0)",
            (migration.version, migration.name),
        )
    return old


def seal_v1_row(
    conn: sqlite3.Connection, key_file: Path, key: bytes, *, label: str, owner: str | None
) -> str:
    """A row as the vault wrote it before core migration 8: AAD = the 20 address bytes."""
    address: str = Account.from_key(key).address
    master_hex = key_file.read_text().strip()
    nonce = os.urandom(12)
    ciphertext = AESGCM(bytes.fromhex(master_hex)).encrypt(nonce, key, bytes.fromhex(address[2:]))
    key_id = load_master_key(key_file).key_id
    conn.execute(
        "INSERT INTO wallets (address, label, owner, key_id, nonce, ciphertext, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, 0)",
        (address, label, owner, key_id, nonce, ciphertext),
    )
    return address


def test_an_old_v1_row_still_signs_after_migration_and_is_upgraded_to_v2(tmp_path: Path) -> None:
    key_file = tmp_path / "vault.key"
    generate_master_key_file(key_file)
    old = database_at_migration_7(tmp_path / "old.db")
    keys = [bytes(Account.create().key) for _ in range(2)]
    alice = seal_v1_row(old, key_file, keys[0], label="mint-agent", owner="alice")
    bob = seal_v1_row(old, key_file, keys[1], label="mint-agent", owner="bob")
    old.close()
    conn = connect(tmp_path / "old.db", durable=True)  # applies migration 8 and on
    vault = open_vault(conn, key_file)
    assert {w.derivation_index for w in list_wallets(conn)} == {None}
    assert vault.legacy_rows() == 2
    expected = LocalSigner(keys[0], chain_id=CHAIN_ID).sign(A_CALL, nonce=1, fees=A_FEES)
    assert vault.signer(alice, chain_id=CHAIN_ID).sign(A_CALL, nonce=1, fees=A_FEES) == expected
    assert vault.ensure_wallet(label="mint-agent", owner="alice") == alice  # kept, not derived
    assert vault.check() == 2

    nonces = {r[0] for r in conn.execute("SELECT nonce FROM wallets")}
    assert vault.upgrade() == 2 and vault.legacy_rows() == 0 and vault.upgrade() == 0
    assert not nonces & {r[0] for r in conn.execute("SELECT nonce FROM wallets")}  # fresh
    assert [decrypt_row(conn, a, key_file) for a in (alice, bob)] == keys
    assert vault.signer(alice, chain_id=CHAIN_ID).sign(A_CALL, nonce=1, fees=A_FEES) == expected
    # Now bound: swapping the owners makes both fail, which version 1 could not tell.
    swap_column(conn, "owner", alice, bob)
    for address in (alice, bob):
        with pytest.raises(WalletDecryptError, match="does not authenticate"):
            vault.signer(address, chain_id=CHAIN_ID)


def test_the_recover_command_rebuilds_a_lost_database_from_the_master_key(tmp_path: Path) -> None:
    vault, key_file, conn = new_vault(tmp_path, "node")
    addresses = [
        vault.ensure_wallet(label="mint-agent", owner="u1"),
        vault.create_wallet(label="distribution"),
        vault.create_wallet(label="distribution"),
    ]
    conn.close()
    for path in tmp_path.glob("node.db*"):
        path.unlink()  # the whole database is lost; the master key file is not
    settings = {"HODLAI_DB_PATH": "node.db", VAULT_KEY_FILE_ENV: key_file.name}

    def recover(*argv: str) -> subprocess.CompletedProcess[str]:
        return run_vault_cli(tmp_path, "recover", *argv, **settings)

    result = recover("--label", "mint-agent", "--owner", "u1", "--index", "0", "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["address"] == addresses[0] and answer["inserted"] is True
    assert (answer["label"], answer["owner"], answer["derivation_index"]) == ("mint-agent", "u1", 0)
    # Without the index: scan, then recover the one whose address is known.
    scan = recover("--label", "distribution", "--scan", "3", "--json")
    listed = json.loads(scan.stdout)
    assert [(r["address"], r["in_vault"]) for r in listed[:2]] == [
        (a, False) for a in addresses[1:]
    ]
    found = recover("--label", "distribution", "--scan", "3", "--address", addresses[2].lower())
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == [addresses[2], "index", "1", "row", "re-inserted"]
    # A wrong expectation recovers nothing, in one line.
    wrong = recover("--label", "distribution", "--index", "0", "--address", addresses[2])
    assert wrong.returncode == 1 and "does not derive" in wrong.stderr
    assert wrong.stderr.count("\n") == 1
    reopened = open_vault(connect(tmp_path / "node.db", durable=True), key_file)
    assert reopened.check() == 2
    assert {(w.address, w.derivation_index) for w in list_wallets(reopened._conn)} == {
        (addresses[0], 0),
        (addresses[2], 1),
    }


def test_the_vaults_signer_is_a_signer_and_signs_deterministically(tmp_path: Path) -> None:
    vault, _, _ = new_vault(tmp_path)
    address = vault.create_wallet(label="distribution")
    signer = vault.signer(address, chain_id=CHAIN_ID)
    assert isinstance(signer, Signer)
    assert (signer.address, signer.chain_id) == (address, CHAIN_ID)
    # What the protocol asks of every signer: the same call, nonce and fees give the same
    # bytes, so a re-sign after a crash reproduces the recorded hash.
    first = signer.sign(A_CALL, nonce=9, fees=A_FEES)
    assert vault.signer(address, chain_id=CHAIN_ID).sign(A_CALL, nonce=9, fees=A_FEES) == first
    assert Account.recover_transaction(first.raw) == address


def test_a_vault_under_another_master_key_adds_no_wallet_to_the_database(tmp_path: Path) -> None:
    vault, _, conn = new_vault(tmp_path)
    vault.ensure_wallet(label="mint-agent", owner="user-1")
    other_file = tmp_path / "other.key"
    generate_master_key_file(other_file)
    wrong = open_vault(conn, other_file)
    before = conn.execute("SELECT * FROM wallets").fetchall()
    attempts: list[Callable[[], object]] = [
        lambda: wrong.create_wallet(label="distribution"),
        lambda: wrong.ensure_wallet(label="mint-agent", owner="user-2"),
        lambda: wrong.import_key(bytes(Account.create().key), label="distribution"),
        lambda: wrong.recover(label="mint-agent", owner="user-3", index=0),
    ]
    for attempt in attempts:
        with pytest.raises(
            ConfigError, match=f"{VAULT_KEY_FILE_ENV}: .*{vault.key_id}.*{wrong.key_id}"
        ):
            attempt()
    assert conn.execute("SELECT * FROM wallets").fetchall() == before


def test_a_new_wallet_for_an_owner_whose_row_is_gone_is_only_made_on_purpose(
    tmp_path: Path,
) -> None:
    vault, _, conn = new_vault(tmp_path)
    retired = vault.ensure_wallet(label="mint-agent", owner="user-1")
    with atomic(conn):  # e.g. the key was exposed and the operator retires the wallet
        conn.execute("DELETE FROM wallets")
    with pytest.raises(WalletMissingError, match="index 0"):
        vault.ensure_wallet(label="mint-agent", owner="user-1")
    assert list_wallets(conn) == []
    fresh = vault.create_wallet(label="mint-agent", owner="user-1")
    assert fresh != retired and find_index(conn, fresh) == 1
    assert vault.ensure_wallet(label="mint-agent", owner="user-1") == fresh
