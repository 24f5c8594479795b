"""The Solana payer on the in-process SVM (solders.litesvm): every recipient paid exactly once,
counted in the SVM's token accounts — through missing token accounts, expired blockhashes,
a payer killed between sending and writing, frozen recipients and a short source."""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.transaction import VersionedTransaction
from solders.transaction_metadata import FailedTransactionMetadata
from spl.token.constants import TOKEN_2022_PROGRAM_ID
from structlog.testing import capture_logs

from shared import cli
from shared.db import AsyncDatabase, atomic
from shared.errors import InvalidRequestError
from workers.distribution.machine import RunStatus, TransferStatus
from workers.distribution.solana.cluster import MAX_PROCESSING_AGE, SvmCluster
from workers.distribution.solana.localchain import (
    balance,
    create_fee_mint,
    create_token_account,
    freeze,
    has_account,
    mint_to,
)
from workers.distribution.solana.network import SolanaNetwork

from .solana_fixtures import (
    Chain,
    drive,
    make_chain,
    make_payer,
    open_db,
    record_run,
    run_status,
    send_rows,
    transfer_rows,
)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[AsyncDatabase]:
    database = AsyncDatabase(open_db(tmp_path / "node.db"))
    yield database
    database.close()


def _recipients(n: int) -> list[Pubkey]:
    return [Keypair().pubkey() for _ in range(n)]


def _manifest(recipients: list[Pubkey], base: int = 1_000) -> list[tuple[str, int]]:
    # Distinct amounts, so a payment to the wrong recipient or a double one shows.
    return [(str(r), base + 7 * i) for i, r in enumerate(recipients)]


def _assert_paid_exactly(
    chain: Chain, before: dict[str, int], manifest: list[tuple[str, int]]
) -> None:
    for address, amount in manifest:
        after = balance(chain.cluster, Pubkey.from_string(address), chain.mint)
        assert after - before.get(address, 0) == amount, address


async def test_fifty_recipients_half_without_a_token_account_are_all_paid_exactly(
    db: AsyncDatabase,
) -> None:
    chain = make_chain()
    recipients = _recipients(50)
    before: dict[str, int] = {}
    for r in recipients[::2]:  # half hold a token account (and some tokens) already
        mint_to(chain.cluster, chain.authority, chain.mint, r, 3)
        before[str(r)] = 3
    assert sum(has_account(chain.cluster, r, chain.mint) for r in recipients) == 25
    manifest = _manifest(recipients)
    source_before = balance(chain.cluster, chain.source.pubkey(), chain.mint)
    await db.run(record_run, run_id="r50", token=str(chain.mint.address), manifest=manifest)

    status = await drive(make_payer(db, chain), db, "r50")

    assert status == RunStatus.COMPLETED
    _assert_paid_exactly(chain, before, manifest)
    total = sum(amount for _, amount in manifest)
    assert source_before - balance(chain.cluster, chain.source.pubkey(), chain.mint) == total
    transfers = await db.run(transfer_rows, "r50")
    assert {t["status"] for t in transfers} == {TransferStatus.PAID}
    sends = await db.run(send_rows, "r50")
    assert [s["status"] for s in sends] == ["landed"] * 5  # 10 recipients per packet
    assert {t["tx_hash"] for t in transfers} == {s["signature"] for s in sends}
    assert all(s["last_valid_block_height"] > 0 for s in sends)


class DroppingCluster(SvmCluster):
    """A cluster whose network loses every send of the first ``drop`` signatures it sees
    (the packets are kept, to deliver late): what a congested leader does."""

    def __init__(self, svm_cluster: SvmCluster, *, drop: int) -> None:
        super().__init__(svm_cluster.svm)
        self._issued = svm_cluster._issued
        self.drop = drop
        self.dropped: dict[str, VersionedTransaction] = {}

    async def send(self, transaction: VersionedTransaction) -> None:
        signature = str(transaction.signatures[0])
        if signature in self.dropped or len(self.dropped) < self.drop:
            self.dropped[signature] = transaction
            return
        await super().send(transaction)


