"""Tests for securetransport.shared_limits: the limits.py cases again, over the shared table,
then what only a shared table has (workers, eviction, several processes)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from securetransport.limits import LoginGuard, SessionCounter
from securetransport.shared_limits import (
    RING_LIMIT,
    SharedLimits,
    SharedLimitsError,
    SharedLoginGuard,
    SharedSessionCounter,
)
from tests import test_limits

REPO = Path(__file__).resolve().parent.parent


def new_limits(case: SynchronousTestCase, **settings: int | float) -> SharedLimits:
    folder = Path(case.mktemp()).absolute()
    folder.mkdir(parents=True)
    options: dict[str, int | float] = {"workers": 2, "max_sessions": 100, "max_login_failures": 5}
    options.update(settings)
    limits = SharedLimits.create(folder / "limits", **options)  # type: ignore[arg-type]
    case.addCleanup(limits.close)
    return limits


class _Shared(SynchronousTestCase):
    """Runs a limits.py test class with its LoginGuard/SessionCounter made shared."""

    def setUp(self) -> None:
        def guard(max_failures: int, window: float, max_delay: float = 16.0) -> SharedLoginGuard:
            limits = new_limits(self, max_login_failures=max_failures, max_delay=max_delay)
            return SharedLoginGuard(limits, max_failures, window, max_delay)

        def counter(max_sessions: int, max_per_address: int) -> SharedSessionCounter:
            limits = new_limits(self, max_sessions=max_sessions)
            return SharedSessionCounter(limits, 1, max_sessions, max_per_address)

        self.patch(test_limits, "LoginGuard", guard)
        self.patch(test_limits, "SessionCounter", counter)


class SharedLoginGuardBanTests(_Shared, test_limits.LoginGuardBanTests):
    pass


class SharedLoginGuardDelayTests(_Shared, test_limits.LoginGuardDelayTests):
    pass


class SharedSessionCounterTests(_Shared, test_limits.SessionCounterTests):
    pass


class SameAsLimitsTests(SynchronousTestCase):
    """Random sequences give the same answers as the single-process classes."""

    def test_guard_matches_login_guard(self) -> None:
        rng = random.Random(5)
        for max_failures in (1, 3, 5, RING_LIMIT):
            window = rng.choice([10.0, 60.0, 300.0])
            local = LoginGuard(max_failures, window)
            shared = SharedLoginGuard(
                new_limits(self, max_login_failures=max_failures), max_failures, window
            )
            now = 0.0
            for _ in range(600):
                now += rng.choice([0.0, 0.5, 1.0, 3.0, window / 2, window])
                address = f"192.0.2.{rng.randrange(4)}"
                name = rng.choice(["alice", "bob", "nobody"])
                operation = rng.randrange(3)
                if operation == 0:
                    expected = local.record_failure(address, name, now)
                    got = shared.record_failure(address, name, now)
                elif operation == 1:
                    expected, got = local.is_banned(address, now), shared.is_banned(address, now)
                else:
                    expected = local.failure_delay(name, now)
                    got = shared.failure_delay(name, now)
                self.assertEqual(got, expected, (max_failures, operation, address, name, now))

    def test_counter_matches_session_counter(self) -> None:
        rng = random.Random(7)
        local = SessionCounter(20, 3)
        shared = SharedSessionCounter(new_limits(self, max_sessions=20), 0, 20, 3)
        open_addresses: list[str] = []
        for _ in range(2000):
            if open_addresses and rng.random() < 0.45:
                address = open_addresses.pop(rng.randrange(len(open_addresses)))
                local.close(address)
                shared.close(address)
                continue
            address = rng.choice(["192.0.2.1", "192.0.2.2", "2001:db8::1", "198.51.100.9"])
            opened = local.try_open(address)
            self.assertEqual(shared.try_open(address), opened)
            if opened:
                open_addresses.append(address)
            self.assertEqual(shared.total, local.total)
        self.assertEqual(shared.per_address, local.per_address)


class SharedSessionTests(SynchronousTestCase):
    def test_workers_share_the_limits(self) -> None:
        limits = new_limits(self, workers=2, max_sessions=3)
        first = SharedSessionCounter(limits, 0, 3, 2)
        second = SharedSessionCounter(limits, 1, 3, 2)
        self.assertTrue(first.try_open("192.0.2.1"))
        self.assertTrue(second.try_open("192.0.2.1"))
        self.assertFalse(first.try_open("192.0.2.1"))  # per address, across workers
        self.assertTrue(first.try_open("192.0.2.2"))
        self.assertFalse(second.try_open("192.0.2.3"))  # in total, across workers
        self.assertEqual(first.total, 3)
        self.assertEqual(second.per_address, {"192.0.2.1": 2, "192.0.2.2": 1})
        second.close("192.0.2.1")
        self.assertTrue(first.try_open("192.0.2.3"))

    def test_worker_loads_count_open_sessions_and_accepted_connections(self) -> None:
        limits = new_limits(self, workers=2, max_sessions=2)
        first = SharedSessionCounter(limits, 0, 2, 2)
        second = SharedSessionCounter(limits, 1, 2, 2)
        self.assertEqual(limits.worker_loads(), [(0, 0), (0, 0)])
        for _ in range(3):
            limits.note_accepted(0)
            self.assertTrue(first.try_open("192.0.2.1"))
            first.close("192.0.2.1")
        limits.note_accepted(1, 2)
        self.assertTrue(second.try_open("192.0.2.1"))
        self.assertTrue(second.try_open("192.0.2.2"))
        limits.note_accepted(0)  # a connection refused (too many sessions) counts too
        self.assertFalse(first.try_open("192.0.2.3"))
        self.assertEqual(limits.worker_loads(), [(0, 4), (2, 2)])
        limits.forget_worker(1)  # open sessions gone; what it accepted stays its history
        self.assertEqual(limits.worker_loads(), [(0, 4), (0, 2)])

    def test_forget_worker_drops_only_its_sessions(self) -> None:
        limits = new_limits(self, workers=2, max_sessions=4)
        first = SharedSessionCounter(limits, 0, 4, 4)
        second = SharedSessionCounter(limits, 1, 4, 4)
        for _ in range(3):
            self.assertTrue(first.try_open("192.0.2.1"))
        self.assertTrue(second.try_open("192.0.2.1"))
        self.assertFalse(second.try_open("192.0.2.2"))
        limits.forget_worker(0)  # worker 0 died with its 3 sessions
        self.assertEqual(second.total, 1)
        self.assertEqual(second.per_address, {"192.0.2.1": 1})
        for _ in range(3):
            self.assertTrue(second.try_open("192.0.2.2"))
        self.assertFalse(second.try_open("192.0.2.3"))

    def test_close_never_goes_below_zero(self) -> None:
        """A stray close (a worker restarted in between) cannot make room beyond the max."""
        limits = new_limits(self, max_sessions=1)
        counter = SharedSessionCounter(limits, 0, 1, 1)
        counter.close("192.0.2.1")
        counter.close("192.0.2.1")
        self.assertTrue(counter.try_open("192.0.2.1"))
        self.assertFalse(counter.try_open("192.0.2.2"))

    def test_many_addresses_come_and_go(self) -> None:
        """Slots of addresses with no session left are reused: the table never fills up."""
        limits = new_limits(self, max_sessions=8)
        counter = SharedSessionCounter(limits, 0, 8, 1)
        for index in range(5000):
            address = f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}"
            self.assertTrue(counter.try_open(address), index)
            counter.close(address)
        self.assertEqual(counter.total, 0)

    def test_addresses_are_normalized(self) -> None:
        counter = SharedSessionCounter(new_limits(self), 0, 10, 1)
        self.assertTrue(counter.try_open("192.0.2.1"))
        self.assertFalse(counter.try_open("::ffff:192.0.2.1"))
        self.assertTrue(counter.try_open("2001:db8::1"))
        self.assertEqual(counter.per_address, {"192.0.2.1": 1, "2001:db8::/64": 1})

    def test_settings_the_file_was_not_made_for(self) -> None:
        limits = new_limits(self, workers=2, max_sessions=10, max_login_failures=3)
        with self.assertRaises(SharedLimitsError):
            SharedSessionCounter(limits, 2, 10, 1)
        with self.assertRaises(SharedLimitsError):
            SharedSessionCounter(limits, 0, 10_000, 1)
        with self.assertRaises(SharedLimitsError):
            SharedLoginGuard(limits, 10, 300)
        with self.assertRaises(SharedLimitsError):
            SharedLoginGuard(limits, 3, 300, max_delay=1024)

    def test_open_checks_the_file(self) -> None:
        folder = Path(self.mktemp())
        folder.mkdir()
        (folder / "other").write_bytes(b"x" * 8192)
        for path in (folder / "missing", folder / "other"):
            with self.assertRaises(SharedLimitsError):
                SharedLimits.open(path)
        made = new_limits(self, workers=3)
        again = SharedLimits.open(made.path)
        self.addCleanup(again.close)
        self.assertEqual(again.workers, 3)
        self.assertEqual(os.stat(made.path).st_mode & 0o777, 0o600)


class SharedGuardTests(SynchronousTestCase):
    def test_a_ban_made_by_one_worker_holds_in_another(self) -> None:
        limits = new_limits(self, max_login_failures=2)
        other = SharedLimits.open(limits.path)
        self.addCleanup(other.close)
        first = SharedLoginGuard(limits, 2, 60)
        second = SharedLoginGuard(other, 2, 60)
        self.assertFalse(first.record_failure("2001:db8::1", "alice", 0))
        self.assertEqual(second.failure_delay("alice", 1), 2.0)
        self.assertTrue(second.record_failure("2001:db8::2", "alice", 1))  # same /64
        self.assertTrue(first.is_banned("2001:db8::99", 30))
        self.assertFalse(second.is_banned("2001:db8::99", 61))

    def test_more_failures_than_the_ring_use_a_fixed_window(self) -> None:
        failures = RING_LIMIT + 8
        guard = SharedLoginGuard(new_limits(self, max_login_failures=failures), failures, 100)
        for index in range(failures - 1):
            self.assertFalse(guard.record_failure("192.0.2.1", "a", index * 0.5))
        self.assertTrue(guard.record_failure("192.0.2.1", "a", 50))
        self.assertTrue(guard.is_banned("192.0.2.1", 149))
        self.assertFalse(guard.is_banned("192.0.2.1", 150))
        # A window starts at its first failure and ends ban_time later.
        for index in range(failures - 1):
            self.assertFalse(guard.record_failure("192.0.2.1", "a", 200 + index))
        self.assertFalse(guard.record_failure("192.0.2.1", "a", 300))

    def test_a_spray_of_addresses_and_names_keeps_bans_and_bounds(self) -> None:
        """A full table evicts the oldest unbanned entries first; it never grows or fails."""
        limits = new_limits(self, max_login_failures=3, address_slots=64, name_slots=64)
        guard = SharedLoginGuard(limits, 3, 1000)
        size = os.stat(limits.path).st_size
        for attempt in range(3):
            banned = guard.record_failure("198.51.100.7", "target", attempt)
        self.assertTrue(banned)
        for index in range(3000):
            guard.record_failure(
                f"10.0.{index >> 8}.{index & 255}", f"user{index}", 10 + index / 100
            )
        self.assertTrue(guard.is_banned("198.51.100.7", 50))
        self.assertEqual(os.stat(limits.path).st_size, size)
        # Recent entries are the ones kept: the last sprayed name still delays.
        self.assertEqual(guard.failure_delay("user2999", 50), 2.0)

    def test_expired_entries_are_reused(self) -> None:
        limits = new_limits(self, max_login_failures=2, address_slots=32, name_slots=32)
        guard = SharedLoginGuard(limits, 2, 10)
        for index in range(500):
            now = index * 11.0  # each round starts after the last one expired
            self.assertFalse(guard.record_failure(f"10.0.{index >> 8}.{index & 255}", "x", now))
            self.assertTrue(guard.record_failure(f"10.0.{index >> 8}.{index & 255}", "x", now))
            self.assertTrue(guard.is_banned(f"10.0.{index >> 8}.{index & 255}", now + 1))


HAMMER = """
import json, random, sys
from pathlib import Path
from securetransport.shared_limits import SharedLimits, SharedSessionCounter
path = Path(sys.argv[1])
worker, rounds, maximum = (int(value) for value in sys.argv[2:5])
limits = SharedLimits.open(path)
counter = SharedSessionCounter(limits, worker, maximum, maximum)
rng = random.Random(worker)
held, opened, refused, worst = [], 0, 0, 0
for _ in range(rounds):
    if held and (rng.random() < 0.5 or len(held) > maximum):
        counter.close(held.pop())
        continue
    address = f"192.0.2.{rng.randrange(1, 4)}"
    if counter.try_open(address):
        held.append(address)
        opened += 1
        worst = max(worst, counter.total)
    else:
        refused += 1
for address in held:
    counter.close(address)
print(json.dumps({"opened": opened, "refused": refused, "worst": worst}))
"""


class CrossProcessTests(SynchronousTestCase):
    def test_two_processes_never_exceed_the_maximum(self) -> None:
        maximum = 5
        limits = new_limits(self, workers=2, max_sessions=maximum)
        processes = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    HAMMER,
                    str(limits.path),
                    str(worker),
                    "20000",
                    str(maximum),
                ],
                stdout=subprocess.PIPE,
                text=True,
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
            for worker in (0, 1)
        ]
        results = []
        for process in processes:
            output, _ = process.communicate(timeout=120)
            self.assertEqual(process.returncode, 0)
            results.append(json.loads(output))
        for result in results:
            self.assertLessEqual(result["worst"], maximum, results)
            self.assertGreater(result["opened"], 0, results)
        # The two really competed for the same slots.
        self.assertGreater(sum(result["refused"] for result in results), 0, results)
        self.assertEqual(max(result["worst"] for result in results), maximum, results)
        counter = SharedSessionCounter(limits, 0, maximum, maximum)
        self.assertEqual((counter.total, counter.per_address), (0, {}))
