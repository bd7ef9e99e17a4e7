"""Tests for securetransport.limits: failed-login windows, bans, delays, session counts."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from securetransport.limits import LoginGuard, SessionCounter, ban_key


class BanKeyTests(SynchronousTestCase):
    def test_keys(self) -> None:
        cases = [
            ("192.0.2.1", "192.0.2.1"),
            ("::ffff:192.0.2.1", "192.0.2.1"),
            ("2001:db8::1", "2001:db8::/64"),
            ("2001:db8::ffff:ffff:ffff:ffff", "2001:db8::/64"),
            ("2001:db8:0:1::1", "2001:db8:0:1::/64"),
            ("::1", "::/64"),
        ]
        for address, expected in cases:
            self.assertEqual(ban_key(address), expected, address)


class LoginGuardBanTests(SynchronousTestCase):
    def test_ban_at_max_failures(self) -> None:
        guard = LoginGuard(max_failures=3, window=300)
        self.assertFalse(guard.is_banned("192.0.2.1", 0))
        self.assertFalse(guard.record_failure("192.0.2.1", "alice", 0))
        self.assertFalse(guard.record_failure("192.0.2.1", "bob", 10))
        self.assertFalse(guard.is_banned("192.0.2.1", 10))
        self.assertTrue(guard.record_failure("192.0.2.1", "carol", 20))
        self.assertTrue(guard.is_banned("192.0.2.1", 20))
        self.assertFalse(guard.is_banned("192.0.2.2", 20))

    def test_ban_lasts_window_seconds(self) -> None:
        guard = LoginGuard(max_failures=1, window=300)
        self.assertTrue(guard.record_failure("192.0.2.1", "alice", 100))
        for now in (100, 200, 399.9):
            self.assertTrue(guard.is_banned("192.0.2.1", now), now)
        self.assertFalse(guard.is_banned("192.0.2.1", 400))
        self.assertFalse(guard.is_banned("192.0.2.1", 401))

    def test_checking_during_a_ban_does_not_extend_it(self) -> None:
        """Reconnecting (is_banned at each connect) never moves the end of the ban."""
        guard = LoginGuard(max_failures=2, window=60)
        guard.record_failure("192.0.2.1", "alice", 0)
        guard.record_failure("192.0.2.1", "alice", 1)
        for now in range(1, 61):
            self.assertTrue(guard.is_banned("192.0.2.1", now), now)
        self.assertFalse(guard.is_banned("192.0.2.1", 61))

    def test_failures_outside_the_window_do_not_count(self) -> None:
        guard = LoginGuard(max_failures=2, window=300)
        self.assertFalse(guard.record_failure("192.0.2.1", "alice", 0))
        # Exactly one window later the first failure has expired.
        self.assertFalse(guard.record_failure("192.0.2.1", "alice", 300))
        self.assertFalse(guard.is_banned("192.0.2.1", 300))
        self.assertTrue(guard.record_failure("192.0.2.1", "alice", 599))
        self.assertTrue(guard.is_banned("192.0.2.1", 599))

    def test_counting_starts_again_after_a_ban(self) -> None:
        guard = LoginGuard(max_failures=2, window=100)
        guard.record_failure("192.0.2.1", "a", 0)
        self.assertTrue(guard.record_failure("192.0.2.1", "a", 1))
        self.assertFalse(guard.is_banned("192.0.2.1", 101))
        self.assertFalse(guard.record_failure("192.0.2.1", "a", 102))
        self.assertFalse(guard.is_banned("192.0.2.1", 102))

    def test_ipv6_counted_and_banned_per_64(self) -> None:
        guard = LoginGuard(max_failures=3, window=300)
        guard.record_failure("2001:db8::1", "a", 0)
        guard.record_failure("2001:db8::2", "a", 1)
        self.assertFalse(guard.record_failure("2001:db8:0:1::1", "a", 2))
        self.assertTrue(guard.record_failure("2001:db8::ffff:1", "a", 3))
        self.assertTrue(guard.is_banned("2001:db8::1234", 3))
        self.assertTrue(guard.is_banned("2001:db8:0:0:ffff:ffff:ffff:ffff", 3))
        self.assertFalse(guard.is_banned("2001:db8:0:1::1", 3))
        self.assertFalse(guard.is_banned("2001:db9::1", 3))

    def test_ipv4_mapped_counts_as_ipv4(self) -> None:
        guard = LoginGuard(max_failures=2, window=300)
        guard.record_failure("::ffff:192.0.2.1", "a", 0)
        self.assertTrue(guard.record_failure("192.0.2.1", "a", 1))
        self.assertTrue(guard.is_banned("::ffff:192.0.2.1", 2))
        self.assertTrue(guard.is_banned("192.0.2.1", 2))


class LoginGuardDelayTests(SynchronousTestCase):
    def test_delay_doubles_per_failure_of_a_name_capped_at_16(self) -> None:
        guard = LoginGuard(max_failures=1000, window=300)
        delays = []
        for now in range(7):
            delays.append(guard.failure_delay("alice", now))
            guard.record_failure(f"192.0.2.{now + 1}", "alice", now)
        self.assertEqual(delays, [1.0, 2.0, 4.0, 8.0, 16.0, 16.0, 16.0])

    def test_delay_is_per_name_and_counts_every_address(self) -> None:
        guard = LoginGuard(max_failures=1000, window=300)
        guard.record_failure("192.0.2.1", "alice", 0)
        guard.record_failure("198.51.100.7", "alice", 1)
        self.assertEqual(guard.failure_delay("alice", 2), 4.0)
        self.assertEqual(guard.failure_delay("bob", 2), 1.0)
        # Unknown names are counted exactly like known ones.
        guard.record_failure("192.0.2.1", "no-such-user", 2)
        self.assertEqual(guard.failure_delay("no-such-user", 3), 2.0)

    def test_delay_forgets_failures_older_than_the_window(self) -> None:
        guard = LoginGuard(max_failures=1000, window=300)
        guard.record_failure("192.0.2.1", "alice", 0)
        guard.record_failure("192.0.2.1", "alice", 100)
        self.assertEqual(guard.failure_delay("alice", 299), 4.0)
        self.assertEqual(guard.failure_delay("alice", 300), 2.0)
        self.assertEqual(guard.failure_delay("alice", 400), 1.0)

    def test_max_delay_setting(self) -> None:
        guard = LoginGuard(max_failures=1000, window=300, max_delay=3)
        for now in range(3):
            guard.record_failure("192.0.2.1", "alice", now)
        self.assertEqual(guard.failure_delay("alice", 3), 3.0)


class SessionCounterTests(SynchronousTestCase):
    def test_per_address_limit(self) -> None:
        counter = SessionCounter(max_sessions=10, max_per_address=2)
        self.assertTrue(counter.try_open("192.0.2.1"))
        self.assertTrue(counter.try_open("192.0.2.1"))
        self.assertFalse(counter.try_open("192.0.2.1"))
        self.assertTrue(counter.try_open("192.0.2.2"))
        self.assertEqual(counter.total, 3)
        self.assertEqual(counter.per_address, {"192.0.2.1": 2, "192.0.2.2": 1})
        counter.close("192.0.2.1")
        self.assertTrue(counter.try_open("192.0.2.1"))

    def test_total_limit(self) -> None:
        counter = SessionCounter(max_sessions=3, max_per_address=5)
        for host in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
            self.assertTrue(counter.try_open(host))
        self.assertFalse(counter.try_open("192.0.2.4"))
        self.assertEqual(counter.total, 3)
        self.assertNotIn("192.0.2.4", counter.per_address)
        counter.close("192.0.2.2")
        self.assertTrue(counter.try_open("192.0.2.4"))

    def test_close_forgets_an_address_at_zero(self) -> None:
        counter = SessionCounter(max_sessions=3, max_per_address=3)
        counter.try_open("192.0.2.1")
        counter.try_open("192.0.2.1")
        counter.close("192.0.2.1")
        self.assertEqual(counter.per_address, {"192.0.2.1": 1})
        counter.close("192.0.2.1")
        self.assertEqual(counter.per_address, {})
        self.assertEqual(counter.total, 0)
