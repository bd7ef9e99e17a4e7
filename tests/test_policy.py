"""Tests for securetransport.policy: class matching, naming, and the SPEC section 4 table.

The decision table is checked exhaustively against `expected_reply` below, a plain
re-statement of SPEC section 4 written for this test, with real certificates.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from twisted.trial.unittest import SynchronousTestCase

from securetransport.client import ClientFacts
from securetransport.config import ClassConfig
from securetransport.pki import (
    SERVER_AUTH,
    PrivateKey,
    issue_certificate,
    make_ca,
    make_crl,
    new_key,
)
from securetransport.policy import (
    ClassMatch,
    UserDecision,
    decide_user,
    match_class,
    names_account,
)
from securetransport.tls.verify import (
    CertificateVerdict,
    LoadedCRL,
    TrustStore,
    verify_certificate,
    with_pins,
)
from securetransport.userstore import Account, certificate_fingerprint

UTC = datetime.UTC
NOW = datetime.datetime(2031, 3, 15, 12, 0, tzinfo=UTC)
DAY = datetime.timedelta(days=1)
METHODS = ("certificate", "password", "certificate+password")
LOGINS = [
    combo for size in (1, 2, 3) for combo in itertools.combinations(METHODS, size)
]  # every non-empty subset
FAILED_REASONS = {
    "untrusted": "untrusted",
    "expired": "expired",
    "not-yet-valid": "not yet valid",
    "revoked": "revoked",
    "revocation-unknown": "revocation unknown",
    "wrong-usage": "wrong usage",
    "chain-too-long": "chain too long",
    "unparseable": "unparseable",
}


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def self_signed(cn: str, not_after: datetime.datetime | None = None) -> x509.Certificate:
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - 9 * DAY)
        .not_valid_after(not_after or NOW + 30 * DAY)
        .sign(key, hashes.SHA256())
    )


@dataclass(frozen=True)
class World:
    trust: TrustStore
    chains: dict[str, tuple[bytes, ...]]  # certificate kind -> presented chain
    carol_pin: str


@functools.cache
def world() -> World:
    """A root CA (with a CRL), an intermediate without a CRL, another CA, and one
    chain per kind of certificate the table distinguishes."""
    root = make_ca("Root CA", not_before=NOW - 99 * DAY, not_after=NOW + 999 * DAY, path_length=1)
    other = make_ca("Other CA", not_before=NOW - 99 * DAY, not_after=NOW + 999 * DAY)
    inter = issue_certificate(
        root[0], root[1], cn="Sub CA", is_ca=True, eku=None,
        not_before=NOW - 99 * DAY, not_after=NOW + 999 * DAY,
    )  # fmt: skip

    def leaf(
        ca: tuple[x509.Certificate, PrivateKey] = root, cn: str = "alice", **kw: Any
    ) -> x509.Certificate:
        options: dict[str, Any] = {"not_before": NOW - DAY, "not_after": NOW + 30 * DAY}
        options.update(kw)
        return issue_certificate(ca[0], ca[1], cn=cn, **options)[0]

    revoked = leaf()
    carol = self_signed("carol's own")
    alice = leaf()
    chains = {
        "names-by-cn": (der(alice),),
        "names-by-pin": (der(carol),),
        "names-other": (der(leaf(cn="bob")),),
        "pinned-other": (der(carol),),
        "untrusted": (der(leaf(ca=other)),),
        "expired": (der(leaf(not_before=NOW - 9 * DAY, not_after=NOW - DAY)),),
        "not-yet-valid": (der(leaf(not_before=NOW + DAY, not_after=NOW + 9 * DAY)),),
        "revoked": (der(revoked),),
        "revocation-unknown": (der(leaf(ca=inter)), der(inter[0])),
        "wrong-usage": (der(leaf(eku=[SERVER_AUTH])),),
        "chain-too-long": (der(alice), *[der(root[0])] * 5),
        "unparseable": (b"\x30\x82garbage",),
    }
    crl = make_crl(
        root[0], root[1], [revoked.serial_number],
        last_update=NOW - DAY, next_update=NOW + 9 * DAY, crl_number=1,
    )  # fmt: skip
    trust = TrustStore(cas=(root[0],), crls=(LoadedCRL(Path("root.crl"), crl),))
    return World(trust, chains, certificate_fingerprint(carol))


# --- the table, re-stated ------------------------------------------------------------


def table_certificate(kind: str, state: str, check: str) -> str:
    """How SPEC section 4 sees the certificate: none / names / other / failed.

    The login is carol for "names-by-pin" (her own pinned certificate) and alice
    otherwise; carol's certificate is pinned on carol for "pinned-other". "Good" is per
    account: it chains to the CA or is pinned on *this* account, so carol's self-signed
    certificate has failed (untrusted) for alice. Unknown and disabled names are judged
    like an account with no pins, so it is untrusted for them too.
    """
    if kind == "none" or check == "off":
        return "none"
    if kind in FAILED_REASONS:
        return "failed"
    if kind == "names-by-pin":
        return "names" if state == "known" else "failed"
    if kind == "names-by-cn":
        return "names" if state == "known" else "other"
    if kind == "pinned-other":
        return "failed"  # pinned on carol only: not good for alice
    return "other"  # names-other: good, naming someone else


def expected_reply(
    ssl: str, check: str, login: Sequence[str], tls: bool, kind: str, state: str
) -> tuple[int, str | None]:
    """SPEC section 4, top down: (reply, method)."""
    if not tls:
        if ssl == "mandatory":
            return 530, None
        return (331, "password") if "password" in login else (530, None)
    certificate = table_certificate(kind, state, check)
    if certificate == "names":
        if "certificate" in login:
            return 232, "certificate"
        if "password" in login:
            return 331, "password"
        if "certificate+password" in login:
            return 331, "certificate+password"
        return 530, None
    if certificate == "failed" and ssl == "mandatory":
        return 530, None
    return (331, "password") if "password" in login else (530, None)


def expected_text(reply: int, ssl: str, tls: bool, kind: str, name: str) -> str | None:
    """The texts the brief fixes; None where only 'same for everyone' is required."""
    if reply == 331:
        return f"Password required for {name}"
    if not tls and ssl == "mandatory":
        return "TLS required for this account: use AUTH TLS"
    return None


ACCOUNTS = {
    "alice": Account("alice", password_hash="x", groups=("staff",)),
    "carol": Account("carol", password_hash="x", certificates=()),
}


def login_for(kind: str) -> str:
    return "carol" if kind == "names-by-pin" else "alice"


def account_for(name: str, state: str, carol_pin: str) -> Account | None:
    account = ACCOUNTS[name]
    if name == "carol":
        account = replace(account, certificates=(carol_pin,))
    if state == "unknown":
        return None
    return replace(account, enabled=(state == "known"))


def pinned_elsewhere(kind: str, state: str) -> bool:
    """What the user store would answer: is the leaf pinned on any account, enabled or
    not?"""
    if kind == "pinned-other":
        return True  # pinned on carol, who exists
    if kind == "names-by-pin":
        return state != "unknown"  # pinned on carol only, enabled or disabled
    return False


def decide(
    klass: ClassConfig, tls: bool, kind: str, state: str, certificate_user: str = "common-name"
) -> UserDecision:
    w = world()
    name = login_for(kind)
    chain = w.chains[kind] if (tls and kind != "none") else ()
    return decide_user(
        name=name,
        account=account_for(name, state, w.carol_pin),
        facts=ClientFacts(address="192.0.2.7", protected=tls, peer_chain=chain),
        classes=[klass],
        trust=w.trust,
        certificate_user=certificate_user,
        now=NOW,
        pinned_elsewhere=pinned_elsewhere(kind, state),
    )


KINDS = ["none", "names-by-cn", "names-by-pin", "names-other", "pinned-other", *FAILED_REASONS]
STATES = ["known", "unknown", "disabled"]


class DecisionTableTests(SynchronousTestCase):
    def test_every_combination(self) -> None:
        problems: list[str] = []
        count = 0
        for ssl, check, login, tls, kind in itertools.product(
            ["mandatory", "optional"], ["verify", "off"], LOGINS, [False, True], KINDS
        ):
            klass = ClassConfig(name="c", ssl=ssl, client_certificate=check, login=login)  # type: ignore[arg-type]
            by_state: dict[str, UserDecision] = {}
            for state in STATES:
                count += 1
                where = f"ssl={ssl} cert={check} login={login} tls={tls} {kind} {state}"
                got = decide(klass, tls, kind, state)
                by_state[state] = got
                reply, method = expected_reply(ssl, check, login, tls, kind, state)
                if (got.reply, got.method) != (reply, method):
                    problems.append(f"{where}: got {got.reply} {got.method}, want {reply} {method}")
                    continue
                text = expected_text(reply, ssl, tls, kind, login_for(kind))
                if text is not None and got.text != text:
                    problems.append(f"{where}: text {got.text!r}, want {text!r}")
                certificate = table_certificate(kind, state, check) if tls else "none"
                if got.certificate != certificate:
                    problems.append(f"{where}: certificate {got.certificate}, want {certificate}")
                if got.klass != klass or got.matched != "no criteria (matches everyone)":
                    problems.append(f"{where}: class {got.klass} {got.matched}")
                looked_at = tls and check == "verify" and kind != "none"
                if (got.verdict is not None) != looked_at:
                    problems.append(f"{where}: verdict {got.verdict}")
                if reply == 232 and not got.text.startswith(
                    f"User {login_for(kind)} logged in with certificate"
                ):
                    problems.append(f"{where}: 232 text {got.text!r}")
                if certificate == "failed" and reply == 530:
                    reason = self.reason(kind, state)
                    if ssl == "mandatory":
                        want = f"client certificate rejected: {reason}"
                        if got.text != want or got.row != "tls-failed":
                            problems.append(f"{where}: {got.row} {got.text!r}, want {want!r}")
                    elif f": {reason})" not in got.text or got.row != "tls-other":
                        problems.append(f"{where}: {got.row} {got.text!r} lacks {reason}")
            # no enumeration: when the reply is the same, so is the text
            for state in ("unknown", "disabled"):
                known, other = by_state["known"], by_state[state]
                if known.reply == other.reply and known.text != other.text:
                    problems.append(f"{where}: {state} text {other.text!r} != {known.text!r}")
            if (by_state["unknown"].reply, by_state["unknown"].text) != (
                by_state["disabled"].reply,
                by_state["disabled"].text,
            ):
                problems.append(f"{where}: disabled differs from unknown")
        self.assertEqual(count, 2 * 2 * 7 * 2 * len(KINDS) * 3)
        self.assertEqual(problems, [], "\n".join(problems[:40]))

    @staticmethod
    def reason(kind: str, state: str) -> str:
        return FAILED_REASONS.get(kind, "untrusted")  # carol's own certificate, unpinned

    def test_rows_reached(self) -> None:
        rows = set()
        for ssl, check, login, tls, kind in itertools.product(
            ["mandatory", "optional"], ["verify", "off"], LOGINS, [False, True],
            ["none", "names-by-cn", "expired"],
        ):  # fmt: skip
            klass = ClassConfig(name="c", ssl=ssl, client_certificate=check, login=login)  # type: ignore[arg-type]
            rows.add(decide(klass, tls, kind, "known").row)
        self.assertEqual(
            rows, {"clear-mandatory", "clear-optional", "tls-names", "tls-failed", "tls-other"}
        )

    def test_certificate_only_in_clear(self) -> None:
        for login in [("certificate",), ("certificate+password",)]:
            klass = ClassConfig(name="c", ssl="optional", login=login)  # type: ignore[arg-type]
            got = decide(klass, False, "none", "known")
            self.assertEqual((got.reply, got.row, got.method), (530, "clear-optional", None))
            self.assertIn("AUTH TLS", got.text)

    def test_certificate_plus_password_names(self) -> None:
        klass = ClassConfig(name="c", ssl="mandatory", login=("certificate+password",))
        got = decide(klass, True, "names-by-cn", "known")
        self.assertEqual(
            (got.reply, got.method, got.row), (331, "certificate+password", "tls-names")
        )
        # without the naming certificate there is no way in
        got = decide(klass, True, "none", "known")
        self.assertEqual((got.reply, got.method, got.row), (530, None, "tls-other"))

    def test_expired_in_optional_class_is_ignored_but_recorded(self) -> None:
        klass = ClassConfig(name="c", ssl="optional", login=("certificate", "password"))
        got = decide(klass, True, "expired", "known")
        self.assertEqual((got.reply, got.row, got.certificate), (331, "tls-other", "failed"))
        self.assertEqual(got.verdict.reason if got.verdict else None, "expired")

    def test_certificate_login_text(self) -> None:
        klass = ClassConfig(name="c")
        got = decide(klass, True, "names-by-cn", "known")
        self.assertEqual(got.reply, 232)
        assert got.verdict is not None
        self.assertEqual(
            got.text, f"User alice logged in with certificate sha256:{got.verdict.fingerprint}"
        )

    def test_tls_required_text(self) -> None:
        got = decide(ClassConfig(name="c"), False, "none", "unknown")
        self.assertEqual(
            (got.reply, got.text), (530, "TLS required for this account: use AUTH TLS")
        )


class DecideUserTests(SynchronousTestCase):
    def decide(
        self,
        name: str,
        account: Account | None,
        classes: Sequence[ClassConfig],
        *,
        address: str = "192.0.2.7",
        chain: tuple[bytes, ...] = (),
        certificate_user: str = "common-name",
    ) -> UserDecision:
        return decide_user(
            name=name,
            account=account,
            facts=ClientFacts(address=address, protected=True, peer_chain=chain),
            classes=classes,
            trust=world().trust,
            certificate_user=certificate_user,
            now=NOW,
        )

    def test_no_class(self) -> None:
        classes = [ClassConfig(name="staff", groups=("staff",))]
        known = self.decide("bob", Account("bob", groups=("sales",)), classes)
        unknown = self.decide("bob", None, classes)
        self.assertEqual((known.reply, known.row, known.klass), (530, "no-class", None))
        self.assertEqual((known.reply, known.text), (unknown.reply, unknown.text))

    def test_unknown_name_has_no_groups(self) -> None:
        classes = [
            ClassConfig(name="staff", groups=("staff",), ssl="optional", login=("password",)),
            ClassConfig(name="rest", login=("certificate",)),
        ]
        known = self.decide("alice", ACCOUNTS["alice"], classes)
        unknown = self.decide("alice", None, classes)
        self.assertEqual((known.klass and known.klass.name, known.reply), ("staff", 331))
        self.assertEqual((unknown.klass and unknown.klass.name, unknown.reply), ("rest", 530))

    def test_unknown_name_is_matched_by_name_and_address(self) -> None:
        classes = [
            ClassConfig(name="partners", users=("partner-*",), addresses=(net("192.0.2.0/24"),)),
            ClassConfig(name="rest"),
        ]
        got = self.decide("partner-x", None, classes)
        self.assertEqual(got.klass, classes[0])
        self.assertEqual(got.matched, 'users "partner-*" and addresses 192.0.2.0/24')

    def test_disabled_account_object_is_treated_as_unknown(self) -> None:
        classes = [ClassConfig(name="c")]
        chain = world().chains["names-by-cn"]
        disabled = replace(ACCOUNTS["alice"], enabled=False)
        got = self.decide("alice", disabled, classes, chain=chain)
        self.assertEqual((got.reply, got.certificate), (331, "other"))
        enabled = self.decide("alice", ACCOUNTS["alice"], classes, chain=chain)
        self.assertEqual(enabled.reply, 232)

    def test_account_must_be_the_one_named(self) -> None:
        got = self.decide("Alice", ACCOUNTS["alice"], [ClassConfig(name="c")],
                          chain=world().chains["names-by-cn"])  # fmt: skip
        self.assertEqual(got.reply, 331)

    def test_email_mapping(self) -> None:
        root = make_ca("Mail CA", not_before=NOW - DAY, not_after=NOW + DAY)
        cert = issue_certificate(
            root[0], root[1], cn="Alice Example", san_email=["x@example.org", "alice"],
            not_before=NOW - DAY, not_after=NOW + DAY,
        )[0]  # fmt: skip
        trust = TrustStore(cas=(root[0],))
        for certificate_user, reply in [("email", 232), ("common-name", 331), ("none", 331)]:
            got = decide_user(
                name="alice",
                account=ACCOUNTS["alice"],
                facts=ClientFacts("127.0.0.1", protected=True, peer_chain=(der(cert),)),
                classes=[ClassConfig(name="c")],
                trust=trust,
                certificate_user=certificate_user,
                now=NOW,
            )
            self.assertEqual(got.reply, reply, certificate_user)

    def test_odd_login_name_is_shown_safely(self) -> None:
        got = self.decide("ev\x1bil\u202e\x00", None, [ClassConfig(name="c")])
        self.assertEqual(got.reply, 331)
        self.assertEqual(got.text, "Password required for ev?il??")
        long = self.decide("a" * 500, None, [ClassConfig(name="c")])
        self.assertLess(len(long.text), 100)

    def test_good_is_per_account(self) -> None:
        """A self-signed certificate pinned on carol is untrusted for alice (SPEC 4: good
        when it chains to the CA or is pinned on *this* account), pinned elsewhere or not."""
        w = world()
        chain = w.chains["pinned-other"]
        classes = [ClassConfig(name="c", login=("certificate", "password"))]
        facts = ClientFacts("127.0.0.1", protected=True, peer_chain=chain)
        args = dict(facts=facts, classes=classes, trust=w.trust,
                    certificate_user="common-name", now=NOW)  # fmt: skip
        for pinned in (True, False):
            alice = ACCOUNTS["alice"]
            got = decide_user(name="alice", account=alice, pinned_elsewhere=pinned, **args)  # type: ignore[arg-type]
            self.assertEqual(
                (got.reply, got.text, got.certificate, got.row),
                (530, "client certificate rejected: untrusted", "failed", "tls-failed"),
            )
        carol = replace(ACCOUNTS["carol"], certificates=(w.carol_pin,))
        got = decide_user(name="carol", account=carol, pinned_elsewhere=True, **args)  # type: ignore[arg-type]
        self.assertEqual((got.reply, got.certificate), (232, "names"))


class VerifiedOnceTests(SynchronousTestCase):
    """The chain is verified once after the handshake; USER applies the account's pins."""

    def test_with_pins_agrees_with_a_full_verification(self) -> None:
        w = world()
        expired_self = self_signed("expired-self", not_after=NOW - DAY)
        chains = dict(w.chains, **{"expired-pinned": (der(expired_self),)})
        pin_sets = [(), (w.carol_pin,), (certificate_fingerprint(expired_self),), ("0" * 64,)]
        checked = 0
        for kind, chain in chains.items():
            once = verify_certificate(chain, w.trust, now=NOW)
            for pins in pin_sets:
                full = verify_certificate(chain, w.trust, pins=pins, now=NOW)
                self.assertEqual(with_pins(once, pins), full, (kind, pins))
                self.assertEqual(with_pins(full, ()), once, (kind, pins))
                checked += 1
        self.assertEqual(checked, len(chains) * len(pin_sets))
        # The cases that matter: pinned self-signed good, unpinned untrusted, dates count.
        self.assertTrue(with_pins(verify_certificate(chains["names-by-pin"], w.trust, now=NOW),
                                  (w.carol_pin,)).good)  # fmt: skip
        expired = with_pins(
            verify_certificate(chains["expired-pinned"], w.trust, now=NOW),
            (certificate_fingerprint(expired_self),),
        )
        self.assertEqual(expired.reason, "expired")

    def test_decide_user_does_not_verify_again(self) -> None:
        w = world()
        chain = w.chains["names-by-cn"]
        verdict = verify_certificate(chain, w.trust, now=NOW)
        facts = ClientFacts("127.0.0.1", protected=True, peer_chain=chain, certificate=verdict)
        # An empty trust store would make a second verification say "untrusted".
        got = decide_user(
            name="alice", account=ACCOUNTS["alice"], facts=facts,
            classes=[ClassConfig(name="c")], trust=TrustStore(), certificate_user="common-name",
            now=NOW,
        )  # fmt: skip
        self.assertEqual((got.reply, got.certificate), (232, "names"))


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


