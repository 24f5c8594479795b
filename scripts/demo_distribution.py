"""The token distribution's part of ``make demo`` (also ``python -m scripts.demo_distribution``).

Through the node's API, on the seed's path (``/api/execution/kmt-automation``, the devnet's
admin token), on the devnet's token (``HODLAI_DIST_TOKEN_ADDRESS``, 18 decimals):

- a manual airdrop to 200 fresh recipients (fixed amounts), executed at once;
- a scheduled ``* * * * *`` task (5 recipients by percentage) that runs once inside the demo:
  it is disabled as soon as its first slot's run is recorded.

``make demo`` (scripts/demo.py) runs ``hodlai distributor`` under the node's one honcho with
the devnet's env (:func:`prepare`, :func:`distributor_env`, :func:`wait`, :func:`report`);
run alone, this module starts ``hodlai devnet``, ``hodlai api`` and ``hodlai distributor``
itself (:func:`run`). Either way it shows live transfer counts, then per-run totals from the
API, and succeeds only when both runs completed with every recipient paid and every
recipient's balance on chain equals what the runs say it was paid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from shared.db import connect
from workers.distribution.evm.contracts import balance_of_calldata, decode_uint

ROOT = Path(__file__).resolve().parent.parent
PATH = "/api/execution/kmt-automation"
AIRDROP = 200
SCHEDULED_SHARES = ("40", "30", "15", "10", "5")  # percent
SCHEDULED_TOTAL = "1000"  # whole tokens per slot
DECIMALS = 18
# Seconds the demo waits for both runs: the scheduled task's slot is the next minute.
TIMEOUT_S = 180.0
DESCRIPTION = (
    f"a manual airdrop to {AIRDROP} recipients and a scheduled '* * * * *' task "
    f"({len(SCHEDULED_SHARES)} recipients by percentage) that runs once"
)


@dataclass
class DistPart:
    """What the demo asks the node for, and where it looks."""

    api_url: str
    admin_token: str
    rpc_url: str
    token: str
    airdrop: list[tuple[str, str]]  # (address, whole tokens)
    scheduled: list[tuple[str, str]]  # (address, percentage)
    airdrop_id: str = "demo-airdrop"
    scheduled_id: str = "demo-every-minute"
    runs: dict[str, str] = field(default_factory=dict)  # task id -> run id
    disabled: bool = False

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        return httpx.request(
            method, self.api_url + path, json=body, headers=self.headers(), timeout=30
        )


def _addresses(n: int, salt: str) -> list[str]:
    return [to_checksum_address(keccak(text=f"demo {salt} {i}")[-20:]) for i in range(n)]


def prepare(env: Mapping[str, str]) -> DistPart:
    """The demo's tasks for the devnet named by ``env`` (its env file's settings)."""
    token = env["HODLAI_DIST_TOKEN_ADDRESS"]
    admin = Path(env["HODLAI_DEVNET_ADMIN_TOKEN_FILE"]).read_text().strip()
    salt = f"{token} {time.time_ns()}"
    airdrop = [(a, f"{1 + i / 100:.2f}") for i, a in enumerate(_addresses(AIRDROP, salt))]
    scheduled = list(zip(_addresses(len(SCHEDULED_SHARES), salt + "s"), SCHEDULED_SHARES,
                         strict=True))  # fmt: skip
    return DistPart(env["HODLAI_API_URL"], admin, env["HODLAI_RPC_URLS"].split(",")[0],
                    token, airdrop, scheduled)  # fmt: skip


def distributor_env(part: DistPart) -> dict[str, str]:
    """The distributor's settings for this demo: on, and quick."""
    return {"HODLAI_DIST_ENABLED": "true", "HODLAI_DIST_TICK_S": "0.5",
            "HODLAI_DIST_POLL_S": "0.5"}  # fmt: skip


def _create(part: DistPart) -> None:
    airdrop = {
        "id": part.airdrop_id, "name": "Demo airdrop", "type": "manual",
        "distribution": {"recipients": [{"address": a, "amount": v} for a, v in part.airdrop],
                         "usePercentage": False},
        "enabled": True,
    }  # fmt: skip
    scheduled = {
        "id": part.scheduled_id, "name": "Demo reward every minute", "type": "scheduled",
        "schedule": {"cron": "* * * * *", "timezone": "UTC"},
        "distribution": {"recipients": [{"address": a, "percentage": p}
                                        for a, p in part.scheduled],
                         "totalAmount": SCHEDULED_TOTAL, "usePercentage": True},
        "enabled": True,
    }  # fmt: skip
    for task in (airdrop, scheduled):
        answer = part.call("POST", PATH, {"network": "devnet", "tokenMint": part.token,
                                          "task": task})  # fmt: skip
        if answer.status_code != 201:
            raise RuntimeError(f"POST {task['id']}: {answer.status_code} {answer.text}")
    answer = part.call("PATCH", PATH, {"network": "devnet", "tokenMint": part.token,
                                       "taskId": part.airdrop_id, "action": "execute"})  # fmt: skip
    if answer.status_code != 200:
        raise RuntimeError(f"execute: {answer.status_code} {answer.text}")
    part.runs[part.airdrop_id] = answer.json()["run"]["id"]


