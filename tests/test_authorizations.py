"""The authorizations ledger (shared/tx/authorizations) on real SQLite files and a real anvil
with the EIP-3009 token: every money signature recorded before it is returned, budgets, one
live authorization per unit, the domain allowlist, the reconciler, and a process killed after
signing. Counted on chain."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from shared import state
from shared.chain.rpc import RpcClient
from shared.db import AsyncDatabase, atomic, connect
from shared.errors import NotDurableError
from shared.keys.vault import MoneyTypedDataError, Vault, generate_master_key_file, open_vault
from shared.tx.authorizations import (
    AUTHORIZATION_MACHINE,
    Authorization,
    AuthorizationError,
    AuthorizationStatus,
    BudgetExceededError,
    DomainAllowlist,
    DomainMismatchError,
    DomainNotAllowedError,
    Kind,
    OpenAuthorizationError,
    PaymentOrder,
    TokenDomain,
    for_unit,
    get,
    reconcile,
    set_budget,
    sign_authorization,
    sign_cancel,
    sign_typed_payment,
    spent,
)
from shared.tx.authorizations.eip3009 import domain_separator, eip712_domain, typed_data
from tests.eip3009_fixtures import (
    Token,
    cancel_calldata,
    deploy_token,
    latest_timestamp,
    mine,
    payment_calldata,
    send,
)
from workers.devnet.anvil import Anvil

ROOT = Path(__file__).resolve().parent.parent
PURPOSE, SUBJECT = "mint-x402", "task-1"
PAYEE = "0x" + "33" * 20
CONFIRMATIONS = 2
USDC = 10**6


@dataclass
class Ledger:
    """A durable database, a vault with one agent wallet, the token, its allowed domain."""

    anvil: Anvil
    token: Token
    conn: sqlite3.Connection
    vault: Vault
    key_file: Path
    db_path: Path
    wallet: str
    rpc: RpcClient
    allowlist: DomainAllowlist
    domain: TokenDomain

    def order(self, unit: str, *, value: int = 10 * USDC, lifetime: int = 3600) -> PaymentOrder:
        now = latest_timestamp(self.anvil)
        return PaymentOrder(
            signer=self.wallet, to=PAYEE, value=value, valid_after=0,
            valid_before=now + lifetime, purpose=PURPOSE, subject=SUBJECT, unit=unit,
        )  # fmt: skip

    def sign(self, unit: str, **kwargs: int) -> int:
        return sign_authorization(
            self.conn, self.vault, self.allowlist, self.domain, self.order(unit, **kwargs)
        ).id

    def submit(self, authorization_id: int, sender_index: int = 3) -> dict[str, object]:
        """Submit the recorded authorization from another account (as an x402 server
        would); the receipt."""
        row = get(self.conn, authorization_id)
        v, r, s = row.vrs
        sender = self.anvil.accounts[sender_index].address
        if row.kind is Kind.CANCEL:
            data = cancel_calldata(row.signer, bytes.fromhex(row.nonce[2:]), v, r, s)
        else:
            data = payment_calldata(row.kind, row.message(), v, r, s)
        return send(self.anvil, sender, self.token.address, data)

    async def reconcile(self) -> None:
        await reconcile(self.conn, self.rpc, confirmations=CONFIRMATIONS)

    def status(self, authorization_id: int) -> AuthorizationStatus:
        return get(self.conn, authorization_id).status


def durable_vault(tmp_path: Path) -> tuple[sqlite3.Connection, Vault, Path, Path]:
    key_file = tmp_path / "vault.key"
    generate_master_key_file(key_file)
    db_path = tmp_path / "node.db"
    conn = connect(db_path, durable=True)
    return conn, open_vault(conn, key_file), key_file, db_path


@pytest.fixture
def token(anvil: Anvil) -> Token:
    return deploy_token(anvil)


@pytest_asyncio.fixture
async def ledger(anvil: Anvil, token: Token, tmp_path: Path) -> AsyncIterator[Ledger]:
    conn, vault, key_file, db_path = durable_vault(tmp_path)
    wallet = vault.ensure_wallet(label="mint-agent", owner="user-1")
    token.mint(wallet, 100 * USDC)
    allowlist = DomainAllowlist([(token.address, anvil.chain_id)])
    async with RpcClient([anvil.rpc_url]) as rpc:
        domain = await allowlist.resolve(rpc, token.address, anvil.chain_id, now=time.time())
        set_budget(
            conn, purpose=PURPOSE, subject=SUBJECT, token=token.address,
            chain_id=anvil.chain_id, budget=50 * USDC,
        )  # fmt: skip
        yield Ledger(anvil, token, conn, vault, key_file, db_path, wallet, rpc, allowlist, domain)
    conn.close()


def rows(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM authorizations").fetchone()[0])


# --- the vault and the connection -----------------------------------------------------------


@pytest.mark.parametrize("kind", list(Kind))
def test_the_vault_refuses_to_sign_a_money_kind_outside_the_ledger(
    tmp_path: Path, kind: Kind
) -> None:
    conn, vault, _, _ = durable_vault(tmp_path)
    wallet = vault.create_wallet(label="mint-agent")
    domain = eip712_domain(name="USD Coin", version="2", chain_id=31337, token="0x" + "11" * 20)
    message = (
        {"authorizer": wallet, "nonce": b"\x01" * 32}
        if kind is Kind.CANCEL
        else {
            "from": wallet,
            "to": PAYEE,
            "value": 1,
            "validAfter": 0,
            "validBefore": 2**40,
            "nonce": b"\x01" * 32,
        }
    )
    with pytest.raises(MoneyTypedDataError, match="authorizations ledger"):
        vault.sign_typed_data(wallet, typed_data(kind, domain, message))
    assert rows(conn) == 0
    # other typed data still signs
    mail = {
        "types": {
            "EIP712Domain": [{"name": "name", "type": "string"}],
            "Mail": [{"name": "body", "type": "string"}],
        },
        "primaryType": "Mail",
        "domain": {"name": "hodlai"},
        "message": {"body": "hello"},
    }
    assert vault.sign_typed_data(wallet, mail).signer == wallet


def test_the_vault_never_signs_an_eip2612_permit(tmp_path: Path) -> None:
    # A Permit grants an allowance: money that no ledger of this node records.
    _, vault, _, _ = durable_vault(tmp_path)
    wallet = vault.create_wallet(label="mint-agent")
    permit = {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "Permit": [
                {"name": "owner", "type": "address"},
                {"name": "spender", "type": "address"},
                {"name": "value", "type": "uint256"},
                {"name": "nonce", "type": "uint256"},
                {"name": "deadline", "type": "uint256"},
            ],
        },
        "primaryType": "Permit",
        "domain": {"name": "USD Coin", "version": "2", "chainId": 31337,
                   "verifyingContract": "0x" + "11" * 20},
        "message": {"owner": wallet, "spender": PAYEE, "value": 10**6, "nonce": 0,
                    "deadline": 2**40},
    }  # fmt: skip
    with pytest.raises(MoneyTypedDataError, match="allowance"):
        vault.sign_typed_data(wallet, permit)


def test_the_ledger_refuses_a_normal_connection(tmp_path: Path) -> None:
    key_file = tmp_path / "vault.key"
    generate_master_key_file(key_file)
    # The vault itself refuses NORMAL, so it is opened durable; the ledger is handed a
    # second, NORMAL connection to the same file.
    vault = open_vault(connect(tmp_path / "node.db", durable=True), key_file)
    conn = connect(tmp_path / "node.db")  # synchronous=NORMAL
    token = "0x" + "11" * 20
    domain = TokenDomain(
        token,
        31337,
        "USD Coin",
        "2",
        domain_separator(name="USD Coin", version="2", chain_id=31337, token=token),
        read_at=time.time(),
    )
    order = PaymentOrder(
        signer="0x" + "22" * 20, to=PAYEE, value=1, valid_after=0,
        valid_before=int(time.time()) + 60, purpose=PURPOSE, subject=SUBJECT, unit="u",
    )  # fmt: skip
    with pytest.raises(NotDurableError, match="the authorizations ledger"):
        sign_authorization(conn, vault, DomainAllowlist([(token, 31337)]), domain, order)
    with pytest.raises(NotDurableError, match="the authorizations ledger"):
        set_budget(conn, purpose=PURPOSE, subject=SUBJECT, token=token, chain_id=31337, budget=1)
    assert rows(conn) == 0


# --- the allowlist --------------------------------------------------------------------------


async def test_the_allowlist_refuses_an_unknown_token_a_wrong_chain_and_a_wrong_name(
    anvil: Anvil, token: Token
) -> None:
    other = deploy_token(anvil, name="USDC")
    async with RpcClient([anvil.rpc_url]) as rpc:
        allowlist = DomainAllowlist(
            [(token.address, anvil.chain_id), (other.address, anvil.chain_id + 1)]
        )
        domain = await allowlist.resolve(
            rpc, token.address.lower(), anvil.chain_id, now=time.time()
        )
        assert (domain.name, domain.version, domain.token) == ("USD Coin", "2", token.address)
        with pytest.raises(DomainNotAllowedError, match="not on the signing allowlist"):
            await allowlist.resolve(rpc, other.address, anvil.chain_id, now=time.time())
        with pytest.raises(DomainMismatchError, match=f"RPC serves chain {anvil.chain_id}"):
            await allowlist.resolve(rpc, other.address, anvil.chain_id + 1, now=time.time())
        # an allowed address that is no token (an account) has no domain to read
        account = anvil.accounts[6].address
        no_token = DomainAllowlist([(account, anvil.chain_id)])
        with pytest.raises(DomainMismatchError, match="name\\(\\) did not return a string"):
            await no_token.resolve(rpc, account, anvil.chain_id, now=time.time())
    # a domain proposed from outside (an x402 server's requirements) must be the contract's
    domain.require_matches(token.domain())
    for field, value in (
        ("name", "USDC"),
        ("version", "1"),
        ("chainId", 1),
        ("verifyingContract", other.address),
    ):
        with pytest.raises(DomainMismatchError, match=f"field {field}"):
            domain.require_matches({**token.domain(), field: value})
    # a domain the allowlist did not read from the contract is not signed with
    forged = TokenDomain(
        token.address, anvil.chain_id, "USDC", "2", domain.separator, read_at=time.time()
    )
    with pytest.raises(DomainMismatchError, match="not the one read from the contract"):
        allowlist.check(forged, now=time.time())
    with pytest.raises(DomainMismatchError, match="resolve\\(\\) it again"):
        allowlist.check(domain, now=time.time() + 10_000)


# --- signing --------------------------------------------------------------------------------


async def test_a_ledger_signature_is_recorded_audited_and_accepted_by_the_token(
    ledger: Ledger,
) -> None:
    authorization_id = ledger.sign("batch-1")
    row = get(ledger.conn, authorization_id)
    assert (row.status, row.kind, row.value, row.to_address) == (
        AuthorizationStatus.SIGNED,
        Kind.TRANSFER,
        10 * USDC,
        PAYEE,
    )
    # committed: another connection sees it
    other = sqlite3.connect(ledger.db_path)
    assert (
        other.execute(
            "SELECT signature FROM authorizations WHERE id = ?", (authorization_id,)
        ).fetchone()[0]
        == row.signature
    )
    other.close()
    assert [
        h["to_status"]
        for h in state.history(ledger.conn, AUTHORIZATION_MACHINE, str(authorization_id))
    ] == ["SIGNED"]

    receipt = ledger.submit(authorization_id)
    assert receipt["status"] == "0x1"
    assert ledger.token.balance(PAYEE) == 10 * USDC
    assert ledger.token.balance(ledger.wallet) == 90 * USDC


async def test_signing_inside_an_open_transaction_is_refused(ledger: Ledger) -> None:
    with (
        atomic(ledger.conn),
        pytest.raises(AuthorizationError, match="outside an open transaction"),
    ):
        ledger.sign("batch-1")
    assert rows(ledger.conn) == 0


async def test_a_budget_overrun_raises_and_signs_nothing(ledger: Ledger) -> None:
    ledger.sign("batch-1", value=20 * USDC)
    ledger.sign("batch-2", value=20 * USDC)
    with pytest.raises(
        BudgetExceededError,
        match=f"40000000 already signed or used \\+ 20000000 > budget {50 * USDC}",
    ):
        ledger.sign("batch-3", value=20 * USDC)
    assert rows(ledger.conn) == 2
    assert spent(ledger.conn, purpose=PURPOSE, subject=SUBJECT) == 40 * USDC
    ledger.sign("batch-3", value=10 * USDC)  # exactly up to the budget
    with pytest.raises(BudgetExceededError, match="has no budget"):
        sign_authorization(
            ledger.conn, ledger.vault, ledger.allowlist, ledger.domain,
            PaymentOrder(signer=ledger.wallet, to=PAYEE, value=1, valid_after=0,
                         valid_before=latest_timestamp(ledger.anvil) + 60, purpose=PURPOSE,
                         subject="task-2", unit="batch-1"),
        )  # fmt: skip
    assert rows(ledger.conn) == 3


async def test_a_signed_row_cannot_be_edited_or_deleted(ledger: Ledger) -> None:
    authorization_id = ledger.sign("batch-1")
    for sql in (
        "UPDATE authorizations SET value = '999000000' WHERE id = ?",
        "UPDATE authorizations SET to_address = '0x" + "44" * 20 + "' WHERE id = ?",
        "UPDATE authorizations SET valid_before = 99999999999 WHERE id = ?",
        "UPDATE authorizations SET signature = '0x00' WHERE id = ?",
        "UPDATE authorizations SET unit = 'other' WHERE id = ?",
        "DELETE FROM authorizations WHERE id = ?",
    ):
        with pytest.raises(sqlite3.IntegrityError, match="authorizations"), atomic(ledger.conn):
            ledger.conn.execute(sql, (authorization_id,))
    row = get(ledger.conn, authorization_id)
    assert row.value == 10 * USDC and row.to_address == PAYEE


async def test_a_second_authorization_for_a_unit_waits_until_the_first_expired(
    ledger: Ledger,
) -> None:
    first = ledger.sign("batch-1", lifetime=60)
    with pytest.raises(OpenAuthorizationError, match="could still be used"):
        ledger.sign("batch-1")
    await ledger.reconcile()
    assert ledger.status(first) is AuthorizationStatus.SIGNED  # still valid on chain

    # a cancel signed but never submitted: it expires with its payment
    cancel = sign_cancel(ledger.conn, ledger.vault, ledger.allowlist, ledger.domain, first)
    mine(ledger.anvil, 1, seconds=61)  # past validBefore, but not yet confirmed
    await ledger.reconcile()
    assert ledger.status(first) is AuthorizationStatus.SIGNED
    with pytest.raises(OpenAuthorizationError):
        ledger.sign("batch-1")
    mine(ledger.anvil, CONFIRMATIONS)
    await ledger.reconcile()
    assert ledger.status(first) is AuthorizationStatus.EXPIRED
    assert ledger.status(cancel.id) is AuthorizationStatus.EXPIRED

    second = ledger.sign("batch-1")  # the expired value no longer counts against the budget
    assert spent(ledger.conn, purpose=PURPOSE, subject=SUBJECT) == 10 * USDC
    assert ledger.submit(second)["status"] == "0x1"
    assert ledger.submit(first)["status"] == "0x0"  # the expired one: refused by the token
    assert len(ledger.token.uses()) == 1
    assert ledger.token.balance(PAYEE) == 10 * USDC


async def test_a_cancel_signed_through_the_ledger_frees_the_unit_once_mined(ledger: Ledger) -> None:
    first = ledger.sign("batch-1")
    cancel = sign_cancel(ledger.conn, ledger.vault, ledger.allowlist, ledger.domain, first)
    assert (cancel.kind, cancel.cancels_id, cancel.nonce) == (
        Kind.CANCEL,
        first,
        get(ledger.conn, first).nonce,
    )
    with pytest.raises(
        OpenAuthorizationError
    ):  # signed, not yet mined: the payment could still win
        ledger.sign("batch-1")
    assert ledger.submit(cancel.id)["status"] == "0x1"
    mine(ledger.anvil, CONFIRMATIONS)
    await ledger.reconcile()
    assert ledger.status(first) is AuthorizationStatus.CANCELLED
    assert ledger.status(cancel.id) is AuthorizationStatus.USED
    assert get(ledger.conn, first).used_tx_hash == get(ledger.conn, cancel.id).used_tx_hash

    second = ledger.sign("batch-1")
    assert ledger.submit(first)["status"] == "0x0"
    assert ledger.submit(second)["status"] == "0x1"
    assert len(ledger.token.uses()) == 1 and ledger.token.balance(PAYEE) == 10 * USDC


async def test_a_cancel_that_lost_to_the_payment_expires_and_the_unit_is_paid(
    ledger: Ledger,
) -> None:
    first = ledger.sign("batch-1")
    cancel = sign_cancel(ledger.conn, ledger.vault, ledger.allowlist, ledger.domain, first)
    assert ledger.submit(first)["status"] == "0x1"
    assert ledger.submit(cancel.id)["status"] == "0x0"
    mine(ledger.anvil, CONFIRMATIONS)
    await ledger.reconcile()
    assert ledger.status(first) is AuthorizationStatus.USED
    assert ledger.status(cancel.id) is AuthorizationStatus.EXPIRED
    with pytest.raises(OpenAuthorizationError, match="already paid"):
        ledger.sign("batch-1")


# --- a process killed after signing ---------------------------------------------------------


def run_signer(mode: str, ledger: Ledger, unit: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [
        sys.executable, "-m", "tests.authorization_process", mode, str(ledger.db_path),
        str(ledger.key_file), ledger.anvil.rpc_url, ledger.token.address, unit, str(10 * USDC),
    ]  # fmt: skip
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)


@pytest.fixture
def reaped() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


async def test_a_signer_killed_after_signing_finds_its_authorization_used_by_someone_else(
    ledger: Ledger, reaped: list[subprocess.Popen[str]]
) -> None:
    signer = run_signer("sign", ledger, "batch-7")
    reaped.append(signer)
    assert signer.stdout is not None
    handed_on = json.loads(signer.stdout.readline())
    os.kill(signer.pid, signal.SIGKILL)
    signer.wait(timeout=10)

    # Someone who received the signature (an x402 server) submits it while we are down.
    row = get(ledger.conn, handed_on["id"])
    assert row.signature == handed_on["signature"] and row.status is AuthorizationStatus.SIGNED
    receipt = ledger.submit(row.id, sender_index=5)
    assert receipt["status"] == "0x1"
    mine(ledger.anvil, CONFIRMATIONS)

    restarted = run_signer("resume", ledger, "batch-7")
    reaped.append(restarted)
    out, _ = restarted.communicate(timeout=60)
    assert restarted.returncode == 0
    result = json.loads(out.strip().splitlines()[-1])
    assert result["used"] == 1
    assert result["signed"] is None and "OpenAuthorizationError" in result["refused"]
    assert "already paid" in result["refused"]
    assert result["rows"] == [
        {
            "id": row.id,
            "status": "USED",
            "block": int(str(receipt["blockNumber"]), 16),
            "tx": receipt["transactionHash"],
        }
    ]
    # On chain: one use, one transfer to the payee, paid once.
    assert len(ledger.token.uses()) == 1
    assert ledger.token.balance(PAYEE) == 10 * USDC
    assert ledger.token.balance(ledger.wallet) == 90 * USDC
    assert [
        h["to_status"] for h in state.history(ledger.conn, AUTHORIZATION_MACHINE, str(row.id))
    ] == ["SIGNED", "USED"]
    assert (
        for_unit(ledger.conn, purpose=PURPOSE, subject=SUBJECT, unit="batch-7")[0].used_block
        == result["rows"][0]["block"]
    )


# --- a message built by someone else (x402's client signer) ---------------------------------


async def test_a_proposed_message_is_signed_only_with_the_contracts_domain_and_types(
    ledger: Ledger,
) -> None:
    proposed = typed_data(
        Kind.TRANSFER,
        ledger.token.domain(),
        {
            "from": ledger.wallet.lower(), "to": PAYEE, "value": str(5 * USDC), "validAfter": 0,
            "validBefore": latest_timestamp(ledger.anvil) + 300, "nonce": "0x" + "ab" * 32,
        },
    )  # fmt: skip

    def sign(**changes: object) -> Authorization:
        fields: dict[str, object] = {
            "signer": ledger.wallet, "proposed_domain": proposed["domain"],
            "types": proposed["types"], "primary_type": proposed["primaryType"],
            "message": proposed["message"], "purpose": PURPOSE, "subject": SUBJECT,
            "unit": "mint-1", **changes,
        }  # fmt: skip
        return sign_typed_payment(
            ledger.conn,
            ledger.vault,
            ledger.allowlist,
            ledger.domain,
            **fields,  # type: ignore[arg-type]
        )

    with pytest.raises(DomainMismatchError, match="field name"):
        sign(proposed_domain={**proposed["domain"], "name": "USDC"})
    with pytest.raises(AuthorizationError, match="not EIP-3009's"):
        sign(
            types={
                **proposed["types"],
                "TransferWithAuthorization": [{"name": "from", "type": "address"}],
            }
        )
    with pytest.raises(AuthorizationError, match="not an EIP-3009 payment kind"):
        sign(primary_type="CancelAuthorization")
    with pytest.raises(AuthorizationError, match="not the signing wallet"):
        sign(message={**proposed["message"], "from": PAYEE})
    assert rows(ledger.conn) == 0

    row = sign()
    assert row.nonce == "0x" + "ab" * 32 and row.value == 5 * USDC and row.unit == "mint-1"
    assert ledger.submit(row.id)["status"] == "0x1"
    assert ledger.token.balance(PAYEE) == 5 * USDC


async def test_the_reconciler_runs_on_a_workers_async_database(ledger: Ledger) -> None:
    first = ledger.sign("batch-1")
    receipt = ledger.submit(first)
    mine(ledger.anvil, CONFIRMATIONS)
    db = AsyncDatabase(ledger.conn)
    try:
        report = await reconcile(db, ledger.rpc, confirmations=CONFIRMATIONS)
    finally:
        db._thread.shutdown(wait=True)  # the fixture closes the connection
    assert (report.checked, report.used) == (1, 1)
    row = get(ledger.conn, first)
    assert (row.status, row.used_tx_hash) == (AuthorizationStatus.USED, receipt["transactionHash"])
    assert state.counts(ledger.conn, AUTHORIZATION_MACHINE)["USED"] == 1
