"""SSL access by user class, end to end (issue 4, SPEC section 4): a live server, certificates
made in the tests, and real clients (ftplib with a client certificate, curl, lftp).

Rows of the decision table (SPEC section 4) and the tests that show them:

- clear | - | mandatory -> 530 "TLS required", PASS never accepted, AUTH TLS then works:
  ClearChannelTests.test_clear_user_in_mandatory_class_then_auth_tls (ftplib),
  ClearChannelTests.test_curl_without_tls_in_mandatory_class (curl),
  CertificateAndPasswordTests.test_needs_both_ftplib, ClientCertificateOffTests,
  AddressClassTests.test_second_loopback_address_gets_the_mandatory_class
- clear | - | optional -> 331 if password in login (then 230), else 530:
  ClearChannelTests.test_clear_user_in_optional_class (ftplib, curl)
- TLS | good, names this account | either -> 232 without PASS if certificate in login:
  TrustedCertificateTests.* (ftplib, curl, lftp, implicit port, TLS 1.2, REIN),
  PinnedCertificateTests.test_pinned_self_signed_logs_in_and_disables_cn_mapping,
  PinnedCertificateTests.test_certificate_user_none_pins_only, EmailMappingTests,
  RevocationTests.test_unrevoked_certificate_logs_in;
  else 331 if P (certificate+password: the password is then required):
  CertificateAndPasswordTests.* (ftplib, curl, lftp)
- TLS | failed | mandatory -> 530 "client certificate rejected: REASON":
  FailedCertificateTests.test_mandatory_class_rejects_with_reason_ftplib / _curl
  (untrusted, expired, not yet valid, wrong usage), test_self_signed_not_pinned_is_untrusted,
  RevocationTests.test_revoked_certificate (revoked),
  RevocationTests.test_stale_crl_gives_revocation_unknown (revocation unknown),
  PinnedCertificateTests.test_pinned_certificate_still_needs_valid_dates,
  BadInputTests.test_chain_of_seven (chain too long), BadInputTests.test_unparseable_subject
- TLS | none, failed (optional class), or names another account | either -> 331 if password
  in login, else 530:
  FailedCertificateTests.test_optional_class_falls_back_to_password_ftplib / _curl,
  OtherAccountTests.* (CN=bob logging in as alice; ftplib, curl, lftp),
  PinnedCertificateTests.test_pin_on_another_account_never_names_by_cn,
  CertificateOnlyTests.test_no_password_path (login = ["certificate"]: 530),
  ClientCertificateOffTests.test_certificates_are_ignored, BadInputTests.test_odd_common_names_*

Also: address criteria (AddressClassTests, client bound to 127.0.0.2), enumeration and its
timing (EnumerationTests), the session after a refused USER (SessionStateTests), PROT C in a
mandatory class (DataProtectionTests), `policy explain` against the live server
(ExplainAgreementTests, AddressClassTests.test_explain_agrees_for_addresses), bad input
(BadInputTests).
"""

from __future__ import annotations

import ftplib
import select
import socket
import ssl
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.e2e.access_helpers import (
    DAY,
    CertFactory,
    ClientCert,
    Trace,
    code,
    curl_dialogue,
    dialogue,
    explain,
    lftp_dialogue,
    open_ftp,
    step,
    utcnow,
)
from tests.e2e.harness import PASSWORD, LiveServer, in_thread

# One class per situation, chosen by the login name; the client certificate's CN is the name.
MATRIX = """
[[class]]
name = "mandatory"
users = ["alice", "bob", "m-*"]
ssl = "mandatory"
client_certificate = "verify"
login = ["certificate", "password"]

[[class]]
name = "optional"
users = ["o-*"]
ssl = "optional"
login = ["certificate", "password"]

[[class]]
name = "certificate-only"
users = ["c-*"]
ssl = "mandatory"
login = ["certificate"]

[[class]]
name = "certificate-and-password"
users = ["b-*"]
ssl = "mandatory"
login = ["certificate+password"]

[[class]]
name = "optional-certificate-only"
users = ["co-*"]
ssl = "optional"
login = ["certificate"]

[[class]]
name = "no-certificates"
users = ["n-*"]
ssl = "mandatory"
client_certificate = "off"
login = ["password"]
"""
USERS = ("alice", "bob", "o-alice", "c-alice", "b-alice", "co-alice", "n-alice")
TLS_REQUIRED = "530 TLS required for this account: use AUTH TLS"
FAST_FAILURES = 0.02  # seconds: the failure delay base in these tests (1 s in production)


def rejected(reason: str) -> str:
    return f"530 client certificate rejected: {reason}"


def start_matrix(case: TestCase, **options: Any) -> LiveServer:
    server = LiveServer(case, classes=MATRIX, users=USERS, **options).start()
    server.runtime.failure_delay_base = FAST_FAILURES
    return server


def start_for_many_failures(case: TestCase) -> LiveServer:
    """The matrix server with no ban and almost no failure delay, for tests that fail a lot."""
    server = start_matrix(case, extra_server="max_login_failures = 1000")
    server.runtime.failure_delay_base = 0.001
    return server


def certificates(case: TestCase, server: LiveServer) -> CertFactory:
    return CertFactory(server, Path(case.mktemp()).absolute())


def run(
    server: LiveServer,
    lines: list[str],
    cert: ClientCert | None = None,
    *,
    source: str | None = None,
    listing: list[str] | None = None,
) -> defer.Deferred[list[str]]:
    return in_thread(dialogue, server, lines, cert, source=source, listing=listing)


def pin(server: LiveServer, name: str, *fingerprints: str) -> None:
    store = server.store()
    account = store.get(name)
    store.update(replace(account, certificates=tuple(fingerprints)))


def disable(server: LiveServer, name: str) -> None:
    store = server.store()
    store.update(replace(store.get(name), enabled=False))


def assert_password_login(case: TestCase, trace: Trace, note: object = None) -> None:
    """curl or lftp logged in by password: exit status 0, USER 331, PASS 230."""
    case.assertEqual(trace.exit_code, 0, (note, trace.stderr[-2000:]))
    case.assertEqual(code(trace.reply_to("USER") or ""), "331", note)
    case.assertEqual(code(trace.reply_to("PASS") or ""), "230", note)


class MatrixTestCase(TestCase):
    """A live server with the MATRIX classes and USERS (`self.server`), certificates for it
    (`self.certs`)."""

    timeout = 60

    def setUp(self) -> None:
        self.server = start_matrix(self)
        self.certs = certificates(self, self.server)


