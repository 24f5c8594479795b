"""The storage contract suite: every declared state machine (shared/registry.py) on a real
SQLite file keeps the same promises — audited transitions, fencing by lease and generation,
expired leases taken again, exact O(1) counts, and four OS processes claiming 20,000 rows
each exactly once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from shared import registry, state
from shared.db import atomic, connect
from shared.errors import LeaseLostError, TransitionConflict
from shared.state import Machine
from tests.state_factories import FACTORIES

ROOT = Path(__file__).resolve().parent.parent
MACHINES = sorted(registry.machines().values(), key=lambda m: m.name)
CLAIM_ROWS = 20_000


def _first_move(machine: Machine) -> tuple[str, str]:
    start = machine.status_values[0]
    return next((frm, to) for frm, to in sorted(machine.moves) if frm == start and to != start)


def _insert(conn: object, machine: Machine, n: int) -> str:
    row = FACTORIES[machine.name](n)
    state.insert(conn, machine, row, status=machine.status_values[0], actor="test")  # type: ignore[arg-type]
    return str(row[machine.key])


def test_every_declared_machine_has_a_row_factory() -> None:
    assert MACHINES, "no machine is declared (entry points group hodlai.machines)"
    assert {m.name for m in MACHINES} <= set(FACTORIES)


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.name)
def test_a_transition_moves_one_row_and_writes_its_audit_row(
    machine: Machine, tmp_path: Path
) -> None:
    conn = connect(tmp_path / "s.db")
    key = _insert(conn, machine, 1)
    frm, to = _first_move(machine)
    state.transition(conn, machine, key, frm, to, actor="tester", note="why", now=123.0)
    row = conn.execute(
        f"SELECT status, updated_at FROM {machine.table} WHERE {machine.key} = ?", (key,)
    ).fetchone()
    assert (row["status"], row["updated_at"]) == (to, 123.0)
    history = state.history(conn, machine, key)
    assert [(h["from_status"], h["to_status"]) for h in history] == [(None, frm), (frm, to)]
    assert (history[1]["machine"], history[1]["actor"], history[1]["note"]) == (
        machine.name,
        "tester",
        "why",
    )
    illegal = next(
        (a, b) for a in machine.status_values for b in machine.status_values
        if (a, b) not in machine.moves
    )  # fmt: skip
    with pytest.raises(ValueError, match="not in the state machine"):
        state.transition(conn, machine, key, *illegal, actor="tester")
    with pytest.raises(ValueError, match="may not set"):
        state.transition(conn, machine, key, frm, to, actor="t", set_columns={"status": "x"})
    with pytest.raises(TransitionConflict, match=f"is {to}, not {frm}"):
        state.transition(conn, machine, key, frm, to, actor="tester")
    assert len(state.history(conn, machine, key)) == 2  # refused moves leave no audit row


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.name)
def test_completing_work_is_fenced_by_the_lease_and_the_generation(
    machine: Machine, tmp_path: Path
) -> None:
    conn = connect(tmp_path / "s.db")
    key = _insert(conn, machine, 1)
    frm, to = _first_move(machine)
    (claimed,) = state.claim(conn, machine, owner="a", status=frm, limit=5, lease_seconds=60)
    assert claimed[machine.key] == key and claimed["lease_owner"] == "a"
    assert state.claim(conn, machine, owner="b", status=frm, limit=5, lease_seconds=60) == []
    with pytest.raises(LeaseLostError, match="held by 'a'"):
        state.transition(conn, machine, key, frm, to, actor="b", lease_owner="b")
    if machine.generation_column is not None:
        gen = machine.generation_column
        with atomic(conn):  # content replaced under the worker (as a reorg does)
            conn.execute(
                f"UPDATE {machine.table} SET {gen} = {gen} + 1 WHERE {machine.key} = ?", (key,)
            )
        with pytest.raises(LeaseLostError, match="content changed"):
            state.transition(
                conn, machine, key, frm, to, actor="a", lease_owner="a",
                generation=int(claimed[gen]),
            )  # fmt: skip
    state.transition(conn, machine, key, frm, to, actor="a", lease_owner="a")
    row = conn.execute(
        f"SELECT lease_owner, lease_until FROM {machine.table} WHERE {machine.key} = ?", (key,)
    ).fetchone()
    assert tuple(row) == (None, None)  # the move released the lease


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.name)
def test_an_expired_lease_is_taken_again_and_the_old_holder_is_fenced_off(
    machine: Machine, tmp_path: Path
) -> None:
    conn = connect(tmp_path / "s.db")
    key = _insert(conn, machine, 1)
    frm, to = _first_move(machine)
    claim = {"status": frm, "limit": 5, "lease_seconds": 10.0}
    assert len(state.claim(conn, machine, owner="a", now=1000.0, **claim)) == 1  # type: ignore[arg-type]
    assert state.claim(conn, machine, owner="b", now=1005.0, **claim) == []  # type: ignore[arg-type]
    assert state.extend(conn, machine, [key], owner="b", lease_seconds=10.0, now=1005.0) == [key]
    (again,) = state.claim(conn, machine, owner="b", now=1011.0, **claim)  # type: ignore[arg-type]
    assert again["lease_owner"] == "b"
    with pytest.raises(LeaseLostError):
        state.transition(conn, machine, key, frm, to, actor="a", lease_owner="a")
    assert state.release(conn, machine, [key], owner="b") == 1


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.name)
def test_counts_are_exact_after_inserts_moves_and_removals(
    machine: Machine, tmp_path: Path
) -> None:
    conn = connect(tmp_path / "s.db")
    keys = [_insert(conn, machine, n) for n in range(1, 8)]
    frm, to = _first_move(machine)
    for key in keys[:3]:
        state.transition(conn, machine, key, frm, to, actor="t")
    assert state.remove(conn, machine, keys[0], actor="t", note="gone") == to
    actual = Counter(r[0] for r in conn.execute(f"SELECT status FROM {machine.table}"))
    assert state.counts(conn, machine) == {s: actual.get(s, 0) for s in machine.status_values}
    assert state.history(conn, machine, keys[0])[-1]["to_status"] == state.REMOVED


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.name)
def test_four_processes_claim_20000_rows_each_exactly_once(
    machine: Machine, tmp_path: Path
) -> None:
    db = tmp_path / "claims.db"
    conn = connect(db)
    factory = FACTORIES[machine.name]
    state.insert_many(
        conn, machine, [factory(n) for n in range(1, CLAIM_ROWS + 1)],
        status=machine.status_values[0], actor="test",
    )  # fmt: skip
    outs = [tmp_path / f"{p}.keys" for p in range(4)]
    start_at = time.time() + 3.0  # every process started and waiting, even on a busy box
    procs = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "claim_load.py"), str(db), "--owner",
             f"p{p}", "--limit", "25", "--out", str(out), "--start-at", str(start_at),
             "--machine", machine.name],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for p, out in enumerate(outs)
    ]  # fmt: skip
    results = [proc.communicate(timeout=240) for proc in procs]
    for proc, (stdout, stderr) in zip(procs, results, strict=True):
        assert proc.returncode == 0, stderr
        assert json.loads(stdout.splitlines()[-1])["busy_errors"] == 0
    claimed = Counter(line for out in outs for line in out.read_text().split())
    assert len(claimed) == CLAIM_ROWS
    assert max(claimed.values()) == 1
    # They really contended: SQLite's busy wait is not fair (FACTS.md), so a tight claim loop
    # can starve one process; two sharing the rows is the proof of contention.
    assert sum(1 for out in outs if out.read_text()) >= 2
