"""A real anvil node as a child process, for the devnet and for tests.

Guarantees:

- The binary is the one the npm package pins (``node_modules/@foundry-rs/anvil-linux-amd64``
  under the project root), or ``$HODLAI_ANVIL_BIN``; started directly, so the PID held is
  anvil's own. A missing binary is a :class:`AnvilNotFoundError` that says to run
  ``make setup``.
- It listens on loopback only. With ``port=0`` anvil picks a free port and the one it
  printed ("Listening on 127.0.0.1:PORT") is used, so parallel tests never collide.
- :meth:`Anvil.start` returns only once the node answers ``eth_chainId`` with the requested
  chain id; otherwise it stops the process and raises :class:`AnvilStartError` with the tail of
  anvil's output.
- :meth:`Anvil.stop` always leaves no process behind: SIGTERM, then SIGKILL after a grace
  period. Anvil runs in its own session (a terminal's Ctrl-C reaches only its parent, which
  decides when to stop it) and is asked to die with the thread that started it, so a parent
  killed with SIGKILL does not leak nodes either.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Self

import httpx
import structlog
from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address

from shared.errors import ConfigError, PermanentError

log = structlog.get_logger(__name__)

PROJECT_ROOT: Final = Path(__file__).resolve().parents[2]
ANVIL_BIN_ENV: Final = "HODLAI_ANVIL_BIN"
DEFAULT_ANVIL_BIN: Final = (
    PROJECT_ROOT / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
)
DEFAULT_CHAIN_ID: Final = 31337

# Seconds to wait for "Listening on" and a first answer; anvil needs ~50 ms, a loaded CI box
# far more.
STARTUP_TIMEOUT: Final = 15.0
# Seconds between SIGTERM and SIGKILL; anvil exits within milliseconds on SIGTERM.
STOP_GRACE: Final = 5.0
# Seconds between polls of anvil's output while it starts.
_POLL_INTERVAL: Final = 0.02

_LISTENING = re.compile(r"Listening on ([0-9.]+):(\d+)")
_PR_SET_PDEATHSIG: Final = 1


class AnvilNotFoundError(ConfigError):
    """The anvil binary is not installed where expected."""


class AnvilStartError(PermanentError):
    """Anvil exited or did not become ready in time."""


@dataclass(frozen=True)
class DevAccount:
    """One of anvil's pre-funded development accounts. Test keys, public knowledge."""

    address: ChecksumAddress
    private_key: str


def find_anvil_binary() -> Path:
    """The anvil executable: ``$HODLAI_ANVIL_BIN`` or the one from node_modules."""
    override = os.environ.get(ANVIL_BIN_ENV)
    binary = Path(override) if override else DEFAULT_ANVIL_BIN
    if not binary.is_file() or not os.access(binary, os.X_OK):
        origin = f"${ANVIL_BIN_ENV}" if override else "node_modules"
        raise AnvilNotFoundError(
            f"anvil binary not found at {binary} (from {origin}); run `make setup` "
            f"(npm ci) or point {ANVIL_BIN_ENV} at an anvil executable"
        )
    return binary


def _die_with_parent_hook() -> Callable[[], None]:
    """A preexec_fn asking the kernel to SIGTERM anvil when the thread that started it dies.

    libc is loaded here, in the parent: between fork and exec the child then makes one
    plain syscall and takes no loader lock that another thread might have held at fork.
    """
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return hook


