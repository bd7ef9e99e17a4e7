"""Tests for securetransport.passwords."""

from __future__ import annotations

import threading
import time
from typing import Any, Literal

from argon2 import PasswordHasher, Type, extract_parameters
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from securetransport import passwords
from securetransport.passwords import (
    DUMMY_HASH,
    PoolFull,
    VerificationPool,
    hash_password,
    needs_rehash,
    verify_password,
)


class RecordingHasher(PasswordHasher):
    """A PasswordHasher that records which hashes it was asked to verify."""

    def __init__(self) -> None:
        super().__init__(
            time_cost=passwords.TIME_COST,
            memory_cost=passwords.MEMORY_COST,
            parallelism=passwords.PARALLELISM,
        )
        self.verified: list[str] = []

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:  # noqa: A002
        self.verified.append(hash if isinstance(hash, str) else hash.decode())
        return super().verify(hash, password)


class HashingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.stored = hash_password("correct horse")

    def test_hash_is_argon2id_with_documented_parameters(self) -> None:
        params = extract_parameters(self.stored)
        self.assertEqual(params.type, Type.ID)
        self.assertEqual(params.time_cost, passwords.TIME_COST)
        self.assertEqual(params.memory_cost, passwords.MEMORY_COST)
        self.assertEqual(params.parallelism, passwords.PARALLELISM)

    def test_salted(self) -> None:
        self.assertNotEqual(hash_password("correct horse"), self.stored)

    def test_verify(self) -> None:
        self.assertTrue(verify_password(self.stored, "correct horse"))
        self.assertTrue(verify_password(self.stored, b"correct horse"))
        self.assertFalse(verify_password(self.stored, "correct horsE"))
        self.assertFalse(verify_password(self.stored, ""))

    def test_non_ascii_password(self) -> None:
        stored = hash_password("pässwörd✓")
        self.assertTrue(verify_password(stored, "pässwörd✓"))
        self.assertTrue(verify_password(stored, "pässwörd✓".encode()))
        self.assertFalse(verify_password(stored, "passwoerd"))

    def test_dummy_hash_has_current_parameters(self) -> None:
        """The dummy verification must cost what a real one costs."""
        dummy = extract_parameters(DUMMY_HASH)
        real = extract_parameters(self.stored)
        self.assertEqual(dummy, real)
        self.assertFalse(needs_rehash(DUMMY_HASH))

    def _recorded(self, stored: str | None) -> tuple[bool, list[str]]:
        hasher = RecordingHasher()
        self.patch(passwords, "_HASHER", hasher)
        return verify_password(stored, "anything"), hasher.verified

    def test_none_runs_dummy_verification(self) -> None:
        self.assertEqual(self._recorded(None), (False, [DUMMY_HASH]))

    def test_malformed_hash_runs_dummy_verification(self) -> None:
        for bad in ["", "plain-text", "$argon2id$v=19$m=1,t=1,p=1$bad", "$2b$12$abcdefghijk"]:
            ok, verified = self._recorded(bad)
            self.assertFalse(ok)
            self.assertEqual(verified[-1], DUMMY_HASH, bad)

    def test_real_hash_verified_once(self) -> None:
        self.assertEqual(self._recorded(self.stored), (False, [self.stored]))

    def test_unknown_account_costs_like_a_real_one(self) -> None:
        def best(stored: str | None) -> float:
            times = []
            for _ in range(3):
                start = time.perf_counter()
                verify_password(stored, "wrong")
                times.append(time.perf_counter() - start)
            return min(times)

        real, dummy = best(self.stored), best(None)
        self.assertGreater(dummy, real * 0.5)
        self.assertGreater(real, dummy * 0.5)

    def test_needs_rehash(self) -> None:
        self.assertFalse(needs_rehash(self.stored))
        weak = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash("x")
        self.assertTrue(needs_rehash(weak))
        self.assertTrue(needs_rehash("garbage"))
        self.assertTrue(verify_password(weak, "x"))


class VerificationPoolTests(TestCase):
    def make_pool(self, size: int, queue_size: int) -> VerificationPool:
        pool = VerificationPool(reactor, size=size, queue_size=queue_size)
        pool.start()
        self.addCleanup(pool.stop)
        return pool

    def test_defaults_follow_cores(self) -> None:
        import os

        pool = VerificationPool(reactor)
        cores = os.cpu_count() or 1
        self.assertEqual(pool.size, cores)
        self.assertEqual(pool.queue_size, 4 * cores)
        self.assertEqual(pool.threadpool.max, cores)
        self.assertEqual(pool.capacity, 5 * cores)

    @inlineCallbacks
    def test_runs_in_another_thread(self) -> Any:
        pool = self.make_pool(2, 2)
        main = threading.get_ident()
        ident = yield pool.submit(threading.get_ident)
        self.assertNotEqual(ident, main)
        result = yield pool.submit(verify_password, None, "x")
        self.assertFalse(result)
        self.assertEqual(pool.pending, 0)

    @inlineCallbacks
    def test_full_queue_fails_at_once(self) -> Any:
        pool = self.make_pool(1, 1)
        release = threading.Event()
        self.addCleanup(release.set)
        first = pool.submit(release.wait, 10)
        second = pool.submit(release.wait, 10)
        self.assertEqual(pool.pending, 2)
        third = pool.submit(release.wait, 10)
        self.assertFailure(third, PoolFull)
        yield third
        self.assertEqual(pool.pending, 2)
        release.set()
        results = yield gatherResults([first, second])
        self.assertEqual(results, [True, True])
        self.assertEqual(pool.pending, 0)
        again = yield pool.submit(lambda: "ok")
        self.assertEqual(again, "ok")

    @inlineCallbacks
    def test_errors_propagate_and_free_the_slot(self) -> Any:
        pool = self.make_pool(1, 0)

        def boom() -> None:
            raise ValueError("boom")

        d: Deferred[None] = pool.submit(boom)
        self.assertFailure(d, ValueError)
        yield d
        self.assertEqual(pool.pending, 0)
        self.assertEqual((yield pool.submit(lambda: 1)), 1)

    def test_stopped_pool_refuses(self) -> None:
        pool = VerificationPool(reactor, size=1, queue_size=1)
        pool.start()
        pool.stop()
        failure = self.failureResultOf(pool.submit(lambda: 1))
        failure.trap(PoolFull)
