"""The LISTEN thread against a real PostgreSQL that goes away and comes back."""

from __future__ import annotations

import time
from typing import Any

import psycopg
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from securetransport.cluster import ChangeListener
from securetransport.pgstore import PostgreSQLUserStore, upgrade
from securetransport.userstore import Account
from tests.pg import PostgresServer


class ListenerTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def wait_until(self, condition: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout} s")
            yield deferLater(reactor, 0.05, lambda: None)
        return None

    @defer.inlineCallbacks
    def test_delivers_reconnects_and_asks_for_a_resync(self) -> Any:
        server = PostgresServer().start()  # its own: this test restarts it
        self.addCleanup(server.stop)
        payloads: list[dict[str, Any]] = []
        connects: list[float] = []
        listener = ChangeListener(
            server.url(), "securetransport", reactor, payloads.append,
            lambda: connects.append(time.monotonic()),
        )  # fmt: skip
        listener.start()
        self.addCleanup(listener.stop)
        yield self.wait_until(lambda: listener.connected, 10)

        def notify(text: str) -> None:
            with psycopg.connect(server.url(), autocommit=True) as conn:
                conn.execute("SELECT pg_notify('securetransport', %s)", (text,))

        notify('{"kind": "account", "name": "alice"}')
        notify("not json")  # ignored
        notify('["not", "an", "object"]')  # ignored
        yield self.wait_until(lambda: len(payloads) == 1, 5)
        self.assertEqual(payloads, [{"kind": "account", "name": "alice"}])
        self.assertEqual(len(connects), 1)
        upgrade(server.url())
        store = PostgreSQLUserStore(server.url())
        self.addCleanup(store.close)
        store.add(Account(name="alice"))
        # Its notification arrives before the restart (one sent while the listener is
        # away is lost: that is what the resync on reconnecting is for).
        yield self.wait_until(lambda: len(payloads) == 2, 5)
        server.restart()
        # the pool replaces the connections the restart broke: no query fails
        self.assertEqual(store.get("alice"), Account(name="alice"))
        yield self.wait_until(lambda: len(connects) == 2, 30)  # reconnected: resync asked
        notify('{"kind": "ban", "key": "192.0.2.1", "until": 1}')
        yield self.wait_until(lambda: payloads[-1]["kind"] == "ban", 5)
        self.assertEqual([p["kind"] for p in payloads], ["account", "account", "ban"])
