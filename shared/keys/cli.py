"""``hodlai vault``: the operator's commands for the key vault (shared/keys/vault.py).

``init-key`` creates the master key file, ``create`` and ``import`` add wallets, ``list``
shows them and ``check`` decrypts every one (after a restore: do the database and the master
key file belong together?). Nothing here prints or accepts key material on the command line:
an imported key comes from a 0600 key file or keystore (its passphrase from
``HODLAI_KEY_PASSPHRASE`` / ``HODLAI_KEY_PASSPHRASE_FILE``), so it never reaches the process
list or shell history.

Until ``shared.keys.cli`` is listed in ``shared.cli.WORKER_COMMANDS`` the same commands run
as ``python -m shared.keys.cli vault ...``, with the ``hodlai`` exit codes (0 success, 1 a
refusal, 2 bad usage or settings).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.errors import ConfigError, HodlaiError

if TYPE_CHECKING:
    from shared.keys.vault import VaultSettings


def register(subparsers: Any) -> None:
    """Add ``vault`` and its subcommands to the ``hodlai`` command line."""
    vault = subparsers.add_parser(
        "vault",
        help="the key vault: wallets encrypted under HODLAI_VAULT_KEY_FILE",
        description="Wallets whose keys the node holds, AES-256-GCM encrypted in the database "
        "under the master key file HODLAI_VAULT_KEY_FILE (mode 0600). Losing that file loses "
        "every wallet: back it up apart from the database.",
    )
    sub = vault.add_subparsers(dest="vault_command", required=True, metavar="SUBCOMMAND")

    init_key = sub.add_parser("init-key", help="create the master key file (never overwrites)")
    init_key.add_argument("--path", type=Path, help="where (default: HODLAI_VAULT_KEY_FILE)")
    init_key.set_defaults(func=cmd_init_key)

    create = sub.add_parser("create", help="a new wallet with a random key; prints its address")
    _wallet_names(create)
    create.set_defaults(func=cmd_create)

    imported = sub.add_parser("import", help="add the key of a 0600 key file or keystore")
    imported.add_argument("key_file", type=Path)
    _wallet_names(imported)
    imported.set_defaults(func=cmd_import)

    listing = sub.add_parser("list", help="wallets: address, label, owner, created (no keys)")
    listing.add_argument("--label")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=cmd_list)

    check = sub.add_parser("check", help="decrypt every wallet with the master key")
    check.set_defaults(func=cmd_check)


def main(argv: Sequence[str] | None = None) -> int:
    """``vault ...`` as its own command line, with the exit codes of ``hodlai``."""
    parser = argparse.ArgumentParser(prog="python -m shared.keys.cli")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        print(f"hodlai: configuration error: {exc}", file=sys.stderr)
        return 2
    except HodlaiError as exc:
        print(f"hodlai: {exc}", file=sys.stderr)
        return 1
    return result


def _wallet_names(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--label", required=True, help="what it is for, e.g. distribution")
    parser.add_argument("--owner", help="whom it serves (at most one wallet per label)")


def cmd_init_key(args: argparse.Namespace) -> int:
    from shared.keys.vault import VAULT_KEY_FILE_ENV, generate_master_key_file

    settings = _settings()
    path = args.path or settings.vault_key_file
    if path is None:
        raise ConfigError(f"set {VAULT_KEY_FILE_ENV} or pass --path")
    key_id = generate_master_key_file(path)
    print(
        f"created vault master key file {path} (key id {key_id}, mode 0600). Back it up "
        "apart from the database now: losing it loses every wallet in the vault."
    )
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    from shared.keys.vault import Vault, load_master_key

    settings = _settings()
    master_key = load_master_key(settings.vault_key_file)  # before a database is created
    conn = _connect(settings.db_path, must_exist=False)
    try:
        vault = Vault(conn, master_key)
        print(vault.create_wallet(label=args.label, owner=args.owner))
    finally:
        conn.close()
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from shared.keys.files import load_private_key, read_passphrase
    from shared.keys.vault import Vault, load_master_key

    settings = _settings()
    passphrase = read_passphrase(
        passphrase=(
            settings.key_passphrase.get_secret_value() if settings.key_passphrase else None
        ),
        passphrase_file=settings.key_passphrase_file,
    )
    private_key = load_private_key(args.key_file, passphrase)
    master_key = load_master_key(settings.vault_key_file)  # before a database is created
    conn = _connect(settings.db_path, must_exist=False)
    try:
        vault = Vault(conn, master_key)
        print(vault.import_key(private_key, label=args.label, owner=args.owner))
    finally:
        conn.close()
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from shared.keys.vault import list_wallets

    settings = _settings()
    conn = _connect(settings.db_path, must_exist=True)
    try:
        wallets = list_wallets(conn, label=args.label, limit=settings.vault_list_limit)
    finally:
        conn.close()
    rows = [
        {"address": w.address, "label": w.label, "owner": w.owner, "created_at": w.created_at}
        for w in wallets
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"{row['address']}  {row['label']}  {row['owner'] or '-'}  {row['created_at']:.0f}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from shared.keys.vault import Vault, load_master_key

    settings = _settings()
    master_key = load_master_key(settings.vault_key_file)
    conn = _connect(settings.db_path, must_exist=True)
    try:
        vault = Vault(conn, master_key)
        count = vault.check()
    finally:
        conn.close()
    print(f"all {count} wallet(s) decrypt under master key {vault.key_id}")
    return 0


def _settings() -> VaultSettings:
    from shared.config import load_settings
    from shared.keys.vault import VaultSettings
    from shared.logs import configure_logging

    settings = load_settings(VaultSettings)
    configure_logging("WARNING" if settings.log_level == "INFO" else settings.log_level)
    return settings


def _connect(db_path: Path, *, must_exist: bool) -> sqlite3.Connection:
    from shared.db import connect

    if must_exist and not db_path.exists():
        raise ConfigError(f"HODLAI_DB_PATH: no database at {db_path}")
    return connect(db_path)


if __name__ == "__main__":
    sys.exit(main())