async def test_a_blockhash_that_expires_before_confirmation_pays_each_recipient_once(
    db: AsyncDatabase,
) -> None:
    chain = make_chain()
    recipients = _recipients(30)
    manifest = _manifest(recipients)
    await db.run(record_run, run_id="rx", token=str(chain.mint.address), manifest=manifest)
    lossy = DroppingCluster(chain.cluster, drop=2)
    payer = make_payer(db, chain, cluster=lossy)

    for _ in range(5):  # sent, re-sent (lost again), never judged while the blockhash lives
        await payer.tick()
    sends = await db.run(send_rows, "rx")
    assert len(sends) == 3
    assert sorted(s["status"] for s in sends) == ["landed", "sent", "sent"]
    assert all(s["broadcasts"] >= 2 for s in sends if s["status"] == "sent")
    unpaid = [
        a for a, _ in manifest if balance(chain.cluster, Pubkey.from_string(a), chain.mint) == 0
    ]
    assert len(unpaid) == 20
    assert await db.run(run_status, "rx") == RunStatus.RUNNING

    # The blockhash's last valid height passes: only now are those two sends given up.
    chain.cluster.advance(MAX_PROCESSING_AGE + 1)
    assert await drive(payer, db, "rx") == RunStatus.COMPLETED
    sends = await db.run(send_rows, "rx")
    assert sorted(s["status"] for s in sends) == [
        "expired",
        "expired",
        "landed",
        "landed",
        "landed",
    ]

    # The lost packets arrive now: the cluster refuses them, nobody is paid twice.
    for late in lossy.dropped.values():
        result = chain.cluster.svm.send_transaction(late)
        assert isinstance(result, FailedTransactionMetadata)
        assert "BlockhashNotFound" in str(result.err())
    _assert_paid_exactly(chain, {}, manifest)
    transfers = await db.run(transfer_rows, "rx")
    assert {t["status"] for t in transfers} == {TransferStatus.PAID}
    expired = {s["signature"] for s in sends if s["status"] == "expired"}
    assert not expired & {t["tx_hash"] for t in transfers}
    assert max(t["attempts"] for t in transfers) == 2


async def test_a_packet_that_lands_late_but_in_time_is_paid_without_a_second_transaction(
    db: AsyncDatabase,
) -> None:
    chain = make_chain()
    manifest = _manifest(_recipients(10))
    await db.run(record_run, run_id="rl", token=str(chain.mint.address), manifest=manifest)
    lossy = DroppingCluster(chain.cluster, drop=1)
    payer = make_payer(db, chain, cluster=lossy)
    await payer.tick()
    await payer.tick()
    chain.cluster.advance(MAX_PROCESSING_AGE - 10)  # old, still valid
    (late,) = lossy.dropped.values()
    assert not isinstance(chain.cluster.svm.send_transaction(late), FailedTransactionMetadata)

    assert await drive(payer, db, "rl") == RunStatus.COMPLETED
    sends = await db.run(send_rows, "rl")
    assert [s["status"] for s in sends] == ["landed"]
    _assert_paid_exactly(chain, {}, manifest)


class Killed(BaseException):
    """The process died (SIGKILL): nothing after this point of the payer runs."""


class KillingCluster(SvmCluster):
    """Delivers the first send, then kills the payer before it writes anything more."""

    def __init__(self, svm_cluster: SvmCluster) -> None:
        super().__init__(svm_cluster.svm)
        self._issued = svm_cluster._issued

    async def send(self, transaction: VersionedTransaction) -> None:
        await super().send(transaction)
        raise Killed


def _lease_runs_out(conn: sqlite3.Connection, run_id: str) -> None:
    # The clock moves past the lease (the payer reads the wall clock, so the lease moves).
    with atomic(conn):
        conn.execute(
            "UPDATE distribution_runs SET lease_until = lease_until - 3600 WHERE run_id = ?",
            (run_id,),
        )


