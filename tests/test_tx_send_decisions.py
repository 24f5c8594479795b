"""The send decisions that could pay twice (issue 18, item 5), each on a real anvil and a real
SQLite file, counted on chain: an invalid payment is never broadcast after a restart; a node's
refusal is never told as an outcome; a bump re-signs what the signed bytes hold, never an
edited row; a key taken over, or used from a restored copy of the database, signs nothing;
unregistered purposes stop the start; a nonce used by someone else halts a money sender."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from shared import halt
from shared.db import atomic, connect
from shared.errors import (
    ConfigError,
    LedgerTamperedError,
    SenderHaltedError,
    SenderTakenOverError,
    UnregisteredPurposeError,
)
from shared.metrics import TXS, Health
from shared.runtime import WorkerSpec, run_loop, run_worker
from shared.tx import ledger, replacements
from shared.tx.fees import GWEI, Fees
from shared.tx.ledger import Purpose
from shared.tx.senders import claim_sender
from shared.tx.settlement import Settlement
from shared.tx.signer import Call, LocalSigner
from tests.tx_world import CHAIN, FAIR, PAY, POLICY, VALUE, World, make_world


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    with make_world(tmp_path, monkeypatch) as made:
        yield made


# --- 1. invalid wins after a restart --------------------------------------------------------


async def test_a_payment_cancelled_while_the_process_was_down_is_never_broadcast(
    world: World,
) -> None:
    async with world.manager() as first:
        await first.start()
        recorded = await first.record([world.payment("a")], FAIR)  # killed before broadcast
    signed = recorded[0].signed
    assert signed is not None
    world.purpose.cancelled.add("a")  # the operator, while the process is down
    async with world.manager() as second:
        report = await second.start()
        assert report.counts["cancelled"] == 1
        assert world.scripted.sends_of(signed.raw) == 0  # invalid wins: never sent at all
        world.rpc("evm_mine", [])
        await second.poll()
    assert world.balance() == 0  # not paid
    assert world.purpose.told == [(signed.tx_hash, Settlement.SUPERSEDED)]
    assert [(r["purpose"], r["status"]) for r in world.rows()] == [
        (PAY, "CANCELLED"),
        ("cancel", "MINED"),
    ]


async def test_an_invalid_payment_is_not_sent_behind_a_lagging_node_either(world: World) -> None:
    world.rpc("anvil_mine", [hex(8)])
    async with world.manager() as manager:
        await manager.start()
        recorded = await manager.record([world.payment("h")], FAIR)  # not broadcast yet
        signed = recorded[0].signed
        assert signed is not None
        world.purpose.cancelled.add("h")
        world.scripted.head_lag = 1  # the next poll's batch reaches a backend behind
        report = await manager.poll()
        assert report.counts["stale_view"] == 1
        assert world.scripted.sends_of(signed.raw) == 0  # before: sent as "unsent SIGNED"
        report = await manager.poll()
        assert report.counts["cancelled"] == 1
        assert world.scripted.sends_of(signed.raw) == 0


# --- 2. a node's refusal is not an outcome --------------------------------------------------


async def test_a_node_refusing_what_another_node_accepted_pays_once_and_tells_the_truth(
    world: World,
) -> None:
    async with world.manager() as manager:
        await manager.start()
        recorded = await manager.record([world.payment("b")], FAIR)
        signed = recorded[0].signed
        assert signed is not None
        # Another node took it already; ours refuses it as if it could never be valid, and
        # its cancel reaches a pool no block producer sees.
        assert world.rpc("eth_sendRawTransaction", [signed.raw]) == signed.tx_hash
        world.scripted.refuse = lambda raw: "exceeds block gas limit" if raw == signed.raw else None
        world.scripted.swallow = lambda raw: raw != signed.raw
        (result,) = await manager.broadcast(recorded)
        assert result.outcome.value == "rejected"
        report = await manager.poll()
        assert report.counts["cancelled"] == 1  # the cancel still competes for the nonce
        assert world.purpose.told == []  # but nobody was told REJECTED
        world.rpc("evm_mine", [])
        await manager.poll()
    assert world.balance() == VALUE  # one transfer on chain
    assert world.purpose.told == [(signed.tx_hash, Settlement.MINED)]


# --- 3. bumps re-sign from the signed bytes -------------------------------------------------


async def test_a_bump_of_a_payment_whose_row_was_edited_is_refused_and_nothing_is_signed(
    world: World,
) -> None:
    thief = "0x" + "ee" * 20
    async with world.manager() as manager:
        await manager.start()
        recorded = await manager.record([world.payment("c")], FAIR)
        await manager.broadcast(recorded)
        # Someone with write access to the database file redirects the stuck payment: the
        # append-only trigger is in the way (core migration 13), so they drop it first.
        edit = sqlite3.connect(world.db_path)
        edit.execute("DROP TRIGGER trg_txs_history_frozen")
        edit.execute(
            "UPDATE txs SET to_address = ?, calldata = '0xdeadbeef' WHERE purpose = ?",
            (thief, PAY),
        )
        edit.commit()
        edit.close()
        world.clock.advance(POLICY.stuck_after_s + 1)
        with capture_logs() as logs:
            first = await manager.poll()
            second = await manager.poll()
        assert first.counts["bump_refused"] == 1 and second.counts["bump_refused"] == 1
        assert [e["event"] for e in logs].count("tx_bump_refused") == 1  # said once
        refusal = next(e for e in logs if e["event"] == "tx_bump_refused")
        assert refusal["log_level"] == "error" and "calldata differs" in refusal["error"]
        assert len(world.rows()) == 1  # nothing new signed or recorded
        world.rpc("evm_mine", [])
        await manager.poll()
    assert world.balance() == VALUE and world.balance(thief) == 0
    assert int(str(world.rpc("eth_getTransactionCount", [world.signer.address, "latest"])), 16) == 1


def test_a_row_signed_by_another_key_or_for_another_chain_is_refused(tmp_path: Path) -> None:
    conn = connect(tmp_path / "t.db")
    ours = LocalSigner(bytes.fromhex("11" * 32), chain_id=CHAIN)
    call = Call(to=ours.address, data=b"\x01", value=5, gas_limit=30_000)
    for name, signer in (
        ("ours", ours),
        ("other key", LocalSigner(bytes.fromhex("22" * 32), chain_id=CHAIN)),
        ("other chain", LocalSigner(bytes.fromhex("11" * 32), chain_id=1)),
        ("legacy", ours),
    ):
        fees = Fees(gas_price=GWEI) if name == "legacy" else FAIR
        signed = signer.sign(call, nonce=0, fees=fees)
        with atomic(conn):
            ledger.insert(conn, signed, Purpose(PAY, name), sender=ours.address,
                          chain_id=CHAIN, now=1.0,
                          idempotency_key=name)  # fmt: skip
    rows = {
        tx.purpose.subject: tx for tx in ledger.at_nonces(conn, ours.address, [0], chain_id=CHAIN)
    }
    for name in ("ours", "legacy"):
        assert replacements.signed_call(rows[name], sender=ours.address, chain_id=CHAIN) == call
    with pytest.raises(LedgerTamperedError, match="signed by"):
        replacements.signed_call(rows["other key"], sender=ours.address, chain_id=CHAIN)
    with pytest.raises(LedgerTamperedError, match="signed for chain 1"):
        replacements.signed_call(rows["other chain"], sender=ours.address, chain_id=CHAIN)


# --- 4. sender ownership --------------------------------------------------------------------


async def test_a_process_whose_key_was_taken_over_records_nothing_more(world: World) -> None:
    async with world.manager() as manager:
        await manager.start()
        # A process that ignored the locks (another machine) claims the key: a new generation.
        conn = connect(world.db_path)
        with atomic(conn):
            conn.execute(
                "UPDATE senders SET generation = generation + 1, host = 'elsewhere', pid = 7"
            )
        with pytest.raises(SenderTakenOverError, match="taken over"):
            await manager.record([world.payment("d")], FAIR)
        assert world.rows() == []  # the fence is in the insert's transaction
        world.clock.advance(60)
        with pytest.raises(SenderTakenOverError):
            await manager.poll()  # the heartbeat sees it too
    assert world.scripted.sent == []


async def test_a_takeover_ends_the_run_loop_while_a_config_error_is_retried() -> None:
    calls = {"config": 0, "taken": 0}

    async def config_then_stop() -> float:
        calls["config"] += 1
        if calls["config"] == 2:
            stop.set()
        raise ConfigError("a bad setting")

    async def taken_over() -> float:
        calls["taken"] += 1
        raise SenderTakenOverError("the sending key 0xabc was taken over by another process")

    async def unjudged() -> float:
        raise UnregisteredPurposeError("open transactions have purpose kinds: mint")

    stop = asyncio.Event()
    await run_loop("test", config_then_stop, stop=stop)
    assert calls["config"] == 2  # backed off and went on
    with capture_logs() as logs, pytest.raises(SenderTakenOverError):
        await run_loop("test", taken_over, stop=asyncio.Event())
    assert calls["taken"] == 1
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["sender_taken_over_fatal"]
    with pytest.raises(UnregisteredPurposeError, match="mint"):
        await run_loop("test", unjudged, stop=asyncio.Event())  # a start that cannot judge


def test_a_process_whose_key_is_taken_over_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run_worker lets the takeover out (the CLI then exits 1 with one line) instead of
    backing off and trying to sign again."""
    # The process-wide logging setup would outlive this test (cached loggers).
    monkeypatch.setattr("shared.logs.configure_logging", lambda *args, **kwargs: None)
    steps = []

    class Payer:
        async def start(self, stop: asyncio.Event) -> bool:
            return True

        async def step(self) -> float:
            steps.append(1)
            raise SenderTakenOverError("the sending key 0xabc was taken over by another process")

        async def stop(self) -> None:
            steps.append(0)

    @asynccontextmanager
    async def build(db: object, stop: asyncio.Event) -> AsyncIterator[Payer]:
        yield Payer()

    spec = WorkerSpec(process="payer", executor="test", db_path=tmp_path / "w.db",
                      health=Health(stale_after_s=60))  # fmt: skip
    with pytest.raises(SenderTakenOverError):
        run_worker(spec, build, log_level="WARNING")
    assert steps == [1, 0]  # one step, then a clean stop


