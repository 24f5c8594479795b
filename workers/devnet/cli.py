"""``hodlai devnet`` and ``hodlai deploy``.

``hodlai devnet`` is a whole local chain in one command: a real anvil on 127.0.0.1, the
provider and example vault deployed, an oracle key generated (mode 0600), granted
ORACLE_ROLE and funded, and a ready-to-use env file. It stays in the foreground until
SIGINT/SIGTERM and then stops anvil. Guarantees:

- The ready file (``--ready-file``) appears only once everything above is done, and is removed
  again on shutdown, so a script that waits for it never talks to a half-deployed chain.
- The devnet's database file is deleted at start: a fresh anvil reuses the same chain id and
  contract addresses, so an old database would look valid while describing a chain that is
  gone (its cursor would skip the new chain's blocks).
- Signal handlers only set a flag; the foreground loop notices it and shuts down.

``hodlai deploy`` runs the deployment step alone against any RPC URL with an admin key file.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

import structlog
from eth_utils.address import is_hex_address, to_checksum_address

from shared.logs import configure_logging

if TYPE_CHECKING:
    from workers.devnet.anvil import Anvil
    from workers.devnet.deploy import Deployment

log = structlog.get_logger(__name__)

DEFAULT_STATE_DIR: Final = Path(".devnet")
DEFAULT_DEVNET_CHAIN_ID: Final = 31337
DB_FILE_NAME: Final = "hodlai.db"
DEFAULT_API_PORT: Final = 8000
ORACLE_KEY_FILE_NAME: Final = "oracle-key.json"
# Wei sent to the devnet oracle: enough gas money for hundreds of thousands of fulfilments
# at devnet fees (~150k gas at ~2 gwei each), a tenth of a dev account's balance.
DEVNET_ORACLE_FUNDING: Final = 1_000 * 10**18
# Seconds between checks of the stop flag and of anvil's health while in the foreground.
_FOREGROUND_POLL: Final = 0.2
_LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``devnet`` and ``deploy`` to the ``hodlai`` command line."""
    devnet = subparsers.add_parser(
        "devnet",
        help="run a local anvil chain with the contracts deployed and a ready .env",
        description="Start anvil on 127.0.0.1, deploy HoldAIProvider + ExampleDecisionVault, "
        "generate and fund an oracle key, write an env file; stop with Ctrl-C / SIGTERM.",
    )
    devnet.add_argument("--port", type=int, default=0, help="RPC port (default 0: a free one)")
    devnet.add_argument(
        "--block-time",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="mine a block every SECONDS instead of one per transaction",
    )
    devnet.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    devnet.add_argument(
        "--env-file", type=Path, default=None, help="default: <state-dir>/devnet.env"
    )
    devnet.add_argument("--chain-id", type=int, default=DEFAULT_DEVNET_CHAIN_ID)
    devnet.add_argument(
        "--api-port",
        type=int,
        default=DEFAULT_API_PORT,
        help="the port the env file gives hodlai api (HODLAI_API_PORT, HODLAI_API_URL)",
    )
    devnet.add_argument(
        "--ready-file",
        type=Path,
        default=None,
        help="written (JSON) once everything is deployed; removed on shutdown",
    )
    _add_log_level(devnet)
    devnet.set_defaults(func=cmd_devnet)

    deploy = subparsers.add_parser(
        "deploy",
        help="deploy HoldAIProvider + ExampleDecisionVault to any JSON-RPC endpoint",
    )
    deploy.add_argument("--rpc-url", required=True)
    deploy.add_argument(
        "--admin-key-file", type=Path, required=True, help="key file (mode 0600) of the admin"
    )
    oracle = deploy.add_mutually_exclusive_group(required=True)
    oracle.add_argument("--oracle-address", type=_address, help="grant ORACLE_ROLE to this")
    oracle.add_argument(
        "--oracle-key-file", type=Path, help="oracle key file; generated (mode 0600) if missing"
    )
    deploy.add_argument("--treasury", type=_address, default=None, help="default: the admin")
    deploy.add_argument(
        "--model",
        dest="models",
        type=_model_fee,
        action="append",
        default=None,
        metavar="NAME=FEE_WEI",
        help="offer a model at a fee in wei (repeatable; replaces the default price list)",
    )
    deploy.add_argument("--fund-wei", type=int, default=0, help="send the oracle this much")
    deploy.add_argument("--callback-gas-limit", type=int, default=None)
    deploy.add_argument("--env-file", type=Path, default=None, help="write node settings here")
    deploy.add_argument("--deployment-file", type=Path, default=None, help="write JSON here")
    deploy.add_argument("--db-path", type=Path, default=Path(DB_FILE_NAME), help="for the env file")
    deploy.add_argument(
        "--confirmations", type=int, default=3, help="for the env file (BSC: 3 or more)"
    )
    _add_log_level(deploy)
    deploy.set_defaults(func=cmd_deploy)


