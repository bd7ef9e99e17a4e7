"""Account changes reach sessions already open: a disabled or removed account's sessions end."""

from __future__ import annotations

import ftplib
from dataclasses import replace
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.e2e.harness import PASSWORD, LiveServer, in_thread


class DisabledAccountTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.server = LiveServer(self).start()

    def login(self, user: str) -> ftplib.FTP:
        ftp = ftplib.FTP()
        ftp.connect("127.0.0.1", self.server.explicit_port, timeout=10)
        ftp.login(user, PASSWORD)
        return ftp

    @defer.inlineCallbacks
    def test_disabled_and_removed_accounts_sessions_end(self) -> Any:
        alice = yield in_thread(self.login, "alice")
        bob = yield in_thread(self.login, "bob")
        store = self.server.store()
        store.update(replace(store.get("alice"), enabled=False))
        yield self.server.service.end_sessions_of_disabled_accounts()

        def next_reply(ftp: ftplib.FTP) -> str:
            try:
                return ftp.getline()
            except (EOFError, OSError) as error:
                return f"closed: {error!r}"

        first = yield in_thread(next_reply, alice)
        self.assertTrue(first.startswith("421"), first)
        # bob is untouched ...
        self.assertTrue((yield in_thread(bob.sendcmd, "NOOP")).startswith("200"))
        # ... until his account is removed.
        store.remove("bob")
        yield self.server.service.end_sessions_of_disabled_accounts()
        self.assertTrue((yield in_thread(next_reply, bob)).startswith("421"))
        for ftp in (alice, bob):
            ftp.close()
