"""securetransport.cluster's logic, without a database: notifications into the local guard."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase

from securetransport.cluster import ClusterGuard, key_address
from securetransport.limits import LoginGuard, ban_key
from securetransport.vfs import sweep_temporaries


class FakeStore:
    node = "me"

    def __init__(self, ban_after: int = 99) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.ban_after = ban_after

    def record_failure(
        self, key: str, name: str, at: float, window: float, most: int
    ) -> float | None:
        self.calls.append((key, name, at, window, most))
        return at + window if len(self.calls) >= self.ban_after else None

    def active_bans(self, now: float) -> list[tuple[str, float]]:
        return [("192.0.2.77", now + 100)]

    def prune(self, now: float, window: float) -> None:
        self.calls.append(("prune", window))


class KeyTests(SynchronousTestCase):
    def test_key_address_round_trips_through_ban_key(self) -> None:
        for address in ("192.0.2.1", "2001:db8:1:2:3:4:5:6"):
            key = ban_key(address)
            self.assertEqual(ban_key(key_address(key)), key)


class GuardTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.local = LoginGuard(3, 300)
        self.guard = ClusterGuard(self.local, FakeStore(), None, None, 300, 3)

    def test_other_nodes_failures_count_here(self) -> None:
        for at in (100.0, 101.0):
            self.guard.apply(
                {"kind": "failure", "key": "192.0.2.1", "name": "x", "at": at, "node": "b"}
            )
        self.assertFalse(self.guard.is_banned("192.0.2.1", 102.0))
        self.assertEqual(self.guard.failure_delay("x", 102.0), 4.0)  # the name's delay too
        self.guard.apply(
            {"kind": "failure", "key": "192.0.2.1", "name": "y", "at": 102.0, "node": "c"}
        )
        self.assertTrue(self.guard.is_banned("192.0.2.1", 103.0))

    def test_own_notifications_are_ignored(self) -> None:
        for at in (1.0, 2.0, 3.0):
            self.guard.apply(
                {"kind": "failure", "key": "192.0.2.1", "name": "x", "at": at, "node": "me"}
            )
        self.assertFalse(self.guard.is_banned("192.0.2.1", 4.0))

    def test_bans_from_elsewhere_apply_and_ipv6_keys_map_to_the_64(self) -> None:
        self.guard.apply({"kind": "ban", "key": "2001:db8:1:2::/64", "until": 500.0, "node": "b"})
        self.assertTrue(self.guard.is_banned("2001:db8:1:2:ffff::1", 499.0))
        self.assertFalse(self.guard.is_banned("2001:db8:1:3::1", 499.0))
        self.assertEqual(self.guard.active_bans(499.0), 1)
        self.assertFalse(self.guard.is_banned("2001:db8:1:2::1", 500.0))

    def test_malformed_notifications_do_no_harm(self) -> None:
        for message in (
            {"kind": "failure", "node": "b"},
            {"kind": "ban", "key": "not an address", "until": 1, "node": "b"},
            {"kind": "ban", "key": "192.0.2.1", "until": "soon", "node": "b"},
            {"kind": "mystery"},
        ):
            self.guard.apply(message)
        self.assertFalse(self.guard.is_banned("192.0.2.1", 0.0))


class GuardWithThreads(TestCase):
    @inlineCallbacks
    def test_failures_go_to_the_store_off_the_reactor_and_its_ban_applies(self) -> Any:
        pool = ThreadPool(minthreads=1, maxthreads=2)
        pool.start()
        self.addCleanup(pool.stop)
        store = FakeStore(ban_after=1)
        local = LoginGuard(5, 300)
        guard = ClusterGuard(local, store, pool, reactor, 300, 5)
        now = time.time()
        self.assertFalse(guard.record_failure("192.0.2.8", "alice", now))
        deadline = time.monotonic() + 5
        while not guard.is_banned("192.0.2.8", now + 1) and time.monotonic() < deadline:
            from twisted.internet.task import deferLater

            yield deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(store.calls, [("192.0.2.8", "alice", now, 300, 5)])
        self.assertTrue(guard.is_banned("192.0.2.8", now + 1))  # the database's ban
        yield guard.resync()
        self.assertTrue(guard.is_banned("192.0.2.77", time.time()))
        self.assertEqual(store.calls[-1], ("prune", 300))


class SweepTests(SynchronousTestCase):
    def test_min_age_spares_uploads_still_being_written(self) -> None:
        root = Path(self.mktemp())
        (root / "alice").mkdir(parents=True)
        old = root / "alice" / ".st-upload-old"
        fresh = root / "alice" / ".st-upload-fresh"
        for path in (old, fresh):
            path.write_bytes(b"x")
        os.utime(old, (time.time() - 1000, time.time() - 1000))
        self.assertEqual(sweep_temporaries(root, min_age=240), 1)
        self.assertFalse(old.exists())
        self.assertTrue(fresh.exists())
        self.assertEqual(sweep_temporaries(root), 1)
        self.assertFalse(fresh.exists())


class WorkerGuardTests(SynchronousTestCase):
    def test_only_one_worker_applies_remote_failures_to_the_shared_table(self) -> None:
        local = LoginGuard(2, 300)
        quiet = ClusterGuard(local, FakeStore(), None, None, 300, 2, apply_remote=False)
        for at in (1.0, 2.0):
            quiet.apply({"kind": "failure", "key": "192.0.2.1", "name": "x", "at": at, "node": "b"})
        quiet.apply({"kind": "ban", "key": "192.0.2.2", "until": 99.0, "node": "b"})
        self.assertFalse(local.is_banned("192.0.2.1", 3.0))
        self.assertFalse(local.is_banned("192.0.2.2", 3.0))