async def test_a_payer_killed_after_sending_before_writing_is_replaced_and_pays_once(
    db: AsyncDatabase, tmp_path: Path
) -> None:
    chain = make_chain()
    manifest = _manifest(_recipients(25))
    await db.run(record_run, run_id="rk", token=str(chain.mint.address), manifest=manifest)
    doomed = make_payer(db, chain, cluster=KillingCluster(chain.cluster), owner="doomed")
    with pytest.raises(Killed):
        await doomed.tick()
    # The first batch is on chain; the database only knows it was recorded.
    sends = await db.run(send_rows, "rk")
    assert [(s["status"], s["broadcasts"]) for s in sends] == [("sent", 0)]
    paid_on_chain = sum(
        balance(chain.cluster, Pubkey.from_string(a), chain.mint) > 0 for a, _ in manifest
    )
    assert paid_on_chain == 10

    # A fresh process: its own database connection, the same chain, the lease run out.
    fresh_db = AsyncDatabase(open_db(tmp_path / "node.db"))
    try:
        successor = make_payer(fresh_db, chain, owner="successor", lease_seconds=30.0)
        assert await successor.tick() is False  # the dead payer's lease still holds
        await fresh_db.run(_lease_runs_out, "rk")
        assert await drive(successor, fresh_db, "rk") == RunStatus.COMPLETED
        sends = await fresh_db.run(send_rows, "rk")
    finally:
        fresh_db.close()
    assert [s["status"] for s in sends] == ["landed"] * 3
    _assert_paid_exactly(chain, {}, manifest)


async def test_a_frozen_recipient_fails_with_its_reason_and_the_others_are_paid(
    db: AsyncDatabase,
) -> None:
    chain = make_chain()
    recipients = _recipients(20)
    frozen = recipients[13]
    freeze(chain.cluster, chain.authority, chain.mint, frozen)
    manifest = _manifest(recipients)
    await db.run(record_run, run_id="rf", token=str(chain.mint.address), manifest=manifest)

    assert await drive(make_payer(db, chain), db, "rf") == RunStatus.COMPLETED

    transfers = {t["address"]: t for t in await db.run(transfer_rows, "rf")}
    assert transfers[str(frozen)]["status"] == TransferStatus.FAILED
    assert "AccountFrozen" in transfers[str(frozen)]["reason"]
    assert balance(chain.cluster, frozen, chain.mint) == 0
    others = [(a, v) for a, v in manifest if a != str(frozen)]
    assert {transfers[a]["status"] for a, _ in others} == {TransferStatus.PAID}
    _assert_paid_exactly(chain, {}, others)
    # Isolated before anything was sent: no fee spent on a batch known to fail.
    assert {s["status"] for s in await db.run(send_rows, "rf")} == {"landed"}


class FreezingCluster(SvmCluster):
    """Freezes one recipient's account just before the first batch reaches the chain (its
    freeze authority acted between our simulation and the landing)."""

    def __init__(self, chain: Chain, victim: Pubkey) -> None:
        super().__init__(chain.cluster.svm)
        self._issued = chain.cluster._issued
        self.chain, self.victim, self.done = chain, victim, False

    async def send(self, transaction: VersionedTransaction) -> None:
        if not self.done:
            self.done = True
            freeze(self.chain.cluster, self.chain.authority, self.chain.mint, self.victim)
            self.chain.cluster.advance(1)  # a new block, so the freeze is not replayed
        await super().send(transaction)


async def test_a_batch_that_lands_failed_isolates_the_recipient_and_resends_the_rest(
    db: AsyncDatabase,
) -> None:
    chain = make_chain()
    recipients = _recipients(10)
    victim = recipients[4]
    manifest = _manifest(recipients)
    await db.run(record_run, run_id="rv", token=str(chain.mint.address), manifest=manifest)
    payer = make_payer(db, chain, cluster=FreezingCluster(chain, victim))

    assert await drive(payer, db, "rv") == RunStatus.COMPLETED

    sends = await db.run(send_rows, "rv")
    assert [s["status"] for s in sends] == ["failed", "landed"]
    assert "AccountFrozen" in sends[0]["error"] and "transfer_checked" in sends[0]["error"]
    transfers = {t["address"]: t for t in await db.run(transfer_rows, "rv")}
    assert transfers[str(victim)]["status"] == TransferStatus.FAILED
    assert "AccountFrozen" in transfers[str(victim)]["reason"]
    others = [(a, v) for a, v in manifest if a != str(victim)]
    _assert_paid_exactly(chain, {}, others)
    assert {transfers[a]["tx_hash"] for a, _ in others} == {sends[1]["signature"]}


