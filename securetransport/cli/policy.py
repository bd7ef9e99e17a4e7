"""`securetransport policy explain`: the class and the reply to USER, without a live login.

Prints `class: NAME (matched: ...)` (or `class: none`), then `certificate: CODE TEXT`
(the reply to USER with the given certificate, or `certificate: none given`) and
`password: CODE TEXT` (the reply when no certificate names the account); `--json`
prints the same as one object (SPEC section 2). A disabled account is explained as an
unknown one, as the server treats it.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from securetransport.cli.common import (
    CommandError,
    add_config_option,
    config_path,
    load_config_or_fail,
)
from securetransport.cli.users import read_ssh_key
from securetransport.client import ClientFacts, normalize_address
from securetransport.config import Config
from securetransport.policy import UserDecision, decide_ssh, decide_user, judge_publickey
from securetransport.stores import open_user_store
from securetransport.tls.verify import TrustStore, TrustStoreError, load_trust_store
from securetransport.userstore import (
    Account,
    UserStoreError,
    pinned_by_any_account,
    ssh_key_fingerprint,
    valid_account_name,
)

MAX_PEM_BYTES = 1 << 20


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "policy", help="explain the SSL access policy", description=__doc__.splitlines()[0]
    )
    add_config_option(parser)
    actions = parser.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    explain = actions.add_parser(
        "explain",
        help="the class and the reply to USER for a login name",
        description="Print the class that applies to NAME and the reply to USER with the "
        "given certificate and with none, as the server would decide it.",
    )
    add_config_option(explain)
    explain.add_argument("name", metavar="NAME", help="the login name")
    explain.add_argument(
        "--address", default="127.0.0.1", metavar="IP", help="client address (127.0.0.1)"
    )
    explain.add_argument(
        "--certificate",
        type=Path,
        metavar="PEM",
        help="client certificate file, PEM, leaf first (a chain may follow)",
    )
    explain.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the control channel is protected by TLS (default) or clear (--no-tls)",
    )
    explain.add_argument(
        "--protocol",
        choices=("ftp", "sftp"),
        default="ftp",
        help="ftp (the reply to USER, default) or sftp (the SSH methods offered)",
    )
    explain.add_argument(
        "--key",
        type=Path,
        metavar="PUBFILE",
        help="with --protocol sftp: would this OpenSSH public key be accepted?",
    )
    explain.add_argument("--json", action="store_true", help="print one JSON object")
    explain.set_defaults(func=cmd_explain)


def _chain(path: Path) -> tuple[bytes, ...]:
    """The DER certificates of a PEM file, leaf first."""
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_PEM_BYTES + 1)
    except OSError as error:
        raise CommandError(f"--certificate: cannot read {path}: {error.strerror}") from None
    if len(data) > MAX_PEM_BYTES:
        raise CommandError(f"--certificate: {path}: larger than {MAX_PEM_BYTES} bytes")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CommandError(f"--certificate: {path}: no PEM certificate in it") from None
    return tuple(cert.public_bytes(Encoding.DER) for cert in certs)


def _account(config: Config, name: str, fingerprint: str | None) -> tuple[Account | None, bool]:
    """The enabled account called `name` (or None), and whether any account pins
    `fingerprint` (what the server passes as `pinned_elsewhere`)."""
    try:
        store: Any = open_user_store(config.server.users)
    except UserStoreError as error:
        raise CommandError(str(error)) from None
    try:
        account = store.get(name)
        pinned = pinned_by_any_account(store, fingerprint)
    except UserStoreError as error:
        raise CommandError(str(error)) from None
    finally:
        store.close()
    if account is not None and not account.enabled:
        account = None
    return account, pinned


def explain(
    config: Config,
    trust: TrustStore,
    name: str,
    account: Account | None,
    *,
    address: str,
    tls: bool,
    chain: tuple[bytes, ...] | None,
    pinned_elsewhere: bool,
    now: datetime.datetime,
) -> tuple[UserDecision | None, UserDecision]:
    """The decision with the certificate (None when none given) and without one."""

    def decide(peer_chain: tuple[bytes, ...], pinned: bool) -> UserDecision:
        return decide_user(
            name=name,
            account=account,
            facts=ClientFacts(address=address, protected=tls, peer_chain=peer_chain),
            classes=config.classes,
            trust=trust,
            certificate_user=config.tls.certificate_user,
            now=now,
            pinned_elsewhere=pinned,
        )

    with_certificate = decide(chain, pinned_elsewhere) if chain is not None else None
    return with_certificate, decide((), False)


def cmd_explain(args: argparse.Namespace) -> int:
    """Handler of `securetransport policy explain`."""
    if not valid_account_name(args.name):
        raise CommandError(f"not a valid account name: {args.name!r}")
    try:
        address = normalize_address(args.address)
    except ValueError:
        raise CommandError(f"--address: not an IP address: {args.address!r}") from None
    if args.protocol == "sftp":
        return explain_sftp(args, address)
    if args.key is not None:
        raise CommandError("--key: only with --protocol sftp")
    chain = _chain(args.certificate) if args.certificate is not None else None
    config = load_config_or_fail(config_path(args))
    try:
        trust = load_trust_store(config.tls.client_ca, config.tls.crl)
    except TrustStoreError as error:
        raise CommandError(str(error)) from None
    fingerprint = hashlib.sha256(chain[0]).hexdigest() if chain else None
    account, pinned = _account(config, args.name, fingerprint)
    with_certificate, without = explain(
        config,
        trust,
        args.name,
        account,
        address=address,
        tls=args.tls,
        chain=chain,
        pinned_elsewhere=pinned,
        now=datetime.datetime.now(datetime.UTC),
    )
    if args.json:
        print(
            json.dumps(
                {
                    "class": without.klass.name if without.klass else None,
                    "matched": without.matched,
                    "session_reuse": without.klass.session_reuse if without.klass else None,
                    "certificate": (
                        {"reply": with_certificate.reply, "text": with_certificate.text}
                        if with_certificate is not None
                        else None
                    ),
                    "password": {"reply": without.reply, "text": without.text},
                }
            )
        )
        return 0
    if without.klass is None:
        print("class: none")
    else:
        print(f"class: {without.klass.name} (matched: {without.matched})")
        print(f"session_reuse: {without.klass.session_reuse}")
    if with_certificate is None:
        print("certificate: none given")
    else:
        print(f"certificate: {with_certificate.reply} {with_certificate.text}")
    print(f"password: {without.reply} {without.text}")
    return 0


def explain_sftp(args: argparse.Namespace, address: str) -> int:
    """`policy explain --protocol sftp`: the class, the methods offered and the key's fate,
    from the functions the server uses (`decide_ssh`, `judge_publickey`)."""
    if args.certificate is not None:
        raise CommandError("--certificate: does not apply to --protocol sftp")
    key = read_ssh_key(args.key) if args.key is not None else None
    config = load_config_or_fail(config_path(args))
    account, _ = _account(config, args.name, None)
    decision = decide_ssh(name=args.name, account=account, address=address, classes=config.classes)
    verdict: tuple[bool, str | None] | None = None
    if key is not None:
        verdict = judge_publickey(decision, account, ssh_key_fingerprint(key), key.split()[0])
    if args.json:
        print(
            json.dumps(
                {
                    "class": decision.klass.name if decision.klass else None,
                    "matched": decision.matched,
                    "methods": list(decision.methods),
                    "publickey": (
                        {"accepted": verdict[0], "reason": verdict[1]} if verdict else None
                    ),
                }
            )
        )
        return 0
    if decision.klass is None:
        print("class: none")
    else:
        print(f"class: {decision.klass.name} (matched: {decision.matched})")
    print(f"methods: {', '.join(decision.methods) if decision.methods else 'none'}")
    if verdict is not None:
        accepted, reason = verdict
        if accepted:
            then = " (then password)" if decision.key_then_password else ""
            print(f"publickey: accepted{then}")
        else:
            print(f"publickey: refused {reason}")
    return 0
