"""The Solana rail over JSON-RPC (solana's AsyncClient, ``RpcCluster``) against a real HTTP
server answering from an in-process SVM: paid only at ``finalized``, expiry judged from the
finalized block height, errors of the transport and of the node translated."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from structlog.testing import capture_logs

from shared.config import CoreSettings
from shared.db import AsyncDatabase
from shared.errors import ConfigError, KeyFileError, RpcResponseError, RpcTransportError
from workers.distribution.machine import RunStatus, TransferStatus
from workers.distribution.solana import build_network, build_payer
from workers.distribution.solana.cluster import MAX_PROCESSING_AGE, RpcCluster
from workers.distribution.solana.keyfile import load_keypair, write_keypair
from workers.distribution.solana.localchain import balance
from workers.distribution.solana.network import SolanaNetwork
from workers.distribution.solana.payer import SolanaPayer
from workers.distribution.solana.settings import SolanaSettings

from .solana_fixtures import Chain, drive, make_chain, open_db, record_run, send_rows, transfer_rows
from .solana_rpc_server import SvmRpc


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[AsyncDatabase]:
    database = AsyncDatabase(open_db(tmp_path / "node.db"))
    yield database
    database.close()


@pytest.fixture
def chain() -> Chain:
    return make_chain()


@pytest.fixture
def rpc(chain: Chain) -> Iterator[SvmRpc]:
    server = SvmRpc(chain.cluster).start()
    yield server
    server.stop()


def _manifest(n: int) -> list[tuple[str, int]]:
    return [(str(Keypair().pubkey()), 500 + 3 * i) for i in range(n)]


def _payer(db: AsyncDatabase, chain: Chain, url: str) -> SolanaPayer:
    network = SolanaNetwork("devnet", RpcCluster(url, name="devnet test"))
    return SolanaPayer(db=db, network=network, keypair=chain.source, resend_s=0.0)


async def test_over_json_rpc_a_run_is_paid_only_once_its_batches_are_finalized(
    db: AsyncDatabase, chain: Chain, rpc: SvmRpc
) -> None:
    manifest = _manifest(15)
    await db.run(record_run, run_id="rpc", token=str(chain.mint.address), manifest=manifest)
    payer = _payer(db, chain, rpc.url)
    rpc.confirmed_only = True
    for _ in range(3):
        await payer.tick()
    transfers = await db.run(transfer_rows, "rpc")
    assert {t["status"] for t in transfers} == {TransferStatus.SENT}  # landed, not final yet
    assert all(balance(chain.cluster, Pubkey.from_string(a), chain.mint) == v for a, v in manifest)

    rpc.confirmed_only = False
    assert await drive(payer, db, "rpc") == RunStatus.COMPLETED
    assert [s["status"] for s in await db.run(send_rows, "rpc")] == ["landed", "landed"]
    await payer.network.aclose()


async def test_over_json_rpc_a_lost_batch_is_resent_only_after_its_expiry_is_known(
    db: AsyncDatabase, chain: Chain, rpc: SvmRpc
) -> None:
    manifest = _manifest(10)
    await db.run(record_run, run_id="lost", token=str(chain.mint.address), manifest=manifest)
    payer = _payer(db, chain, rpc.url)
    rpc.drop_next = 1
    for _ in range(4):
        await payer.tick()
    (send,) = await db.run(send_rows, "lost")
    assert send["status"] == "sent" and send["broadcasts"] == 4
    assert rpc.calls.count("sendTransaction") == 4  # the same bytes, again and again

    chain.cluster.advance(MAX_PROCESSING_AGE + 1)
    # A node that pruned the slots since the blockhash cannot tell "never landed" from
    # "landed and forgotten": the send stays unknown, nothing is sent again.
    rpc.minimum_ledger_slot = chain.cluster.height
    with capture_logs() as logs:
        for _ in range(3):
            await payer.tick()
    assert [s["status"] for s in await db.run(send_rows, "lost")] == ["sent"]
    assert any(e["event"] == "solana_send_unverifiable" for e in logs)

    rpc.minimum_ledger_slot = 0  # a node with the history (an archive RPC)
    assert await drive(payer, db, "lost") == RunStatus.COMPLETED
    assert [s["status"] for s in await db.run(send_rows, "lost")] == ["expired", "landed"]
    for address, amount in manifest:
        assert balance(chain.cluster, Pubkey.from_string(address), chain.mint) == amount
    await payer.network.aclose()


async def test_a_node_that_answers_errors_is_a_response_error_and_a_dead_one_a_transport_error(
    chain: Chain, rpc: SvmRpc
) -> None:
    cluster = RpcCluster(rpc.url, name="devnet test")
    assert await cluster.block_height() == chain.cluster.height
    rpc.fail_with = {"code": -32602, "message": "Invalid params"}
    with pytest.raises(RpcResponseError):
        await cluster.block_height()
    await cluster.aclose()

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = RpcCluster(f"http://127.0.0.1:{port}", name="devnet dead")
    with pytest.raises(RpcTransportError):
        await dead.recent_blockhash()
    await dead.aclose()


async def test_build_network_and_build_payer_follow_the_settings(
    tmp_path: Path, db: AsyncDatabase, chain: Chain, rpc: SvmRpc, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert build_network(SolanaSettings(dist_solana_network="")) is None
    settings = SolanaSettings(dist_solana_network="devnet", dist_solana_rpc_url=rpc.url)
    network = build_network(settings)
    assert network is not None and network.name == "devnet"
    assert await network.decimals(str(chain.mint.address)) == 6
    await network.aclose()
    assert SolanaSettings(dist_solana_network="mainnet-beta").solana_rpc_url() == (
        "https://api.mainnet-beta.solana.com"
    )

    with pytest.raises(ConfigError, match="HODLAI_DIST_SOLANA_KEY_FILE"):
        build_payer(settings, db=db)
    key_file = tmp_path / "source.json"
    write_keypair(key_file, chain.source)
    with pytest.raises(ConfigError, match="HODLAI_DIST_SOLANA_SOURCE_ADDRESS"):
        build_payer(
            settings.model_copy(update={"dist_solana_key_file": key_file,
                                        "dist_solana_source_address": str(Keypair().pubkey())}),
            db=db,
        )  # fmt: skip
    payer = build_payer(settings.model_copy(update={"dist_solana_key_file": key_file}), db=db)
    assert payer is not None and payer.source == chain.source.pubkey()
    assert payer.networks == frozenset({"devnet"})
    await payer.network.aclose()

    # The frame's settings object without the Solana fields: they are read from the env.
    monkeypatch.setenv("HODLAI_DIST_SOLANA_NETWORK", "devnet")
    monkeypatch.setenv("HODLAI_DIST_SOLANA_RPC_URL", rpc.url)
    from_env = build_network(CoreSettings())
    assert from_env is not None and from_env.name == "devnet"
    await from_env.aclose()


def test_the_key_file_is_solana_keygens_array_kept_private(tmp_path: Path) -> None:
    keypair = Keypair()
    path = tmp_path / "id.json"
    write_keypair(path, keypair)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_keypair(path).pubkey() == keypair.pubkey()
    with pytest.raises(KeyFileError, match="already exists"):
        write_keypair(path)

    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="mode 0644"):
        load_keypair(path)

    wrong = tmp_path / "wrong.json"
    numbers = list(bytes(keypair))
    numbers[40] ^= 1  # the public half no longer belongs to the secret half
    wrong.write_text(json.dumps(numbers))
    wrong.chmod(0o600)
    with pytest.raises(KeyFileError, match="does not match") as raised:
        load_keypair(wrong)
    assert str(numbers[0]) not in str(raised.value).split(str(wrong))[-1]

    short = tmp_path / "short.json"
    short.write_text(json.dumps(numbers[:32]))
    short.chmod(0o600)
    with pytest.raises(KeyFileError, match="64 bytes"):
        load_keypair(short)
