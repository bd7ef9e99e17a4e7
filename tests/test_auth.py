"""Tests for securetransport.auth (twisted.cred checkers, realm and portal)."""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.cred.portal import IRealm
from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import Interface
from zope.interface.verify import verifyObject

from securetransport import auth, passwords
from securetransport.auth import (
    AccountId,
    CertificateChecker,
    CertificateLogin,
    FTPAvatar,
    FTPRealm,
    ICertificateLogin,
    IFTPAvatar,
    PasswordChecker,
    PasswordLogin,
    as_async_store,
    make_portal,
)
from securetransport.passwords import PoolFull, VerificationPool, hash_password
from securetransport.userstore import Account, AccountSnapshot, AsyncUserStore, SQLiteUserStore

FP = "ab" * 32
FP2 = "cd" * 32


def temp_dir(test: SynchronousTestCase) -> Path:
    """A new empty folder outside the repository, removed after the test."""
    folder = Path(tempfile.mkdtemp(prefix="st-test-")).resolve()
    test.addCleanup(shutil.rmtree, folder, True)
    return folder


class FakeFilesystem:
    """Stands in for an IFilesystem; remembers its account."""

    def __init__(self, account: Account) -> None:
        self.account = account
        self.read_only = account.read_only


_HASHES: dict[str, str] = {}


def cached_hash(password: str) -> str:
    """One argon2 hash per password for the whole module (they take ~44 ms each)."""
    if password not in _HASHES:
        _HASHES[password] = hash_password(password)
    return _HASHES[password]


class AuthTestCase(TestCase):
    def setUp(self) -> None:
        self.password_hash = cached_hash("s3cret")
        folder = temp_dir(self)
        self.blocking = SQLiteUserStore(folder / "users.sqlite3")
        self.addCleanup(self.blocking.close)
        self.pool = VerificationPool(reactor, size=2, queue_size=2)
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.threadpool = ThreadPool(minthreads=0, maxthreads=2, name="test-auth-store")
        self.threadpool.start()
        self.addCleanup(self.threadpool.stop)
        self.store = AsyncUserStore(self.blocking, self.threadpool, reactor)
        self.blocking.add(Account(name="alice", password_hash=self.password_hash, groups=("g",)))
        self.blocking.add(Account(name="off", password_hash=self.password_hash, enabled=False))
        self.blocking.add(Account(name="certonly"))
        self.blocking.add(Account(name="pinned", certificates=(FP,)))
        self.blocking.add(Account(name="reader", password_hash=self.password_hash, read_only=True))
        self.blocking.add(Account(name="broken", password_hash="not-a-hash"))
        self.filesystems: list[FakeFilesystem] = []

    def filesystem_factory(self, account: Account) -> FakeFilesystem:
        fs = FakeFilesystem(account)
        self.filesystems.append(fs)
        return fs

    def record_verifications(self) -> list[str | None]:
        calls: list[str | None] = []
        original = passwords.verify_password

        def spy(stored: str | None, password: str | bytes) -> bool:
            calls.append(stored)
            return original(stored, password)

        self.patch(auth, "verify_password", spy)
        return calls


class PasswordCheckerTests(AuthTestCase):
    def checker(self) -> PasswordChecker:
        return PasswordChecker(self.store, self.pool)

    def test_interfaces(self) -> None:
        checker = self.checker()
        self.assertTrue(verifyObject(ICredentialsChecker, checker))
        self.assertEqual(checker.credentialInterfaces[0].__name__, "IUsernamePassword")

    @inlineCallbacks
    def test_right_password(self) -> Any:
        avatar_id = yield self.checker().requestAvatarId(UsernamePassword(b"alice", b"s3cret"))
        self.assertEqual(avatar_id, "alice")
        avatar_id = yield self.checker().requestAvatarId(UsernamePassword("alice", "s3cret"))  # type: ignore[arg-type]
        self.assertEqual(avatar_id, "alice")

    @inlineCallbacks
    def test_refusals_all_do_the_work(self) -> Any:
        """Wrong password, unknown, disabled, no password, bad hash, bad name: one
        argon2 verification each (a real or dummy one), then UnauthorizedLogin."""
        calls = self.record_verifications()
        cases = [
            (b"alice", b"wrong", self.password_hash),
            (b"Alice", b"s3cret", None),
            (b"nobody", b"s3cret", None),
            (b"off", b"s3cret", None),
            (b"certonly", b"", None),
            (b"broken", b"x", "not-a-hash"),
            (b"../etc", b"s3cret", None),
            (b"\xff\xfe", b"s3cret", None),
        ]
        for username, password, stored in cases:
            d = self.checker().requestAvatarId(UsernamePassword(username, password))
            self.assertFailure(d, UnauthorizedLogin)
            yield d
            self.assertEqual(calls[-1], stored, username)
        self.assertEqual(len(calls), len(cases))

    @inlineCallbacks
    def test_verification_runs_in_the_pool(self) -> Any:
        threads: list[int] = []
        original = passwords.verify_password

        def spy(stored: str | None, password: str | bytes) -> bool:
            threads.append(threading.get_ident())
            return original(stored, password)

        self.patch(auth, "verify_password", spy)
        yield self.checker().requestAvatarId(UsernamePassword(b"alice", b"s3cret"))
        self.assertEqual(len(threads), 1)
        self.assertNotEqual(threads[0], threading.get_ident())
        self.assertEqual(self.pool.pending, 0)

    @inlineCallbacks
    def test_full_pool_fails_with_pool_full(self) -> Any:
        release = threading.Event()
        self.addCleanup(release.set)
        blockers = [self.pool.submit(release.wait, 10) for _ in range(self.pool.capacity)]
        d = self.checker().requestAvatarId(UsernamePassword(b"alice", b"s3cret"))
        self.assertFailure(d, PoolFull)
        yield d
        release.set()
        yield gatherResults(blockers)

    @inlineCallbacks
    def test_accepts_a_blocking_store(self) -> Any:
        checker = PasswordChecker(self.blocking, self.pool)
        self.assertEqual(
            (yield checker.requestAvatarId(UsernamePassword(b"reader", b"s3cret"))), "reader"
        )


