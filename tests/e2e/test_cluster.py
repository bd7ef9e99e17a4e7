"""Two nodes on one PostgreSQL, in this test's reactor: changes made on one apply on the other.

Node A listens on 127.0.0.2 and node B on 127.0.0.3, each with its own passive slice,
sharing the database (tests/pg.py starts a real one) and the file tree.
"""

from __future__ import annotations

import ftplib
import random
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from hardening.server import DEFAULT_CLASSES, PASSWORD
from securetransport.config import load_config
from securetransport.passwords import hash_password
from securetransport.pgstore import PostgreSQLUserStore, upgrade
from securetransport.service import SecureTransportService
from securetransport.userstore import Account
from tests.e2e.harness import in_thread
from tests.pg import shared_postgres

PROPAGATION = 2.0  # SPEC section 10


def write_node_config(root: Path, name: str, address: str, url: str, extra: str = "") -> Path:
    first = random.randrange(61000, 64800)
    path = root / f"{name}.toml"
    path.write_text(
        f"""
[server]
home_root = "home"
users = "{url}"
audit_log = "log/{name}-audit.jsonl"
max_login_failures = 3
{extra}

[[listen]]
address = "{address}"
port = 0

[passive]
ports = "{first}-{first + 49}"
{DEFAULT_CLASSES}
"""
    )
    return path


class TwoNodes(TestCase):
    timeout = 120

    def setUp(self) -> Any:
        self.root = Path(self.mktemp()).absolute()
        (self.root / "home" / "alice").mkdir(parents=True)
        self.url = shared_postgres().create_database()
        upgrade(self.url)
        admin = PostgreSQLUserStore(self.url)
        admin.add(Account(name="alice", password_hash=hash_password(PASSWORD)))
        self.admin = admin
        self.addCleanup(admin.close)
        self.nodes: list[SecureTransportService] = []
        for name, address in (("a", "127.0.0.2"), ("b", "127.0.0.3")):
            config = load_config(write_node_config(self.root, name, address, self.url))
            node = SecureTransportService(config, reactor)
            node.startService()
            self.addCleanup(node.stopService)
            node.runtime.failure_delay_base = 0.05  # type: ignore[union-attr]
            self.nodes.append(node)
        # both nodes listen for changes before the test starts changing things
        return self.wait_until(lambda: all(n._listener.connected for n in self.nodes), 10)

    def address(self, index: int) -> tuple[str, int]:
        port = self.nodes[index].ports[0].getHost()
        return port.host, port.port  # type: ignore[attr-defined]

    def connect(self, index: int) -> ftplib.FTP:
        ftp = ftplib.FTP(timeout=10)
        ftp.connect(*self.address(index))
        return ftp

    @defer.inlineCallbacks
    def wait_until(self, condition: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout} s")
            yield deferLater(reactor, 0.05, lambda: None)
        return None

    @defer.inlineCallbacks
    def test_password_change_on_one_node_applies_on_the_other(self) -> Any:
        def login(index: int, password: str) -> str:
            ftp = self.connect(index)
            try:
                return ftp.login("alice", password)
            except ftplib.error_perm as error:
                return str(error)
            finally:
                ftp.close()

        self.assertTrue((yield in_thread(login, 1, PASSWORD)).startswith("230"))
        account = self.admin.get("alice")
        assert account is not None
        from dataclasses import replace

        new = "another-secret-42"
        yield self.nodes[0].runtime.users.update(  # type: ignore[union-attr]
            replace(account, password_hash=hash_password(new))
        )
        changed = time.monotonic()
        self.assertTrue((yield in_thread(login, 1, new)).startswith("230"))
        self.assertTrue((yield in_thread(login, 1, PASSWORD)).startswith("530"))
        self.assertLess(time.monotonic() - changed, PROPAGATION + 1.0)

    @defer.inlineCallbacks
    def test_disable_on_one_node_ends_sessions_on_the_other_within_2_s(self) -> Any:
        ftp = yield in_thread(self.connect, 1)
        yield in_thread(ftp.login, "alice", PASSWORD)
        account = self.admin.get("alice")
        from dataclasses import replace

        started = time.monotonic()
        yield self.nodes[0].runtime.users.update(replace(account, enabled=False))  # type: ignore[union-attr]

        def next_reply() -> str:
            try:
                return ftp.getline()
            except (OSError, EOFError) as error:
                return repr(error)

        line = yield in_thread(next_reply)  # the server speaks first: 421
        elapsed = time.monotonic() - started
        self.assertTrue(line.startswith("421"), line)
        self.assertLess(elapsed, PROPAGATION)
        ftp.close()

    @defer.inlineCallbacks
    def test_failures_on_both_nodes_ban_on_both_within_2_s(self) -> Any:
        def fail(index: int) -> str:
            ftp = self.connect(index)
            try:
                return ftp.login("alice", "wrong")
            except ftplib.error_perm as error:
                return str(error)
            finally:
                ftp.close()

        def greeting(index: int) -> str:
            try:
                ftp = self.connect(index)
            except ftplib.error_temp as error:
                return str(error)
            ftp.close()
            return ftp.welcome or ""

        self.assertTrue((yield in_thread(fail, 0)).startswith("530"))
        self.assertTrue((yield in_thread(fail, 1)).startswith("530"))
        self.assertTrue((yield in_thread(greeting, 0)).startswith("220"))
        self.assertTrue((yield in_thread(fail, 1)).startswith("530"))  # the third, on B
        banned_at = time.monotonic()
        for index in (0, 1):
            while True:
                reply = yield in_thread(greeting, index)
                if reply.startswith("421"):
                    break
                self.assertLess(time.monotonic() - banned_at, PROPAGATION, reply)
                yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual([k for k, _ in self.admin.active_bans(time.time())], ["127.0.0.1"])
