"""Many executors, many chains, many pollers in one database, without anvil (issue 19 item
3; tests/test_two_chains.py runs them on two real chains): identities per (executor, chain),
block history per poller, the chain id of every transaction, named chains in the settings,
and a database of core migration 14 upgraded in place with its rows kept."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from shared import halt
from shared.chain import history, reorg
from shared.chain.cli import register as register_chain_cli
from shared.chain.scan import BlockHeader
from shared.cli import main as cli_main
from shared.config import DEFAULT_CHAIN, CoreSettings, load_settings
from shared.db import (
    atomic,
    check_executor_identity,
    check_identity,
    connect,
    executor_identities,
    stored_identity,
)
from shared.errors import ConfigError, DatabaseMismatchError
from shared.migrations import core_set
from shared.tx import ledger

PROVIDER = "0x" + "ab" * 20
OTHER = "0x" + "cd" * 20
SENDER = "0x" + "11" * 20


def refusal(chain_id: int, executor: str) -> str:
    """The pattern of an identity refusal against ``executor``'s row on ``chain_id``."""
    return rf"created for chain {chain_id} and \S+ as the {executor}'s identity"


# --- identities --------------------------------------------------------------------------------


def test_an_executor_is_refused_only_against_its_own_identity(tmp_path: Path) -> None:
    conn = connect(tmp_path / "node.db")
    check_identity(conn, chain_id=56, provider_address=PROVIDER)
    # Other executors, on the oracle's chain or others, with any anchor.
    check_executor_identity(conn, executor="mint", chain_id=8453, anchor=OTHER)
    check_executor_identity(conn, executor="dispatch-x", chain_id=56, anchor=OTHER)
    # An executor on several chains says so; each chain keeps its own anchor.
    check_executor_identity(conn, executor="distribution", chain_id=8453, anchor=OTHER,
                            one_chain=False)  # fmt: skip
    check_executor_identity(conn, executor="distribution", chain_id=1, anchor=PROVIDER,
                            one_chain=False)  # fmt: skip
    assert executor_identities(conn, "distribution") == {8453: OTHER, 1: PROVIDER}
    assert stored_identity(conn) == (56, PROVIDER)
    check_identity(conn, chain_id=56, provider_address=PROVIDER.upper().replace("0X", "0x"))
    with pytest.raises(DatabaseMismatchError, match=refusal(56, "oracle")):
        check_identity(conn, chain_id=97, provider_address=PROVIDER)  # a one-chain executor
    with pytest.raises(DatabaseMismatchError, match=refusal(56, "oracle")):
        check_identity(conn, chain_id=56, provider_address=OTHER)
    with pytest.raises(DatabaseMismatchError, match=refusal(1, "distribution")):
        check_executor_identity(conn, executor="distribution", chain_id=1, anchor=OTHER,
                                one_chain=False)  # fmt: skip
    assert executor_identities(conn, "oracle") == {56: PROVIDER}


# --- block history per poller ------------------------------------------------------------------


def _header(poller: str, number: int) -> BlockHeader:
    return BlockHeader(number, f"0x{poller}{number:04x}", f"0x{poller}{number - 1:04x}")


def _accept(
    conn: sqlite3.Connection, poller: str, first: int, last: int, history_blocks: int
) -> None:
    expected = history.stored_cursor(conn, poller)
    history.commit_range(
        conn, name=poller, expected_cursor=first - 1 if expected is None else expected,
        new_cursor=last, range_end=_header(poller, last),
        headers=[_header(poller, n) for n in range(first, last)], log_blocks={},
        history_blocks=history_blocks, now=1.0, apply=lambda: None,
    )  # fmt: skip


def test_pollers_keep_prune_and_roll_back_only_their_own_block_history(tmp_path: Path) -> None:
    conn = connect(tmp_path / "node.db")
    # Two chains whose block numbers overlap; the second poller keeps a shorter history.
    _accept(conn, "bsc", 1, 20, history_blocks=1000)
    _accept(conn, "base", 1, 20, history_blocks=5)
    assert sorted(history.stored_hashes(conn, "bsc", 0, 100)) == list(range(1, 21))
    assert sorted(history.stored_hashes(conn, "base", 0, 100)) == list(range(15, 21))
    assert history.read_anchor(conn, "bsc", 1).header == _header("bsc", 20)
    assert [b.number for b in reorg.stored_blocks(conn, "base", 100)] == list(range(20, 14, -1))

    history.roll_back(conn, name="base", ancestor=16, depth=4, deeper_than_confirmations=True,
                      note="test", now=2.0, undo=lambda: None)  # fmt: skip
    assert sorted(history.stored_hashes(conn, "base", 0, 100)) == [15, 16]
    assert sorted(history.stored_hashes(conn, "bsc", 0, 100)) == list(range(1, 21))
    assert history.stored_cursor(conn, "bsc") == 20 and history.stored_cursor(conn, "base") == 16
    reorgs = conn.execute("SELECT poller, at_block, deeper_than_confirmations FROM reorgs")
    assert [tuple(r) for r in reorgs] == [("base", 17, 1)]