class ClearChannelTests(MatrixTestCase):
    """Rows "clear, mandatory" and "clear, optional"."""

    @defer.inlineCallbacks
    def test_clear_user_in_mandatory_class_then_auth_tls(self) -> Any:
        lines = ["USER alice", f"PASS {PASSWORD}", "PWD", "AUTH TLS", "USER alice"]
        replies = yield run(self.server, [*lines, f"PASS {PASSWORD}", "PWD"])
        self.assertEqual(replies[0], TLS_REQUIRED)
        self.assertIn(code(replies[1]), ("503", "530"))  # never 230 in clear
        self.assertEqual(code(replies[2]), "530")  # not logged in
        self.assertEqual(code(replies[3]), "234")
        self.assertEqual([code(r) for r in replies[4:]], ["331", "230", "257"])
        # The same, presenting a certificate after AUTH TLS: 232 without PASS.
        replies = yield run(self.server, [*lines, "PWD"], self.certs.existing("alice"))
        self.assertEqual([code(r) for r in replies], ["530", "503", "530", "234", "232", "257"])
        # An unknown name in that class gets the same reply in clear.
        replies = yield run(self.server, ["USER m-nobody", f"PASS {PASSWORD}"])
        self.assertEqual(replies[0], TLS_REQUIRED)
        self.assertIn(code(replies[1]), ("503", "530"))

    @defer.inlineCallbacks
    def test_curl_without_tls_in_mandatory_class(self) -> Any:
        trace = yield curl_dialogue(self.server, "alice", PASSWORD, ssl_required=False)
        self.assertEqual(trace.reply_to("USER"), TLS_REQUIRED)
        self.assertNotIn("230", [code(r) for r in trace.received])
        self.assertNotEqual(trace.exit_code, 0)
        # curl with --ssl-reqd on the same server logs in.
        trace = yield curl_dialogue(self.server, "alice", PASSWORD)
        self.assertEqual(trace.exit_code, 0, trace.stderr)
        self.assertEqual(code(trace.reply_to("PASS") or ""), "230")

    @defer.inlineCallbacks
    def test_clear_user_in_optional_class(self) -> Any:
        replies = yield run(self.server, ["USER o-alice", f"PASS {PASSWORD}", "PWD"])
        self.assertEqual([code(r) for r in replies], ["331", "230", "257"])
        # A 331 received in clear is dropped by AUTH TLS: USER again over TLS.
        replies = yield run(self.server, ["USER o-alice", "AUTH TLS", f"PASS {PASSWORD}"])
        self.assertEqual([code(r) for r in replies], ["331", "234", "503"])
        # optional, but only certificate logins: no password path in clear (nor in TLS).
        replies = yield run(self.server, ["USER co-alice", f"PASS {PASSWORD}"])
        self.assertEqual(code(replies[0]), "530")
        self.assertIn("certificate", replies[0])
        self.assertIn(code(replies[1]), ("503", "530"))
        trace = yield curl_dialogue(self.server, "o-alice", PASSWORD, ssl_required=False)
        assert_password_login(self, trace)
        self.assertFalse(trace.sent_verb("AUTH"))


class TrustedCertificateTests(MatrixTestCase):
    """Row "TLS, good certificate naming this account": 232 and no PASS."""

    @defer.inlineCallbacks
    def test_ftplib_232_in_every_class_with_certificate_login(self) -> Any:
        for name in ("alice", "o-alice", "c-alice", "co-alice"):
            lines = ["AUTH TLS", f"USER {name}", "PASS wrong-password", "PBSZ 0", "PROT P", "LIST"]
            replies = yield run(self.server, lines, self.certs.existing(name))
            self.assertEqual(code(replies[1]), "232", (name, replies))
            self.assertEqual(code(replies[2]), "503", (name, replies))  # already logged in
            self.assertEqual(code(replies[5]), "226", (name, replies))

    @defer.inlineCallbacks
    def test_curl_232_without_pass(self) -> Any:
        for name in ("alice", "c-alice"):
            trace = yield curl_dialogue(
                self.server, name, "wrong-password", self.certs.existing(name)
            )
            self.assertEqual(trace.exit_code, 0, trace.stderr)
            self.assertEqual(code(trace.reply_to("USER") or ""), "232")
            self.assertFalse(trace.sent_verb("PASS"), trace.sent)
            self.assertEqual(code(trace.reply_to("LIST") or ""), "226")

    @defer.inlineCallbacks
    def test_lftp_232_without_pass(self) -> Any:
        (self.server.home("c-alice") / "hello.txt").write_text("hi")
        trace = yield lftp_dialogue(
            self.server, "c-alice", "wrong-password", self.certs.existing("c-alice")
        )
        self.assertEqual(trace.exit_code, 0, trace.stderr[-3000:])
        self.assertEqual(code(trace.reply_to("USER") or ""), "232")
        self.assertFalse(trace.sent_verb("PASS"), trace.sent)
        self.assertIn(b"hello.txt", trace.stdout)

    @defer.inlineCallbacks
    def test_curl_implicit_port_and_tls_1_2(self) -> Any:
        alice = self.certs.existing("alice")
        for options in ({"implicit": True}, {"extra": ["--tls-max", "1.2"]}):
            trace = yield curl_dialogue(self.server, "alice", "wrong-password", alice, **options)
            self.assertEqual(trace.exit_code, 0, (options, trace.stderr[-2000:]))
            self.assertEqual(code(trace.reply_to("USER") or ""), "232", options)
            self.assertFalse(trace.sent_verb("PASS"), options)

    @defer.inlineCallbacks
    def test_rein_keeps_the_certificate_result(self) -> Any:
        lines = ["AUTH TLS", "USER alice", "REIN", "USER alice", "PWD"]
        replies = yield run(self.server, lines, self.certs.existing("alice"))
        self.assertEqual([code(r) for r in replies], ["234", "232", "220", "232", "257"])

    @defer.inlineCallbacks
    def test_audit_records_the_certificate_login(self) -> Any:
        alice = self.certs.existing("alice")
        replies = yield run(self.server, ["AUTH TLS", "USER alice"], alice)
        self.assertEqual(code(replies[1]), "232")
        users = [e for e in self.server.audit_events() if e.get("event") == "user"]
        logins = [e for e in self.server.audit_events() if e.get("event") == "login"]
        self.assertEqual(users[-1]["class"], "mandatory")
        self.assertEqual(users[-1]["reply"], 232)
        self.assertEqual(users[-1]["certificate_fingerprint"], alice.fingerprint)
        self.assertEqual(users[-1]["certificate_result"], "good")
        self.assertIn("CN=alice", users[-1]["certificate_subject"])
        self.assertEqual((logins[-1]["method"], logins[-1]["result"]), ("certificate", "success"))


class AuditNameTests(TestCase):
    """Typed login names reach the audit log only when they are accounts."""

    timeout = 60

    @defer.inlineCallbacks
    def test_names_that_are_not_accounts_are_not_logged(self) -> Any:
        server = LiveServer(self, extra_server="max_login_failures = 1000").start()
        server.runtime.failure_delay_base = 0.001
        disable(server, "bob")
        secret = "S3cr3t!pw"
        for name in (secret, secret, "alice", "bob"):
            # One optional class for everyone: clear and TLS logins reach the password check.
            replies = yield run(server, [f"USER {name}", "PASS wrong"])
            self.assertEqual([code(r) for r in replies], ["331", "530"], (name, replies))
            replies = yield run(server, ["AUTH TLS", f"USER {name}", "PASS wrong"])
            self.assertEqual([code(r) for r in replies], ["234", "331", "530"], (name, replies))
        log = (server.root / "log" / "audit.jsonl").read_text()
        self.assertNotIn(secret, log)
        events = [e for e in server.audit_events() if e["event"] in ("user", "login")]
        by_name = {
            (e["event"], e["user"], e.get("user_key")) for e in events if e["event"] == "login"
        }
        unknown = [e for e in events if e["user"] is None]
        self.assertEqual(len(unknown), 4 * 2)  # 4 sessions typed it: USER and PASS events
        self.assertEqual(len({e["user_key"] for e in unknown}), 1, unknown)  # grouped
        self.assertEqual(len(unknown[0]["user_key"]), 16)
        self.assertIn(("login", "alice", None), by_name)
        self.assertIn(("login", "bob", None), by_name)  # disabled, still an account