# --- hodlai devnet --------------------------------------------------------------------------


@dataclass
class _StopFlag:
    """Set by the signal handler; read by the foreground loop."""

    signal_name: str | None = None


def cmd_devnet(args: argparse.Namespace) -> int:
    """Run the devnet in the foreground. Exit code 0 after a requested stop, 1 if anvil died."""
    from workers.devnet.anvil import Anvil
    from workers.devnet.deploy import (
        deploy_stack,
        oracle_env_settings,
        write_deployment_json,
        write_env_file,
    )
    from workers.devnet.parts import DevAccountKey, DevnetChain, part_settings, run_parts

    configure_logging(args.log_level)
    state_dir: Path = args.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    env_file: Path = args.env_file or state_dir / "devnet.env"
    ready_file: Path | None = args.ready_file
    if ready_file is not None:
        ready_file.unlink(missing_ok=True)  # a stale one would announce a chain that is gone

    stop = _StopFlag()
    previous = _install_stop_handlers(stop)
    try:
        _remove_stale_database(state_dir / DB_FILE_NAME)
        key_file = state_dir / ORACLE_KEY_FILE_NAME
        oracle = _oracle_from_key_file(key_file)
        anvil = Anvil(
            port=args.port,
            chain_id=args.chain_id,
            block_time=args.block_time,
            log_path=state_dir / "anvil.log",
        )
        with anvil:
            admin, treasury = anvil.accounts[0], anvil.accounts[1]
            deployment = deploy_stack(
                anvil.rpc_url,
                admin.private_key,
                oracle_address=oracle,
                treasury=treasury.address,
                fund_wei=DEVNET_ORACLE_FUNDING,
            )
            oracle_settings = oracle_env_settings(
                deployment,
                db_path=state_dir / DB_FILE_NAME,
                key_file=key_file,
                rpc_url=anvil.rpc_url,
                confirmations=0,
            )
            # Each executor's own contracts and keys (the hodlai.devnet entry points).
            parts = run_parts(
                DevnetChain(
                    rpc_url=anvil.rpc_url,
                    chain_id=deployment.chain_id,
                    state_dir=state_dir,
                    db_path=state_dir / DB_FILE_NAME,
                    accounts=tuple(DevAccountKey(a.address, a.private_key) for a in anvil.accounts),
                    settings={name: value for _, name, value in oracle_settings},
                    api_port=args.api_port,
                )
            )
            write_env_file(
                env_file,
                deployment,
                db_path=state_dir / DB_FILE_NAME,
                key_file=key_file,
                rpc_url=anvil.rpc_url,
                confirmations=0,
                parts=[(s.comment, s.name, s.value) for s in part_settings(parts)],
            )
            deployment_file = write_deployment_json(state_dir / "deployment.json", deployment)
            if ready_file is not None:
                _write_ready_file(
                    ready_file,
                    anvil,
                    deployment,
                    env_file,
                    deployment_file,
                    {name: dict(part.deployment) for name, part in parts.items()},
                )
            log.info(
                "devnet_ready",
                rpc_url=anvil.rpc_url,
                chain_id=deployment.chain_id,
                provider=deployment.provider_address,
                vault=deployment.vault_address,
                oracle=deployment.oracle_address,
                env_file=str(env_file),
                anvil_pid=anvil.pid,
            )
            _print_summary(anvil, deployment, env_file, key_file)
            for part in parts.values():
                if part.summary:
                    print("\n".join(part.summary), flush=True)
            return _stay_in_foreground(stop, anvil)
    finally:
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)
        _restore_handlers(previous)


def _stay_in_foreground(stop: _StopFlag, anvil: Anvil) -> int:
    while stop.signal_name is None:
        if not anvil.is_running():
            log.error("devnet_anvil_exited", output_tail=anvil.output_tail(500))
            return 1
        time.sleep(_FOREGROUND_POLL)
    log.info("devnet_stopping", signal=stop.signal_name)
    return 0


def _install_stop_handlers(stop: _StopFlag) -> dict[signal.Signals, Any]:
    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # Only a flag: the handler may interrupt anything, including a lock holder.
        stop.signal_name = signal.Signals(signum).name

    previous: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, on_signal)
    return previous