class VerifiedCredentialsTests(AuthTestCase):
    @inlineCallbacks
    def test_second_login_skips_the_kdf_but_reads_the_account(self) -> Any:
        calls = self.record_verifications()
        checker = self.checker_with_cache()
        for _ in range(3):
            avatar_id = yield checker.requestAvatarId(UsernamePassword(b"alice", b"s3cret"))
            self.assertEqual(avatar_id, "alice")
        self.assertEqual(len(calls), 1)
        # A wrong password is never served from the cache.
        d = checker.requestAvatarId(UsernamePassword(b"alice", b"s3cre"))
        self.assertFailure(d, UnauthorizedLogin)
        yield d
        self.assertEqual(len(calls), 2)

    @inlineCallbacks
    def test_changed_password_and_disabled_account_take_effect_at_once(self) -> Any:
        checker = self.checker_with_cache()
        yield checker.requestAvatarId(UsernamePassword(b"alice", b"s3cret"))
        self.blocking.update(Account(name="alice", password_hash=cached_hash("n3w"), groups=("g",)))
        d = checker.requestAvatarId(UsernamePassword(b"alice", b"s3cret"))
        self.assertFailure(d, UnauthorizedLogin)
        yield d
        yield checker.requestAvatarId(UsernamePassword(b"alice", b"n3w"))
        self.blocking.update(
            Account(name="alice", password_hash=cached_hash("n3w"), groups=("g",), enabled=False)
        )
        d = checker.requestAvatarId(UsernamePassword(b"alice", b"n3w"))
        self.assertFailure(d, UnauthorizedLogin)
        yield d

    def test_entries_expire_and_the_cache_is_bounded(self) -> None:
        now = [0.0]
        cache = auth.VerifiedCredentials(size=2, ttl=10, clock=lambda: now[0])
        cache.add("a", "p", "h")
        self.assertTrue(cache.seen("a", "p", "h"))
        self.assertFalse(cache.seen("a", "p", "other-hash"))
        self.assertFalse(cache.seen("b", "p", "h"))
        now[0] = 11
        self.assertFalse(cache.seen("a", "p", "h"))
        for name in ("x", "y", "z"):
            cache.add(name, "p", "h")
        self.assertFalse(cache.seen("x", "p", "h"))
        self.assertTrue(cache.seen("z", "p", "h"))

    def checker_with_cache(self) -> PasswordChecker:
        return PasswordChecker(self.store, self.pool, auth.VerifiedCredentials())


class CertificateCheckerTests(AuthTestCase):
    def login(self, name: str, fingerprint: str) -> Any:
        return CertificateChecker(self.store).requestAvatarId(CertificateLogin(name, fingerprint))

    def test_credentials_provide_interface(self) -> None:
        self.assertTrue(verifyObject(ICertificateLogin, CertificateLogin("a", FP)))
        self.assertEqual(CertificateChecker.credentialInterfaces, (ICertificateLogin,))

    @inlineCallbacks
    def test_accepts(self) -> Any:
        self.assertEqual((yield self.login("alice", FP)), "alice")
        self.assertEqual((yield self.login("pinned", FP)), "pinned")
        self.assertEqual((yield self.login("pinned", ":".join(["AB"] * 32))), "pinned")

    @inlineCallbacks
    def test_refuses(self) -> Any:
        for name, fingerprint in [
            ("pinned", FP2),
            ("off", FP),
            ("nobody", FP),
            ("alice", "not hex"),
            (".bad", FP),
        ]:
            d = self.login(name, fingerprint)
            self.assertFailure(d, UnauthorizedLogin)
            yield d

    @inlineCallbacks
    def test_rereads_the_account(self) -> Any:
        """A pin removed after the policy decided still refuses the login."""
        self.assertEqual((yield self.login("pinned", FP)), "pinned")
        self.blocking.update(Account(name="pinned", certificates=(FP2,)))
        d = self.login("pinned", FP)
        self.assertFailure(d, UnauthorizedLogin)
        yield d


