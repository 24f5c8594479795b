"""Row factories for the storage contract suite: one per declared state machine, giving the
columns a new entity of that machine needs. tests/test_state_contract.py fails for a
machine that has none, so a new executor cannot skip the suite."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from workers.oracle import request_id as rid
from workers.oracle.store import encode_action_set


def _oracle_request(n: int) -> dict[str, Any]:
    return {
        "request_id": rid.encode(n), "shard_key": rid.shard_key(n), "generation": 1,
        "requester": "0x" + "ab" * 20, "model": "hodlai-local", "system_prompt": "Choose.",
        "state_string": f"state {n}", "action_set": encode_action_set(["BUY", "SELL"]),
        "content_hash": f"0x{n:064x}", "block_number": n // 10, "block_hash": f"0x{n:064x}",
        "tx_hash": f"0x{n:064x}", "log_index": n % 10,
    }  # fmt: skip


def _dispatch_job(n: int) -> dict[str, Any]:
    return {
        "job_id": f"job-{n}", "category": "summarize", "tags": '["en"]', "skill_level": 1,
        "input": '{"text": "x"}', "result_schema": '{"type": "object"}',
        "deadline": 2e9 + n, "fetched_at": 1e9 + n,
    }  # fmt: skip


def _dispatch_distribution_agent(n: int) -> dict[str, Any]:
    return {
        "work_id": f"work-{n}", "distribution_id": f"dist-{n // 3}", "job_id": f"job-{n // 3}",
        "agent_id": f"agent-{n % 3}", "category": "summarize", "round": 0, "rank": n % 3,
        "score": 0.5, "role": "concurrent",
    }  # fmt: skip


def _dispatch_agent(n: int) -> dict[str, Any]:
    return {
        "agent_id": f"agent-{n}", "name": f"agent {n}", "endpoint": f"http://127.0.0.1:1/{n}",
        "tags": '["en"]', "category": "summarize", "skill_level": 3, "reputation": 0.5,
    }  # fmt: skip


def _distribution_task(n: int) -> dict[str, Any]:
    return {
        "task_id": f"task-{n}", "network": "devnet", "token": "0x" + "cd" * 20,
        "name": f"task {n}", "type": "manual",
        "recipients": '[{"address": "0x' + "ab" * 20 + '", "amount": "1"}]',
        "total_amount": "1", "use_percentage": 0,
    }  # fmt: skip


def _distribution_run(n: int) -> dict[str, Any]:
    return {
        "run_id": f"run-{n}", "task_id": f"task-{n % 7}", "network": "devnet",
        "token": "0x" + "cd" * 20, "slot": f"2026-01-01T00:00:00.{n:06d}Z", "trigger": "manual",
        "total_amount": "1000", "decimals": 18, "manifest": "[]", "manifest_hash": "0x" + "00" * 32,
    }  # fmt: skip


def _distribution_transfer(n: int) -> dict[str, Any]:
    return {
        "transfer_id": f"run-{n // 100}:{n % 100}", "run_id": f"run-{n // 100}",
        "position": n % 100, "address": f"0x{n:040x}", "amount": str(n + 1),
    }  # fmt: skip


def _distribution_solana_send(n: int) -> dict[str, Any]:
    return {
        "signature": f"sig-{n}", "run_id": f"run-{n % 7}", "network": "devnet",
        "source": "11111111111111111111111111111111", "blockhash": "1" * 32,
        "last_valid_block_height": n + 150, "blockhash_slot": n, "signed_tx": "AA==",
        "recipients": 1, "broadcasts": 0, "last_broadcast_at": None,
    }  # fmt: skip


def _mint_task(n: int) -> dict[str, Any]:
    return {
        "id": f"task-{n}", "user_address": "0x" + "ab" * 20, "agent_wallet_id": f"w-{n % 7}",
        "agent_address": "0x" + "cd" * 20, "token_address": "0x" + "ef" * 20, "quantity": 3,
        "price_per_mint": "100000", "total_cost": "300000", "chain_id": 31337,
        "usdc_address": "0x" + "12" * 20, "server_url": "http://127.0.0.1:1",
        "pay_to": "0x" + "34" * 20, "payment_deadline": 2_000_000_000 + n,
    }  # fmt: skip


def _mint_payment(n: int) -> dict[str, Any]:
    return {
        "id": f"pay-{n:016d}", "task_id": f"task-{n // 5}", "unit": n % 5, "attempt": 0,
        "retry_round": 0, "value": "100000", "server_url": "http://127.0.0.1:1",
    }  # fmt: skip


def _mint_transfer(n: int) -> dict[str, Any]:
    return {
        "id": f"xfer-{n}", "kind": "funding", "task_id": f"task-{n}", "token": "0x" + "12" * 20,
        "chain_id": 31337, "from_address": "0x" + "ab" * 20, "to_address": "0x" + "cd" * 20,
        "value": "300000", "valid_after": 0, "valid_before": 2_000_000_000,
        "nonce": f"0x{n:064x}", "signature": "0x" + "00" * 65,
    }  # fmt: skip


def _mint_server_purchase(n: int) -> dict[str, Any]:
    return {
        "payment_id": f"pay_contract_{n:012d}", "fingerprint": f"{n:064x}",
        "payer": "0x" + "ab" * 20, "auth_nonce": f"0x{n:064x}", "token": "0x" + "cd" * 20,
        "recipient": "0x" + "ab" * 20, "asset": "0x" + "ef" * 20, "amount": "1000000",
        "pay_to": "0x" + "12" * 20, "network": "eip155:31337",
    }  # fmt: skip


#: machine name -> (key of entity n, the insert columns of entity n)
FACTORIES: dict[str, Callable[[int], dict[str, Any]]] = {
    "mint.task": _mint_task,
    "mint.payment": _mint_payment,
    "mint.transfer": _mint_transfer,
    "mint.server_purchase": _mint_server_purchase,
    "oracle.request": _oracle_request,
    "dispatch.job": _dispatch_job,
    "dispatch.distribution_agent": _dispatch_distribution_agent,
    "dispatch.agent": _dispatch_agent,
    "distribution.task": _distribution_task,
    "distribution.run": _distribution_run,
    "distribution.transfer": _distribution_transfer,
    "distribution.solana_send": _distribution_solana_send,
}