class MatchClassTests(SynchronousTestCase):
    def names(self, classes: Sequence[ClassConfig], name: str, groups: Sequence[str],
              address: str) -> tuple[str | None, str | None]:  # fmt: skip
        found: ClassMatch | None = match_class(classes, name, groups, address)
        return (found.klass.name, found.matched) if found else (None, None)

    def test_table(self) -> None:
        classes = [
            ClassConfig(name="partners", users=("partner-*", "?ob")),
            ClassConfig(name="ops", groups=("ops", "admins")),
            ClassConfig(name="lan4", addresses=(net("10.0.0.0/8"), net("127.0.0.2/32"))),
            ClassConfig(name="lan6", addresses=(net("fd00::/8"),)),
            ClassConfig(name="both", users=("svc-*",), groups=("svc",)),
        ]
        cases = [
            # name, groups, address -> class, matched
            ("partner-a", (), "192.0.2.1", "partners", 'users "partner-*"'),
            ("bob", (), "192.0.2.1", "partners", 'users "?ob"'),
            ("Partner-a", (), "192.0.2.1", None, None),  # globs are case-sensitive
            ("partner-a", ("ops",), "10.1.2.3", "partners", 'users "partner-*"'),  # first wins
            ("x", ("staff", "admins"), "192.0.2.1", "ops", 'groups "admins"'),
            ("x", ("Ops",), "192.0.2.1", None, None),
            ("x", (), "10.255.0.1", "lan4", "addresses 10.0.0.0/8"),
            ("x", (), "127.0.0.2", "lan4", "addresses 127.0.0.2/32"),
            ("x", (), "127.0.0.3", None, None),
            ("x", (), "::ffff:10.9.9.9", "lan4", "addresses 10.0.0.0/8"),  # IPv4-mapped
            ("x", (), "fd12::1", "lan6", "addresses fd00::/8"),
            ("x", (), "fe80::1%eth0", None, None),
            ("x", (), "not an address", None, None),
            ("svc-a", ("svc",), "192.0.2.1", "both", 'users "svc-*" and groups "svc"'),
            ("svc-a", ("other",), "192.0.2.1", None, None),  # every criterion must hold
            ("other", ("svc",), "192.0.2.1", None, None),
        ]
        for name, groups, address, klass, matched in cases:
            self.assertEqual(
                self.names(classes, name, groups, address), (klass, matched), (name, address)
            )

    def test_ipv4_network_does_not_match_ipv6(self) -> None:
        classes = [ClassConfig(name="v6", addresses=(net("::/0"),))]
        self.assertEqual(self.names(classes, "x", (), "192.0.2.1"), (None, None))
        self.assertEqual(self.names(classes, "x", (), "2001:db8::1")[0], "v6")

    def test_no_criteria_matches_everyone(self) -> None:
        classes = [ClassConfig(name="a", users=("z*",)), ClassConfig(name="everyone")]
        self.assertEqual(
            self.names(classes, "anyone", (), "::1"),
            ("everyone", "no criteria (matches everyone)"),
        )

    def test_no_classes(self) -> None:
        self.assertIsNone(match_class([], "x", (), "127.0.0.1"))

    def test_empty_criterion_matches_nothing(self) -> None:
        self.assertIsNone(match_class([ClassConfig(name="a", users=())], "x", (), "127.0.0.1"))