def _wait_api(part: DistPart, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and alive():
        try:
            if part.call("GET", PATH).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the API at {part.api_url} did not answer")


def _runs(part: DistPart, task_id: str) -> list[dict[str, Any]]:
    answer = part.call("GET", f"{PATH}/runs?taskId={task_id}")
    answer.raise_for_status()
    runs: list[dict[str, Any]] = answer.json()["runs"]
    return runs


def _counts(db: Path) -> dict[str, int]:
    conn = connect(db)
    try:
        return {
            r[0]: r[1]
            for r in conn.execute(
                "SELECT t.status, COUNT(*) FROM distribution_transfers t JOIN distribution_runs r"
                " ON r.run_id = t.run_id WHERE r.task_id LIKE 'demo-%' GROUP BY t.status"
            )
        }
    finally:
        conn.close()


def wait(part: DistPart, db: Path, alive: Callable[[], bool]) -> None:
    """Create the tasks through the API, execute the airdrop, then live transfer counts until
    both runs are final (the scheduled task is disabled once its first run is recorded)."""
    _wait_api(part, alive)
    _create(part)
    tty = sys.stdout.isatty()
    began = time.monotonic()
    while time.monotonic() - began < TIMEOUT_S and alive():
        if not part.disabled:
            runs = _runs(part, part.scheduled_id)
            if runs:
                part.runs[part.scheduled_id] = runs[-1]["id"]
                answer = part.call("PATCH", PATH, {"network": "devnet", "tokenMint": part.token,
                                                   "taskId": part.scheduled_id,
                                                   "action": "disable"})  # fmt: skip
                part.disabled = answer.status_code == 200
        counts = _counts(db)
        line = (f"t={time.monotonic() - began:5.1f}s  " + "  ".join(
            f"{s} {counts.get(s, 0):>3}" for s in ("pending", "sent", "paid", "failed"))
            + ("" if part.disabled else "   (waiting for the next minute's slot)"))  # fmt: skip
        print(("\r" + line) if tty else line, end="" if tty else "\n", flush=True)
        finals = [
            r["status"] in ("completed", "failed")
            for task in (part.airdrop_id, part.scheduled_id)
            for r in _runs(part, task)
        ]
        if part.disabled and len(finals) >= 2 and all(finals):
            break
        time.sleep(1.0)
    print()


def _balance(part: DistPart, owner: str) -> int:
    data = "0x" + balance_of_calldata(owner).hex()
    answer = httpx.post(part.rpc_url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_call",
                        "params": [{"to": part.token, "data": data}, "latest"]},
                        timeout=30).json()  # fmt: skip
    return decode_uint(answer["result"])


def report(part: DistPart, db: Path) -> bool:
    """Per-run totals from the API and every recipient's balance on chain; True when both
    runs completed, everyone paid, and every balance is what the runs paid."""
    ok = True
    paid_to: dict[str, int] = {}
    for task_id in (part.airdrop_id, part.scheduled_id):
        runs = _runs(part, task_id)
        if task_id == part.scheduled_id and len(runs) != 1:
            print(f"   the scheduled task has {len(runs)} runs, not 1")
            ok = False
        if not runs:
            print(f"== {task_id}: no run")
            ok = False
        for run in runs:
            transfers = run["transfers"]
            paid = [t for t in transfers if t["status"] == "paid"]
            total = sum(int(t["amount"]) for t in paid)
            txs = {t["txHash"] for t in paid}
            whole = Decimal(total) / 10**DECIMALS
            of = Decimal(int(run["totalAmount"])) / 10**DECIMALS
            print(
                f"== {task_id} run {run['id']}: {run['status']}, {len(paid)}/{len(transfers)} "
                f"paid, {whole} of {of} DIST in {len(txs)} transaction(s)"
            )
            ok = ok and run["status"] == "completed" and len(paid) == len(transfers)
            for t in paid:
                paid_to[t["address"].lower()] = paid_to.get(t["address"].lower(), 0) + int(
                    t["amount"]
                )
    everyone = [a for a, _ in part.airdrop] + [a for a, _ in part.scheduled]
    wrong = [a for a in everyone if _balance(part, a) != paid_to.get(a.lower(), -1)]
    print(f"== on chain: {len(everyone) - len(wrong)}/{len(everyone)} recipients hold exactly "
          f"what their runs paid" + ("" if not wrong else f"; NOT: {wrong[:3]}"))  # fmt: skip
    print(f"   try: HODLAI_DB_PATH={db} hodlai dist runs {part.airdrop_id}")
    return ok and not wrong


def run(workdir: Path) -> bool:
    """The distribution alone: ``hodlai devnet``, ``hodlai api`` and ``hodlai distributor``."""
    from scripts.localnode import LocalNode

    node = LocalNode(workdir)
    node.start_chain()
    env = node.process_env(**{"LOG_LEVEL": "WARNING"})
    part = prepare(node.env)
    env.update(distributor_env(part))
    logs = workdir / "logs"
    procs = [
        subprocess.Popen([sys.executable, "-m", "shared.cli", name], env=env, cwd=ROOT,
                         stdout=(logs / f"{name}.log").open("ab"), stderr=subprocess.STDOUT)
        for name in ("api", "distributor")
    ]  # fmt: skip
    print(f"== distribution: {DESCRIPTION}")
    try:
        wait(part, node.db_path, lambda: all(p.poll() is None for p in procs))
        return report(part, node.db_path)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if node.devnet is not None:
            node.devnet.send_signal(signal.SIGTERM)
            node.devnet.wait(timeout=15)


if __name__ == "__main__":
    sys.exit(0 if run(Path(os.environ.get("DEMO_DIR", ".demo-distribution")).resolve()) else 1)