class FailedCertificateTests(TestCase):
    """Row "TLS, failed, mandatory" (530 with the reason) and, in an optional class, the
    password fallback (the failed certificate is ignored)."""

    timeout = 90

    def setUp(self) -> None:
        self.server = start_matrix(self)
        certs = certificates(self, self.server)
        self.failed = {
            "untrusted": lambda cn: certs.other_ca(f"other-{cn}", cn),
            "expired": lambda cn: certs.expired(f"expired-{cn}", cn),
            "not yet valid": lambda cn: certs.not_yet_valid(f"future-{cn}", cn),
            "wrong usage": lambda cn: certs.server_auth_only(f"server-auth-{cn}", cn),
        }
        self.certs = certs

    @defer.inlineCallbacks
    def test_mandatory_class_rejects_with_reason_ftplib(self) -> Any:
        for reason, make in self.failed.items():
            for name in ("alice", "c-alice", "b-alice"):
                lines = ["AUTH TLS", f"USER {name}", f"PASS {PASSWORD}", "PWD"]
                replies = yield run(self.server, lines, make(name))
                self.assertEqual(replies[1], rejected(reason), (name, replies))
                self.assertEqual(code(replies[2]), "503", (name, replies))
                self.assertEqual(code(replies[3]), "530", (name, replies))
        users = [e for e in self.server.audit_events() if e.get("event") == "user"]
        self.assertIn("failed: expired", [e["certificate_result"] for e in users])

    @defer.inlineCallbacks
    def test_mandatory_class_rejects_with_reason_curl(self) -> Any:
        for reason, make in self.failed.items():
            trace = yield curl_dialogue(self.server, "alice", PASSWORD, make("alice"))
            self.assertEqual(trace.reply_to("USER"), rejected(reason), trace.stderr[-2000:])
            self.assertNotIn("230", [code(r) for r in trace.received])
            self.assertNotEqual(trace.exit_code, 0)

    @defer.inlineCallbacks
    def test_optional_class_falls_back_to_password_ftplib(self) -> Any:
        for reason, make in self.failed.items():
            cert = make("o-alice")
            lines = ["AUTH TLS", "USER o-alice", f"PASS {PASSWORD}", "PWD"]
            replies = yield run(self.server, lines, cert)
            self.assertEqual([code(r) for r in replies], ["234", "331", "230", "257"], reason)
            lines = ["AUTH TLS", "USER o-alice", "PASS wrong-password"]
            replies = yield run(self.server, lines, cert)
            self.assertEqual([code(r) for r in replies], ["234", "331", "530"], reason)
            # optional, certificate only: the failed certificate leaves no way in.
            lines = ["AUTH TLS", "USER co-alice", f"PASS {PASSWORD}"]
            replies = yield run(self.server, lines, make("co-alice"))
            self.assertEqual(code(replies[1]), "530", reason)
            self.assertIn(reason, replies[1])
            self.assertEqual(code(replies[2]), "503", reason)

    @defer.inlineCallbacks
    def test_optional_class_falls_back_to_password_curl(self) -> Any:
        for reason, make in self.failed.items():
            trace = yield curl_dialogue(self.server, "o-alice", PASSWORD, make("o-alice"))
            assert_password_login(self, trace, reason)

    @defer.inlineCallbacks
    def test_self_signed_not_pinned_is_untrusted(self) -> Any:
        cert = self.certs.self_signed("self-alice", "alice")
        replies = yield run(self.server, ["AUTH TLS", "USER alice"], cert)
        self.assertEqual(replies[1], rejected("untrusted"))
        trace = yield curl_dialogue(self.server, "alice", PASSWORD, cert)
        self.assertEqual(trace.reply_to("USER"), rejected("untrusted"))


class RevocationTests(TestCase):
    """Row "TLS, failed, mandatory" for revoked and revocation unknown (tls.crl)."""

    timeout = 60

    @defer.inlineCallbacks
    def test_revoked_certificate(self) -> Any:
        server = LiveServer(self, classes=MATRIX, users=USERS, crl=("ca.crl",))
        certs = certificates(self, server)
        revoked = certs.issue("revoked-alice", "alice")
        revoked_optional = certs.issue("revoked-o-alice", "o-alice")
        certs.crl(server.root / "ca.crl", [revoked.serial, revoked_optional.serial])
        server.start()
        server.runtime.failure_delay_base = FAST_FAILURES
        replies = yield run(server, ["AUTH TLS", "USER alice", f"PASS {PASSWORD}"], revoked)
        self.assertEqual(replies[1], rejected("revoked"))
        self.assertEqual(code(replies[2]), "503")
        trace = yield curl_dialogue(server, "alice", PASSWORD, revoked)
        self.assertEqual(trace.reply_to("USER"), rejected("revoked"))
        self.assertNotEqual(trace.exit_code, 0)
        lines = ["AUTH TLS", "USER o-alice", f"PASS {PASSWORD}"]
        replies = yield run(server, lines, revoked_optional)
        self.assertEqual([code(r) for r in replies], ["234", "331", "230"])

    @defer.inlineCallbacks
    def test_unrevoked_certificate_logs_in(self) -> Any:
        server = LiveServer(self, classes=MATRIX, users=USERS, crl=("ca.crl",))
        certs = certificates(self, server)
        other = certs.issue("other-alice", "alice")
        certs.crl(server.root / "ca.crl", [other.serial])
        server.start()
        replies = yield run(server, ["AUTH TLS", "USER alice"], certs.existing("alice"))
        self.assertEqual(code(replies[1]), "232")
        trace = yield lftp_dialogue(server, "alice", "wrong-password", certs.existing("alice"))
        self.assertEqual(code(trace.reply_to("USER") or ""), "232", trace.stderr[-2000:])
        self.assertEqual(trace.exit_code, 0)

    @defer.inlineCallbacks
    def test_stale_crl_gives_revocation_unknown(self) -> Any:
        server = LiveServer(self, classes=MATRIX, users=USERS, crl=("ca.crl",))
        certs = certificates(self, server)
        # A CRL past its next update: revocation is unknown (fail closed).
        # The server logs a warning about this CRL at start (as `text`: a `warning` field
        # would make trial's reporter take the event for a Python warning).
        certs.crl(server.root / "ca.crl", [], next_update=utcnow() - DAY)
        server.start()
        replies = yield run(server, ["AUTH TLS", "USER alice"], certs.existing("alice"))
        self.assertEqual(replies[1], rejected("revocation unknown"))
        lines = ["AUTH TLS", "USER o-alice", f"PASS {PASSWORD}"]
        replies = yield run(server, lines, certs.existing("o-alice"))
        self.assertEqual([code(r) for r in replies], ["234", "331", "230"])


