"""Password hashing (argon2id) and the bounded pool that verifies passwords.

Parameters: argon2id, time_cost=3, memory_cost=24576 KiB (24 MiB), parallelism=1,
16-byte salt, 32-byte hash. Measured here: about 44 ms per hash or verification on
one core (time_cost=2 with 32 MiB: 52 ms; the OWASP minimum, t=2 with 19 MiB: 23 ms).

`hash_password`, `verify_password` and `needs_rehash` block: callers run them in a
thread, normally through a `VerificationPool` (SPEC section 4: password verification
runs on a bounded pool sized to the cores, with a bounded queue; 421 when it is full).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from twisted.internet.defer import Deferred, fail
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

TIME_COST = 3
MEMORY_COST = 24576  # KiB
PARALLELISM = 1

_HASHER = PasswordHasher(time_cost=TIME_COST, memory_cost=MEMORY_COST, parallelism=PARALLELISM)

# A hash of a random, forgotten password with the parameters above. Verifying against
# it costs what verifying a real account costs, so unknown names cannot be told apart
# by timing (SPEC section 4). A test checks that its parameters match _HASHER's.
DUMMY_HASH = (
    "$argon2id$v=19$m=24576,t=3,p=1$zFvR92tV98HQC7Oe/IQTpg$"
    "fMpUCgi3Sr1iFJ+rapNVx87u6s3lroud9Y/KFO8nggc"
)

_T = TypeVar("_T")


def hash_password(password: str) -> str:
    """Return the argon2id PHC string for `password` (blocking, ~44 ms)."""
    return _HASHER.hash(password)


def _dummy_verification(password: str | bytes) -> None:
    try:
        _HASHER.verify(DUMMY_HASH, password)
    except VerificationError:
        pass


def verify_password(stored: str | None, password: str | bytes) -> bool:
    """True if `password` matches the PHC string `stored` (blocking).

    With no stored hash (unknown account, no password) or a malformed one, a dummy
    verification does the same work as a real one before returning False.
    """
    if stored is None:
        _dummy_verification(password)
        return False
    try:
        return _HASHER.verify(stored, password)
    except VerifyMismatchError:
        return False
    except (InvalidHashError, VerificationError):
        _dummy_verification(password)
        return False


def needs_rehash(stored: str) -> bool:
    """True if `stored` was made with other parameters than today's (or is malformed)."""
    try:
        return _HASHER.check_needs_rehash(stored)
    except (InvalidHashError, ValueError):
        return True


class PoolFull(Exception):
    """The verification pool's queue is full (or the pool is stopped): reply 421."""


class VerificationPool:
    """A bounded thread pool for password verification, apart from the file pool.

    `size` threads (default: the number of cores) and at most `queue_size` more jobs
    waiting (default: 4 per thread). `submit` beyond that fails at once with PoolFull.
    Call `submit` from the reactor thread.
    """

    def __init__(
        self,
        reactor: Any,
        size: int | None = None,
        queue_size: int | None = None,
        name: str = "securetransport-verify",
    ) -> None:
        self.reactor = reactor
        self.size = max(1, size if size is not None else (os.cpu_count() or 1))
        self.queue_size = max(0, queue_size if queue_size is not None else 4 * self.size)
        self.threadpool = ThreadPool(minthreads=0, maxthreads=self.size, name=name)
        self._pending = 0
        self._stopped = False
        self._lock = threading.Lock()

    @property
    def capacity(self) -> int:
        """Jobs accepted at once: running plus waiting."""
        return self.size + self.queue_size

    @property
    def pending(self) -> int:
        """Jobs submitted and not yet finished."""
        return self._pending

    def start(self) -> None:
        """Start the threads."""
        self._stopped = False
        self.threadpool.start()

    def stop(self) -> None:
        """Stop the threads (waits for running jobs); later submits fail with PoolFull."""
        self._stopped = True
        self.threadpool.stop()

    def submit(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> Deferred[_T]:
        """Run `fn(*args, **kwargs)` in the pool; fails with PoolFull when the queue is full."""
        with self._lock:
            if self._stopped:
                return fail(PoolFull("verification pool stopped"))
            if self._pending >= self.capacity:
                return fail(PoolFull("verification pool full"))
            self._pending += 1
        d = deferToThreadPool(self.reactor, self.threadpool, fn, *args, **kwargs)
        d.addBoth(self._finished)
        return d

    def _finished(self, result: _T) -> _T:
        with self._lock:
            self._pending -= 1
        return result
