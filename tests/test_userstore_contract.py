"""One test suite of the IUserStore interface, run against SQLite and a real PostgreSQL.

The PostgreSQL tests start their own server (tests/pg.py): initdb in a temporary folder,
Unix socket only, as the `postgres` user; each test has its own database.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import psycopg
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from securetransport.cli import main
from securetransport.pgstore import (
    CHANNEL,
    SCHEMA_VERSION,
    PostgreSQLUserStore,
    SchemaError,
    upgrade,
)
from securetransport.stores import open_user_store
from securetransport.userstore import (
    Account,
    AsyncUserStore,
    IUserStore,
    SQLiteUserStore,
    UserStoreError,
)
from tests.pg import shared_postgres
from tests.test_fakes import UserStoreContract as EngineUserStoreContract
from tests.test_userstore import temp_dir

FP = "ab" * 32
FP2 = "0123456789abcdef" * 4


class UserStoreContract:
    """What every IUserStore does. Subclasses say how to open a store on fresh storage."""

    def open_store(self) -> Any:
        """A store on this test's storage (a second call: another handle on the same data)."""
        raise NotImplementedError

    def setUp(self) -> None:
        self.store = self.open_store()
        self.addCleanup(self.store.close)  # type: ignore[attr-defined]

    def test_provides_interface(self) -> None:
        self.assertTrue(verifyObject(IUserStore, self.store))  # type: ignore[attr-defined]

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
        self.assertEqual(self.store.get("alice"), account)  # type: ignore[attr-defined]
        self.assertIsNone(self.store.get("bob"))  # type: ignore[attr-defined]
        self.assertIsNone(self.store.get("ALICE"))  # type: ignore[attr-defined]

    def test_ssh_keys_round_trip_in_order(self) -> None:
        first = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
        second = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBQ9dsZZ3yZDL8uV/3J1ve4JmA0vZ7g4hNObJo5hFwzT"
        self.store.add(Account(name="keyed", ssh_keys=(second, first)))
        self.assertEqual(self.store.get("keyed").ssh_keys, (second, first))  # type: ignore[attr-defined]
        self.store.update(Account(name="keyed", ssh_keys=(first,)))
        self.assertEqual(self.store.get("keyed").ssh_keys, (first,))  # type: ignore[attr-defined]

    def test_defaults_round_trip(self) -> None:
        self.store.add(Account(name="cert-only"))
        self.assertEqual(self.store.get("cert-only"), Account(name="cert-only"))  # type: ignore[attr-defined]

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
        self.assertEqual((bob.groups, bob.certificates, bob.home), (("a", "b"), (FP, FP2), "x/y"))  # type: ignore[attr-defined]

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
            self.assertRaises(UserStoreError, self.store.add, account)  # type: ignore[attr-defined]
        self.assertEqual(self.store.list(), [])  # type: ignore[attr-defined]

    def test_duplicate_add(self) -> None:
        self.store.add(Account(name="alice", groups=("g",)))
        error = self.assertRaises(UserStoreError, self.store.add, Account(name="alice"))  # type: ignore[attr-defined]
        self.assertIn("alice", str(error))  # type: ignore[attr-defined]
        self.assertEqual(self.store.get("alice"), Account(name="alice", groups=("g",)))  # type: ignore[attr-defined]

    def test_list_sorted(self) -> None:
        for name in ["carol", "Zed", "alice", "bob"]:
            self.store.add(Account(name=name, groups=(name.upper(),)))
        accounts = self.store.list()
        self.assertEqual([a.name for a in accounts], ["Zed", "alice", "bob", "carol"])  # type: ignore[attr-defined]
        self.assertEqual([a.groups for a in accounts][1:], [("ALICE",), ("BOB",), ("CAROL",)])  # type: ignore[attr-defined]

    def test_group_order_is_kept(self) -> None:
        self.store.add(Account(name="alice", groups=("zeta", "alpha", "mid")))
        self.assertEqual(self.store.get("alice").groups, ("zeta", "alpha", "mid"))  # type: ignore[attr-defined]

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
        self.assertEqual(self.store.get("alice"), new)  # type: ignore[attr-defined]

    def test_update_unknown(self) -> None:
        self.assertRaises(UserStoreError, self.store.update, Account(name="ghost"))  # type: ignore[attr-defined]
        self.assertIsNone(self.store.get("ghost"))  # type: ignore[attr-defined]

    def test_remove_cascades(self) -> None:
        self.store.add(Account(name="alice", groups=("g",), certificates=(FP,)))
        self.assertTrue(self.store.remove("alice"))  # type: ignore[attr-defined]
        self.assertFalse(self.store.remove("alice"))  # type: ignore[attr-defined]
        self.store.add(Account(name="alice"))
        self.assertEqual(self.store.get("alice"), Account(name="alice"))  # type: ignore[attr-defined]
        self.assertEqual(self.store.find_by_fingerprint(FP), [])  # type: ignore[attr-defined]

    def test_find_by_fingerprint(self) -> None:
        self.store.add(Account(name="bob", certificates=(FP,)))
        self.store.add(Account(name="alice", certificates=(FP, FP2)))
        self.assertEqual(self.store.find_by_fingerprint(FP), ["alice", "bob"])  # type: ignore[attr-defined]
        self.assertEqual(self.store.find_by_fingerprint(FP2.upper()), ["alice"])  # type: ignore[attr-defined]
        self.assertEqual(self.store.find_by_fingerprint("0" * 64), [])  # type: ignore[attr-defined]
        self.assertEqual(self.store.find_by_fingerprint("junk"), [])  # type: ignore[attr-defined]

    def test_closed_store_raises(self) -> None:
        self.store.close()
        self.store.close()
        self.assertRaises(UserStoreError, self.store.get, "alice")  # type: ignore[attr-defined]

    def test_writes_from_another_handle_are_seen(self) -> None:
        other = self.open_store()
        self.addCleanup(other.close)  # type: ignore[attr-defined]
        self.store.get("alice")
        other.add(Account(name="alice"))
        self.assertEqual(self.store.get("alice"), Account(name="alice"))  # type: ignore[attr-defined]
        other.update(Account(name="alice", enabled=False))
        self.assertFalse(self.store.get("alice").enabled)  # type: ignore[attr-defined]

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
        self.assertEqual(errors, [])  # type: ignore[attr-defined]
        self.assertEqual(len(self.store.list()), 80)  # type: ignore[attr-defined]
        self.assertEqual(len(self.store.find_by_fingerprint(FP)), 80)  # type: ignore[attr-defined]


