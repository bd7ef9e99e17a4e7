"""SSL access by user class, decided at USER (SPEC section 4): pure functions, no I/O.

- `match_class`: the first `[[class]]` whose criteria all hold.
- `names_account`: does a verified certificate name this account?
- `decide_user`: the reply to USER (232, 331 or 530) from the decision table.

The table, read top down; the first row that applies decides (`row` ids in brackets):

| channel | client certificate                           | ssl       | reply                     |
|---------|----------------------------------------------|-----------|---------------------------|
| -       | - (no class matches)                         | -         | 530 [no-class]            |
| clear   | -                                            | mandatory | 530 TLS required          |
|         |                                              |           | [clear-mandatory]         |
| clear   | -                                            | optional  | 331 if password in login, |
|         |                                              |           | else 530 [clear-optional] |
| TLS     | good, names this account                     | either    | 232 if certificate in     |
|         |                                              |           | login, else 331 if P,     |
|         |                                              |           | else 530 [tls-names]      |
| TLS     | failed                                       | mandatory | 530 rejected, with the    |
|         |                                              |           | reason [tls-failed]       |
| TLS     | none, failed (optional), names another/none  | either    | 331 if password in login, |
|         |                                              |           | else 530 [tls-other]      |

P: `password` in login, or `certificate+password` in login and a good certificate
names the account. With `client_certificate = "off"` every certificate counts as none.

Unknown and disabled names (pass `account=None`) are judged exactly like an enabled
account with no groups and no pins: the certificate is verified with no pins, so a
failed certificate gets the same reply and text whether the name exists or not, and
no certificate can name them. Nothing in a reply text depends on the account beyond
the login name as typed. (SPEC's "for an unknown or disabled name every certificate
counts as none" is read as "no certificate names it": counting a failed certificate as
none would answer 331 to an unknown name where a known one gets 530, which the SPEC's
enumeration rules forbid.)

"Good" is per account: a certificate is verified with this account's pins only, so a
self-signed certificate pinned on another account has failed (untrusted) here. A
certificate pinned on any account, enabled or disabled (`pinned_elsewhere`), never
names another account by its attributes.
"""

from __future__ import annotations

import datetime
import fnmatch
import ipaddress
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from securetransport.client import ClientFacts
from securetransport.config import ClassConfig
from securetransport.tls.verify import (
    CertificateVerdict,
    TrustStore,
    verify_certificate,
    with_pins,
)
from securetransport.userstore import Account, ssh_key_fingerprint

# The reply texts, in one place. `{name}` is the login name as typed (made printable).
TEXT_NO_CLASS: Final = "No access class for this login"
TEXT_TLS_REQUIRED: Final = "TLS required for this account: use AUTH TLS"
TEXT_PASSWORD: Final = "Password required for {name}"
TEXT_CERTIFICATE_LOGIN: Final = "User {name} logged in with certificate sha256:{fingerprint}"
TEXT_CERTIFICATE_REJECTED: Final = "client certificate rejected: {reason}"
TEXT_CERTIFICATE_REQUIRED_CLEAR: Final = (
    "A client certificate is required for this account: use AUTH TLS and present it"
)
TEXT_CERTIFICATE_REQUIRED: Final = "A client certificate naming this account is required"
TEXT_CERTIFICATE_IGNORED: Final = " (the one presented: {reason})"
TEXT_NO_METHOD: Final = "No login method of this class accepts this certificate"

Row = Literal[
    "no-class", "clear-mandatory", "clear-optional", "tls-names", "tls-failed", "tls-other"
]
Method = Literal["certificate", "password", "certificate+password"]
CertificateStatus = Literal["none", "names", "other", "failed"]

_NAME_SHOWN: Final = 64


@dataclass(frozen=True)
class ClassMatch:
    """The class that applies and the criterion that chose it (for logs and `explain`)."""

    klass: ClassConfig
    matched: str


