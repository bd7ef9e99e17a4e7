"""What one login costs in thread-pool round trips and account reads (issue #14 item 3).

A session logs in through the protocol on a StringTransport, with the real user store
(SQLite), the real pools and the real portal (tests/ftp/test_protocol.py's harness).
Every job handed to a thread pool (`deferToThreadPool`, as `AsyncUserStore` and
`VerificationPool` call it) and every account read of the store is counted.

Before issue #14: a password login made 3 round trips and read the account 3 times (at
USER, in the checker, in the realm); a certificate login 4 round trips (the account and
the pin query at USER, the checker, the realm) with 3 reads. These tests fail if the
counts go back up.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks

from securetransport import passwords, userstore
from securetransport.pki import init_pki
from securetransport.runtime import TLSRuntime
from securetransport.tls.context import SessionContextFactory, load_server_credentials
from securetransport.tls.verify import load_trust_store
from securetransport.userstore import Account
from tests.ftp import test_protocol as harness
from tests.ftp.test_protocol import PASSWORD, TLSConfig, password_hash


class LoginCostTestCase(harness.SessionTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.jobs: list[str] = []  # the function each pool job ran
        self.reads: list[str] = []  # "get NAME" or "pins"
        for module in (userstore, passwords):
            self.patch(module, "deferToThreadPool", self.counting(module.deferToThreadPool))
        store = self.users.store
        get, pins = store.get, store.find_by_fingerprint

        def counted_get(name: str) -> Account | None:
            self.reads.append(f"get {name}")
            return get(name)  # type: ignore[no-any-return]

        def counted_pins(fingerprint: str) -> list[str]:
            self.reads.append("pins")
            return pins(fingerprint)  # type: ignore[no-any-return]

        self.patch(store, "get", counted_get)
        self.patch(store, "find_by_fingerprint", counted_pins)

    def counting(self, original: Callable[..., Deferred[Any]]) -> Callable[..., Deferred[Any]]:
        def deferral(reactor: Any, pool: Any, fn: Callable[..., Any], *a: Any, **k: Any) -> Any:
            self.jobs.append(getattr(fn, "__qualname__", repr(fn)))
            return original(reactor, pool, fn, *a, **k)

        return deferral

    def reset(self) -> None:
        del self.jobs[:], self.reads[:]


class PasswordLoginCostTests(LoginCostTestCase):
    @inlineCallbacks
    def test_warm_login_reads_once_in_two_round_trips(self) -> Generator[Any, Any, None]:
        """The password is in the verified-credential cache: the read at USER and the
        realm's home folder, no KDF job (was 3 round trips, 3 reads)."""
        yield self.login(self.connect())
        self.reset()
        yield self.login(self.connect())
        self.assertEqual(self.reads, ["get alice"])
        self.assertEqual(len(self.jobs), 2, self.jobs)

    @inlineCallbacks
    def test_cold_login_reads_once_in_three_round_trips(self) -> Generator[Any, Any, None]:
        """First login: the read at USER, the KDF, the realm's home folder (was 3 and 3)."""
        yield self.login(self.connect())
        self.assertEqual(self.reads, ["get alice"])
        self.assertEqual(len(self.jobs), 3, self.jobs)

    @inlineCallbacks
    def test_failed_login_reads_once(self) -> Generator[Any, Any, None]:
        """A wrong password: the read at USER, then the KDF; no realm."""
        yield self.failed_pass(self.connect())
        self.assertEqual(self.reads, ["get alice"])
        self.assertEqual(len(self.jobs), 2, self.jobs)

    @inlineCallbacks
    def test_a_late_pass_reads_again(self) -> Generator[Any, Any, None]:
        """PASS long after USER does not use the USER snapshot: a disabled account is refused."""
        client = self.connect()
        self.assertEqual((yield self.command(client, b"USER alice")), [331])
        self.users.store.update(Account(name="alice", password_hash=password_hash(), enabled=False))
        self.clock.advance(5)
        self.reset()
        client.send(b"PASS " + PASSWORD.encode())
        yield self.until(self.failures_above(0), "the failed login to be counted")
        self.assertEqual(self.reads, ["get alice"])


class CertificateLoginCostTests(LoginCostTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.pki = self.tmp / "pki"
        init_pki(self.pki, ["alice"])
        tls_config = TLSConfig(
            certificate=self.pki / "server.crt",
            private_key=self.pki / "server.key",
            client_ca=self.pki / "ca.crt",
            certificate_user="common-name",
        )
        self.tls = TLSRuntime(
            contexts=SessionContextFactory(load_server_credentials(tls_config)),
            trust=load_trust_store(self.pki / "ca.crt", ()),
        )
        self.runtime = self.make_runtime(tls=self.tls, certificate_user="common-name")

    @inlineCallbacks
    def test_certificate_login_reads_once_in_two_round_trips(self) -> Generator[Any, Any, None]:
        """The account and the pin query in one job at USER, then the realm's home folder
        (was 4 round trips, 3 reads and the pin query)."""
        client = self.connect()
        client.send(b"AUTH TLS")
        self.assertEqual(client.codes(), [234])
        harness.TLSTests.handshake(self, client, "alice")  # type: ignore[arg-type]
        self.reset()
        self.assertEqual((yield self.command(client, b"USER alice")), [232])
        self.assertEqual(sorted(self.reads), ["get alice", "pins"])
        self.assertEqual(len(self.jobs), 2, self.jobs)