class Anvil:
    """An anvil child process on 127.0.0.1. Use as a context manager or start()/stop()."""

    def __init__(
        self,
        *,
        port: int = 0,
        chain_id: int = DEFAULT_CHAIN_ID,
        block_time: float | None = None,
        no_mining: bool = False,
        accounts: int = 10,
        balance_ether: int = 10_000,
        gas_limit: int | None = None,
        extra_args: Sequence[str] = (),
        binary: Path | None = None,
        log_path: Path | None = None,
        startup_timeout: float = STARTUP_TIMEOUT,
    ) -> None:
        if block_time is not None and no_mining:
            raise ValueError("block_time and no_mining exclude each other")
        self._requested_port = port
        self.chain_id = chain_id
        self._block_time = block_time
        self._no_mining = no_mining
        self._account_count = accounts
        self._balance_ether = balance_ether
        self._gas_limit = gas_limit
        self._extra_args = tuple(extra_args)
        self._binary = binary
        #: where anvil's output goes; a temporary file (removed by stop()) unless given
        self.log_path: Path | None = log_path
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._port: int | None = None
        self._accounts: tuple[DevAccount, ...] = ()

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> Self:
        """Start anvil and wait until it answers. Raises AnvilStartError on failure."""
        if self._process is not None:
            raise RuntimeError("this Anvil was already started")
        binary = self._binary or find_anvil_binary()
        self._workdir = tempfile.TemporaryDirectory(prefix="hodlai-anvil-")
        workdir = Path(self._workdir.name)
        log_path = self.log_path or workdir / "anvil.log"
        config_path = workdir / "config.json"
        command = [str(binary), *self._arguments(config_path)]
        # anvil prints a line per transaction; a file, unlike a pipe nobody drains, never
        # fills up and blocks it.
        with open(log_path, "wb") as output:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent_hook(),  # noqa: PLW1509 -- only a prctl syscall runs there
            )
        self.log_path = log_path
        try:
            self._port = self._wait_for_port(log_path)
            self._accounts = self._read_accounts(config_path)
            self._wait_for_rpc()
        except BaseException:
            self.stop()
            raise
        log.info(
            "anvil_started",
            pid=self._process.pid,
            rpc_url=self.rpc_url,
            chain_id=self.chain_id,
            block_time=self._block_time,
            no_mining=self._no_mining,
        )
        return self

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop anvil (SIGTERM, then SIGKILL after ``grace`` seconds). Safe to call twice."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log.warning("anvil_kill_after_grace", pid=process.pid, grace_seconds=grace)
                process.kill()
                process.wait()
            log.info("anvil_stopped", pid=process.pid, returncode=process.returncode)
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- what tests and the devnet read -----------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("anvil is not started")
        return self._port

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("anvil is not started")
        return self._process.pid

    @property
    def accounts(self) -> tuple[DevAccount, ...]:
        """The pre-funded dev accounts, in anvil's order (index 0 is the usual deployer)."""
        return self._accounts

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def output_tail(self, max_bytes: int = 2000) -> str:
        """The end of anvil's output, for error messages."""
        if self.log_path is None:
            return ""
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-max_bytes:].decode("utf-8", errors="replace")

    # --- internals --------------------------------------------------------------------------

    def _arguments(self, config_path: Path) -> list[str]:
        args = [
            "--host",
            "127.0.0.1",
            "--port",
            str(self._requested_port),
            "--chain-id",
            str(self.chain_id),
            "--accounts",
            str(self._account_count),
            "--balance",
            str(self._balance_ether),
            "--config-out",
            str(config_path),
            "--color",
            "never",
        ]
        if self._block_time is not None:
            args += ["--block-time", _format_seconds(self._block_time)]
        if self._no_mining:
            args.append("--no-mining")
        if self._gas_limit is not None:
            args += ["--gas-limit", str(self._gas_limit)]
        args += self._extra_args
        return args

    def _wait_for_port(self, log_path: Path) -> int:
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            match = _LISTENING.search(log_path.read_text(encoding="utf-8", errors="replace"))
            if match:
                return int(match.group(2))
            self._fail_if_exited()
            time.sleep(_POLL_INTERVAL)
        raise AnvilStartError(
            f"anvil printed no 'Listening on' within {self._startup_timeout}s; "
            f"output:\n{self.output_tail()}"
        )

    def _read_accounts(self, config_path: Path) -> tuple[DevAccount, ...]:
        # anvil writes --config-out before it starts listening; a partial write is retried.
        deadline = time.monotonic() + self._startup_timeout
        while True:
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
                addresses = config["available_accounts"]
                keys = config["private_keys"]
                return tuple(
                    DevAccount(address=to_checksum_address(a), private_key=str(k))
                    for a, k in zip(addresses, keys, strict=True)
                )
            except (OSError, ValueError, KeyError) as exc:
                if time.monotonic() > deadline:
                    raise AnvilStartError(f"cannot read anvil's account list: {exc}") from exc
                time.sleep(_POLL_INTERVAL)

    def _wait_for_rpc(self) -> None:
        deadline = time.monotonic() + self._startup_timeout
        body = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
        with httpx.Client(timeout=2.0) as client:
            while True:
                self._fail_if_exited()
                try:
                    answer = client.post(self.rpc_url, json=body).json()
                    chain_id = int(answer["result"], 16)
                except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                    if time.monotonic() > deadline:
                        raise AnvilStartError(
                            f"anvil at {self.rpc_url} did not answer eth_chainId: {exc}"
                        ) from exc
                    time.sleep(_POLL_INTERVAL)
                    continue
                if chain_id != self.chain_id:
                    raise AnvilStartError(
                        f"anvil at {self.rpc_url} reports chain id {chain_id}, "
                        f"expected {self.chain_id} (is another node on that port?)"
                    )
                return

    def _fail_if_exited(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            raise AnvilStartError(
                f"anvil exited with code {self._process.returncode} while starting; "
                f"output:\n{self.output_tail()}"
            )


def _format_seconds(seconds: float) -> str:
    # anvil takes whole or fractional seconds; "1" reads better than "1.0" in `ps`.
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)