def _restore_handlers(previous: dict[signal.Signals, Any]) -> None:
    for sig, handler in previous.items():
        if handler is not None:  # None: installed from C; nothing Python can put back
            signal.signal(sig, handler)


def _remove_stale_database(db_path: Path) -> None:
    for path in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
        if path.exists():
            path.unlink()
            log.info("devnet_stale_db_removed", path=str(path))


def _oracle_from_key_file(key_file: Path) -> str:
    """The oracle address of ``key_file``; a new key is generated when there is none."""
    from shared.keys import generate_key_file, key_file_address

    if key_file.exists():
        # Reused across runs so the oracle address stays the same; load checks its mode.
        return key_file_address(key_file)
    return generate_key_file(key_file)


def _write_ready_file(
    path: Path,
    anvil: Anvil,
    deployment: Deployment,
    env_file: Path,
    deployment_file: Path,
    parts: dict[str, dict[str, Any]],
) -> None:
    from workers.devnet.deploy import write_text_atomically

    content = {
        "rpc_url": anvil.rpc_url,
        "anvil_pid": anvil.pid,
        "devnet_pid": os.getpid(),
        "env_file": str(env_file.resolve()),
        "deployment_file": str(deployment_file.resolve()),
        "deployment": deployment.to_json(),
        "parts": parts,
    }
    write_text_atomically(path, json.dumps(content, indent=2, sort_keys=True) + "\n")


def _print_summary(anvil: Anvil, deployment: Deployment, env_file: Path, key_file: Path) -> None:
    lines = [
        "hodlai devnet is running; Ctrl-C (or SIGTERM) stops it.",
        f"  rpc url    {anvil.rpc_url}  (chain id {deployment.chain_id})",
        f"  provider   {deployment.provider_address}  (deployed in block "
        f"{deployment.deploy_block})",
        f"  vault      {deployment.vault_address}",
        f"  oracle     {deployment.oracle_address}  (key {key_file}, ORACLE_ROLE, funded)",
        f"  treasury   {deployment.treasury}",
        f"  env file   {env_file}",
        f"  use it:    set -a; . {env_file}; set +a",
    ]
    print("\n".join(lines), flush=True)


# --- hodlai deploy --------------------------------------------------------------------------


def cmd_deploy(args: argparse.Namespace) -> int:
    """Deploy to ``--rpc-url`` and write the requested files. Exit code 0 on success."""
    from shared.keys import load_private_key
    from workers.devnet.deploy import (
        DEFAULT_CALLBACK_GAS_LIMIT,
        deploy_stack,
        write_deployment_json,
        write_env_file,
    )

    configure_logging(args.log_level)
    admin_key = load_private_key(args.admin_key_file)
    key_file: Path | None = args.oracle_key_file
    # argparse requires exactly one of --oracle-address / --oracle-key-file.
    oracle: str = args.oracle_address if key_file is None else _oracle_from_key_file(key_file)
    models = dict(args.models) if args.models else None
    deployment = deploy_stack(
        args.rpc_url,
        admin_key,
        oracle_address=oracle,
        models=models,
        treasury=args.treasury,
        fund_wei=args.fund_wei,
        callback_gas_limit=args.callback_gas_limit or DEFAULT_CALLBACK_GAS_LIMIT,
    )
    if args.deployment_file is not None:
        write_deployment_json(args.deployment_file, deployment)
    if args.env_file is not None:
        write_env_file(
            args.env_file,
            deployment,
            db_path=args.db_path,
            key_file=key_file,
            rpc_url=args.rpc_url,
            confirmations=args.confirmations,
        )
    print(
        f"deployed on chain {deployment.chain_id}: provider {deployment.provider_address}, "
        f"vault {deployment.vault_address} (block {deployment.deploy_block}); "
        f"oracle {deployment.oracle_address} holds ORACLE_ROLE",
        flush=True,
    )
    return 0


# --- argument types -------------------------------------------------------------------------


def _add_log_level(parser: argparse.ArgumentParser) -> None:
    default = os.environ.get("LOG_LEVEL", "INFO").upper()
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=_LOG_LEVELS,
        default=default if default in _LOG_LEVELS else "INFO",
        help="default: $LOG_LEVEL or INFO",
    )


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _address(text: str) -> str:
    if not is_hex_address(text):
        raise argparse.ArgumentTypeError(f"not a 20-byte hex address: {text!r}")
    return str(to_checksum_address(text))


def _model_fee(text: str) -> tuple[str, int]:
    name, sep, fee = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=FEE_WEI, got {text!r}")
    try:
        value = int(fee, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"fee of {name!r} is not an integer: {fee!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"fee of {name!r} is negative")
    return name, value
