"""A Solana JSON-RPC server over an in-process SVM, on a real loopback HTTP port: the
methods the distribution rail calls, answered in the cluster's wire format, so that
``RpcCluster`` (solana's AsyncClient) is tested over HTTP without a validator (none runs
here). Knobs a test turns: ``drop`` (sends the network loses), ``confirmed_only`` (landed,
but not finalized yet), ``fail_with`` (a JSON-RPC error object for every call),
``minimum_ledger_slot`` (a node that pruned its history)."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import VersionedTransaction
from solders.transaction_metadata import FailedTransactionMetadata
from solders.transaction_status import (
    InstructionErrorCustom,
    TransactionErrorFieldless,
    TransactionErrorInstructionError,
)

from workers.distribution.solana.cluster import MAX_PROCESSING_AGE, SvmCluster


def error_json(error: object) -> object:
    if isinstance(error, TransactionErrorInstructionError):
        inner = error.err
        if isinstance(inner, InstructionErrorCustom):
            return {"InstructionError": [error.index, {"Custom": inner.code}]}
        return {"InstructionError": [error.index, str(inner).rsplit(".", 1)[-1]]}
    if isinstance(error, TransactionErrorFieldless):
        return str(error).rsplit(".", 1)[-1]
    raise ValueError(f"no wire form for {error!r}")


class SvmRpc:
    def __init__(self, cluster: SvmCluster) -> None:
        self.cluster = cluster
        self.lock = threading.Lock()
        self.drop: set[str] = set()
        self.drop_next = 0
        self.confirmed_only = False
        self.fail_with: dict[str, Any] | None = None
        #: the lowest slot the node can still look transactions up in (raise it: pruned)
        self.minimum_ledger_slot = 0
        self.calls: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> SvmRpc:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        rpc = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                answer = rpc.answer(body)
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                return None

        return Handler

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        method, params = body["method"], body.get("params") or []
        with self.lock:
            self.calls.append(method)
            if self.fail_with is not None:
                return {"jsonrpc": "2.0", "id": body["id"], "error": self.fail_with}
            result = getattr(self, f"rpc_{method}")(*params)
        return {"jsonrpc": "2.0", "id": body["id"], "result": result}

    def _context(self) -> dict[str, int]:
        return {"slot": self.cluster.height}

    # --- the methods --------------------------------------------------------------------

    def rpc_getLatestBlockhash(self, config: object = None) -> object:
        blockhash = self.cluster.svm.latest_blockhash()
        issued = self.cluster._issued.setdefault(
            str(blockhash), self.cluster.height + MAX_PROCESSING_AGE
        )
        return {
            "context": self._context(),
            "value": {"blockhash": str(blockhash), "lastValidBlockHeight": issued},
        }

    def rpc_minimumLedgerSlot(self) -> object:
        return self.minimum_ledger_slot

    def rpc_getBlockHeight(self, config: object = None) -> object:
        return self.cluster.height

    def rpc_getSignatureStatuses(self, signatures: list[str], config: object = None) -> object:
        value: list[object] = []
        for text in signatures:
            found = self.cluster.svm.get_transaction(Signature.from_string(text))
            if found is None:
                value.append(None)
                continue
            err = error_json(found.err()) if isinstance(found, FailedTransactionMetadata) else None
            value.append(
                {
                    "slot": self.cluster.height,
                    "confirmations": 0 if self.confirmed_only else None,
                    "err": err,
                    "status": {"Ok": None} if err is None else {"Err": err},
                    "confirmationStatus": "confirmed" if self.confirmed_only else "finalized",
                }
            )
        return {"context": self._context(), "value": value}

    def rpc_sendTransaction(self, encoded: str, config: object = None) -> object:
        transaction = VersionedTransaction.from_bytes(base64.b64decode(encoded))
        signature = str(transaction.signatures[0])
        if self.drop_next > 0:
            self.drop_next -= 1
            self.drop.add(signature)
        if signature not in self.drop:
            self.cluster.svm.send_transaction(transaction)
        return signature

    def rpc_simulateTransaction(self, encoded: str, config: object = None) -> object:
        transaction = VersionedTransaction.from_bytes(base64.b64decode(encoded))
        result = self.cluster.svm.simulate_transaction(transaction)
        failed = isinstance(result, FailedTransactionMetadata)
        meta = result.meta()
        return {
            "context": self._context(),
            "value": {
                "err": error_json(result.err()) if failed else None,  # type: ignore[union-attr]
                "logs": list(meta.logs()),
                "accounts": None,
                "unitsConsumed": meta.compute_units_consumed(),
                "returnData": None,
            },
        }

    def _account(self, text: str) -> object:
        found = self.cluster.svm.get_account(Pubkey.from_string(text))
        if found is None:
            return None
        return {
            "data": [base64.b64encode(bytes(found.data)).decode(), "base64"],
            "executable": found.executable,
            "lamports": found.lamports,
            "owner": str(found.owner),
            "rentEpoch": 0,
            "space": len(bytes(found.data)),
        }

    def rpc_getAccountInfo(self, address: str, config: object = None) -> object:
        return {"context": self._context(), "value": self._account(address)}

    def rpc_getMultipleAccounts(self, addresses: list[str], config: object = None) -> object:
        return {"context": self._context(), "value": [self._account(a) for a in addresses]}