class OtherAccountTests(MatrixTestCase):
    """Row "TLS, names another account": the certificate is ignored, 331 if password."""

    @defer.inlineCallbacks
    def test_bob_certificate_for_alice(self) -> Any:
        bob = self.certs.existing("bob")
        for name in ("alice", "o-alice"):
            lines = ["AUTH TLS", f"USER {name}", f"PASS {PASSWORD}", "PWD"]
            replies = yield run(self.server, lines, bob)
            self.assertEqual([code(r) for r in replies], ["234", "331", "230", "257"], name)
        replies = yield run(self.server, ["AUTH TLS", "USER alice", "PASS wrong-password"], bob)
        self.assertEqual(code(replies[2]), "530")
        replies = yield run(self.server, ["AUTH TLS", "USER bob"], bob)
        self.assertEqual(code(replies[1]), "232")

    @defer.inlineCallbacks
    def test_bob_certificate_for_alice_curl_and_lftp(self) -> Any:
        bob = self.certs.existing("bob")
        trace = yield curl_dialogue(self.server, "alice", PASSWORD, bob)
        assert_password_login(self, trace)
        trace = yield lftp_dialogue(self.server, "alice", PASSWORD, bob)
        assert_password_login(self, trace)


class CertificateOnlyTests(MatrixTestCase):
    """login = ["certificate"]: no password path, in clear or over TLS."""

    @defer.inlineCallbacks
    def test_no_password_path(self) -> Any:
        cases: list[tuple[ClientCert | None, list[str]]] = [
            (None, ["USER c-alice", f"PASS {PASSWORD}"]),  # clear: mandatory
            (None, ["AUTH TLS", "USER c-alice", f"PASS {PASSWORD}"]),  # none presented
            (self.certs.existing("bob"), ["AUTH TLS", "USER c-alice", f"PASS {PASSWORD}"]),
        ]
        for cert, lines in cases:
            replies = yield run(self.server, lines, cert)
            self.assertEqual(code(replies[-2]), "530", replies)
            self.assertIn(code(replies[-1]), ("503", "530"), replies)
        self.assertEqual(replies[-2], "530 A client certificate naming this account is required")
        trace = yield curl_dialogue(self.server, "c-alice", PASSWORD)
        self.assertEqual(code(trace.reply_to("USER") or ""), "530")
        self.assertNotIn("230", [code(r) for r in trace.received])
        self.assertNotEqual(trace.exit_code, 0)


class CertificateAndPasswordTests(MatrixTestCase):
    """login = ["certificate+password"]: a certificate naming the account AND its password."""

    def setUp(self) -> None:
        super().setUp()
        self.own = self.certs.existing("b-alice")

    @defer.inlineCallbacks
    def test_needs_both_ftplib(self) -> Any:
        lines = ["AUTH TLS", "USER b-alice", f"PASS {PASSWORD}", "PWD"]
        replies = yield run(self.server, lines, self.own)
        self.assertEqual([code(r) for r in replies], ["234", "331", "230", "257"])
        lines = ["AUTH TLS", "USER b-alice", "PASS wrong-password", "PWD"]
        replies = yield run(self.server, lines, self.own)
        self.assertEqual([code(r) for r in replies], ["234", "331", "530", "530"])
        for cert in (None, self.certs.existing("bob")):  # no certificate; another's
            lines = ["AUTH TLS", "USER b-alice", f"PASS {PASSWORD}"]
            replies = yield run(self.server, lines, cert)
            self.assertEqual(code(replies[1]), "530", replies)
            self.assertIn(code(replies[2]), ("503", "530"), replies)
        replies = yield run(self.server, ["USER b-alice", f"PASS {PASSWORD}"])  # clear
        self.assertEqual(replies[0], TLS_REQUIRED)
        self.assertIn(code(replies[1]), ("503", "530"))

    @defer.inlineCallbacks
    def test_needs_both_curl_and_lftp(self) -> Any:
        trace = yield curl_dialogue(self.server, "b-alice", PASSWORD, self.own)
        assert_password_login(self, trace)
        trace = yield curl_dialogue(self.server, "b-alice", PASSWORD)
        self.assertEqual(code(trace.reply_to("USER") or ""), "530")
        self.assertNotEqual(trace.exit_code, 0)
        trace = yield lftp_dialogue(self.server, "b-alice", PASSWORD, self.own)
        self.assertEqual(trace.exit_code, 0, trace.stderr[-2000:])
        self.assertEqual(code(trace.reply_to("PASS") or ""), "230")


class ClientCertificateOffTests(TestCase):
    """client_certificate = "off": every certificate counts as none, even a failed one in a
    mandatory class."""

    timeout = 60

    @defer.inlineCallbacks
    def test_certificates_are_ignored(self) -> Any:
        server = start_matrix(self)
        certs = certificates(self, server)
        for cert in (certs.existing("n-alice"), certs.expired("expired", "n-alice"), None):
            lines = ["AUTH TLS", "USER n-alice", f"PASS {PASSWORD}"]
            replies = yield run(server, lines, cert)
            self.assertEqual([code(r) for r in replies], ["234", "331", "230"])
        replies = yield run(server, ["USER n-alice", f"PASS {PASSWORD}"])
        self.assertEqual(replies[0], TLS_REQUIRED)


class PinnedCertificateTests(MatrixTestCase):
    """Pinned certificates (users certificate add) versus certificates mapped by CN."""

    @defer.inlineCallbacks
    def test_pinned_self_signed_logs_in_and_disables_cn_mapping(self) -> Any:
        pinned = self.certs.self_signed("pinned-alice", "whatever")
        pin(self.server, "alice", pinned.fingerprint)
        replies = yield run(self.server, ["AUTH TLS", "USER alice"], pinned)
        self.assertEqual(code(replies[1]), "232", replies)
        trace = yield curl_dialogue(self.server, "alice", "wrong-password", pinned)
        self.assertEqual(code(trace.reply_to("USER") or ""), "232", trace.stderr[-2000:])
        self.assertFalse(trace.sent_verb("PASS"))
        # alice pins one: her CA-issued CN=alice certificate no longer names her.
        lines = ["AUTH TLS", "USER alice", f"PASS {PASSWORD}"]
        replies = yield run(self.server, lines, self.certs.existing("alice"))
        self.assertEqual([code(r) for r in replies], ["234", "331", "230"])
        # The pinned certificate names alice only.
        replies = yield run(self.server, ["AUTH TLS", "USER o-alice"], pinned)
        self.assertEqual(code(replies[1]), "331")

    @defer.inlineCallbacks
    def test_pin_on_another_account_never_names_by_cn(self) -> Any:
        cn_alice = self.certs.issue("cn-alice-pinned-on-bob", "alice")
        pin(self.server, "bob", cn_alice.fingerprint)
        lines = ["AUTH TLS", "USER alice", f"PASS {PASSWORD}"]
        replies = yield run(self.server, lines, cn_alice)
        self.assertEqual([code(r) for r in replies], ["234", "331", "230"])
        replies = yield run(self.server, ["AUTH TLS", "USER bob"], cn_alice)
        self.assertEqual(code(replies[1]), "232")
        trace = yield curl_dialogue(self.server, "alice", "wrong-password", cn_alice)
        self.assertEqual(code(trace.reply_to("USER") or ""), "331")
        self.assertNotIn("232", [code(r) for r in trace.received])

    @defer.inlineCallbacks
    def test_self_signed_pinned_on_another_account_is_untrusted_here(self) -> Any:
        """ "Good" is per account: bob's self-signed pin presented for alice (mandatory)."""
        bobs = self.certs.self_signed("bob-self", "whatever")
        pin(self.server, "bob", bobs.fingerprint)
        replies = yield run(self.server, ["AUTH TLS", "USER alice"], bobs)
        self.assertEqual(replies[1], rejected("untrusted"))
        trace = yield curl_dialogue(self.server, "alice", PASSWORD, bobs)
        self.assertEqual(trace.reply_to("USER"), rejected("untrusted"), trace.stderr[-2000:])
        self.assertFalse(trace.sent_verb("PASS"))
        replies = yield run(self.server, ["AUTH TLS", "USER bob"], bobs)
        self.assertEqual(code(replies[1]), "232")

    @defer.inlineCallbacks
    def test_pinned_certificate_still_needs_valid_dates(self) -> Any:
        expired = self.certs.expired("expired-pinned", "alice")
        pin(self.server, "alice", expired.fingerprint)
        replies = yield run(self.server, ["AUTH TLS", "USER alice"], expired)
        self.assertEqual(replies[1], rejected("expired"))

    @defer.inlineCallbacks
    def test_certificate_user_none_pins_only(self) -> Any:
        server = LiveServer(self, classes=MATRIX, users=USERS, certificate_user="none").start()
        certs = certificates(self, server)
        alice = certs.existing("alice")
        lines = ["AUTH TLS", "USER alice", f"PASS {PASSWORD}"]
        replies = yield run(server, lines, alice)
        self.assertEqual([code(r) for r in replies], ["234", "331", "230"])
        pin(server, "alice", alice.fingerprint)
        replies = yield run(server, ["AUTH TLS", "USER alice"], alice)
        self.assertEqual(code(replies[1]), "232")


