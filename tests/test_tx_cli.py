"""``hodlai senders`` and ``hodlai sender-resume``: an operator sees a halted money sender
and clears its halt; a bad address is refused without being echoed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared import halt
from shared.cli import main
from shared.db import atomic, connect
from shared.tx.cli import register

ADDRESS = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
REGISTRARS = [("tx", register)]


@pytest.fixture
def node_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "node.db"
    conn = connect(path)
    with atomic(conn):
        conn.execute(
            "INSERT INTO senders (address, chain_id, owner, host, pid, acquired_at, heartbeat_at,"
            " generation) VALUES (?, 8453, 'mint-executor', 'box', 4242, 1.0, 2.0, 3)",
            (ADDRESS,),
        )
    halt.halt(conn, "nonce 7 was used by 0xabc, a transaction this node did not sign",
              worker=f"sender:{ADDRESS}", now=5.0)  # fmt: skip
    conn.close()
    monkeypatch.setenv("HODLAI_DB_PATH", str(path))
    return path


def test_senders_shows_the_halt_and_sender_resume_clears_it(
    node_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["senders", "--json"], REGISTRARS) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["address"] == ADDRESS and row["generation"] == 3 and row["chain_id"] == 8453
    assert "did not sign" in row["halted"]

    assert main(["sender-resume", ADDRESS.lower(), "--json"], REGISTRARS) == 0
    cleared = json.loads(capsys.readouterr().out)
    assert cleared["was_halted"] and cleared["address"] == ADDRESS
    conn = connect(node_db)
    assert halt.halted(conn, f"sender:{ADDRESS}") is None
    assert conn.execute("SELECT resumed_by FROM halts").fetchone()[0] == "operator:cli"

    assert main(["sender-resume", ADDRESS], REGISTRARS) == 0
    assert "not halted" in capsys.readouterr().out


def test_a_malformed_address_is_refused_without_being_echoed(
    node_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret_looking = "0x" + "ab" * 32  # a private key pasted by mistake
    assert main(["sender-resume", secret_looking], REGISTRARS) == 2
    err = capsys.readouterr().err
    assert "ADDRESS" in err and secret_looking not in err
