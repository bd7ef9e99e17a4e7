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


class LoginGuardMemoryTests(SynchronousTestCase):
    """Issue #9.4: the failure tables stay bounded under a spray of addresses and names."""

    def test_entries_older_than_the_window_are_dropped(self) -> None:
        guard = LoginGuard(max_failures=5, window=300)
        for index in range(1000):
            guard.record_failure(f"2001:db8:{index:x}::1", f"name-{index}", 0)
        self.assertEqual((len(guard._failures), len(guard._name_failures)), (1000, 1000))
        guard.record_failure("192.0.2.1", "alice", 300)
        self.assertEqual((len(guard._failures), len(guard._name_failures)), (1, 1))
        self.assertEqual(guard.failure_delay("name-999", 300), 1.0)
        self.assertEqual(guard.failure_delay("alice", 300), 2.0)

    def test_expired_bans_are_dropped(self) -> None:
        guard = LoginGuard(max_failures=1, window=300)
        for index in range(1000):
            self.assertTrue(guard.record_failure(f"10.0.{index >> 8}.{index & 255}", "a", 0))
        self.assertEqual(len(guard._banned_until), 1000)
        self.assertFalse(guard.is_banned("192.0.2.1", 300))
        self.assertEqual(len(guard._banned_until), 0)

    def test_tables_are_capped_oldest_out_first(self) -> None:
        guard = LoginGuard(max_failures=5, window=300, max_entries=100)
        for index in range(1000):
            guard.record_failure(f"2001:db8:{index:x}::1", f"name-{index}", index / 10)
        self.assertEqual((len(guard._failures), len(guard._name_failures)), (100, 100))
        self.assertEqual(guard.failure_delay("name-999", 100), 2.0)  # the newest are kept
        self.assertEqual(guard.failure_delay("name-899", 100), 1.0)  # the oldest went first
        banning = LoginGuard(max_failures=1, window=300, max_entries=100)
        for index in range(1000):
            address = f"10.0.{index >> 8}.{index & 255}"
            self.assertTrue(banning.record_failure(address, "a", index / 10))
        self.assertEqual(len(banning._banned_until), 100)
        self.assertTrue(banning.is_banned("10.0.3.231", 100))  # the newest ban (999) holds

    def test_names_are_kept_as_a_fixed_size_hash(self) -> None:
        guard = LoginGuard(max_failures=5, window=300)
        long_name = "x" * 4096
        guard.record_failure("192.0.2.1", long_name, 0)
        guard.record_failure("192.0.2.2", "\udcff-surrogate", 0)
        self.assertEqual([len(key) for key in guard._name_failures], [16, 16])
        self.assertTrue(all(isinstance(key, bytes) for key in guard._name_failures))
        self.assertEqual(guard.failure_delay(long_name, 1), 2.0)
        self.assertEqual(guard.failure_delay("x" * 4095, 1), 1.0)
        other = LoginGuard(max_failures=5, window=300)
        other.record_failure("192.0.2.1", long_name, 0)
        self.assertNotEqual(set(other._name_failures), set(guard._name_failures))  # keyed


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

    def test_ipv6_counted_per_64(self) -> None:
        """Issue #9.8: one /64 cannot take every slot by rotating its addresses."""
        counter = SessionCounter(max_sessions=10, max_per_address=2)
        self.assertTrue(counter.try_open("2001:db8::1"))
        self.assertTrue(counter.try_open("2001:db8::ffff:2"))
        self.assertFalse(counter.try_open("2001:db8::3"))
        self.assertFalse(counter.try_open("2001:db8:0:0:ffff:ffff:ffff:ffff"))
        self.assertTrue(counter.try_open("2001:db8:0:1::1"))
        self.assertTrue(counter.try_open("::ffff:192.0.2.1"))
        self.assertEqual(
            counter.per_address, {"2001:db8::/64": 2, "2001:db8:0:1::/64": 1, "192.0.2.1": 1}
        )
        counter.close("2001:db8::1")
        self.assertTrue(counter.try_open("2001:db8::4"))
        self.assertFalse(counter.try_open("2001:db8::5"))
        counter.close("192.0.2.1")
        self.assertEqual(counter.total, 3)
        self.assertEqual(counter.per_address, {"2001:db8::/64": 2, "2001:db8:0:1::/64": 1})

    def test_close_forgets_an_address_at_zero(self) -> None:
        counter = SessionCounter(max_sessions=3, max_per_address=3)
        counter.try_open("192.0.2.1")
        counter.try_open("192.0.2.1")
        counter.close("192.0.2.1")
        self.assertEqual(counter.per_address, {"192.0.2.1": 1})
        counter.close("192.0.2.1")
        self.assertEqual(counter.per_address, {})
        self.assertEqual(counter.total, 0)
