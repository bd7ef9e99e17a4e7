"""Tests for securetransport.userstore."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from securetransport.pki import issue_certificate, make_ca
from securetransport.stores import open_user_store
from securetransport.userstore import (
    Account,
    AsyncUserStore,
    IUserStore,
    SQLiteUserStore,
    UserStoreError,
    certificate_fingerprint,
    normalize_fingerprint,
    normalize_home,
)

FP = "ab" * 32
FP2 = "0123456789abcdef" * 4


def temp_dir(test: SynchronousTestCase) -> Path:
    """A new empty folder outside the repository, removed after the test."""
    folder = Path(tempfile.mkdtemp(prefix="st-test-")).resolve()
    test.addCleanup(shutil.rmtree, folder, True)
    return folder


class FingerprintTests(SynchronousTestCase):
    def test_accepted_forms(self) -> None:
        for text in [FP, FP.upper(), ":".join(["ab"] * 32), ":".join(["AB"] * 32), f"  {FP}\n"]:
            self.assertEqual(normalize_fingerprint(text), FP, text)
        mixed = "0123456789ABCDEF" * 4
        self.assertEqual(normalize_fingerprint(mixed), FP2)

    def test_rejected_forms(self) -> None:
        for text in [
            "",
            "ab" * 31,
            "ab" * 33,
            "zz" * 32,
            "a:b" + "ab" * 31,
            ":".join(["ab"] * 31) + ":",
            "ab:" * 32,
            "sha256:" + FP,
            "ab " * 32,
        ]:
            self.assertRaises(ValueError, normalize_fingerprint, text)

    def test_certificate_fingerprint_is_sha256_of_der(self) -> None:
        import hashlib

        from cryptography.hazmat.primitives.serialization import Encoding

        ca, key = make_ca("fp test")
        cert, _ = issue_certificate(ca, key, cn="alice")
        expected = hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
        self.assertEqual(certificate_fingerprint(cert), expected)
        self.assertEqual(len(expected), 64)


class HomeTests(SynchronousTestCase):
    def test_normalize(self) -> None:
        self.assertEqual(normalize_home(""), "")
        self.assertEqual(normalize_home("."), "")
        self.assertEqual(normalize_home("a/./b/"), "a/b")
        self.assertEqual(normalize_home("a//b"), "a/b")

    def test_rejects_escapes(self) -> None:
        for home in ["/etc", "..", "../x", "a/../../b", "a/..", "a\0b"]:
            self.assertRaises(UserStoreError, normalize_home, home)


class SQLiteUserStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = temp_dir(self)
        self.path = self.folder / "users.sqlite3"
        self.store = SQLiteUserStore(self.path)
        self.addCleanup(self.store.close)

    def test_provides_interface(self) -> None:
        self.assertTrue(verifyObject(IUserStore, self.store))

    def test_round_trip(self) -> None:
        account = Account(
            name="alice",
            password_hash="$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA",
            groups=("staff", "ops"),
            home="team/alice",
            certificates=(FP2, FP),
            read_only=True,
            enabled=False,
        )
        self.store.add(account)
        self.assertEqual(self.store.get("alice"), account)
        self.assertIsNone(self.store.get("bob"))
        self.assertIsNone(self.store.get("ALICE"))

    def test_defaults_round_trip(self) -> None:
        self.store.add(Account(name="cert-only"))
        self.assertEqual(self.store.get("cert-only"), Account(name="cert-only"))

    def test_add_normalizes(self) -> None:
        self.store.add(
            Account(
                name="bob",
                groups=("a", "b", "a"),
                certificates=(FP.upper(), ":".join(["ab"] * 32), FP2),
                home="x/./y/",
            )
        )
        bob = self.store.get("bob")
        assert bob is not None
        self.assertEqual(bob.groups, ("a", "b"))
        self.assertEqual(bob.certificates, (FP, FP2))
        self.assertEqual(bob.home, "x/y")

    def test_add_rejects_bad_fields(self) -> None:
        for account in [
            Account(name=".hidden"),
            Account(name="a/b"),
            Account(name=""),
            Account(name="x" * 65),
            Account(name="ok", certificates=("nothex",)),
            Account(name="ok", home="../escape"),
            Account(name="ok", home="/abs"),
            Account(name="ok", groups=("",)),
        ]:
            self.assertRaises(UserStoreError, self.store.add, account)
        self.assertEqual(self.store.list(), [])

    def test_duplicate_add(self) -> None:
        self.store.add(Account(name="alice"))
        error = self.assertRaises(UserStoreError, self.store.add, Account(name="alice"))
        self.assertIn("alice", str(error))

    def test_failed_write_rolls_back(self) -> None:
        self.store.add(Account(name="bob", groups=("old",)))

        def broken(conn: sqlite3.Connection, account: Account) -> None:
            conn.execute("DELETE FROM groups WHERE name = ?", (account.name,))
            raise sqlite3.OperationalError("disk I/O error")

        self.patch(self.store, "_write_details", broken)
        self.assertRaises(UserStoreError, self.store.add, Account(name="alice"))
        self.assertRaises(UserStoreError, self.store.update, Account(name="bob", groups=("new",)))
        self.assertIsNone(self.store.get("alice"))
        self.assertEqual(self.store.get("bob"), Account(name="bob", groups=("old",)))

    def test_list_sorted(self) -> None:
        for name in ["carol", "alice", "bob"]:
            self.store.add(Account(name=name, groups=(name.upper(),)))
        accounts = self.store.list()
        self.assertEqual([a.name for a in accounts], ["alice", "bob", "carol"])
        self.assertEqual([a.groups for a in accounts], [("ALICE",), ("BOB",), ("CAROL",)])

    def test_update_replaces_everything(self) -> None:
        self.store.add(Account(name="alice", groups=("a", "b"), certificates=(FP,)))
        new = Account(
            name="alice",
            password_hash="h",
            groups=("c",),
            home="elsewhere",
            certificates=(FP2,),
            read_only=True,
            enabled=False,
        )
        self.store.update(new)
        self.assertEqual(self.store.get("alice"), new)

    def test_update_unknown(self) -> None:
        self.assertRaises(UserStoreError, self.store.update, Account(name="ghost"))
        self.assertIsNone(self.store.get("ghost"))

    def test_remove_cascades(self) -> None:
        self.store.add(Account(name="alice", groups=("g",), certificates=(FP,)))
        self.assertTrue(self.store.remove("alice"))
        self.assertFalse(self.store.remove("alice"))
        self.store.add(Account(name="alice"))
        self.assertEqual(self.store.get("alice"), Account(name="alice"))
        self.assertEqual(self.store.find_by_fingerprint(FP), [])

    def test_find_by_fingerprint(self) -> None:
        self.store.add(Account(name="bob", certificates=(FP,)))
        self.store.add(Account(name="alice", certificates=(FP, FP2)))
        self.assertEqual(self.store.find_by_fingerprint(FP), ["alice", "bob"])
        self.assertEqual(self.store.find_by_fingerprint(FP2.upper()), ["alice"])
        self.assertEqual(self.store.find_by_fingerprint("0" * 64), [])
        self.assertEqual(self.store.find_by_fingerprint("junk"), [])

    def test_persists_and_is_private_wal(self) -> None:
        self.store.add(Account(name="alice", groups=("g",)))
        self.store.close()
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)
        reopened = SQLiteUserStore(self.path)
        self.addCleanup(reopened.close)
        self.assertEqual(reopened.get("alice"), Account(name="alice", groups=("g",)))
        with sqlite3.connect(self.path) as raw:
            (mode,) = raw.execute("PRAGMA journal_mode").fetchone()
        self.assertEqual(mode, "wal")

    def test_closed_store_raises(self) -> None:
        self.store.close()
        self.store.close()
        self.assertRaises(UserStoreError, self.store.get, "alice")

    def test_writes_from_other_process_are_seen(self) -> None:
        other = SQLiteUserStore(self.path)
        self.addCleanup(other.close)
        self.store.get("alice")
        other.add(Account(name="alice"))
        self.assertEqual(self.store.get("alice"), Account(name="alice"))
        other.update(Account(name="alice", enabled=False))
        alice = self.store.get("alice")
        assert alice is not None
        self.assertFalse(alice.enabled)

    def test_threads(self) -> None:
        errors: list[BaseException] = []

        def work(index: int) -> None:
            try:
                for i in range(20):
                    name = f"user{index}-{i}"
                    self.store.add(Account(name=name, groups=(str(index),), certificates=(FP,)))
                    got = self.store.get(name)
                    assert got is not None and got.groups == (str(index),)
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(errors, [])
        self.assertEqual(len(self.store.list()), 80)

    def test_unopenable_path(self) -> None:
        self.assertRaises(UserStoreError, SQLiteUserStore, self.folder / "missing" / "x.db")
        (self.folder / "folder.db").mkdir()
        self.assertRaises(UserStoreError, SQLiteUserStore, self.folder / "folder.db")

    def test_not_a_database(self) -> None:
        junk = self.folder / "junk.db"
        junk.write_bytes(b"this is not sqlite" * 100)
        self.assertRaises(UserStoreError, SQLiteUserStore, junk)


class OpenUserStoreTests(SynchronousTestCase):
    def test_sqlite_url_creates_folder(self) -> None:
        base = temp_dir(self) / "base"
        store: Any = open_user_store(f"sqlite:{base}/deep/users.sqlite3")
        self.addCleanup(store.close)
        self.assertTrue(verifyObject(IUserStore, store))
        store.add(Account(name="alice"))
        self.assertTrue((base / "deep" / "users.sqlite3").is_file())
        self.assertEqual(stat.S_IMODE((base / "deep").stat().st_mode) & 0o077, 0)

    def test_bad_urls(self) -> None:
        for url in ["", "users.sqlite3", "sqlite:relative.db", "sqlite:", "postgres://x/y"]:
            self.assertRaises(UserStoreError, open_user_store, url)


class AsyncUserStoreTests(TestCase):
    def setUp(self) -> None:
        folder = temp_dir(self)
        self.blocking = SQLiteUserStore(folder / "users.sqlite3")
        self.addCleanup(self.blocking.close)
        self.threadpool = ThreadPool(minthreads=0, maxthreads=2, name="test-userstore")
        self.threadpool.start()
        self.addCleanup(self.threadpool.stop)
        self.store = AsyncUserStore(self.blocking, self.threadpool, reactor)

    @inlineCallbacks
    def test_methods(self) -> Any:
        yield self.store.add(Account(name="alice", certificates=(FP,)))
        self.assertEqual((yield self.store.get("alice")), Account(name="alice", certificates=(FP,)))
        self.assertIsNone((yield self.store.get("bob")))
        yield self.store.update(Account(name="alice", read_only=True))
        accounts = yield self.store.list()
        self.assertEqual(accounts, [Account(name="alice", read_only=True)])
        yield self.store.update(Account(name="alice", certificates=(FP2,)))
        self.assertEqual((yield self.store.find_by_fingerprint(FP2)), ["alice"])
        self.assertTrue((yield self.store.remove("alice")))
        self.assertFalse((yield self.store.remove("alice")))

    @inlineCallbacks
    def test_runs_off_the_reactor_thread(self) -> Any:
        seen: list[int] = []
        original = self.blocking.get

        def spy(name: str) -> Account | None:
            seen.append(threading.get_ident())
            return original(name)

        self.patch(self.blocking, "get", spy)
        yield self.store.get("x")
        self.assertEqual(len(seen), 1)
        self.assertNotEqual(seen[0], threading.get_ident())

    @inlineCallbacks
    def test_errors_arrive_as_failures(self) -> Any:
        yield self.store.add(Account(name="alice"))
        d = self.store.add(Account(name="alice"))
        self.assertFailure(d, UserStoreError)
        yield d


class SchemaTests(SynchronousTestCase):
    def test_tables(self) -> None:
        path = temp_dir(self) / "users.sqlite3"
        SQLiteUserStore(path).close()
        with sqlite3.connect(path) as raw:
            tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master")}
            columns = [row[1] for row in raw.execute("PRAGMA table_info(accounts)")]
        self.assertTrue({"accounts", "groups", "certificates"} <= tables)
        self.assertEqual(columns, ["name", "password_hash", "home", "read_only", "enabled"])
        self.assertEqual(os.stat(path).st_mode & 0o077, 0)

    def test_newer_schema_refused(self) -> None:
        path = temp_dir(self) / "users.sqlite3"
        SQLiteUserStore(path).close()
        with sqlite3.connect(path) as raw:
            raw.execute("PRAGMA user_version = 99")
        error = self.assertRaises(UserStoreError, SQLiteUserStore, path)
        self.assertIn("99", str(error))
