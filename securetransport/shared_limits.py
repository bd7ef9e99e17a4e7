"""Session limits, failed-login counts and bans shared by the worker processes of one server.

`SharedSessionCounter` and `SharedLoginGuard` have the methods and the semantics of
`limits.SessionCounter` and `limits.LoginGuard`, so the protocol calls them the same way
(synchronously, from the reactor thread), but their state lives in one file that every
worker maps into memory (`SharedLimits`). Each operation holds `fcntl.lockf` on that file
for its whole read-modify-write, so the limits hold across processes.

The file holds a header and three fixed-size open-addressing tables (linear probing, at
most `PROBES` slots from a key's home slot, homes from a salted BLAKE2b hash so clients
cannot aim keys at one region):

- sessions: key = the client address (16 bytes, IPv4 as IPv4-mapped IPv6, IPv6 as its /64
  as bans count it), one open-session count per worker; the header holds each worker's
  total. Counts are per worker so that the supervisor can forget the sessions of a worker
  that died (`forget_worker`). The table has
  at least 4 x max_sessions slots, so live keys (at most max_sessions) never fill it; if a
  probe window is ever all live, the session is refused, never counted loosely.
- addresses (ban keys, `limits.ban_key`): the time a ban ends, and the times of the last
  failures, a ring of min(max_login_failures, RING_LIMIT) entries: an exact sliding window
  of `ban_time`. With max_login_failures above RING_LIMIT a fixed window is used instead (it
  starts at the first failure and lasts ban_time).
- names: the times of the last failures of a login name (as many as the delay needs to
  reach its maximum: 4 for 1, 2, 4, 8, 16 s), an exact sliding window.

Entries in the address and name tables are never deleted; an entry whose ban and failures
are all older than the window is "dead" and its slot is reused. When a probe window has no
dead slot the least useful entry is evicted (the one with the oldest last failure, banned
addresses last, of those the ban that ends first), so a spray of addresses or names costs
accuracy for the oldest entries, never memory, time or a crash.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import math
import mmap
import os
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from securetransport.limits import ban_key, name_ring_size

MAGIC: Final = b"STLIMIT1"
PROBES: Final = 32
RING_LIMIT: Final = 32
"""Failure times kept per address: the sliding window is exact up to this many failures."""
DEFAULT_ADDRESS_SLOTS: Final = 8192
DEFAULT_NAME_SLOTS: Final = 8192

_EMPTY: Final = 0
_USED: Final = 1
_NEVER: Final = -math.inf  # an unused ring entry, and "no ban"

# magic, workers, session slots, address slots, name slots, address ring, name ring, salt
_HEADER: Final = struct.Struct("<8sIIIIII16s")
_KEY: Final = struct.Struct("<16sB7x")  # key, state; every slot starts with it
_ADDRESS: Final = struct.Struct("<ddi4x")  # banned until, fixed-window start, its count


class SharedLimitsError(Exception):
    """The shared limits file is missing, of another layout, or too small for the settings."""


def _round_up(size: int, unit: int = 64) -> int:
    return (size + unit - 1) // unit * unit


def _power_of_two(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def address_ring_size(max_failures: int) -> int:
    return min(max_failures, RING_LIMIT)


def _address_key(address: str) -> bytes:
    """16 bytes for the unit of `limits.session_key`: an IPv4 address as IPv4-mapped IPv6,
    an IPv6 /64 as its network address (the low 64 bits zero, so never IPv4-mapped);
    other text hashed."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return hashlib.blake2b(address.encode("utf-8", "replace"), digest_size=16).digest()
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv4Address):
        return b"\0" * 10 + b"\xff\xff" + ip.packed
    return ip.packed[:8] + b"\0" * 8


def _address_text(key: bytes) -> str:
    """The `limits.session_key` text of a sessions-table key."""
    ip = ipaddress.IPv6Address(key)
    return str(ip.ipv4_mapped) if ip.ipv4_mapped is not None else f"{ip}/64"