class EmailMappingTests(TestCase):
    """tls.certificate_user = "email": an rfc822Name of the subjectAltName names the account."""

    timeout = 60

    @defer.inlineCallbacks
    def test_email_san_names_the_account(self) -> Any:
        server = LiveServer(
            self, users=("alice@example.org", "bob"), certificate_user="email"
        ).start()
        certs = certificates(self, server)
        name = "alice@example.org"
        replies = yield run(server, ["AUTH TLS", f"USER {name}"], certs.existing(name))
        self.assertEqual(code(replies[1]), "232")
        for cert in (
            certs.issue("cn-only", name),  # the CN, but no subjectAltName
            certs.issue("other-email", name, san_email=["bob@example.org"]),
        ):
            lines = ["AUTH TLS", f"USER {name}", f"PASS {PASSWORD}"]
            replies = yield run(server, lines, cert)
            self.assertEqual([code(r) for r in replies], ["234", "331", "230"], cert.cert.name)


class AddressClassTests(TestCase):
    """Classes chosen by the client address: 127.0.0.2 mandatory, 127.0.0.1 optional."""

    timeout = 60
    CLASSES = """
[[class]]
name = "remote"
addresses = ["127.0.0.2/32"]
ssl = "mandatory"
login = ["certificate", "password"]

[[class]]
name = "local"
addresses = ["127.0.0.1/32", "::1/128"]
ssl = "optional"
login = ["certificate", "password"]
"""

    def setUp(self) -> None:
        self.server = LiveServer(self, classes=self.CLASSES).start()
        self.certs = certificates(self, self.server)

    @defer.inlineCallbacks
    def test_second_loopback_address_gets_the_mandatory_class(self) -> Any:
        clear = ["USER alice", f"PASS {PASSWORD}", "PWD"]
        replies = yield run(self.server, clear, source="127.0.0.2")
        self.assertEqual(replies[0], TLS_REQUIRED)
        self.assertEqual(code(replies[2]), "530")
        replies = yield run(self.server, clear, source="127.0.0.1")
        self.assertEqual([code(r) for r in replies], ["331", "230", "257"])
        # TLS from 127.0.0.2: certificate login, protected listing from the same address.
        (self.server.home() / "report.txt").write_text("x")
        listing: list[str] = []
        lines = ["AUTH TLS", "USER alice", "PBSZ 0", "PROT P", "LIST"]
        replies = yield run(
            self.server, lines, self.certs.existing("alice"), source="127.0.0.2", listing=listing
        )
        self.assertEqual([code(r) for r in replies], ["234", "232", "200", "200", "226"])
        self.assertTrue(any(line.endswith(" report.txt") for line in listing), listing)
        # A failed certificate: refused from 127.0.0.2, password fallback from 127.0.0.1.
        expired = self.certs.expired("expired", "alice")
        lines = ["AUTH TLS", "USER alice", f"PASS {PASSWORD}"]
        replies = yield run(self.server, lines, expired, source="127.0.0.2")
        self.assertEqual(replies[1], rejected("expired"))
        replies = yield run(self.server, lines, expired, source="127.0.0.1")
        self.assertEqual([code(r) for r in replies], ["234", "331", "230"])
        # Data protection follows the class: PROT C listing refused only from 127.0.0.2.
        lines = ["AUTH TLS", "USER alice", f"PASS {PASSWORD}", "PBSZ 0", "PROT C", "LIST"]
        replies = yield run(self.server, lines, source="127.0.0.2")
        self.assertEqual(code(replies[-1]), "521")
        replies = yield run(self.server, lines, source="127.0.0.1")
        self.assertEqual(code(replies[-1]), "226")

    @defer.inlineCallbacks
    def test_curl_from_second_loopback_address(self) -> Any:
        trace = yield curl_dialogue(
            self.server, "alice", PASSWORD, ssl_required=False, interface="127.0.0.2"
        )
        self.assertEqual(trace.reply_to("USER"), TLS_REQUIRED)
        self.assertNotEqual(trace.exit_code, 0)
        trace = yield curl_dialogue(self.server, "alice", PASSWORD, ssl_required=False)
        self.assertEqual(trace.exit_code, 0, trace.stderr[-2000:])
        self.assertEqual(code(trace.reply_to("PASS") or ""), "230")

    @defer.inlineCallbacks
    def test_explain_agrees_for_addresses(self) -> Any:
        for address in ("127.0.0.1", "127.0.0.2"):
            for tls in (False, True):
                lines = ["AUTH TLS", "USER alice"] if tls else ["USER alice"]
                replies = yield run(self.server, lines, source=address)
                told = explain(self.server, "alice", address=address, tls=tls)
                self.assertEqual(
                    (told["password"]["reply"], told["password"]["text"]),
                    (int(code(replies[-1])), replies[-1][4:]),
                    (address, tls),
                )
                self.assertEqual(told["class"], "remote" if address == "127.0.0.2" else "local")


class SessionStateTests(TestCase):
    """After a refused USER the session is as it was (TLS, PBSZ/PROT kept)."""

    timeout = 60

    @defer.inlineCallbacks
    def test_refused_user_keeps_tls_and_prot(self) -> Any:
        server = start_matrix(self)
        certs = certificates(self, server)
        (server.home("o-alice") / "kept.txt").write_text("x")
        listing: list[str] = []
        lines = [
            "AUTH TLS",
            "PBSZ 0",
            "PROT P",
            "STAT",
            "USER c-alice",  # mandatory class, failed certificate: 530
            "USER alice",  # the same
            "STAT",
            "USER o-alice",
            f"PASS {PASSWORD}",
            "LIST",
        ]
        replies = yield run(server, lines, certs.expired("expired", "x"), listing=listing)
        self.assertEqual(replies[4:6], [rejected("expired")] * 2)
        self.assertEqual(replies[3], replies[6])  # the same state before and after
        self.assertIn("Data protection: Private", replies[6])
        self.assertEqual([code(r) for r in replies[7:]], ["331", "230", "226"])
        self.assertTrue(any(line.endswith(" kept.txt") for line in listing), listing)
        # In a mandatory class a PROT C session would get 521: PROT P was kept.
        lines = ["AUTH TLS", "PBSZ 0", "PROT P", "USER c-alice", "USER alice"]
        replies = yield run(server, [*lines, f"PASS {PASSWORD}", "LIST"])
        self.assertEqual([code(r) for r in replies[3:]], ["530", "331", "230", "226"])


