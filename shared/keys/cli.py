"""``hodlai vault``: the operator's commands for the key vault (shared/keys/vault.py).

``init-key`` creates the master key file, ``create`` and ``import`` add wallets, ``list``
shows them, ``check`` decrypts every one (after a restore: do the database and the master
key file belong together?; ``--upgrade`` re-seals rows of the old associated data) and
``recover`` re-derives a created wallet from the master key alone and puts its row back if it
is missing. The database is opened with ``synchronous=FULL``, as the vault requires.
Nothing here prints or accepts key material on the command line:
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
    from shared.keys.vault import VaultSettings, Wallet

# Indexes `vault recover --scan` derives at most: an owner's wallets of one label are numbered
# from 0 and a few at most; a bound keeps a typo from running for minutes.
MAX_SCAN = 10_000


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

    create = sub.add_parser(
        "create", help="a new wallet derived from the master key; prints its address"
    )
    _wallet_names(create)
    create.set_defaults(func=cmd_create)

    imported = sub.add_parser("import", help="add the key of a 0600 key file or keystore")
    imported.add_argument("key_file", type=Path)
    _wallet_names(imported)
    imported.set_defaults(func=cmd_import)

    listing = sub.add_parser(
        "list", help="wallets: address, label, owner, derivation index, created (no keys)"
    )
    listing.add_argument("--label")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=cmd_list)

    check = sub.add_parser("check", help="decrypt every wallet with the master key")
    check.add_argument(
        "--upgrade",
        action="store_true",
        help="re-seal rows whose associated data binds the address only (written before "
        "core migration 8) so that it binds label, owner and index too",
    )
    check.set_defaults(func=cmd_check)

    recover = sub.add_parser(
        "recover",
        help="re-derive a created wallet from the master key; re-insert its row if missing",
        description="Re-derive wallet INDEX of (LABEL, OWNER) from the master key alone, print "
        "its address and put its row back if it is missing. A row already there is never "
        "overwritten. Imported keys cannot be recovered this way (restore a backup).",
    )
    recover.add_argument("--label", required=True, help="the wallet's label, e.g. mint-agent")
    recover.add_argument("--owner", help="the wallet's owner (omit for the node's own wallets)")
    which = recover.add_mutually_exclusive_group(required=True)
    which.add_argument("--index", type=int, help="its derivation index (see `vault list`)")
    which.add_argument(
        "--scan",
        type=int,
        metavar="K",
        help="derive indexes 0..K-1 and list their addresses; with --address, recover the "
        "one that matches",
    )
    recover.add_argument(
        "--address", help="the address expected (refuses to recover any other wallet)"
    )
    recover.add_argument("--json", action="store_true", help="machine-readable output")
    recover.set_defaults(func=cmd_recover)


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
    rows = [_wallet_json(w) for w in wallets]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for w in wallets:
        index = "imported" if w.derivation_index is None else f"index {w.derivation_index}"
        print(f"{w.address}  {w.label}  {w.owner or '-'}  {index}  {w.created_at:.0f}")
    return 0


def _wallet_json(wallet: Wallet) -> dict[str, object]:
    return {
        "address": wallet.address,
        "label": wallet.label,
        "owner": wallet.owner,
        "derivation_index": wallet.derivation_index,
        "created_at": wallet.created_at,
    }


def cmd_check(args: argparse.Namespace) -> int:
    from shared.keys.vault import Vault, load_master_key

    settings = _settings()
    master_key = load_master_key(settings.vault_key_file)
    conn = _connect(settings.db_path, must_exist=True)
    try:
        vault = Vault(conn, master_key)
        count = vault.check()
        upgraded = vault.upgrade() if args.upgrade else 0
        legacy = vault.legacy_rows()
    finally:
        conn.close()
    print(f"all {count} wallet(s) decrypt under master key {vault.key_id}")
    if upgraded:
        print(f"re-sealed {upgraded} wallet(s) so their label, owner and index are bound too")
    if legacy:
        print(
            f"{legacy} wallet(s) bind only their address (written before core migration 8): "
            "run `hodlai vault check --upgrade`"
        )
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    from shared.keys.vault import Vault, VaultError, find_wallet, load_master_key, parse_address

    settings = _settings()
    expected = None if args.address is None else parse_address(args.address)
    if args.scan is not None and not 1 <= args.scan <= MAX_SCAN:
        raise ConfigError(f"--scan takes a count between 1 and {MAX_SCAN}")
    master_key = load_master_key(settings.vault_key_file)  # before a database is created
    # A lost database is the case recovery exists for: a new one is created if need be.
    conn = _connect(settings.db_path, must_exist=False)
    try:
        vault = Vault(conn, master_key)
        label, owner = args.label, args.owner
        index = args.index
        if args.scan is not None:
            derived = [
                (i, vault.derived_address(label=label, owner=owner, index=i))
                for i in range(args.scan)
            ]
            if expected is None:
                found = [(i, a, find_wallet(conn, a) is not None) for i, a in derived]
                _print_scan(found, as_json=args.json)
                return 0
            matching = [i for i, address in derived if address == expected]
            if not matching:
                raise VaultError(
                    f"none of indexes 0..{args.scan - 1} of label {args.label!r}, owner "
                    f"{args.owner!r} derives {expected} under master key {vault.key_id}"
                )
            index = matching[0]
        elif (
            expected is not None
            and vault.derived_address(label=label, owner=owner, index=index) != expected
        ):
            raise VaultError(
                f"index {index} of label {args.label!r}, owner {args.owner!r} does not derive "
                f"{expected} under master key {vault.key_id}; nothing was recovered"
            )
        recovery = vault.recover(label=label, owner=owner, index=index)
    finally:
        conn.close()
    if args.json:
        print(json.dumps({**_wallet_json(recovery.wallet), "inserted": recovery.inserted}))
    else:
        what = "row re-inserted" if recovery.inserted else "already in the vault"
        print(f"{recovery.wallet.address}  index {index}  {what}")
    return 0


def _print_scan(found: Sequence[tuple[int, str, bool]], *, as_json: bool) -> None:
    if as_json:
        rows = [{"derivation_index": i, "address": a, "in_vault": v} for i, a, v in found]
        print(json.dumps(rows, indent=2))
        return
    for index, address, in_vault in found:
        print(f"{index}  {address}  {'in the vault' if in_vault else 'missing'}")


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
    return connect(db_path, durable=True)


if __name__ == "__main__":
    sys.exit(main())
