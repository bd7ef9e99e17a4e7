"""`securetransport db upgrade`: create or upgrade the PostgreSQL schema (SPEC section 10)."""

from __future__ import annotations

import argparse

from securetransport.cli.common import CommandError, add_config_option, config_path
from securetransport.config import ConfigError, load_config
from securetransport.pgstore import upgrade
from securetransport.userstore import UserStoreError


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "db",
        help="manage the PostgreSQL user store's schema",
        description="Manage the schema of a PostgreSQL user store (server.users).",
    )
    add_config_option(parser)
    commands = parser.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    upgrade_parser = commands.add_parser(
        "upgrade",
        help="create or upgrade the schema (idempotent)",
        description="Create the schema, or upgrade it to this program's version; "
        "running it again changes nothing.",
    )
    add_config_option(upgrade_parser)
    upgrade_parser.set_defaults(func=run_upgrade)


def run_upgrade(args: argparse.Namespace) -> int:
    """Handler of `securetransport db upgrade`."""
    try:
        config = load_config(config_path(args))
    except ConfigError as error:
        raise CommandError("\n".join(error.problems)) from None
    url = config.server.users
    if not url.startswith("postgresql://"):
        raise CommandError(
            "server.users: not a PostgreSQL URL (postgresql://...); SQLite stores upgrade"
            " themselves"
        )

    try:
        before, after = upgrade(url)
    except UserStoreError as error:
        raise CommandError(str(error)) from None
    if before == after:
        print(f"schema is up to date (version {after})")
    else:
        print(f"schema upgraded from version {before} to {after}")
    return 0