async def test_a_short_source_pauses_the_run_and_funding_it_resumes_it(db: AsyncDatabase) -> None:
    chain = make_chain(tokens=5_000)
    manifest = _manifest(_recipients(12))  # 12 * 1000 + ... > 5000
    await db.run(record_run, run_id="rs", token=str(chain.mint.address), manifest=manifest)
    payer = make_payer(db, chain)

    assert await drive(payer, db, "rs", ticks=3) == RunStatus.PAUSED
    reason = (await db.run(lambda c: c.execute(
        "SELECT reason FROM distribution_runs WHERE run_id = 'rs'").fetchone()[0]))  # fmt: skip
    assert "token balance 5000" in reason
    assert await db.run(send_rows, "rs") == []

    mint_to(chain.cluster, chain.authority, chain.mint, chain.source.pubkey(), 10**9)
    assert await drive(payer, db, "rs") == RunStatus.COMPLETED
    _assert_paid_exactly(chain, {}, manifest)


async def test_a_source_without_sol_for_new_token_accounts_pauses_with_the_reason(
    db: AsyncDatabase,
) -> None:
    chain = make_chain(sol=0)
    chain.cluster.svm.airdrop(chain.source.pubkey(), 3_000_000)  # fees, not 5 accounts' rent
    manifest = _manifest(_recipients(5))
    await db.run(record_run, run_id="rn", token=str(chain.mint.address), manifest=manifest)
    payer = make_payer(db, chain)
    assert await drive(payer, db, "rn", ticks=3) == RunStatus.PAUSED
    chain.cluster.svm.airdrop(chain.source.pubkey(), 10**9)
    assert await drive(payer, db, "rn") == RunStatus.COMPLETED
    _assert_paid_exactly(chain, {}, manifest)


async def test_a_token_2022_mint_is_paid_with_its_own_program(db: AsyncDatabase) -> None:
    chain = make_chain(program=TOKEN_2022_PROGRAM_ID)
    recipients = _recipients(12)
    create_token_account(chain.cluster, chain.authority, recipients[0], chain.mint)
    manifest = _manifest(recipients)
    await db.run(record_run, run_id="r22", token=str(chain.mint.address), manifest=manifest)
    assert await drive(make_payer(db, chain), db, "r22") == RunStatus.COMPLETED
    _assert_paid_exactly(chain, {}, manifest)


async def test_a_run_whose_decimals_differ_from_the_mint_fails_before_sending(
    db: AsyncDatabase,
) -> None:
    chain = make_chain()
    manifest = _manifest(_recipients(3))
    await db.run(record_run, run_id="rd", token=str(chain.mint.address), manifest=manifest,
                 decimals=9)  # fmt: skip
    assert await drive(make_payer(db, chain), db, "rd") == RunStatus.FAILED
    assert await db.run(send_rows, "rd") == []


async def test_runs_of_an_evm_network_of_the_same_name_are_left_alone(db: AsyncDatabase) -> None:
    chain = make_chain()
    await db.run(record_run, run_id="evm", token="0x" + "cd" * 20, manifest=[("0x" + "ab" * 20, 1)])
    assert await make_payer(db, chain).tick() is False
    assert await db.run(run_status, "evm") == RunStatus.PENDING


async def test_build_unsigned_gives_messages_a_wallet_signs_that_pay_the_manifest() -> None:
    chain = make_chain()
    network = SolanaNetwork("devnet", chain.cluster)
    manifest = _manifest(_recipients(23))
    unsigned = await network.build_unsigned(
        str(chain.mint.address), str(chain.source.pubkey()), manifest
    )
    assert unsigned["recipientsPerMessage"] == [10, 10, 3]
    assert unsigned["message"] == unsigned["messages"][0]
    assert unsigned["feePayer"] == str(chain.source.pubkey())
    for encoded in unsigned["messages"]:  # the wallet's part: sign and send
        message = Message.from_bytes(base64.b64decode(encoded))
        assert message.account_keys[0] == chain.source.pubkey()
        result = chain.cluster.svm.send_transaction(VersionedTransaction(message, [chain.source]))
        assert not isinstance(result, FailedTransactionMetadata), result
    _assert_paid_exactly(chain, {}, manifest)