@dataclass(frozen=True)
class UserDecision:
    """The reply to USER and why.

    `method` is "certificate" for 232; for 331, "password", or "certificate+password"
    when only that method allows the login (PASS must come over a session presenting
    this same certificate); None for 530. `certificate` is how the table saw the client
    certificate; `verdict` is None when no certificate was looked at (clear channel,
    `client_certificate = "off"`, no class).
    """

    reply: Literal[232, 331, 530]
    text: str
    row: Row
    klass: ClassConfig | None = None
    matched: str | None = None
    method: Method | None = None
    verdict: CertificateVerdict | None = None
    certificate: CertificateStatus = "none"


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _criteria(klass: ClassConfig, name: str, groups: Sequence[str], address: str) -> str | None:
    """The text naming the criteria of `klass` that hold, or None if one does not."""
    parts: list[str] = []
    if klass.users is not None:
        pattern = next((p for p in klass.users if fnmatch.fnmatchcase(name, p)), None)
        if pattern is None:
            return None
        parts.append(f'users "{pattern}"')
    if klass.groups is not None:
        group = next((g for g in klass.groups if g in groups), None)
        if group is None:
            return None
        parts.append(f'groups "{group}"')
    if klass.addresses is not None:
        ip = _ip(address)
        network = None if ip is None else next((n for n in klass.addresses if ip in n), None)
        if network is None:
            return None
        parts.append(f"addresses {network}")
    return " and ".join(parts) if parts else "no criteria (matches everyone)"


def match_class(
    classes: Sequence[ClassConfig], name: str, groups: Sequence[str], address: str
) -> ClassMatch | None:
    """The first class whose present criteria all hold (globs on `name`, any group in
    common, `address` in a network; IPv4-mapped IPv6 is compared as IPv4), or None."""
    for klass in classes:
        matched = _criteria(klass, name, groups, address)
        if matched is not None:
            return ClassMatch(klass, matched)
    return None


def names_account(
    verdict: CertificateVerdict | None,
    account: Account | None,
    certificate_user: str,
    *,
    pinned_elsewhere: bool = False,
) -> bool:
    """True when a good certificate names this existing, enabled account (SPEC section 4).

    It names it when its fingerprint is pinned on the account, or when it chains to
    `tls.client_ca`, the account pins none and the attribute chosen by
    `certificate_user` ("common-name": the CN; "email": one of the rfc822Name SANs;
    "none": nothing) equals the account name exactly. `pinned_elsewhere` is True when
    the fingerprint is pinned on any account, enabled or disabled (the user store knows:
    `find_by_fingerprint`): such a certificate names only the enabled accounts that pin
    it, never one by its attributes.
    """
    if verdict is None or not verdict.good or account is None or not account.enabled:
        return False
    pins = {pin.replace(":", "").lower() for pin in account.certificates}
    if verdict.fingerprint is not None and verdict.fingerprint in pins:
        return True
    if not verdict.chains_to_ca or pins or pinned_elsewhere:
        return False
    if certificate_user == "common-name":
        return verdict.common_name is not None and verdict.common_name == account.name
    if certificate_user == "email":
        return account.name in verdict.emails
    return False


def _shown(name: str) -> str:
    """The login name for a reply text: control characters replaced, length capped."""
    text = "".join("?" if unicodedata.category(c).startswith("C") else c for c in name)
    return text if len(text) <= _NAME_SHOWN else text[:_NAME_SHOWN] + "..."


def decide_user(
    *,
    name: str,
    account: Account | None,
    facts: ClientFacts,
    classes: Sequence[ClassConfig],
    trust: TrustStore,
    certificate_user: str,
    now: datetime.datetime,
    pinned_elsewhere: bool = False,
) -> UserDecision:
    """The reply to `USER name` (SPEC section 4).

    `account` is None for an unknown or a disabled name (a disabled Account is
    treated as None too). `pinned_elsewhere`: the presented leaf's fingerprint is
    pinned on some account, enabled or not (see `names_account`). The certificate is
    verified with this account's pins only. `now` judges certificate dates.
    """
    if account is not None and (not account.enabled or account.name != name):
        account = None
    shown = _shown(name)
    found = match_class(classes, name, account.groups if account else (), facts.address)
    if found is None:
        return UserDecision(530, TEXT_NO_CLASS, "no-class")
    klass, login = found.klass, found.klass.login

    def decision(
        reply: Literal[232, 331, 530],
        text: str,
        row: Row,
        method: Method | None = None,
        verdict: CertificateVerdict | None = None,
        certificate: CertificateStatus = "none",
    ) -> UserDecision:
        return UserDecision(reply, text, row, klass, found.matched, method, verdict, certificate)

    if not facts.protected:
        if klass.ssl == "mandatory":
            return decision(530, TEXT_TLS_REQUIRED, "clear-mandatory")
        if "password" in login:
            return decision(331, TEXT_PASSWORD.format(name=shown), "clear-optional", "password")
        return decision(530, TEXT_CERTIFICATE_REQUIRED_CLEAR, "clear-optional")

    verdict = None
    status: CertificateStatus = "none"
    if klass.client_certificate == "verify" and facts.peer_chain:
        pins = account.certificates if account else ()
        # Verified once after the handshake (facts.certificate); only the pins differ.
        base = facts.certificate
        if base is None:
            base = verify_certificate(facts.peer_chain, trust, now=now)
        verdict = with_pins(base, pins)
        if not verdict.good:
            status = "failed"
        elif names_account(verdict, account, certificate_user, pinned_elsewhere=pinned_elsewhere):
            status = "names"
        else:
            status = "other"

    if status == "names":
        assert verdict is not None and verdict.fingerprint is not None
        if "certificate" in login:
            text = TEXT_CERTIFICATE_LOGIN.format(name=shown, fingerprint=verdict.fingerprint)
            return decision(232, text, "tls-names", "certificate", verdict, status)
        if "password" in login or "certificate+password" in login:
            method: Method = "password" if "password" in login else "certificate+password"
            text = TEXT_PASSWORD.format(name=shown)
            return decision(331, text, "tls-names", method, verdict, status)
        return decision(530, TEXT_NO_METHOD, "tls-names", None, verdict, status)
    if status == "failed" and klass.ssl == "mandatory":
        assert verdict is not None
        text = TEXT_CERTIFICATE_REJECTED.format(reason=verdict.reason)
        return decision(530, text, "tls-failed", None, verdict, status)
    if "password" in login:
        text = TEXT_PASSWORD.format(name=shown)
        return decision(331, text, "tls-other", "password", verdict, status)
    text = TEXT_CERTIFICATE_REQUIRED
    if status == "failed" and verdict is not None:
        text += TEXT_CERTIFICATE_IGNORED.format(reason=verdict.reason)
    return decision(530, text, "tls-other", None, verdict, status)