def verdict(**kw: object) -> CertificateVerdict:
    base: dict[str, object] = {
        "presented": True,
        "good": True,
        "chains_to_ca": True,
        "pinned": False,
        "fingerprint": "ab" * 32,
        "subject": "CN=alice",
        "common_name": "alice",
        "emails": ("alice@example.org", "alice"),
    }
    base.update(kw)
    return CertificateVerdict(**base)  # type: ignore[arg-type]


class NamesAccountTests(SynchronousTestCase):
    alice = Account("alice")

    def test_common_name(self) -> None:
        self.assertTrue(names_account(verdict(), self.alice, "common-name"))
        self.assertFalse(names_account(verdict(common_name="Alice"), self.alice, "common-name"))
        self.assertFalse(names_account(verdict(common_name="alice "), self.alice, "common-name"))
        self.assertFalse(names_account(verdict(common_name=None), self.alice, "common-name"))
        bob = Account("bob")
        self.assertFalse(names_account(verdict(), bob, "common-name"))

    def test_email(self) -> None:
        self.assertTrue(names_account(verdict(common_name="x"), self.alice, "email"))
        self.assertFalse(names_account(verdict(emails=("alice@example.org",)), self.alice,
                                       "email"))  # fmt: skip
        account = Account("alice@example.org")
        self.assertTrue(names_account(verdict(), account, "email"))
        self.assertFalse(names_account(verdict(), account, "common-name"))
        self.assertFalse(names_account(verdict(emails=("ALICE@example.org",)), account, "email"))

    def test_none_means_pins_only(self) -> None:
        self.assertFalse(names_account(verdict(), self.alice, "none"))
        pinned = Account("alice", certificates=("ab" * 32,))
        self.assertTrue(names_account(verdict(), pinned, "none"))

    def test_unknown_setting_names_nothing(self) -> None:
        self.assertFalse(names_account(verdict(), self.alice, "common_name"))

    def test_pins(self) -> None:
        pinned = Account("zed", certificates=("ab" * 32,))
        self.assertTrue(names_account(verdict(chains_to_ca=False, pinned=True), pinned, "none"))
        # pins are compared with the fingerprint, not the verdict's flag alone
        self.assertFalse(
            names_account(verdict(chains_to_ca=False, pinned=True), Account("alice"), "common-name")
        )

    def test_account_pinning_others_is_not_named_by_attributes(self) -> None:
        account = Account("alice", certificates=("cd" * 32,))
        self.assertFalse(names_account(verdict(), account, "common-name"))
        self.assertFalse(names_account(verdict(), account, "email"))

    def test_pinned_elsewhere_never_names_by_attributes(self) -> None:
        self.assertFalse(names_account(verdict(), self.alice, "common-name", pinned_elsewhere=True))
        pinned = Account("alice", certificates=("ab" * 32,))
        self.assertTrue(names_account(verdict(), pinned, "common-name", pinned_elsewhere=True))

    def test_attributes_need_the_ca(self) -> None:
        self.assertFalse(names_account(verdict(chains_to_ca=False), self.alice, "common-name"))

    def test_only_good_certificates(self) -> None:
        failed = verdict(good=False, reason="expired")
        self.assertFalse(names_account(failed, self.alice, "common-name"))
        self.assertFalse(names_account(None, self.alice, "common-name"))
        pinned = Account("alice", certificates=("ab" * 32,))
        self.assertFalse(names_account(failed, pinned, "none"))

    def test_only_existing_enabled_accounts(self) -> None:
        self.assertFalse(names_account(verdict(), None, "common-name"))
        disabled = Account("alice", certificates=("ab" * 32,), enabled=False)
        self.assertFalse(names_account(verdict(), disabled, "none"))
        self.assertFalse(names_account(verdict(), replace(self.alice, enabled=False),
                                       "common-name"))  # fmt: skip