HOLDER = """
import sys, time
from pathlib import Path
from shared.db import connect
from shared.tx.senders import claim_sender
db = Path(sys.argv[1])
claim = claim_sender(db, connect(db), sys.argv[2], owner="holder", chain_id=int(sys.argv[3]))
print("held", flush=True)
time.sleep(600)
"""


def _holder(db: Path, address: str, chain_id: int, env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db), address, str(chain_id)],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    while (line := proc.stdout.readline()) and line.strip() != "held":
        pass
    assert line.strip() == "held"
    return proc


def test_one_signer_per_key_and_chain_whatever_database_file_it_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "0x" + "33" * 20
    original = tmp_path / "node.db"
    beside = tmp_path / "node.restored.db"  # a restored copy next to the original
    (tmp_path / "elsewhere").mkdir()
    far = tmp_path / "elsewhere" / "node.db"  # a copy in another directory
    for path in (original, beside, far):
        connect(path).close()
    env = {k: v for k, v in os.environ.items() if k != "HODLAI_LOCK_DIR"}
    monkeypatch.delenv("HODLAI_LOCK_DIR", raising=False)
    holder = _holder(original, key, CHAIN, env)
    try:
        # Default lock directory: beside the database, so the copy beside it is refused...
        with pytest.raises(ConfigError, match="held by another process"):
            claim_sender(beside, connect(beside), key, owner="restored", chain_id=CHAIN)
        # ...and the same key on another chain is another sender.
        other_chain = claim_sender(beside, connect(beside), key, owner="x", chain_id=CHAIN + 1)
        other_chain.release()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    shared = tmp_path / "run-hodlai"
    holder = _holder(original, key, CHAIN, env | {"HODLAI_LOCK_DIR": str(shared)})
    try:
        monkeypatch.setenv("HODLAI_LOCK_DIR", str(shared))
        with pytest.raises(ConfigError, match=f"pid {holder.pid}"):
            claim_sender(far, connect(far), key, owner="restored", chain_id=CHAIN)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The kernel dropped the dead holder's lock: the key is free at once.
    claim = claim_sender(far, connect(far), key, owner="restored", chain_id=CHAIN)
    assert claim.generation == 1
    claim.release()