# --- transactions per (sender, chain) -----------------------------------------------------------


def _raw_tx(conn: sqlite3.Connection, nonce: int, tx_hash: str, chain_id: int | None) -> int:
    """A txs row written by SQL, as a database made before migration 15 holds them."""
    with atomic(conn):
        cursor = conn.execute(
            "INSERT INTO txs (purpose, sender, nonce, tx_hash, raw_tx, to_address, value_wei,"
            " calldata, gas_limit, gas_price, status, created_at, updated_at, idempotency_key,"
            " chain_id) VALUES ('note', ?, ?, ?, '0x', ?, '0', '0x', 21000, '1', 'BROADCAST',"
            " 1.0, 1.0, ?, ?)",
            (SENDER, nonce, tx_hash, SENDER, f"k:{tx_hash}", chain_id),
        )
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def test_one_key_has_a_nonce_sequence_and_open_rows_per_chain(tmp_path: Path) -> None:
    conn = connect(tmp_path / "node.db")
    _raw_tx(conn, 0, "0xa0", 56)
    _raw_tx(conn, 1, "0xa1", 56)
    _raw_tx(conn, 0, "0xb0", 8453)
    assert ledger.next_unused_nonce(conn, SENDER, chain_id=56) == 2
    assert ledger.next_unused_nonce(conn, SENDER, chain_id=8453) == 1
    assert ledger.next_unused_nonce(conn, SENDER, chain_id=1) == 0
    assert [t.tx_hash for t in ledger.open_txs(conn, SENDER, chain_id=8453)] == ["0xb0"]
    assert [t.tx_hash for t in ledger.at_nonces(conn, SENDER, [0], chain_id=56)] == ["0xa0"]


def test_rows_of_a_database_that_named_no_chain_are_adopted_once(tmp_path: Path) -> None:
    conn = connect(tmp_path / "node.db")
    legacy = _raw_tx(conn, 0, "0xc0", None)
    assert ledger.open_txs(conn, SENDER, chain_id=56) == []
    assert ledger.adopt_unchained(conn, SENDER, chain_id=56) == 1
    assert ledger.adopt_unchained(conn, SENDER, chain_id=97) == 0
    record = ledger.get(conn, legacy)
    assert record is not None and record.chain_id == 56
    with pytest.raises(sqlite3.IntegrityError, match="chain_id never changes"):
        conn.execute("UPDATE txs SET chain_id = 97 WHERE id = ?", (legacy,))


# --- a database of core migration 14 ------------------------------------------------------------


def test_a_database_of_migration_14_keeps_its_identity_history_and_transactions(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path, isolation_level=None)
    old.execute(
        "CREATE TABLE schema_migrations (set_name TEXT NOT NULL, version INTEGER NOT NULL,"
        " name TEXT NOT NULL, applied_at REAL NOT NULL, PRIMARY KEY (set_name, version)) STRICT"
    )
    for migration in core_set().migrations[:14]:
        for statement in migration.statements():
            old.execute(statement)
        old.execute("INSERT INTO schema_migrations VALUES ('core', ?, ?, 0)",
                    (migration.version, migration.name))  # fmt: skip
    meta = [("chain_id", "56"), ("provider_address", PROVIDER), ("created_at", "7.5")]
    old.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta)
    old.execute("INSERT INTO blocks VALUES (10, '0xh10', '0xh9', 1.0)")
    old.execute("INSERT INTO reorgs (detected_at, at_block, depth, deeper_than_confirmations)"
                " VALUES (2.0, 9, 1, 0)")  # fmt: skip
    old.execute("INSERT INTO senders VALUES (?, 'fulfiller', 'box', 42, 1.0, 2.0, 3)", (SENDER,))
    old.execute(
        "INSERT INTO txs (purpose, sender, nonce, tx_hash, raw_tx, to_address, value_wei,"
        " calldata, gas_limit, gas_price, status, created_at, updated_at, idempotency_key)"
        " VALUES ('fulfil', ?, 0, '0xt0', '0x', ?, '0', '0x', 21000, '1', 'MINED', 1.0, 1.0,"
        " 'fulfil:1')",
        (SENDER, SENDER),
    )
    old.close()

    conn = connect(path)
    assert stored_identity(conn) == (56, PROVIDER)
    created = conn.execute("SELECT created_at FROM identities").fetchone()[0]
    assert created == 7.5
    check_identity(conn, chain_id=56, provider_address=PROVIDER)  # still its database
    with pytest.raises(DatabaseMismatchError):
        check_identity(conn, chain_id=97, provider_address=PROVIDER)
    assert history.stored_hashes(conn, "indexer", 10, 10) == {10: "0xh10"}
    assert [tuple(r) for r in conn.execute("SELECT poller, at_block FROM reorgs")] == [
        ("indexer", 9)
    ]
    senders = conn.execute("SELECT address, chain_id, owner, generation FROM senders")
    assert [tuple(r) for r in senders] == [(SENDER, 56, "fulfiller", 3)]
    assert ledger.next_unused_nonce(conn, SENDER, chain_id=56) == 1
    assert conn.execute("SELECT chain_id FROM txs").fetchone()[0] == 56


