"""The key vault on real SQLite files with real AES-256-GCM: round trip, a fresh nonce per row,
the address bound as associated data, tampering and a wrong master key refused with the
address named, the master key file's permissions and absence, one wallet per (label, owner)
across processes, and the operator commands."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import structlog
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eth_account import Account

from shared.db import atomic, connect
from shared.errors import ConfigError, KeyFileError, PermanentError
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
    find_wallet,
    generate_master_key_file,
    list_wallets,
    load_master_key,
    open_vault,
    wallet_of,
)
from shared.tx.fees import Fees
from shared.tx.signer import Call, LocalSigner

CHAIN_ID = 31337
A_CALL = Call(to=Account.create().address, data=b"\x01\x02", value=7, gas_limit=50_000)
A_FEES = Fees(max_fee_per_gas=3 * 10**9, max_priority_fee_per_gas=10**9)


def new_vault(tmp_path: Path, name: str = "vault") -> tuple[Vault, Path, sqlite3.Connection]:
    """A vault on a fresh database file with a fresh master key file."""
    key_file = tmp_path / f"{name}.key"
    generate_master_key_file(key_file)
    conn = connect(tmp_path / f"{name}.db")
    return open_vault(conn, key_file), key_file, conn


def decrypt_row(conn: sqlite3.Connection, address: str, key_file: Path) -> bytes:
    """The row's key, decrypted by hand from the documented format (an operator's recovery
    script does the same): AES-256-GCM, key = the file's 64 hex characters, AAD = the 20
    address bytes."""
    nonce, ciphertext = conn.execute(
        "SELECT nonce, ciphertext FROM wallets WHERE address = ?", (address,)
    ).fetchone()
    master = bytes.fromhex(key_file.read_text().strip())
    return AESGCM(master).decrypt(nonce, ciphertext, bytes.fromhex(address[2:]))


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
    reopened = open_vault(connect(tmp_path / "vault.db"), key_file)
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
    forged = master.encrypt(nonce, foreign, bytes.fromhex(address[2:]))
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
        open_vault(connect(tmp_path / "x.db"), missing)


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
    vault = open_vault(connect(db), key_file)
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
    assert [(w["address"], w["label"], w["owner"]) for w in listed] == [
        (created.stdout.strip(), "mint-agent", "u1"),
        (imported, "distribution", None),
    ]
    assert set(listed[0]) == {"address", "label", "owner", "created_at"}
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