def test_every_claim_is_a_new_generation(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    conn = connect(db)
    key = "0x" + "44" * 20
    first = claim_sender(db, conn, key, owner="a", chain_id=CHAIN, locks=tmp_path / "l")
    first.release()  # the kernel lock only: the row stays, as after a kill
    second = claim_sender(db, conn, key, owner="b", chain_id=CHAIN, locks=tmp_path / "l")
    assert (first.generation, second.generation) == (1, 2)
    with pytest.raises(SenderTakenOverError):
        first.check(conn)
    second.check(conn)
    second.release(conn)


# --- 5. unregistered purposes ---------------------------------------------------------------


async def test_open_rows_of_unregistered_purpose_kinds_stop_the_start_with_their_names(
    world: World,
) -> None:
    conn = connect(world.db_path)
    for nonce, kind in enumerate(("mint", "distribute", PAY)):
        signed = world.signer.sign(world.payment(kind).call, nonce=nonce, fees=FAIR)
        with atomic(conn):
            ledger.insert(
                conn, signed, Purpose(kind, "s"), sender=world.signer.address,
                chain_id=world.signer.chain_id, now=1.0, idempotency_key=kind,
            )  # fmt: skip
    async with world.manager() as manager:
        with pytest.raises(UnregisteredPurposeError, match="distribute, mint"):
            await manager.start()
    assert world.scripted.sent == []


# --- 6. a nonce used by someone else halts a money sender -----------------------------------


async def test_a_nonce_used_by_a_foreign_transaction_halts_the_money_sender(
    world: World,
) -> None:
    async with world.manager(halt_on_foreign_nonce=True) as manager:
        await manager.start()
        recorded = await manager.record([world.payment("e")], FAIR)
        assert recorded[0].signed is not None
        # Someone else signs with our key at the same nonce, and it mines first.
        foreign = world.signer.sign(
            Call(to=world.signer.address, data=b"x", value=0, gas_limit=30_000), nonce=0, fees=FAIR
        )
        world.rpc("eth_sendRawTransaction", [foreign.raw])
        world.rpc("evm_mine", [])
        world.scripted.refuse = lambda raw: "nonce too low"
        await manager.poll()  # the nonce is consumed without our receipt: look again later
        world.clock.advance(POLICY.absent_after_s + 1)
        halts = TXS.labels(outcome="sender_halted")._value.get()
        with capture_logs() as logs, pytest.raises(SenderHaltedError, match="did not sign"):
            await manager.poll()
        assert [e["event"] for e in logs if e["log_level"] == "error"] == ["sender_halted"]
        assert TXS.labels(outcome="sender_halted")._value.get() == halts + 1
        conn = connect(world.db_path)
        assert halt.halted(conn, manager.halt_worker) is not None
        with pytest.raises(SenderHaltedError):
            await manager.record([world.payment("f")], FAIR)
        # Every step of a loop that polls fails while halted: health turns unhealthy.
        health, steps, stop = Health(stale_after_s=600), 0, asyncio.Event()

        async def step() -> float:
            nonlocal steps
            steps += 1
            if steps == 3:
                stop.set()
            await manager.poll()
            return 0.0

        await run_loop("payer", step, stop=stop, health=health)
        healthy, detail = health.check()
        assert not healthy and "SenderHaltedError" in detail
        assert len(world.rows()) == 1  # nothing new signed
        halt.resume(conn, worker=manager.halt_worker, by="test operator")
        world.scripted.refuse = lambda raw: None
        await manager.poll()
        again = await manager.record([world.payment("f")], FAIR)
        assert again[0].signed is not None and again[0].signed.nonce == 1
    assert world.purpose.told == [(recorded[0].signed.tx_hash, Settlement.DROPPED)]


async def test_an_invalid_unsent_payment_that_no_bump_fits_under_the_caps_is_still_cancelled(
    world: World,
) -> None:
    at_tip_cap = Fees(max_fee_per_gas=10 * GWEI, max_priority_fee_per_gas=5 * GWEI)
    async with world.manager() as first:
        await first.start()
        recorded = await first.record([world.payment("g")], at_tip_cap)  # killed before send
    signed = recorded[0].signed
    assert signed is not None
    world.purpose.cancelled.add("g")
    async with world.manager() as second:
        report = await second.start()  # a +12.5 % tip would pass the 5 gwei cap
        assert report.counts["cancelled"] == 1  # priced at the market instead: not wedged
        world.rpc("evm_mine", [])
        await second.poll()
        assert second.in_flight == 0
    assert world.scripted.sends_of(signed.raw) == 0 and world.balance() == 0
    assert world.purpose.told == [(signed.tx_hash, Settlement.SUPERSEDED)]