class _Table:
    """Where one table lies in the file: offset, slot count (a power of two), slot size."""

    def __init__(self, offset: int, slots: int, size: int) -> None:
        self.offset = offset
        self.slots = slots
        self.size = size

    @property
    def end(self) -> int:
        return self.offset + self.slots * self.size

    def slot_offset(self, slot: int) -> int:
        return self.offset + slot * self.size


def _layout(
    workers: int, sessions: int, addresses: int, names: int, address_ring: int, name_ring: int
) -> tuple[int, _Table, _Table, _Table]:
    """Where the per-worker totals and the three tables lie, from the header's numbers.

    Per worker: its open sessions, then (one array further) the connections it accepted.
    """
    totals = _round_up(_HEADER.size)
    session_table = _Table(
        _round_up(totals + 16 * workers), sessions, _round_up(_KEY.size + 4 * workers, 8)
    )
    address_size = _round_up(_KEY.size + _ADDRESS.size + 8 * address_ring, 8)
    address_table = _Table(session_table.end, addresses, address_size)
    name_table = _Table(address_table.end, names, _round_up(_KEY.size + 8 * name_ring, 8))
    return totals, session_table, address_table, name_table


class SharedLimits:
    """The mapped limits file: layout, the lock, and probing. Open one per process."""

    def __init__(self, path: Path, fd: int, memory: mmap.mmap) -> None:
        self.path = path
        self._fd = fd
        self._memory = memory
        self._thread_lock = threading.Lock()
        header = _HEADER.unpack_from(memory, 0)
        if header[0] != MAGIC:
            raise SharedLimitsError(f"{path}: not a securetransport limits file")
        _, self.workers, _, _, _, self.address_ring, self.name_ring, self._salt = header
        self._totals = struct.Struct(f"<{self.workers}q")
        self._counts = struct.Struct(f"<{self.workers}i")
        self._address_ring = struct.Struct(f"<{self.address_ring}d")
        self._name_ring = struct.Struct(f"<{self.name_ring}d")
        self._totals_offset, self.sessions, self.addresses, self.names = _layout(*header[1:7])
        if len(memory) < self.names.end:
            raise SharedLimitsError(f"{path}: truncated limits file")

    # ------------------------------------------------------------------ create and open

    @classmethod
    def create(
        cls,
        path: Path,
        *,
        workers: int,
        max_sessions: int,
        max_login_failures: int,
        max_delay: float = 16.0,
        address_slots: int = DEFAULT_ADDRESS_SLOTS,
        name_slots: int = DEFAULT_NAME_SLOTS,
    ) -> SharedLimits:
        """Make a new, empty file at `path` (mode 0600; it must not exist) and map it."""
        if workers < 1 or max_sessions < 1 or max_login_failures < 1:
            raise ValueError("workers, max_sessions and max_login_failures must be positive")
        session_slots = max(64, _power_of_two(4 * max_sessions))
        header = _HEADER.pack(
            MAGIC,
            workers,
            session_slots,
            max(PROBES, _power_of_two(address_slots)),
            max(PROBES, _power_of_two(name_slots)),
            address_ring_size(max_login_failures),
            name_ring_size(max_delay),
            os.urandom(16),
        )
        size = _round_up(_layout(*_HEADER.unpack(header)[1:7])[3].end, mmap.PAGESIZE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, size)
            memory = mmap.mmap(fd, size)
            memory[: _HEADER.size] = header
            return cls(path, fd, memory)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise

    @classmethod
    def open(cls, path: Path) -> SharedLimits:
        """Map an existing file made by `create` (in another process)."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as error:
            raise SharedLimitsError(f"{path}: cannot open: {error.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            if size < _HEADER.size:
                raise SharedLimitsError(f"{path}: not a securetransport limits file")
            memory = mmap.mmap(fd, size)
            return cls(path, fd, memory)
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        with contextlib.suppress(ValueError, BufferError):
            self._memory.close()
        with contextlib.suppress(OSError):
            os.close(self._fd)

    # ------------------------------------------------------------------ locking

    @contextlib.contextmanager
    def locked(self) -> Iterator[mmap.mmap]:
        """The whole file, exclusively: other threads of this process and other processes."""
        with self._thread_lock:
            fcntl.lockf(self._fd, fcntl.LOCK_EX)
            try:
                yield self._memory
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ probing

    def _home(self, table: _Table, digest: bytes) -> int:
        return int.from_bytes(digest[:8], "little") & (table.slots - 1)

    def digest(self, data: bytes | str) -> bytes:
        """The salted 16-byte hash that places a key (and, for guard tables, is the key)."""
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        return hashlib.blake2b(data, key=self._salt, digest_size=16).digest()

    def find(
        self,
        table: _Table,
        key: bytes,
        home_digest: bytes,
        reusable: Callable[[int], bool],
    ) -> tuple[int | None, int | None]:
        """(offset of the slot holding `key`, offset of the first free or reusable slot).

        Call with the lock held. Empty slots end the search: slots are never emptied.
        """
        memory = self._memory
        home = self._home(table, home_digest)
        free: int | None = None
        for step in range(min(PROBES, table.slots)):
            offset = table.slot_offset((home + step) & (table.slots - 1))
            stored, state = _KEY.unpack_from(memory, offset)
            if state == _EMPTY:
                return None, offset if free is None else free
            if stored == key:
                return offset, free
            if free is None and reusable(offset):
                free = offset
        return None, free

    def window(self, table: _Table, home_digest: bytes) -> list[int]:
        """The offsets of a key's probe window (for choosing what to evict)."""
        home = self._home(table, home_digest)
        return [
            table.slot_offset((home + step) & (table.slots - 1))
            for step in range(min(PROBES, table.slots))
        ]

    def claim(self, offset: int, key: bytes) -> None:
        _KEY.pack_into(self._memory, offset, key, _USED)

    # ------------------------------------------------------------------ sessions

    def totals(self) -> list[int]:
        return list(self._totals.unpack_from(self._memory, self._totals_offset))

    def set_totals(self, totals: list[int]) -> None:
        self._totals.pack_into(self._memory, self._totals_offset, *totals)

    def counts(self, offset: int) -> list[int]:
        return list(self._counts.unpack_from(self._memory, offset + _KEY.size))

    def set_counts(self, offset: int, counts: list[int]) -> None:
        self._counts.pack_into(self._memory, offset + _KEY.size, *counts)

    def accepted(self) -> list[int]:
        return list(self._totals.unpack_from(self._memory, self._totals_offset + 8 * self.workers))

    def note_accepted(self, worker: int, count: int = 1) -> None:
        """`worker` accepted `count` connections (sessions or not: refusals count too)."""
        with self.locked():
            accepted = self.accepted()
            accepted[worker] += count
            self._totals.pack_into(self._memory, self._totals_offset + 8 * self.workers, *accepted)

    def worker_loads(self) -> list[tuple[int, int]]:
        """Each worker's open sessions and the connections it accepted since the file was made."""
        with self.locked():
            return list(zip(self.totals(), self.accepted(), strict=True))

    def forget_worker(self, worker: int) -> None:
        """A worker process ended: its open sessions are gone (call from the supervisor)."""
        with self.locked() as memory:
            totals = self.totals()
            totals[worker] = 0
            self.set_totals(totals)
            table = self.sessions
            for slot in range(table.slots):
                offset = table.slot_offset(slot)
                if memory[offset + 16] == _USED:
                    counts = self.counts(offset)
                    if counts[worker]:
                        counts[worker] = 0
                        self.set_counts(offset, counts)

    # ------------------------------------------------------------------ guard entries

    def address_entry(self, offset: int) -> tuple[float, float, int, list[float]]:
        banned_until, start, count = _ADDRESS.unpack_from(self._memory, offset + _KEY.size)
        ring = list(
            self._address_ring.unpack_from(self._memory, offset + _KEY.size + _ADDRESS.size)
        )
        return banned_until, start, count, ring

    def set_address_entry(
        self, offset: int, banned_until: float, start: float, count: int, ring: list[float]
    ) -> None:
        _ADDRESS.pack_into(self._memory, offset + _KEY.size, banned_until, start, count)
        self._address_ring.pack_into(self._memory, offset + _KEY.size + _ADDRESS.size, *ring)

    def name_entry(self, offset: int) -> list[float]:
        return list(self._name_ring.unpack_from(self._memory, offset + _KEY.size))

    def set_name_entry(self, offset: int, ring: list[float]) -> None:
        self._name_ring.pack_into(self._memory, offset + _KEY.size, *ring)