class DataProtectionTests(MatrixTestCase):
    """Mandatory class: PROT C then a transfer or listing -> 521, no data connection."""

    def setUp(self) -> None:
        super().setUp()
        (self.server.home() / "file.txt").write_text("secret")

    def _prot_c_session(self, name: str) -> dict[str, Any]:
        ftp, _ = open_ftp(self.server, self.certs.existing(name))
        out: dict[str, Any] = {}
        out["login"] = [step(ftp, line) for line in ("AUTH TLS", f"USER {name}", "PBSZ 0")]
        out["prot"] = step(ftp, "PROT C")
        # Active: the server must not connect to us at all.
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        active = []
        for command in ("LIST", "RETR file.txt", "STOR new.txt"):
            active.append(step(ftp, f"PORT 127,0,0,1,{port >> 8},{port & 255}"))
            active.append(raw(ftp, command))
        out["active"] = active
        out["connected"] = bool(select.select([listener], [], [], 0.5)[0])
        listener.close()
        # Passive: the client connects first; the server must send nothing and close it.
        reply = raw(ftp, "PASV")
        host, data_port = ftplib.parse227(reply)
        data = socket.create_connection((host, data_port), timeout=5)
        out["passive"] = raw(ftp, "LIST")
        try:
            out["passive_bytes"] = data.recv(4096)
        except OSError as error:
            out["passive_bytes"] = f"{type(error).__name__}".encode()
        data.close()
        out["after"] = [step(ftp, "PROT P"), step(ftp, "LIST")]
        ftp.close()
        return out

    @defer.inlineCallbacks
    def test_prot_c_transfers_refused_in_mandatory_class(self) -> Any:
        out = yield in_thread(self._prot_c_session, "alice")
        self.assertEqual(code(out["login"][1]), "232")
        self.assertEqual(code(out["prot"]), "200")
        self.assertEqual([code(r) for r in out["active"]], ["200", "521"] * 3)
        self.assertFalse(out["connected"], "the server opened a data connection under PROT C")
        self.assertEqual(code(out["passive"]), "521")
        self.assertIn(out["passive_bytes"], (b"", b"ConnectionResetError"))
        self.assertEqual([code(r) for r in out["after"]], ["200", "226"])
        self.assertFalse((self.server.home() / "new.txt").exists())

    def _clear_channel_then_prot_p(self, command: str) -> dict[str, Any]:
        """PROT C, PASV (a clear data set-up), PROT P, then connect in clear and transfer."""
        ftp, _ = open_ftp(self.server, self.certs.existing("alice"))
        out: dict[str, Any] = {}
        out["login"] = [step(ftp, line) for line in ("AUTH TLS", "USER alice", "PBSZ 0")]
        out["prot_c"] = step(ftp, "PROT C")
        host, data_port = ftplib.parse227(raw(ftp, "PASV"))
        out["prot_p"] = step(ftp, "PROT P")
        data = socket.create_connection((host, data_port), timeout=5)
        data.settimeout(2)
        out["reply"] = raw(ftp, command)
        if command.startswith("STOR"):
            try:
                data.sendall(b"uploaded in clear\n")
            except OSError:
                pass
        received = b""
        try:
            while chunk := data.recv(4096):
                received += chunk
        except OSError:
            pass
        data.close()
        out["received"] = received
        if out["reply"].startswith("150"):
            out["final"] = str(ftp.getresp())
        ftp.close()
        return out

    @defer.inlineCallbacks
    def test_clear_data_connection_refused_whatever_prot_says_now(self) -> Any:
        """The real protection of the data connection decides 521, not PROT at the command."""
        for command in ("RETR file.txt", "LIST", "STOR new.txt"):
            out = yield in_thread(self._clear_channel_then_prot_p, command)
            self.assertEqual(code(out["login"][1]), "232", out)
            self.assertEqual([code(out["prot_c"]), code(out["prot_p"])], ["200", "200"])
            self.assertEqual(code(out["reply"]), "521", (command, out))
            self.assertNotIn(b"secret", out["received"], command)
            self.assertEqual(out["received"], b"", command)
        self.assertFalse((self.server.home() / "new.txt").exists())
        transfers = [e for e in self.server.audit_events() if e["event"] == "transfer"]
        self.assertEqual(transfers, [])

    @defer.inlineCallbacks
    def test_audit_records_the_real_protection(self) -> Any:
        """PROT P, PASV (protected set-up), PROT C, RETR: the transfer is protected and
        logged so; in an optional class PROT C, PASV, PROT P gives a clear transfer, logged
        as clear."""
        (self.server.home("o-alice") / "file.txt").write_text("optional")

        def session() -> list[str]:
            ftp, _ = open_ftp(self.server, self.certs.existing("alice"))
            replies = [step(ftp, line) for line in ("AUTH TLS", "USER alice", "PBSZ 0")]
            replies.append(step(ftp, "PROT P"))
            sink: list[bytes] = []
            replies.append(str(ftp.retrbinary("RETR file.txt", sink.append)))
            ftp.close()
            ftp, _ = open_ftp(self.server, self.certs.existing("o-alice"))
            replies += [step(ftp, line) for line in ("AUTH TLS", "USER o-alice", "PBSZ 0")]
            replies.append(step(ftp, "PROT C"))
            host, port = ftplib.parse227(raw(ftp, "PASV"))
            replies.append(step(ftp, "PROT P"))
            data = socket.create_connection((host, port), timeout=5)
            replies.append(raw(ftp, "RETR file.txt"))
            received = b""
            while chunk := data.recv(4096):
                received += chunk
            data.close()
            replies.append(str(ftp.getresp()))
            replies.append(received.decode())
            ftp.close()
            return replies

        replies = yield in_thread(session)
        self.assertEqual([code(r) for r in replies[:5]], ["234", "232", "200", "200", "226"])
        self.assertEqual(
            [code(r) for r in replies[5:11]], ["234", "232", "200", "200", "200", "150"]
        )
        self.assertEqual(code(replies[11]), "226")
        self.assertEqual(replies[12], "optional")
        transfers = [e for e in self.server.audit_events() if e["event"] == "transfer"]
        self.assertEqual(
            [(e["user"], e["protected"]) for e in transfers], [("alice", True), ("o-alice", False)]
        )

    @defer.inlineCallbacks
    def test_prot_c_allowed_in_optional_class(self) -> Any:
        lines = ["AUTH TLS", "USER o-alice", "PBSZ 0", "PROT C", "LIST"]
        replies = yield run(self.server, lines, self.certs.existing("o-alice"))
        self.assertEqual([code(r) for r in replies], ["234", "232", "200", "200", "226"])


def raw(ftp: ftplib.FTP, line: str) -> str:
    """Send a command; the first reply (preliminary replies included), never raising."""
    try:
        ftp.putcmd(line)
        return str(ftp.getresp())
    except (ftplib.error_reply, ftplib.error_temp, ftplib.error_perm) as error:
        return str(error)