class RealmTests(AuthTestCase):
    def realm(self) -> FTPRealm:
        return FTPRealm(self.filesystem_factory, self.store)

    def test_provides_irealm(self) -> None:
        self.assertTrue(verifyObject(IRealm, self.realm()))

    @inlineCallbacks
    def test_avatar(self) -> Any:
        interface, avatar, logout = yield self.realm().requestAvatar("reader", None, IFTPAvatar)
        self.assertIs(interface, IFTPAvatar)
        self.assertIsInstance(avatar, FTPAvatar)
        self.assertTrue(verifyObject(IFTPAvatar, avatar))
        self.assertEqual(avatar.account.name, "reader")
        self.assertTrue(avatar.read_only)
        self.assertIs(avatar.filesystem, self.filesystems[-1])
        self.assertEqual(self.filesystems[-1].account, avatar.account)
        self.assertIsNone(logout())

    @inlineCallbacks
    def test_gone_or_disabled_account(self) -> Any:
        for name in ["nobody", "off", b"\xff"]:
            d = self.realm().requestAvatar(name, None, IFTPAvatar)
            self.assertFailure(d, UnauthorizedLogin)
            yield d
        self.assertEqual(self.filesystems, [])

    @inlineCallbacks
    def test_other_interface(self) -> Any:
        class IOther(Interface):
            pass

        d = self.realm().requestAvatar("alice", None, IOther)
        self.assertFailure(d, NotImplementedError)
        yield d


class PortalTests(AuthTestCase):
    @inlineCallbacks
    def test_password_login(self) -> Any:
        portal: Any = make_portal(self.store, self.pool, self.filesystem_factory)
        interface, avatar, _ = yield portal.login(
            UsernamePassword(b"alice", b"s3cret"), None, IFTPAvatar
        )
        self.assertIs(interface, IFTPAvatar)
        self.assertEqual(avatar.account.groups, ("g",))
        self.assertFalse(avatar.read_only)
        d = portal.login(UsernamePassword(b"alice", b"nope"), None, IFTPAvatar)
        self.assertFailure(d, UnauthorizedLogin)
        yield d

    @inlineCallbacks
    def test_certificate_login(self) -> Any:
        portal: Any = make_portal(self.store, self.pool, self.filesystem_factory)
        _, avatar, _ = yield portal.login(CertificateLogin("certonly", FP), None, IFTPAvatar)
        self.assertEqual(avatar.account.name, "certonly")

    @inlineCallbacks
    def test_blocking_store_is_wrapped(self) -> Any:
        portal: Any = make_portal(self.blocking, self.pool, self.filesystem_factory)
        _, avatar, _ = yield portal.login(CertificateLogin("pinned", FP), None, IFTPAvatar)
        self.assertEqual(avatar.account.name, "pinned")
        wrapped = as_async_store(self.blocking, self.pool)
        self.assertIs(wrapped.store, self.blocking)
        self.assertIs(wrapped.threadpool, self.pool.threadpool)
        self.assertIs(as_async_store(self.store, self.pool), self.store)

    @inlineCallbacks
    def test_unknown_credentials(self) -> Any:
        portal: Any = make_portal(self.store, self.pool, self.filesystem_factory)
        d = portal.login(object(), None, IFTPAvatar)  # type: ignore[arg-type]
        self.assertFailure(d, UnhandledCredentials)
        yield d