class SharedSessionCounter:
    """`limits.SessionCounter` over a `SharedLimits` file: open sessions of every worker."""

    def __init__(
        self, limits: SharedLimits, worker: int, max_sessions: int, max_per_address: int
    ) -> None:
        if not 0 <= worker < limits.workers:
            raise SharedLimitsError(f"worker {worker} not in 0..{limits.workers - 1}")
        if limits.sessions.slots < 2 * max_sessions:
            raise SharedLimitsError(f"{limits.path}: made for fewer than {max_sessions} sessions")
        self.limits = limits
        self.worker = worker
        self.max_sessions = max_sessions
        self.max_per_address = max_per_address

    def _reusable(self, offset: int) -> bool:
        return not any(self.limits.counts(offset))

    def try_open(self, address: str) -> bool:
        limits = self.limits
        key = _address_key(address)
        with limits.locked():
            totals = limits.totals()
            if sum(totals) >= self.max_sessions:
                return False
            offset, free = limits.find(limits.sessions, key, limits.digest(key), self._reusable)
            if offset is None:
                if free is None:  # a full probe window: refuse rather than lose count
                    return False
                offset = free
                limits.claim(offset, key)
                limits.set_counts(offset, [0] * limits.workers)
            counts = limits.counts(offset)
            if sum(counts) >= self.max_per_address:
                return False
            counts[self.worker] += 1
            totals[self.worker] += 1
            limits.set_counts(offset, counts)
            limits.set_totals(totals)
            return True

    def close(self, address: str) -> None:
        limits = self.limits
        key = _address_key(address)
        with limits.locked():
            totals = limits.totals()
            totals[self.worker] = max(0, totals[self.worker] - 1)
            limits.set_totals(totals)
            offset, _ = limits.find(limits.sessions, key, limits.digest(key), _never)
            if offset is not None:
                counts = limits.counts(offset)
                counts[self.worker] = max(0, counts[self.worker] - 1)
                limits.set_counts(offset, counts)

    @property
    def total(self) -> int:
        """Open sessions of all workers."""
        with self.limits.locked():
            return sum(self.limits.totals())

    @property
    def per_address(self) -> dict[str, int]:
        """Open sessions per address, of all workers (addresses with none left out)."""
        limits = self.limits
        result: dict[str, int] = {}
        with limits.locked() as memory:
            table = limits.sessions
            for slot in range(table.slots):
                offset = table.slot_offset(slot)
                key, state = _KEY.unpack_from(memory, offset)
                if state == _USED and (count := sum(limits.counts(offset))):
                    result[_address_text(key)] = count
        return result