class SQLiteContract(UserStoreContract, SynchronousTestCase):
    def open_store(self) -> Any:
        if not hasattr(self, "path"):
            self.path = temp_dir(self) / "users.sqlite3"
        return SQLiteUserStore(self.path)


class PostgreSQLContract(UserStoreContract, SynchronousTestCase):
    def open_store(self) -> Any:
        if not hasattr(self, "url"):
            self.url = shared_postgres().create_database()
            upgrade(self.url)
        return open_user_store(self.url)


class PostgreSQLEngineContract(EngineUserStoreContract, SynchronousTestCase):
    """tests/test_fakes.py's contract (what the engine and the CLI rely on), on PostgreSQL."""

    def make_store(self) -> Any:
        url = shared_postgres().create_database()
        upgrade(url)
        store = open_user_store(url)
        self.addCleanup(store.close)
        return store


# --- what only the PostgreSQL store has ---------------------------------------------------


class PostgreSQLSchema(SynchronousTestCase):
    def setUp(self) -> None:
        self.url = shared_postgres().create_database()

    def test_refuses_a_missing_or_older_schema_naming_the_command(self) -> None:
        error = self.assertRaises(SchemaError, PostgreSQLUserStore, self.url)
        self.assertIn("securetransport db upgrade", str(error))
        self.assertIn("version 0", str(error))

    def test_upgrade_is_idempotent(self) -> None:
        self.assertEqual(upgrade(self.url), (0, SCHEMA_VERSION))
        store = PostgreSQLUserStore(self.url)
        store.add(Account(name="alice", groups=("g",)))
        store.close()
        self.assertEqual(upgrade(self.url), (SCHEMA_VERSION, SCHEMA_VERSION))
        store = PostgreSQLUserStore(self.url)
        self.addCleanup(store.close)
        self.assertEqual(store.get("alice"), Account(name="alice", groups=("g",)))

    def test_newer_schema_is_refused(self) -> None:
        upgrade(self.url)
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
        self.assertRaises(SchemaError, PostgreSQLUserStore, self.url)
        self.assertRaises(UserStoreError, upgrade, self.url)

    def test_unreachable_server(self) -> None:
        url = f"postgresql://postgres@/none?host={temp_dir(self)}"
        self.assertRaises(UserStoreError, PostgreSQLUserStore, url, timeout=2)
        self.assertRaises(UserStoreError, upgrade, url)

    def test_cli_db_upgrade_and_users(self) -> None:
        folder = temp_dir(self)
        config = folder / "st.toml"
        config.write_text(f'[server]\nusers = "{self.url}"\nhome_root = "home"\n')
        out = self.run_cli(["--config", str(config), "db", "upgrade"])
        self.assertEqual(out, (0, f"schema upgraded from version 0 to {SCHEMA_VERSION}\n"))
        out = self.run_cli(["--config", str(config), "db", "upgrade"])
        self.assertEqual(out, (0, f"schema is up to date (version {SCHEMA_VERSION})\n"))
        self.assertEqual(self.run_cli(["--config", str(config), "users", "add", "carol"])[0], 0)
        store = PostgreSQLUserStore(self.url)
        self.addCleanup(store.close)
        self.assertEqual([a.name for a in store.list()], ["carol"])

    def test_twistd_refuses_an_older_schema_naming_the_command(self) -> None:
        from twisted.python import usage

        from securetransport.tap import Options

        config = temp_dir(self) / "st.toml"
        config.write_text(f'[server]\nusers = "{self.url}"\nallow_root = true\n')
        error = self.assertRaises(
            usage.UsageError, Options().parseOptions, ["--config", str(config)]
        )
        self.assertEqual(
            str(error),
            "server.users: the user store schema is version 0, older than this program's"
            f" {SCHEMA_VERSION}: run `securetransport db upgrade`",
        )
        upgrade(self.url)
        options = Options()
        options.parseOptions(["--config", str(config)])
        self.assertEqual(options["parsed"].server.users, self.url)

    def test_cli_db_upgrade_wants_postgresql(self) -> None:
        config = temp_dir(self) / "st.toml"
        config.write_text('[server]\nusers = "sqlite:users.db"\n')
        self.assertEqual(self.run_cli(["--config", str(config), "db", "upgrade"])[0], 1)

    def run_cli(self, argv: list[str]) -> tuple[int, str]:
        import contextlib
        import io

        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            code = main(argv)
        return code, out.getvalue()