class EnumerationTests(TestCase):
    """An unknown name, a known one and a disabled one get the same replies in each class."""

    timeout = 120

    def setUp(self) -> None:
        self.server = start_for_many_failures(self)
        self.certs = certificates(self, self.server)
        disable(self.server, "bob")

    @defer.inlineCallbacks
    def test_same_replies_for_known_unknown_and_disabled_names(self) -> Any:
        situations: list[tuple[str, ClientCert | None, list[str]]] = [
            ("clear", None, ["USER {}", "PASS wrong-password"]),
            ("TLS, no certificate", None, ["AUTH TLS", "USER {}", "PASS wrong-password"]),
            (
                "TLS, expired certificate",
                self.certs.expired("expired", "x"),
                ["AUTH TLS", "USER {}", "PASS wrong-password"],
            ),
            (
                "TLS, good certificate naming no account",
                self.certs.issue("carol", "carol"),
                ["AUTH TLS", "USER {}", "PASS wrong-password"],
            ),
        ]
        pairs = [
            ("alice", "m-nobody"),
            ("o-alice", "o-nobody"),
            ("c-alice", "c-nobody"),
            ("b-alice", "b-nobody"),
            ("co-alice", "co-nobody"),
            ("n-alice", "n-nobody"),
            ("bob", "m-nobody"),  # bob is disabled
        ]
        for known, unknown in pairs:
            for label, cert, lines in situations:
                first = yield run(self.server, [line.format(known) for line in lines], cert)
                second = yield run(self.server, [line.format(unknown) for line in lines], cert)
                self.assertEqual(
                    [reply.replace(known, "NAME") for reply in first],
                    [reply.replace(unknown, "NAME") for reply in second],
                    f"{known} / {unknown}: {label}",
                )
        # A disabled account with its own certificate and its right password: as unknown.
        bob = self.certs.existing("bob")
        lines = ["AUTH TLS", "USER {}", f"PASS {PASSWORD}"]
        first = yield run(self.server, [line.format("bob") for line in lines], bob)
        second = yield run(self.server, [line.format("m-nobody") for line in lines], bob)
        self.assertEqual([code(r) for r in first], ["234", "331", "530"])
        self.assertEqual(
            [r.replace("bob", "NAME") for r in first],
            [r.replace("m-nobody", "NAME") for r in second],
        )

    @defer.inlineCallbacks
    def test_timing_of_known_and_unknown_names(self) -> Any:
        self.server.runtime.failure_delay_base = 0.01

        def attempt(name: str) -> float:
            ftp = ftplib.FTP()
            ftp.connect("127.0.0.1", self.server.explicit_port, timeout=20)
            started = time.perf_counter()
            replies = [raw(ftp, f"USER {name}"), raw(ftp, "PASS wrong-password")]
            elapsed = time.perf_counter() - started
            ftp.close()
            assert [code(r) for r in replies] == ["331", "530"], replies
            return elapsed

        known: list[float] = []
        unknown: list[float] = []
        for _ in range(10):  # interleaved: both names see the same per-name delays
            known.append((yield in_thread(attempt, "o-alice")))
            unknown.append((yield in_thread(attempt, "o-nobody")))
        known_ms = statistics.median(known) * 1000
        unknown_ms = statistics.median(unknown) * 1000
        difference = (known_ms - unknown_ms) / 1000
        print(
            f"\nUSER+wrong PASS, median of {len(known)}: known {known_ms:.1f} ms, "
            f"unknown {unknown_ms:.1f} ms, difference {known_ms - unknown_ms:+.1f} ms "
            "(failure delay base 10 ms)"
        )
        self.assertLess(abs(difference), 0.5)


class ExplainAgreementTests(MatrixTestCase):
    """`securetransport policy explain` gives the reply the live server gives."""

    timeout = 90

    def _compare(self, name: str, cert: ClientCert | None, tls: bool, live: str) -> None:
        told = explain(self.server, name, cert=cert, tls=tls)
        decision = told["certificate"] if cert is not None else told["password"]
        where = (name, cert.cert.name if cert else None, tls, live, told)
        self.assertEqual(decision["reply"], int(code(live)), where)
        if decision["reply"] != 232:
            self.assertEqual(decision["text"], live[4:], where)

    @defer.inlineCallbacks
    def test_explain_agrees_with_the_live_server(self) -> Any:
        c = self.certs
        rows: list[tuple[str, ClientCert | None, bool]] = [
            ("alice", c.existing("alice"), True),
            ("alice", c.expired("expired", "alice"), True),
            ("alice", c.other_ca("other", "alice"), True),
            ("alice", c.server_auth_only("server-auth", "alice"), True),
            ("alice", c.long_chain("long", "alice", 7), True),
            ("alice", c.existing("bob"), True),
            ("alice", None, True),
            ("alice", None, False),
            ("o-alice", c.not_yet_valid("future", "o-alice"), True),
            ("o-alice", c.existing("o-alice"), True),
            ("o-alice", None, False),
            ("c-alice", None, True),
            ("c-alice", c.existing("c-alice"), True),
            ("b-alice", c.existing("b-alice"), True),
            ("b-alice", None, True),
            ("co-alice", None, False),
            ("n-alice", c.expired("expired-n", "n-alice"), True),
            ("m-nobody", c.existing("alice"), True),
        ]
        seen = set()
        for name, cert, tls in rows:
            lines = ["AUTH TLS", f"USER {name}"] if tls else [f"USER {name}"]
            replies = yield run(self.server, lines, cert)
            self._compare(name, cert, tls, replies[-1])
            seen.add(code(replies[-1]))
        self.assertEqual(seen, {"232", "331", "530"})

    @defer.inlineCallbacks
    def test_explain_agrees_after_pinning(self) -> Any:
        pinned = self.certs.self_signed("pinned", "alice")
        pin(self.server, "alice", pinned.fingerprint)
        cn_bob = self.certs.issue("cn-bob", "bob")
        pin(self.server, "o-alice", cn_bob.fingerprint)
        for name, cert in [
            ("alice", pinned),
            ("alice", self.certs.existing("alice")),
            ("bob", cn_bob),
            ("o-alice", cn_bob),
        ]:
            replies = yield run(self.server, ["AUTH TLS", f"USER {name}"], cert)
            self._compare(name, cert, True, replies[-1])

    @defer.inlineCallbacks
    def test_disabled_account_with_its_pinned_certificate_replies_like_unknown(self) -> Any:
        pinned = self.certs.self_signed("pinned", "alice")
        pin(self.server, "alice", pinned.fingerprint)
        disable(self.server, "alice")
        replies = yield run(self.server, ["AUTH TLS", "USER alice"], pinned)
        unknown = yield run(self.server, ["AUTH TLS", "USER m-nobody"], pinned)
        self.assertNotEqual(code(replies[1]), "232")
        # A disabled account's pin counts for nothing: the same reply as an unknown name.
        self.assertEqual(
            replies[1].replace("alice", "NAME"), unknown[1].replace("m-nobody", "NAME")
        )
        self._compare("alice", pinned, True, replies[1])
        self._compare("m-nobody", pinned, True, unknown[1])

    @defer.inlineCallbacks
    def test_certificate_pinned_on_a_disabled_account(self) -> Any:
        # bob pins a CA-issued CN=alice certificate, then bob is disabled.
        cn_alice = self.certs.issue("cn-alice", "alice")
        pin(self.server, "bob", cn_alice.fingerprint)
        disable(self.server, "bob")
        replies = yield run(self.server, ["AUTH TLS", "USER alice", f"PASS {PASSWORD}"], cn_alice)
        # A pin on a disabled account still keeps the certificate from naming alice by its
        # CN (it logs no one in either), for the live server and `policy explain` alike.
        self.assertEqual([code(r) for r in replies], ["234", "331", "230"])
        self._compare("alice", cn_alice, True, replies[1])
        # Disabled bob answers as an unknown name does: his pin logs nobody in.
        replies = yield run(self.server, ["AUTH TLS", "USER bob"], cn_alice)
        unknown = yield run(self.server, ["AUTH TLS", "USER m-nobody"], cn_alice)
        self.assertEqual(replies[1], "331 Password required for bob")
        self.assertEqual(unknown[1], "331 Password required for m-nobody")


