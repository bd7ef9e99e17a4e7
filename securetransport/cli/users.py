"""`securetransport users`: manage accounts in the configured user store (SPEC section 2)."""

from __future__ import annotations

import argparse
import datetime
import getpass
import os
import posixpath
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from securetransport.cli.common import (
    CommandError,
    add_config_option,
    config_path,
    load_config_or_fail,
)
from securetransport.config import Config
from securetransport.passwords import hash_password
from securetransport.pki import PKIError, load_certificate
from securetransport.stores import open_user_store
from securetransport.userstore import (
    Account,
    UserStoreError,
    certificate_fingerprint,
    normalize_fingerprint,
    normalize_ssh_fingerprint,
    normalize_ssh_key,
    ssh_key_fingerprint,
    valid_account_name,
)

HOME_MODE = 0o750
NAME_RULE = "letters, digits and . _ @ + -, 1 to 64 characters, not starting with a dot"

Handler = Callable[[argparse.Namespace, Any, Config], int]


# --- pure helpers ---------------------------------------------------------------------


def resolve_home(home_root: Path, home: str) -> tuple[str, Path]:
    """Check `--home` against home_root: returns (normalized relative path, folder).

    The home must be relative, must not be home_root itself and must resolve (symlinks
    included) below home_root; CommandError otherwise.
    """
    if not home or "\0" in home:
        raise CommandError(f"--home: invalid folder name: {home!r}")
    if posixpath.isabs(home):
        raise CommandError(f"--home must be relative to server.home_root ({home_root}): {home}")
    relative = posixpath.normpath(home)
    if relative == "." or relative == ".." or relative.startswith("../"):
        raise CommandError(f"--home must lie below server.home_root ({home_root}): {home}")
    root = home_root.resolve()
    folder = root / relative
    resolved = folder.resolve()
    if resolved == root or not resolved.is_relative_to(root):
        raise CommandError(f"--home leads out of server.home_root ({home_root}): {home}")
    return relative, folder


def strip_line_ending(line: str) -> str:
    """Drop one trailing CRLF, LF or CR."""
    if line.endswith("\r\n"):
        return line[:-2]
    if line.endswith(("\n", "\r")):
        return line[:-1]
    return line


def certificate_warnings(cert: x509.Certificate, now: datetime.datetime) -> list[str]:
    """Reasons a certificate to be pinned will not log anyone in (SPEC section 4)."""
    problems = []
    if now < cert.not_valid_before_utc:
        problems.append("is not valid yet")
    if now > cert.not_valid_after_utc:
        problems.append("has expired")
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        pass
    else:
        if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
            problems.append("lacks the clientAuth extended key usage")
    return problems


def describe(account: Account) -> list[str]:
    """`users show` lines; never the password hash."""
    lines = [
        f"name: {account.name}",
        f"enabled: {'yes' if account.enabled else 'no'}",
        f"read-only: {'yes' if account.read_only else 'no'}",
        f"password: {'set' if account.password_hash else 'none (certificate login only)'}",
        f"groups: {', '.join(account.groups) if account.groups else '-'}",
        f"home: {account.home_folder}",
    ]
    if account.certificates:
        lines += [f"certificate: {fingerprint}" for fingerprint in account.certificates]
    else:
        lines.append("certificates: -")
    if account.ssh_keys:
        lines += [f"ssh key: {ssh_key_summary(key)}" for key in account.ssh_keys]
    else:
        lines.append("ssh keys: -")
    return lines


def ssh_key_summary(key: str) -> str:
    """`SHA256:... TYPE [COMMENT]`, as `ssh-keygen -l` shows a key."""
    parts = key.split(None, 2)
    comment = f" {parts[2]}" if len(parts) > 2 else ""
    return f"{ssh_key_fingerprint(key)} {parts[0]}{comment}"