def _never(offset: int) -> bool:
    return False


class SharedLoginGuard:
    """`limits.LoginGuard` over a `SharedLimits` file: failures and bans of every worker."""

    def __init__(
        self, limits: SharedLimits, max_failures: int, window: float, max_delay: float = 16.0
    ) -> None:
        if limits.address_ring < address_ring_size(max_failures):
            raise SharedLimitsError(f"{limits.path}: made for fewer login failures")
        if limits.name_ring < name_ring_size(max_delay):
            raise SharedLimitsError(f"{limits.path}: made for a shorter maximum delay")
        self.limits = limits
        self.max_failures = max_failures
        self.window = window
        self.max_delay = max_delay
        self._exact = max_failures <= RING_LIMIT

    # An address entry: (banned until, fixed-window start, fixed-window count, ring).

    def _address_dead(self, offset: int, now: float) -> bool:
        banned_until, start, count, ring = self.limits.address_entry(offset)
        horizon = now - self.window
        return (
            banned_until <= now
            and all(t <= horizon for t in ring)
            and (count == 0 or start <= horizon)
        )

    def _name_dead(self, offset: int, now: float) -> bool:
        horizon = now - self.window
        return all(t <= horizon for t in self.limits.name_entry(offset))

    def _address_worth(self, offset: int, now: float) -> tuple[int, float]:
        banned_until, start, _, ring = self.limits.address_entry(offset)
        if banned_until > now:
            return (1, banned_until)
        return (0, max(max(ring), start))

    def _name_worth(self, offset: int) -> tuple[int, float]:
        return (0, max(self.limits.name_entry(offset)))

    def _slot(
        self,
        table: _Table,
        text: str,
        reusable: Callable[[int], bool],
        worth: Callable[[int], tuple[int, float]],
        fresh: Callable[[int], None],
    ) -> int:
        """The slot of `text`, made (or taken from the least useful entry) if missing."""
        limits = self.limits
        digest = limits.digest(text)
        offset, free = limits.find(table, digest, digest, reusable)
        if offset is not None:
            return offset
        if free is None:
            free = min(limits.window(table, digest), key=worth)
        limits.claim(free, digest)
        fresh(free)
        return free

    def _fresh_address(self, offset: int) -> None:
        self.limits.set_address_entry(
            offset, _NEVER, _NEVER, 0, [_NEVER] * self.limits.address_ring
        )

    def _fresh_name(self, offset: int) -> None:
        self.limits.set_name_entry(offset, [_NEVER] * self.limits.name_ring)

    def is_banned(self, address: str, now: float) -> bool:
        limits = self.limits
        digest = limits.digest(ban_key(address))
        with limits.locked():
            offset, _ = limits.find(limits.addresses, digest, digest, _never)
            if offset is None:
                return False
            banned_until, start, count, ring = limits.address_entry(offset)
            if banned_until == _NEVER:
                return False
            if now >= banned_until:
                limits.set_address_entry(offset, _NEVER, start, count, ring)
                return False
            return True

    def failure_delay(self, name: str, now: float) -> float:
        """Delay before the `530` of a failed password for `name`: 1, 2, 4, 8 then 16 s."""
        limits = self.limits
        digest = limits.digest(name)
        with limits.locked():
            offset, _ = limits.find(limits.names, digest, digest, _never)
            recent = 0
            if offset is not None:
                horizon = now - self.window
                recent = sum(1 for t in limits.name_entry(offset) if t > horizon)
        return float(min(self.max_delay, 2**recent))

    def record_failure(self, address: str, name: str, now: float) -> bool:
        """Count a failed login; True if the address is now banned."""
        limits = self.limits
        horizon = now - self.window
        with limits.locked():
            offset = self._slot(
                limits.names,
                name,
                lambda o: self._name_dead(o, now),
                self._name_worth,
                self._fresh_name,
            )
            ring = limits.name_entry(offset)
            ring[ring.index(min(ring))] = now  # the oldest entry makes room
            limits.set_name_entry(offset, ring)

            offset = self._slot(
                limits.addresses,
                ban_key(address),
                lambda o: self._address_dead(o, now),
                lambda o: self._address_worth(o, now),
                self._fresh_address,
            )
            banned_until, start, count, ring = limits.address_entry(offset)
            if self._exact:
                ring = [t if t > horizon else _NEVER for t in ring]
                ring[ring.index(min(ring))] = now
                recent = sum(1 for t in ring if t > horizon)
            else:
                if count == 0 or start <= horizon:
                    start, count = now, 0
                count += 1
                recent = count
            banned = recent >= self.max_failures
            if banned:
                banned_until = now + self.window
                ring = [_NEVER] * limits.address_ring
                start, count = _NEVER, 0
            limits.set_address_entry(offset, banned_until, start, count, ring)
            return banned
