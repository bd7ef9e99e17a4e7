"""`securetransport pki init`: a private CA and certificates for trials and tests."""

from __future__ import annotations

import argparse
from pathlib import Path

from securetransport.cli.common import CommandError, add_config_option
from securetransport.pki import DEFAULT_DAYS, PKIError, init_pki
from securetransport.sftp.keys import HOST_KEY_NAME, write_ssh_keys


def cmd_init(args: argparse.Namespace) -> int:
    ssh_files = [args.folder / HOST_KEY_NAME] + [args.folder / f"{u}_ed25519" for u in args.users]
    existing = [p for p in ssh_files if p.exists() or Path(f"{p}.pub").exists()]
    if existing and not args.force:
        raise CommandError(f"{existing[0]} exists (use --force to replace it)")
    try:
        written = init_pki(args.folder, args.users, days=args.days, force=args.force)
        if args.link:
            from securetransport.edge.link import init_link_pki

            written += init_link_pki(args.folder, days=args.days, force=args.force)
    except PKIError as error:
        raise CommandError(str(error)) from None
    for path in written:
        print(path)
    # SSH (SPEC section 9): an ed25519 host key and one key pair per user.
    write_ssh_keys(args.folder, list(args.users))
    for path in ssh_files:
        print(path)
        print(f"{path}.pub")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pki", help="make a private CA and certificates", description=__doc__
    )
    add_config_option(parser)
    actions = parser.add_subparsers(dest="pki_command", required=True, metavar="ACTION")
    init = actions.add_parser(
        "init",
        help="write ca, server and client certificates",
        description="Write ca.crt/ca.key, server.crt/server.key (localhost, 127.0.0.1, ::1) "
        "and NAME.crt/NAME.key per --user into DIR; also the SSH host key "
        "ssh_host_ed25519_key(.pub) and NAME_ed25519(.pub) per --user. Keys are mode 0600.",
    )
    add_config_option(init)
    init.add_argument("folder", metavar="DIR", type=Path, help="where to write the files")
    init.add_argument(
        "--user",
        dest="users",
        action="append",
        default=[],
        metavar="NAME",
        help="also make a client certificate with CN=NAME (repeatable)",
    )
    init.add_argument("--force", action="store_true", help="replace existing files")
    init.add_argument(
        "--link",
        action="store_true",
        help="also write the link PKI of an edge and its server: link-ca, link-server, "
        "link-edge (.crt/.key)",
    )
    init.add_argument(
        "--days",
        type=int,
        default=DEFAULT_DAYS,
        metavar="N",
        help=f"validity in days (default {DEFAULT_DAYS})",
    )
    init.set_defaults(func=cmd_init)
