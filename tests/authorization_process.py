"""A process that signs through the authorizations ledger, for tests that kill it.

    python -m tests.authorization_process sign   DB KEY_FILE RPC_URL TOKEN UNIT VALUE
    python -m tests.authorization_process resume DB KEY_FILE RPC_URL TOKEN UNIT VALUE

``sign`` signs one TransferWithAuthorization from the wallet of owner 'user-1' (label
'mint-agent') to the payee 0x33.., valid for an hour of chain time, prints the committed row
as one JSON line and then waits to be killed. ``resume`` is the restarted process: it runs the
reconciler (2 confirmations), then tries to sign for the same unit again, and prints what
happened as one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from shared.chain.rpc import RpcClient
from shared.db import connect
from shared.errors import PermanentError
from shared.keys.vault import open_vault
from shared.logs import configure_logging
from shared.tx.authorizations import (
    DomainAllowlist,
    PaymentOrder,
    for_unit,
    reconcile,
    sign_authorization,
)

PURPOSE, SUBJECT = "mint-x402", "task-1"
PAYEE = "0x" + "33" * 20
CONFIRMATIONS = 2


async def main(
    mode: str, db: str, key_file: str, rpc_url: str, token: str, unit: str, value: str
) -> None:
    configure_logging("INFO", json=True)  # logs to stderr: stdout carries the results
    conn = connect(db, durable=True)
    vault = open_vault(conn, key_file)
    wallet = vault.ensure_wallet(label="mint-agent", owner="user-1")
    async with RpcClient([rpc_url]) as rpc:
        chain_id = int(await rpc.call("eth_chainId"), 16)
        allowlist = DomainAllowlist([(token, chain_id)])
        domain = await allowlist.resolve(rpc, token, chain_id, now=time.time())
        chain_now = int(
            (await rpc.call("eth_getBlockByNumber", ["latest", False]))["timestamp"], 16
        )
        order = PaymentOrder(
            signer=wallet, to=PAYEE, value=int(value), valid_after=0,
            valid_before=chain_now + 3600, purpose=PURPOSE, subject=SUBJECT, unit=unit,
        )  # fmt: skip
        if mode == "sign":
            row = sign_authorization(conn, vault, allowlist, domain, order)
            print(json.dumps({"id": row.id, "signature": row.signature, "message": {
                "from": row.from_address, "to": row.to_address, "value": row.value,
                "validAfter": row.valid_after, "validBefore": row.valid_before, "nonce": row.nonce,
            }}), flush=True)  # fmt: skip
            await asyncio.sleep(3600)  # until the test kills us
            return
        report = await reconcile(conn, rpc, confirmations=CONFIRMATIONS)
        try:
            again = sign_authorization(conn, vault, allowlist, domain, order)
            refused = None
            signed_id: int | None = again.id
        except PermanentError as exc:
            refused, signed_id = f"{type(exc).__name__}: {exc}", None
        rows = for_unit(conn, purpose=PURPOSE, subject=SUBJECT, unit=unit)
        print(json.dumps({
            "used": report.used, "refused": refused, "signed": signed_id,
            "rows": [{"id": r.id, "status": r.status.value, "block": r.used_block,
                      "tx": r.used_tx_hash} for r in rows],
        }), flush=True)  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