class SnapshotTests(AuthTestCase):
    """Credentials carrying the account as just read: the checkers and the realm decide on
    that row and do not read the account again."""

    def setUp(self) -> None:
        super().setUp()
        self.reads: list[str] = []
        get = self.blocking.get

        def counted(name: str) -> Account | None:
            self.reads.append(name)
            return get(name)

        self.patch(self.blocking, "get", counted)
        self.alice = Account(name="alice", password_hash=self.password_hash, groups=("g",))
        self.cache = auth.VerifiedCredentials()

    def password(self, account: Account | None, password: bytes, name: str = "alice") -> Any:
        checker = PasswordChecker(self.store, self.pool, self.cache)
        credentials = PasswordLogin(name.encode(), password, AccountSnapshot(name, account))
        return checker.requestAvatarId(credentials)

    def test_password_login_credentials(self) -> None:
        credentials = PasswordLogin(b"alice", b"s3cret")
        self.assertTrue(verifyObject(auth.IUsernamePassword, credentials))
        self.assertTrue(credentials.checkPassword(b"s3cret"))
        self.assertFalse(credentials.checkPassword(b"s3cre"))

    @inlineCallbacks
    def test_the_snapshot_is_checked_not_reread(self) -> Any:
        avatar_id = yield self.password(self.alice, b"s3cret")
        self.assertEqual(avatar_id, "alice")
        self.assertIsInstance(avatar_id, AccountId)
        self.assertEqual(avatar_id.account, self.alice)
        self.assertEqual(self.reads, [])

    @inlineCallbacks
    def test_a_cache_hit_takes_no_pool_job(self) -> Any:
        yield self.password(self.alice, b"s3cret")
        calls = self.record_verifications()
        submitted: list[Any] = []
        submit = self.pool.submit
        self.patch(self.pool, "submit", lambda *a: submitted.append(a) or submit(*a))
        self.assertEqual((yield self.password(self.alice, b"s3cret")), "alice")
        self.assertEqual((calls, submitted), ([], []))
        # A wrong password still runs the KDF in the pool.
        d = self.password(self.alice, b"wrong")
        self.assertFailure(d, UnauthorizedLogin)
        yield d
        self.assertEqual((len(calls), len(submitted)), (1, 1))

    @inlineCallbacks
    def test_the_snapshot_refuses_what_it_shows(self) -> Any:
        """Disabled, a new hash (the cache holds the old one), no such account, no
        password: refused, one verification each (real or dummy), nothing read."""
        yield self.password(self.alice, b"s3cret")
        calls = self.record_verifications()
        new_hash = cached_hash("n3w")
        cases = [
            (Account(name="alice", password_hash=self.password_hash, enabled=False), None),
            (Account(name="alice", password_hash=new_hash), new_hash),
            (None, None),
            (Account(name="alice"), None),
        ]
        for account, stored in cases:
            d = self.password(account, b"s3cret")
            self.assertFailure(d, UnauthorizedLogin)
            yield d
            self.assertEqual(calls[-1], stored, account)
        self.assertEqual((len(calls), self.reads), (len(cases), []))

    @inlineCallbacks
    def test_a_snapshot_of_another_name_is_not_used(self) -> Any:
        """The store is read when the snapshot names another account than the login."""
        checker = PasswordChecker(self.store, self.pool)
        snapshot = AccountSnapshot(
            "reader", Account(name="reader", password_hash=self.password_hash)
        )
        d = checker.requestAvatarId(PasswordLogin(b"off", b"s3cret", snapshot))
        self.assertFailure(d, UnauthorizedLogin)
        yield d
        self.assertEqual(self.reads, ["off"])

    @inlineCallbacks
    def test_certificate_snapshot(self) -> Any:
        checker = CertificateChecker(self.store)
        pinned = Account(name="pinned", certificates=(FP,))
        login = CertificateLogin("pinned", FP, AccountSnapshot("pinned", pinned))
        avatar_id = yield checker.requestAvatarId(login)
        self.assertEqual(avatar_id.account, pinned)
        for account in (
            Account(name="pinned", certificates=(FP2,)),
            Account(name="pinned", enabled=False),
            None,
        ):
            login = CertificateLogin("pinned", FP, AccountSnapshot("pinned", account))
            d = checker.requestAvatarId(login)
            self.assertFailure(d, UnauthorizedLogin)
            yield d
        self.assertEqual(self.reads, [])

    @inlineCallbacks
    def test_realm_builds_from_the_account_id(self) -> Any:
        realm = FTPRealm(self.filesystem_factory, self.store)
        reader = Account(name="reader", read_only=True)
        _, avatar, _ = yield realm.requestAvatar(AccountId(reader), None, IFTPAvatar)
        self.assertIs(avatar.account, reader)
        self.assertIs(self.filesystems[-1].account, reader)
        d = realm.requestAvatar(AccountId(Account(name="reader", enabled=False)), None, IFTPAvatar)
        self.assertFailure(d, UnauthorizedLogin)
        yield d
        self.assertEqual((self.reads, len(self.filesystems)), ([], 1))

    @inlineCallbacks
    def test_portal_reads_nothing_with_a_snapshot(self) -> Any:
        portal: Any = make_portal(self.store, self.pool, self.filesystem_factory)
        credentials = PasswordLogin(b"alice", b"s3cret", AccountSnapshot("alice", self.alice))
        _, avatar, _ = yield portal.login(credentials, None, IFTPAvatar)
        self.assertEqual((avatar.account, self.reads), (self.alice, []))
        _, avatar, _ = yield portal.login(PasswordLogin(b"alice", b"s3cret"), None, IFTPAvatar)
        self.assertEqual((avatar.account.name, self.reads), ("alice", ["alice"]))