async def test_the_network_reads_decimals_and_balances_and_normalizes_addresses() -> None:
    chain = make_chain(tokens=1234)
    network = SolanaNetwork("devnet", chain.cluster)
    mint = str(chain.mint.address)
    source = str(chain.source.pubkey())
    assert await network.decimals(mint) == 6
    assert await network.token_balance(mint, source) == 1234
    assert await network.token_balance(mint, str(Keypair().pubkey())) == 0
    assert await network.native_balance(source) == 100 * 10**9
    assert network.normalize_address(f"  {source} ") == source
    assert network.normalize_address("0x" + "ab" * 20) is None
    assert network.normalize_address(source[:-1] + "0") is None  # '0' is not base58
    assert network.normalize_address("1" * 31) is None


async def test_a_mint_with_a_transfer_fee_is_refused_and_its_run_fails_unsent(
    db: AsyncDatabase,
) -> None:
    chain = make_chain()
    fee_mint = create_fee_mint(chain.cluster, chain.authority, decimals=6, basis_points=100)
    network = SolanaNetwork("devnet", chain.cluster)
    with pytest.raises(InvalidRequestError, match="transfer fee"):
        await network.decimals(str(fee_mint))
    manifest = _manifest(_recipients(2))
    await db.run(record_run, run_id="rfee", token=str(fee_mint), manifest=manifest)
    assert await drive(make_payer(db, chain), db, "rfee") == RunStatus.FAILED
    assert await db.run(send_rows, "rfee") == []


class StallingCluster(SvmCluster):
    """On its first send, the payer using it stalls past its lease, and another payer takes
    the run over and works on it, before the first one goes on."""

    def __init__(self, chain: Chain) -> None:
        super().__init__(chain.cluster.svm)
        self._issued = chain.cluster._issued
        self.meanwhile: list[Callable[[], Awaitable[None]]] = []

    async def send(self, transaction: VersionedTransaction) -> None:
        await super().send(transaction)
        while self.meanwhile:
            await self.meanwhile.pop()()


async def test_a_payer_that_stalls_past_its_lease_is_fenced_off_and_nobody_is_paid_twice(
    db: AsyncDatabase, tmp_path: Path
) -> None:
    chain = make_chain()
    manifest = _manifest(_recipients(40))
    await db.run(record_run, run_id="rt", token=str(chain.mint.address), manifest=manifest)
    stalling = StallingCluster(chain)
    slow = make_payer(db, chain, cluster=stalling, owner="slow")
    other_db = AsyncDatabase(open_db(tmp_path / "node.db"))
    other = make_payer(other_db, chain, owner="other")

    async def take_over() -> None:
        await other_db.run(_lease_runs_out, "rt")
        assert await other.tick() is True  # resolves the first batch, sends the rest

    stalling.meanwhile.append(take_over)
    with capture_logs() as logs:
        await slow.tick()  # goes on after the take-over: every write of it is refused
    assert any(e["event"] == "solana_run_lease_lost" for e in logs)
    try:
        assert await drive(other, other_db, "rt") == RunStatus.COMPLETED
    finally:
        other_db.close()
    _assert_paid_exactly(chain, {}, manifest)
    sends = await db.run(send_rows, "rt")
    assert {s["status"] for s in sends} == {"landed"} and len(sends) == 4


async def test_the_cli_makes_a_private_keypair_and_lists_the_recorded_sends(
    db: AsyncDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    key_file = tmp_path / "source.json"
    assert cli.main(["dist-solana", "keygen", str(key_file)]) == 0
    public = capsys.readouterr().out.strip()
    assert key_file.stat().st_mode & 0o777 == 0o600 and public not in key_file.read_text()
    assert cli.main(["dist-solana", "address", str(key_file)]) == 0
    assert capsys.readouterr().out.strip() == public
    assert cli.main(["dist-solana", "keygen", str(key_file)]) == 1  # never over a key

    chain = make_chain()
    manifest = _manifest(_recipients(12))
    await db.run(record_run, run_id="rc", token=str(chain.mint.address), manifest=manifest)
    await drive(make_payer(db, chain), db, "rc")
    monkeypatch.setenv("HODLAI_DB_PATH", str(tmp_path / "node.db"))
    capsys.readouterr()
    assert cli.main(["dist-solana", "sends", "--run", "rc", "--json"]) == 0
    sends = json.loads(capsys.readouterr().out)["sends"]
    assert sorted((s["status"], s["recipients"]) for s in sends) == [("landed", 2), ("landed", 10)]
    assert cli.main(["dist-solana", "sends", "--open"]) == 0
    assert capsys.readouterr().out.strip() == "no Solana sends"