# --- named chains -------------------------------------------------------------------------------


def test_named_chains_come_from_nested_settings_and_the_default_from_the_old_ones(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HODLAI_RPC_URLS", "http://127.0.0.1:8545")
    monkeypatch.setenv("HODLAI_CONFIRMATIONS", "5")
    monkeypatch.setenv(
        "HODLAI_CHAINS__base__RPC_URLS", "https://a.example/v2/KEY, https://b.example"
    )
    monkeypatch.setenv("HODLAI_CHAINS__BASE__CHAIN_ID", "8453")
    monkeypatch.setenv("HODLAI_CHAINS__bsc__RPC_URLS", "https://bsc.example")
    monkeypatch.setenv("HODLAI_CHAINS__bsc__CONFIRMATIONS", "15")
    settings = load_settings(CoreSettings)
    base = settings.chain("base")
    assert base.rpc_urls == ("https://a.example/v2/KEY", "https://b.example")
    assert (base.chain_id, base.confirmations) == (8453, 5)  # confirmations: the default's
    assert settings.chain("BSC").confirmations == 15
    default = settings.chain()
    assert default.name == DEFAULT_CHAIN and default.rpc_urls == ("http://127.0.0.1:8545",)
    assert default.rpc_setting == "HODLAI_RPC_URLS"
    with pytest.raises(ConfigError, match=r"no chain named 'solana'.*HODLAI_CHAINS__solana__RPC"):
        settings.chain("solana")


def test_a_bad_named_chain_setting_is_named_without_its_secrets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HODLAI_CHAINS__base__RPC_URLS", "https://rpc.example/v2/SECRET,wss://x")
    with pytest.raises(ConfigError, match="HODLAI_CHAINS__base__RPC_URLS") as raised:
        load_settings(CoreSettings)
    assert "SECRET" not in str(raised.value)
    monkeypatch.setenv("HODLAI_CHAINS__base__RPC_URLS", "https://rpc.example")
    monkeypatch.setenv("HODLAI_CHAINS__base__CONFIRMATIONS", "-1")
    with pytest.raises(ConfigError, match="HODLAI_CHAINS__base__CONFIRMATIONS"):
        load_settings(CoreSettings)


def test_a_named_chain_without_urls_is_refused_naming_its_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HODLAI_CHAINS__base__CHAIN_ID", "8453")
    settings = load_settings(CoreSettings)
    with pytest.raises(ConfigError, match="HODLAI_CHAINS__base__RPC_URLS"):
        settings.chain("base")
    with pytest.raises(ConfigError, match="HODLAI_RPC_URLS"):
        settings.chain()


# --- hodlai pollers / poller-resume ------------------------------------------------------------


def test_pollers_lists_each_poller_and_poller_resume_clears_only_its_halt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "node.db"
    conn = connect(path)
    _accept(conn, "indexer", 1, 8, history_blocks=1000)
    _accept(conn, "sample-base", 1, 4, history_blocks=1000)
    history.roll_back(conn, name="sample-base", ancestor=2, depth=2,
                      deeper_than_confirmations=False, note="test", now=2.0,
                      undo=lambda: None)  # fmt: skip
    halt.halt(conn, "the RPC reports chain 1", worker="sample-base", at_block=2)
    halt.halt(conn, "the RPC reports chain 56", worker="indexer", at_block=8)
    conn.close()
    monkeypatch.setenv("HODLAI_DB_PATH", str(path))
    registrars = [("chain", register_chain_cli)]
    capsys.readouterr()  # the set-up's own log lines

    assert cli_main(["pollers", "--json"], registrars) == 0
    listed = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert (listed["indexer"]["cursor"], listed["indexer"]["stored_blocks"]) == (8, 8)
    assert (listed["sample-base"]["cursor"], listed["sample-base"]["reorgs"]) == (2, 1)
    assert listed["sample-base"]["halted"] == "the RPC reports chain 1"

    assert cli_main(["poller-resume", "sample-base", "--json"], registrars) == 0
    cleared = json.loads(capsys.readouterr().out)
    assert cleared["was_halted"] and cleared["resolution"] == "resume"
    conn = connect(path)
    assert halt.halted(conn, "sample-base") is None
    assert halt.halted(conn, "indexer") == "the RPC reports chain 56"  # not another's halt
    assert cli_main(["poller-resume", "sample-base"], registrars) == 0
    assert "not halted" in capsys.readouterr().out