def table(accounts: list[Account]) -> list[str]:
    """`users list` lines: a header and one aligned row per account."""
    rows = [["NAME", "ENABLED", "READ-ONLY", "PASSWORD", "GROUPS", "HOME", "CERTIFICATES"]]
    for a in accounts:
        rows.append(
            [
                a.name,
                "yes" if a.enabled else "no",
                "yes" if a.read_only else "no",
                "set" if a.password_hash else "none",
                ",".join(a.groups) or "-",
                a.home_folder,
                ",".join(a.certificates) or "-",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [
        "  ".join([cell.ljust(width) for cell, width in zip(row, widths, strict=False)] + [row[-1]])
        for row in rows
    ]


# --- I/O at the edges -----------------------------------------------------------------


def read_password() -> str:
    """One line from stdin without its line ending (no echo on a terminal)."""
    stdin = sys.stdin
    if stdin is None:
        raise CommandError("--password-stdin: no standard input")
    if stdin.isatty():
        line = getpass.getpass("Password: ")
    else:
        buffer = getattr(stdin, "buffer", None)
        if buffer is not None:
            try:
                line = buffer.readline().decode("utf-8")
            except UnicodeDecodeError:
                raise CommandError("--password-stdin: the password is not valid UTF-8") from None
        else:
            line = stdin.readline()
    password = strip_line_ending(line)
    if not password:
        raise CommandError("--password-stdin: empty password")
    return password


def read_ssh_key(path: Path) -> str:
    """The OpenSSH public key line in `path` (one key; `ssh-keygen` writes this form)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise CommandError(f"{path}: {reason}") from None
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if len(lines) != 1:
        raise CommandError(f"{path}: want exactly one OpenSSH public key line")
    try:
        key = normalize_ssh_key(lines[0])
    except ValueError as error:
        raise CommandError(f"{path}: {error}") from None
    if key.startswith("ssh-dss "):
        raise CommandError(f"{path}: DSA keys are refused")
    return key


def read_certificate(path: Path) -> str:
    """The fingerprint of the certificate in `path`, printing warnings about it."""
    try:
        cert = load_certificate(path)
    except PKIError as error:
        raise CommandError(str(error)) from None
    fingerprint = certificate_fingerprint(cert)
    now = datetime.datetime.now(datetime.UTC)
    for problem in certificate_warnings(cert, now):
        print(f"warning: {path}: certificate {problem}", file=sys.stderr)
    return fingerprint


def load(args: argparse.Namespace) -> Config:
    """The configuration, or CommandError with one line per problem."""
    return load_config_or_fail(config_path(args))


@contextmanager
def opened_store(config: Config) -> Iterator[Any]:
    """The configured IUserStore, closed afterwards."""
    try:
        store: Any = open_user_store(config.server.users)
    except UserStoreError as error:
        raise CommandError(str(error)) from None
    try:
        yield store
    finally:
        store.close()


def with_store(handler: Handler) -> Callable[[argparse.Namespace], int]:
    """Turn `handler(args, store, config)` into an argparse `func(args)`."""

    def run(args: argparse.Namespace) -> int:
        config = load(args)
        try:
            with opened_store(config) as store:
                return handler(args, store, config)
        except UserStoreError as error:
            raise CommandError(str(error)) from None
        except OSError as error:
            raise CommandError(f"{error.filename or 'error'}: {error.strerror}") from None

    return run


def existing(store: Any, name: str) -> Account:
    account: Account | None = store.get(name)
    if account is None:
        raise CommandError(f"no such account: {name}")
    return account


def checked_name(name: str, what: str = "account name") -> str:
    if not valid_account_name(name):
        raise CommandError(f"invalid {what} {name!r}: {NAME_RULE}")
    return name


# --- commands ---------------------------------------------------------------------------


def cmd_add(args: argparse.Namespace, store: Any, config: Config) -> int:
    name = checked_name(args.name)
    groups = tuple(dict.fromkeys(checked_name(g, "group name") for g in args.groups))
    relative, folder = resolve_home(config.server.home_root, args.home or name)
    pins = tuple(dict.fromkeys(read_certificate(path) for path in args.certificates))
    ssh_keys = tuple(dict.fromkeys(read_ssh_key(path) for path in args.keys))
    password_hash = hash_password(read_password()) if args.password_stdin else None
    if store.get(name) is not None:
        raise CommandError(f"account exists: {name}")
    if not folder.is_dir():
        folder.mkdir(parents=True, mode=HOME_MODE)
        os.chmod(folder, HOME_MODE)
    account = Account(
        name=name,
        password_hash=password_hash,
        groups=groups,
        home="" if relative == name else relative,
        certificates=pins,
        read_only=args.read_only,
        ssh_keys=ssh_keys,
    )
    store.add(account)
    login = (
        "password"
        if password_hash
        else "no password: SSH key or certificate login only"
        if ssh_keys
        else "no password: certificate login only"
    )
    print(f"added {name} (home {folder}, {login})")
    return 0


def cmd_list(args: argparse.Namespace, store: Any, config: Config) -> int:
    accounts = store.list()
    if accounts:
        print("\n".join(table(accounts)))
    return 0


def cmd_show(args: argparse.Namespace, store: Any, config: Config) -> int:
    account = existing(store, args.name)
    print("\n".join(describe(account)))
    return 0


def cmd_passwd(args: argparse.Namespace, store: Any, config: Config) -> int:
    if not args.password_stdin:
        raise CommandError("users passwd needs --password-stdin")
    account = existing(store, args.name)
    store.update(replace(account, password_hash=hash_password(read_password())))
    print(f"password of {account.name} changed")
    return 0


def _set_enabled(enabled: bool) -> Handler:
    word = "enabled" if enabled else "disabled"

    def handler(args: argparse.Namespace, store: Any, config: Config) -> int:
        account = existing(store, args.name)
        if account.enabled == enabled:
            print(f"{account.name} is already {word}")
            return 0
        store.update(replace(account, enabled=enabled))
        print(f"{account.name} {word}")
        return 0

    return handler


def cmd_remove(args: argparse.Namespace, store: Any, config: Config) -> int:
    account = existing(store, args.name)
    if not store.remove(account.name):
        raise CommandError(f"no such account: {account.name}")
    home = config.server.home_root / account.home_folder
    print(f"removed {account.name} (home folder {home} kept)")
    return 0


def cmd_certificate_add(args: argparse.Namespace, store: Any, config: Config) -> int:
    account = existing(store, args.name)
    fingerprint = read_certificate(args.pem)
    if fingerprint in account.certificates:
        print(f"{account.name}: {fingerprint} is already pinned")
        return 0
    store.update(replace(account, certificates=(*account.certificates, fingerprint)))
    print(f"{account.name}: pinned {fingerprint}")
    return 0


def cmd_certificate_remove(args: argparse.Namespace, store: Any, config: Config) -> int:
    try:
        fingerprint = normalize_fingerprint(args.fingerprint)
    except ValueError as error:
        raise CommandError(str(error)) from None
    account = existing(store, args.name)
    if fingerprint not in account.certificates:
        raise CommandError(f"{account.name}: {fingerprint} is not pinned")
    kept = tuple(f for f in account.certificates if f != fingerprint)
    store.update(replace(account, certificates=kept))
    print(f"{account.name}: unpinned {fingerprint}")
    return 0


# --- parser -----------------------------------------------------------------------------


def cmd_key_add(args: argparse.Namespace, store: Any, config: Config) -> int:
    key = read_ssh_key(args.pubfile)
    account = existing(store, args.name)
    fingerprint = ssh_key_fingerprint(key)
    if fingerprint in {ssh_key_fingerprint(k) for k in account.ssh_keys}:
        print(f"{account.name}: {fingerprint} is already there")
        return 0
    store.update(replace(account, ssh_keys=(*account.ssh_keys, key)))
    print(f"{account.name}: added SSH key {fingerprint}")
    return 0


def cmd_key_remove(args: argparse.Namespace, store: Any, config: Config) -> int:
    try:
        fingerprint = normalize_ssh_fingerprint(args.fingerprint)
    except ValueError as error:
        raise CommandError(str(error)) from None
    account = existing(store, args.name)
    kept = tuple(k for k in account.ssh_keys if ssh_key_fingerprint(k) != fingerprint)
    if len(kept) == len(account.ssh_keys):
        raise CommandError(f"{account.name}: no SSH key {fingerprint}")
    store.update(replace(account, ssh_keys=kept))
    print(f"{account.name}: removed SSH key {fingerprint}")
    return 0


def _subcommand(
    subparsers: argparse._SubParsersAction,
    name: str,
    help_text: str,
    handler: Handler,
    *,
    with_name: bool = True,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, help=help_text, description=help_text
    )
    add_config_option(parser)
    if with_name:
        parser.add_argument("name", metavar="NAME", help="account name")
    parser.set_defaults(func=with_store(handler))
    return parser


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "users", help="manage accounts", description="Manage accounts in the user store."
    )
    add_config_option(parser)
    actions = parser.add_subparsers(dest="users_command", required=True, metavar="ACTION")

    add = _subcommand(actions, "add", "create an account", cmd_add)
    add.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from one line of stdin (else: certificate login only)",
    )
    add.add_argument(
        "--group", dest="groups", action="append", default=[], metavar="G", help="repeatable"
    )
    add.add_argument("--home", metavar="DIR", help="relative to server.home_root (default: NAME)")
    add.add_argument(
        "--certificate",
        dest="certificates",
        action="append",
        default=[],
        type=Path,
        metavar="PEM",
        help="pin this login certificate (repeatable)",
    )
    add.add_argument("--read-only", action="store_true", help="no uploads, deletes or renames")
    add.add_argument(
        "--key",
        dest="keys",
        action="append",
        default=[],
        type=Path,
        metavar="PUBFILE",
        help="add this SSH public key (repeatable)",
    )

    _subcommand(actions, "list", "list the accounts", cmd_list, with_name=False)
    _subcommand(actions, "show", "show one account", cmd_show)
    passwd = _subcommand(actions, "passwd", "set an account's password", cmd_passwd)
    passwd.add_argument("--password-stdin", action="store_true", help="read it from stdin")
    _subcommand(actions, "disable", "refuse all logins to an account", _set_enabled(False))
    _subcommand(actions, "enable", "allow logins to an account again", _set_enabled(True))
    _subcommand(actions, "remove", "delete an account (its home folder is kept)", cmd_remove)

    certificate = actions.add_parser(
        "certificate",
        help="pin or unpin login certificates",
        description="Pin login certificates to an account (SHA-256 fingerprints).",
    )
    add_config_option(certificate)
    pins = certificate.add_subparsers(dest="certificate_command", required=True, metavar="ACTION")
    pin = _subcommand(pins, "add", "pin the certificate in a PEM file", cmd_certificate_add)
    pin.add_argument("pem", metavar="PEM", type=Path, help="certificate file")
    unpin = _subcommand(pins, "remove", "unpin a certificate", cmd_certificate_remove)
    unpin.add_argument("fingerprint", metavar="FINGERPRINT", help="SHA-256, 64 hex digits")

    key = actions.add_parser(
        "key",
        help="add or remove SSH public keys",
        description="SSH public keys of an account (SFTP publickey logins).",
    )
    add_config_option(key)
    key_actions = key.add_subparsers(dest="key_command", required=True, metavar="ACTION")
    key_add = _subcommand(key_actions, "add", "add the key in an OpenSSH .pub file", cmd_key_add)
    key_add.add_argument("pubfile", metavar="PUBFILE", type=Path, help="OpenSSH public key file")
    key_remove = _subcommand(key_actions, "remove", "remove a key", cmd_key_remove)
    key_remove.add_argument(
        "fingerprint", metavar="FINGERPRINT", help="SHA256:BASE64, as ssh-keygen -l shows it"
    )