class PostgreSQLSharedState(SynchronousTestCase):
    """Failures and bans over every node, and the change notifications."""

    def setUp(self) -> None:
        self.url = shared_postgres().create_database()
        upgrade(self.url)
        self.a = PostgreSQLUserStore(self.url, node="a")
        self.b = PostgreSQLUserStore(self.url, node="b")
        self.addCleanup(self.a.close)
        self.addCleanup(self.b.close)

    def test_failures_from_two_nodes_count_together_within_the_window(self) -> None:
        self.assertIsNone(self.a.record_failure("192.0.2.1", "x", 100.0, 300, 3))
        self.assertIsNone(self.b.record_failure("192.0.2.1", "y", 150.0, 300, 3))
        self.assertIsNone(self.a.record_failure("192.0.2.9", "x", 160.0, 300, 3))  # another key
        self.assertEqual(self.b.record_failure("192.0.2.1", "x", 200.0, 300, 3), 500.0)
        self.assertEqual(self.a.active_bans(499.0), [("192.0.2.1", 500.0)])
        self.assertEqual(self.a.active_bans(500.0), [])
        # the failures that made the ban are spent; an old failure is outside the window
        self.assertIsNone(self.a.record_failure("192.0.2.9", "x", 470.0, 300, 3))
        self.assertIsNone(self.a.record_failure("192.0.2.9", "x", 471.0, 300, 3))
        self.assertEqual(
            [k for k, _, _ in self.b.recent_failures(0)], ["192.0.2.9", "192.0.2.9", "192.0.2.9"]
        )
        self.b.prune(now=600.0, window=300)
        self.assertEqual([at for _, _, at in self.b.recent_failures(0)], [470.0, 471.0])

    def test_changes_are_notified(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as listener:
            listener.execute(f"LISTEN {CHANNEL}")
            self.a.add(Account(name="alice"))
            self.a.update(Account(name="alice", enabled=False))
            self.a.remove("alice")
            self.a.record_failure("192.0.2.1", "alice", 10.0, 300, 1)
            payloads = [json.loads(n.payload) for n in listener.notifies(timeout=2, stop_after=5)]
        self.assertEqual(
            [(p["kind"], p.get("name")) for p in payloads],
            [("account", "alice")] * 3 + [("failure", "alice"), ("ban", None)],
        )
        self.assertEqual(
            payloads[4], {"kind": "ban", "key": "192.0.2.1", "until": 310.0, "node": "a"}
        )


class PostgreSQLAsync(TestCase):
    """The service's path: AsyncUserStore in a bounded thread pool over the connection pool."""

    @inlineCallbacks
    def test_queries_run_off_the_reactor(self) -> Any:
        url = shared_postgres().create_database()
        upgrade(url)
        store = PostgreSQLUserStore(url, max_size=2)
        self.addCleanup(store.close)
        pool = ThreadPool(minthreads=1, maxthreads=4)
        pool.start()
        self.addCleanup(pool.stop)
        users = AsyncUserStore(store, pool, reactor)
        reactor_thread = threading.get_ident()
        seen: list[int] = []
        original = store._run

        def spy(fn: Any) -> Any:
            seen.append(threading.get_ident())
            return original(fn)

        store._run = spy  # type: ignore[method-assign]
        yield users.add(Account(name="alice", certificates=(FP,)))
        results = yield users.list()
        self.assertEqual([a.name for a in results], ["alice"])
        self.assertEqual((yield users.find_by_fingerprint(FP)), ["alice"])
        self.assertTrue((yield users.pinned_by_any_account(FP)))
        self.assertTrue(seen)
        self.assertNotIn(reactor_thread, seen)