class BadInputTests(TestCase):
    """Long chains, odd subjects, long or odd USER arguments: clear replies, no crash, never a
    wrong login, and the server keeps serving."""

    timeout = 90

    def setUp(self) -> None:
        self.server = start_for_many_failures(self)
        self.certs = certificates(self, self.server)

    @defer.inlineCallbacks
    def _still_serving(self) -> Any:
        lines = ["AUTH TLS", "USER alice", "PBSZ 0", "PROT P", "LIST"]
        replies = yield run(self.server, lines, self.certs.existing("alice"))
        self.assertEqual([code(r) for r in replies], ["234", "232", "200", "200", "226"])

    @defer.inlineCallbacks
    def test_chain_of_seven(self) -> Any:
        long_alice = self.certs.long_chain("long-alice", "alice", 7)
        self.assertEqual(long_alice.cert.read_text().count("BEGIN CERTIFICATE"), 7)
        replies = yield run(self.server, ["AUTH TLS", "USER alice", f"PASS {PASSWORD}"], long_alice)
        self.assertEqual(replies[1], rejected("chain too long"))
        self.assertEqual(code(replies[2]), "503")
        trace = yield curl_dialogue(self.server, "alice", PASSWORD, long_alice)
        self.assertEqual(trace.reply_to("USER"), rejected("chain too long"), trace.stderr[-2000:])
        long_optional = self.certs.long_chain("long-o-alice", "o-alice", 7)
        lines = ["AUTH TLS", "USER o-alice", f"PASS {PASSWORD}"]
        replies = yield run(self.server, lines, long_optional)
        self.assertEqual([code(r) for r in replies], ["234", "331", "230"])
        yield self._still_serving()

    @defer.inlineCallbacks
    def test_odd_common_names_never_name_alice(self) -> Any:
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        odd = [
            self.certs.issue("nul-inside", "alice\x00evil"),
            self.certs.issue("nul-end", "alice\x00"),
            self.certs.issue("cyrillic", "ali\u0441e"),  # Cyrillic es
            self.certs.issue("rtl", "\u202ealice"),
            self.certs.issue("zero-width", "alice\u200b"),
            self.certs.issue("upper", "ALICE"),
            self.certs.with_subject(  # two CNs: which one? neither names anybody
                "two-cns",
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.COMMON_NAME, "alice"),
                        x509.NameAttribute(NameOID.COMMON_NAME, "bob"),
                    ]
                ),
            ),
        ]
        for cert in odd:
            lines = ["AUTH TLS", "USER alice", f"PASS {PASSWORD}"]
            replies = yield run(self.server, lines, cert)
            self.assertEqual([code(r) for r in replies], ["234", "331", "230"], cert.cert.name)
        trace = yield curl_dialogue(self.server, "alice", "wrong-password", odd[0])
        self.assertEqual(code(trace.reply_to("USER") or ""), "331")
        self.assertEqual(code(trace.reply_to("PASS") or ""), "530")
        self.assertNotEqual(trace.exit_code, 0)
        yield self._still_serving()

    @defer.inlineCallbacks
    def test_unparseable_subject(self) -> Any:
        # A PrintableString CN holding NUL and 0xff: OpenSSL (the client) loads it,
        # cryptography (the server's verifier) cannot read the subject.
        cert = self.certs.raw_common_name("unparseable", 0x13, b"alice\x00\xff")
        self.assertIn(b"alice\x00\xff", pem_der(cert.cert))
        results = []
        for lines in (
            ["AUTH TLS", "USER alice", "PASS wrong-password"],  # mandatory
            ["AUTH TLS", "USER o-alice", f"PASS {PASSWORD}"],  # optional
        ):
            results.append((yield run(self.server, lines, cert)))
        yield self._still_serving()  # other sessions are not affected, whatever happened
        # A certificate OpenSSL accepts but cryptography cannot parse never fails the
        # handshake (SPEC section 4): "530 client certificate rejected: unparseable" in the
        # mandatory class, 331 then 230 in the optional one.
        mandatory, optional = results
        self.assertEqual(mandatory[1], rejected("unparseable"), mandatory)
        self.assertEqual(code(mandatory[2]), "503", mandatory)
        self.assertEqual([code(r) for r in optional], ["234", "331", "230"], optional)

    @defer.inlineCallbacks
    def test_long_and_odd_user_arguments(self) -> Any:
        alice = self.certs.existing("alice")
        names = [
            "a" * 2043,  # "USER " + 2043 = 2 KiB
            "alice" + "x" * 2038,
            "o-" + "x" * 2041,
            "alice\x00",
            "alice\x00bob",
            "ALICE",
            "alice\tx",
            "../alice",
        ]
        for name in names:
            for cert in (alice, None):
                lines = ["AUTH TLS", f"USER {name}", f"PASS {PASSWORD}", "PWD"]
                replies = yield run(self.server, lines, cert)
                where = (name[:20], cert is not None, [r[:80] for r in replies])
                self.assertEqual(code(replies[0]), "234", where)
                self.assertIn(code(replies[1]), ("331", "501", "530"), where)
                self.assertLess(len(replies[1]), 300, where)  # the name is not echoed whole
                self.assertIn(code(replies[2]), ("503", "530"), where)  # never 230
                self.assertEqual(code(replies[3]), "530", where)
        # Bytes that are not UTF-8, and a line over 4 KiB: an error, and the session goes on.
        replies = yield in_thread(self._raw_lines, alice)
        self.assertIn(code(replies[0]), ("331", "501", "530"), replies)
        self.assertIn(code(replies[1]), ("503", "530"), replies)
        self.assertEqual(code(replies[2]), "500", replies)
        self.assertEqual(code(replies[3]), "200", replies)
        self.assertEqual(code(replies[4]), "232", replies)
        yield self._still_serving()

    def _raw_lines(self, cert: ClientCert) -> list[str]:
        ftp, _ = open_ftp(self.server, cert)
        step(ftp, "AUTH TLS")
        replies = []
        for line in (b"USER \xff\xfealice", f"PASS {PASSWORD}".encode(), b"USER " + b"a" * 5000):
            ftp.sock.sendall(line + b"\r\n")  # type: ignore[union-attr]
            try:
                replies.append(str(ftp.getresp()))
            except (ftplib.error_reply, ftplib.error_temp, ftplib.error_perm) as error:
                replies.append(str(error))
        replies += [step(ftp, "NOOP"), step(ftp, "USER alice")]
        ftp.close()
        return replies


def pem_der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())
