"""Secrets never leak: every vault operation and every refusal is run once in this process
under ``structlog.testing.capture_logs`` and once in a child process with the node's real
logging (JSON lines on stderr, plus stdlib logging at DEBUG) written to files; recovery from
the master key (``recover``, its scan and its refusals) included. Then every private key,
master key and derivation secret, raw, hex and 0x-hex in either case, is searched for in the logs,
the exception messages and tracebacks, the commands' output and the raw bytes of the SQLite
database, its -wal and -shm files. None may appear."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import structlog
from eth_account import Account

from shared.db import atomic, connect
from shared.errors import PermanentError
from shared.keys import cli as vault_cli
from shared.keys import generate_key_file
from shared.keys.derivation import derivation_prk
from shared.keys.vault import (
    VAULT_KEY_FILE_ENV,
    find_wallet,
    generate_master_key_file,
    list_wallets,
    load_master_key,
    open_vault,
    wallet_of,
)
from shared.logs import configure_logging
from shared.tx.fees import Fees
from shared.tx.signer import Call
from tests.test_vault import decrypt_row, order_typed_data

ROOT = Path(__file__).resolve().parent.parent
CHAIN_ID = 31337
# Refusals the scenario provokes; each must happen, or the search proves less than it says.
EXPECTED_REFUSALS = 17


def run_scenario(
    work: Path,
    log: Callable[[BaseException], None],
    cli: Callable[[list[str]], int] | None = None,
) -> list[str]:
    """Every vault operation and refusal in ``work``; returns each refusal's message, repr and
    traceback. ``log`` is handed each refusal, to log it as a worker loop would; ``cli`` runs
    the operator commands (last: they configure the process's logging as ``hodlai`` does)."""
    refusals: list[str] = []

    def refused(action: Callable[[], object]) -> None:
        try:
            action()
        except PermanentError as exc:
            log(exc)
            refusals.append(str(exc))
            refusals.append(repr(exc))
            refusals.append("".join(traceback.format_exception(exc)))
        else:
            raise AssertionError(f"not refused: {action}")

    key_file = work / "vault.key"
    generate_master_key_file(key_file)
    conn = connect(work / "node.db", durable=True)
    vault = open_vault(conn, key_file)
    imported_key = bytes(Account.create().key)

    # Every operation that succeeds.
    agent = vault.ensure_wallet(label="mint-agent", owner="user-1")
    distribution = vault.create_wallet(label="distribution")
    imported = vault.import_key(imported_key, label="distribution", owner="operator")
    list_wallets(conn)
    find_wallet(conn, agent)
    wallet_of(conn, label="mint-agent", owner="user-1")
    fees = Fees(max_fee_per_gas=2 * 10**9, max_priority_fee_per_gas=10**9)
    for address in (agent, distribution, imported):
        signer = vault.signer(address, chain_id=CHAIN_ID)
        signer.sign(Call(to=agent, data=b"", value=0, gas_limit=21_000), nonce=0, fees=fees)
        vault.sign_typed_data(address, order_typed_data(address))
    vault.check()
    # A lost row recovered from the master key; a scan of derived addresses.
    with atomic(conn):
        conn.execute("DELETE FROM wallets WHERE address = ?", (agent,))
    assert vault.recover(label="mint-agent", owner="user-1", index=0).inserted
    vault.recover(label="mint-agent", owner="user-1", index=0)
    for index in range(3):
        vault.derived_address(label="distribution", owner=None, index=index)
    vault.upgrade()

    # Every refusal.
    other_key = work / "other.key"
    generate_master_key_file(other_key)
    wrong = open_vault(conn, other_key)
    refused(lambda: wrong.signer(agent, chain_id=CHAIN_ID))
    refused(lambda: wrong.sign_typed_data(agent, order_typed_data(agent)))
    refused(wrong.check)
    with _tampered(conn, agent):
        refused(lambda: vault.signer(agent, chain_id=CHAIN_ID))
        refused(vault.check)
    with _swapped(conn, agent, distribution):
        refused(lambda: vault.signer(distribution, chain_id=CHAIN_ID))
    refused(lambda: vault.import_key(imported_key, label="again"))
    refused(lambda: vault.signer("0x" + imported_key.hex(), chain_id=CHAIN_ID))
    refused(lambda: vault.sign_typed_data(agent, {**order_typed_data(agent), "message": {}}))
    loose = work / "loose-copy"
    loose.write_bytes(key_file.read_bytes())
    loose.chmod(0o644)
    refused(lambda: load_master_key(loose))
    refused(lambda: load_master_key(work / "missing.key"))
    garbled = work / "garbled-copy"
    garbled.write_bytes(key_file.read_bytes()[:-9] + b"zz\n")
    garbled.chmod(0o600)
    refused(lambda: load_master_key(garbled))
    refused(lambda: generate_master_key_file(key_file))
    refused(lambda: vault.recover(label="mint-agent", owner="user-1", index=1))
    refused(lambda: wrong.recover(label="mint-agent", owner="user-1", index=0))
    refused(lambda: vault.recover(label="mint-agent", owner="user-1", index=-1))
    refused(lambda: open_vault(connect(work / "node.db"), key_file))  # synchronous=NORMAL
    vault.check()  # every row restored: the caller can decrypt them all to know the keys
    # The WAL as it is while the database is open (closing the last connection removes it).
    (work / "open").mkdir()
    for path in work.glob("node.db*"):
        (work / "open" / path.name).write_bytes(path.read_bytes())
    conn.close()
    if cli is not None:
        # Settings come from the environment the caller set.
        plain_key_file = work / "import-me.json"
        generate_key_file(plain_key_file)
        commands = [
            ["create", "--label", "mint-agent", "--owner", "user-2"],
            ["import", str(plain_key_file), "--label", "distribution"],
            ["list"],
            ["list", "--json"],
            ["check", "--upgrade"],
            ["recover", "--label", "mint-agent", "--owner", "user-2", "--index", "0"],
            ["recover", "--label", "distribution", "--scan", "3", "--json"],
            ["recover", "--label", "distribution", "--scan", "3", "--address", distribution],
            ["init-key", "--path", str(work / "spare.key")],
        ]
        for argv in commands:
            assert cli(["vault", *argv]) == 0, argv
        plain_key_file.chmod(0o644)
        assert cli(["vault", "import", str(plain_key_file), "--label", "x"]) == 1
        wrong_index = ["--label", "mint-agent", "--owner", "user-2", "--index", "1"]
        assert cli(["vault", "recover", *wrong_index]) == 1
        assert cli(["vault", "recover", *wrong_index[:-1], "0", "--address", agent]) == 1
        assert cli(["vault", "check"]) == 0
    return refusals


@contextmanager
def _tampered(conn: sqlite3.Connection, address: str) -> Iterator[None]:
    """One bit of a row's ciphertext flipped, restored on exit."""
    sql = "UPDATE wallets SET ciphertext = ? WHERE address = ?"
    original = conn.execute(
        "SELECT ciphertext FROM wallets WHERE address = ?", (address,)
    ).fetchone()[0]
    with atomic(conn):
        conn.execute(sql, (bytes([original[0] ^ 1]) + original[1:], address))
    yield
    with atomic(conn):
        conn.execute(sql, (original, address))


@contextmanager
def _swapped(conn: sqlite3.Connection, first: str, second: str) -> Iterator[None]:
    """Two rows' ciphertexts exchanged, restored on exit."""

    def swap() -> None:
        sql = "SELECT ciphertext FROM wallets WHERE address = ?"
        a = conn.execute(sql, (first,)).fetchone()[0]
        b = conn.execute(sql, (second,)).fetchone()[0]
        with atomic(conn):
            update = "UPDATE wallets SET ciphertext = ? WHERE address = ?"
            conn.execute(update, (b, first))
            conn.execute(update, (a, second))

    swap()
    yield
    swap()


# --- the search -----------------------------------------------------------------------------


def secrets_of(work: Path) -> dict[str, bytes]:
    """Every key the scenario made: the master keys, and every wallet's key (decrypted from
    the database by hand, so a key the vault created is known without the vault returning it)."""
    found: dict[str, bytes] = {}
    for path in sorted(work.glob("*.key")):
        found[path.name] = bytes.fromhex(path.read_text().strip())
        # The secret every wallet key is derived from (HKDF-Extract of the master key).
        found[f"{path.name} derivation secret"] = derivation_prk(found[path.name])
    conn = connect(work / "node.db")
    for (address,) in conn.execute("SELECT address FROM wallets"):
        found[address] = decrypt_row(conn, address, work / "vault.key")
    conn.close()
    return found


def leaks(secrets: dict[str, bytes], haystacks: dict[str, bytes]) -> list[str]:
    """(secret, place) pairs where a secret appears in any of its encodings."""
    found = []
    for name, secret in secrets.items():
        needles = [secret, secret.hex().encode(), secret.hex().upper().encode()]
        for place, hay in haystacks.items():
            lowered = hay.lower()
            if any(n in hay or n.lower() in lowered for n in needles):
                found.append(f"{name} in {place}")
    return found


def database_files(work: Path) -> dict[str, bytes]:
    """The database, -wal and -shm as the scenario left them open, and as they are now."""
    files = {f"open {p.name}": p.read_bytes() for p in (work / "open").glob("node.db*")}
    files.update({p.name: p.read_bytes() for p in work.glob("node.db*")})
    assert {"open node.db", "open node.db-wal", "node.db"} <= set(files)
    return files


def vault_env(work: Path) -> dict[str, str]:
    return {"HODLAI_DB_PATH": str(work / "node.db"), VAULT_KEY_FILE_ENV: str(work / "vault.key")}


def test_the_search_finds_a_key_where_one_is(tmp_path: Path) -> None:
    key = os.urandom(32)
    hay = {"log": b'{"x": "0x' + key.hex().upper().encode() + b'"}', "raw": b"--" + key}
    assert leaks({"k": key}, hay) == ["k in log", "k in raw"]
    assert leaks({"k": key}, {"clean": b"nothing here"}) == []


def test_no_key_reaches_captured_logs_errors_output_or_the_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logger = structlog.get_logger("worker_loop")
    with structlog.testing.capture_logs() as captured:
        refusals = run_scenario(
            tmp_path, lambda exc: logger.error("step_failed", error=str(exc), exc_info=exc)
        )
    output = capsys.readouterr()
    assert len(refusals) == 3 * EXPECTED_REFUSALS
    events = {entry["event"] for entry in captured}
    assert {
        "vault_wallet_created",
        "vault_wallet_imported",
        "vault_typed_data_signed",
        "vault_wallet_recovered",
    } <= events
    assert "step_failed" in events

    secrets = secrets_of(tmp_path)
    assert len(secrets) == 2 * 2 + 3  # two master keys and their derivation secrets; 3 wallets
    haystacks = {
        "captured logs": repr(captured).encode(),
        "refusals": "\n".join(refusals).encode(),
        "stdout": output.out.encode(),
        "stderr": output.err.encode(),
        **database_files(tmp_path),
    }
    assert leaks(secrets, haystacks) == []
    # ...while the same search does find the master key in the file that holds it.
    assert leaks(secrets, {"file": (tmp_path / "vault.key").read_bytes()}) == ["vault.key in file"]


def child_main(work: Path) -> None:
    """The scenario with the node's real logging: structlog JSON on stderr (redirected to a
    file by the parent) and stdlib logging of every library at DEBUG into another file."""
    logging.basicConfig(filename=work / "stdlib.log", level=logging.DEBUG)
    configure_logging("DEBUG", json=True)
    log = structlog.get_logger("worker_loop")
    refusals = run_scenario(
        work, lambda exc: log.exception("step_failed", exc_info=exc), cli=vault_cli.main
    )
    (work / "refusals.json").write_text(json.dumps(refusals))


def test_no_key_reaches_real_log_files_errors_output_or_the_database(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HODLAI_")}
    env.update(vault_env(work), PYTHONPATH=str(ROOT))
    with (tmp_path / "stderr.log").open("wb") as err, (tmp_path / "stdout.log").open("wb") as out:
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from pathlib import Path; "
                "from tests.test_vault_leaks import child_main; child_main(Path(sys.argv[1]))",
                str(work),
            ],
            cwd=work,
            env=env,
            stdout=out,
            stderr=err,
            timeout=120,
            check=False,
        )
    stderr = (tmp_path / "stderr.log").read_bytes()
    assert child.returncode == 0, stderr.decode(errors="replace")[-3000:]
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith(b"{")]
    names = {e["event"] for e in events}
    assert {"vault_wallet_created", "vault_typed_data_signed", "step_failed"} <= names
    assert any("Traceback" in e.get("exception", "") for e in events)
    refusals = json.loads((work / "refusals.json").read_text())
    assert len(refusals) == 3 * EXPECTED_REFUSALS

    haystacks = {
        "structlog stderr": stderr,
        "stdout": (tmp_path / "stdout.log").read_bytes(),
        "stdlib log": (work / "stdlib.log").read_bytes(),
        "refusals": (work / "refusals.json").read_bytes(),
        **database_files(work),
    }
    secrets = secrets_of(work)
    assert len(secrets) == 3 * 2 + 5  # 3 master keys and their derivation secrets; 5 wallets
    assert leaks(secrets, haystacks) == []
    # ...while the same search does find the imported key in the key file that holds it.
    imported_file = {"import-me.json": (work / "import-me.json").read_bytes()}
    assert len(leaks(secrets, imported_file)) == 1