# --- SSH (SPEC section 9) -----------------------------------------------------------------
#
# For an SSH session the class is found as at USER (login name, groups, address); `ssl`
# and `client_certificate` do not apply. The methods offered after `none` are the
# class's `login` entries among the SSH ones: "publickey" on the wire for `publickey` or
# `publickey+password`, "password" for `password`. A key accepted where only
# `publickey+password` allows it is a partial success, after which only "password" is
# offered. Unknown and disabled names are judged like an account with no groups.

SSHMethod = Literal["publickey", "publickey+password", "password"]
SSH_METHODS: Final[tuple[SSHMethod, ...]] = ("publickey", "publickey+password", "password")


@dataclass(frozen=True)
class SSHDecision:
    """The class for an SSH login and what it allows.

    `methods`: the class's SSH login entries, key first. `offered`: the method names
    sent after `none` ("publickey", "password"); empty when SSH logins are refused.
    """

    klass: ClassConfig | None
    matched: str | None
    methods: tuple[SSHMethod, ...]
    offered: tuple[str, ...]

    @property
    def key_completes(self) -> bool:
        """A good key alone logs in (`publickey`)."""
        return "publickey" in self.methods

    @property
    def key_then_password(self) -> bool:
        """A good key is a partial success that a password completes."""
        return "publickey+password" in self.methods and "publickey" not in self.methods


def decide_ssh(
    *, name: str, account: Account | None, address: str, classes: Sequence[ClassConfig]
) -> SSHDecision:
    """The class and methods for an SSH login as `name` from `address` (pure)."""
    if account is not None and (not account.enabled or account.name != name):
        account = None
    found = match_class(classes, name, account.groups if account else (), address)
    if found is None:
        return SSHDecision(None, None, (), ())
    login = found.klass.login
    methods = tuple(m for m in SSH_METHODS if m in login)
    offered: list[str] = []
    if "publickey" in methods or "publickey+password" in methods:
        offered.append("publickey")
    if "password" in methods:
        offered.append("password")
    return SSHDecision(found.klass, found.matched, methods, tuple(offered))


# Signature algorithms never accepted for a user key (SHA-1 RSA and DSA).
REFUSED_KEY_ALGORITHMS: Final = frozenset({"ssh-rsa", "ssh-dss"})


def judge_publickey(
    decision: SSHDecision, account: Account | None, fingerprint: str, algorithm: str
) -> tuple[bool, str | None]:
    """Would this key (SHA256 fingerprint, key type) be accepted? (accepted, reason if not).

    For `policy explain`; the server's checker applies the same rules.
    """
    if decision.klass is None:
        return False, "no access class for this login"
    if "publickey" not in decision.offered:
        return False, f"class {decision.klass.name} does not allow publickey"
    if algorithm == "ssh-dss":
        return False, "DSA keys are refused"
    if account is None or not account.enabled:
        return False, "no such enabled account"
    if fingerprint not in {ssh_key_fingerprint(k) for k in account.ssh_keys}:
        return False, "key not registered on the account"
    return True, None
