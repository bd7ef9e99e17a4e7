"""Failed-login accounting, bans and session limits (SPEC section 4). Pure: the clock is given.

Memory and time are bounded under a spray of addresses or names: each table is kept in
the order of its entries' newest failure (or ban end), so entries older than the window
are dropped from its front as time passes (amortised O(1) per call), and a table over
`max_entries` drops its oldest entries first. Login names are kept as a 16-byte keyed
hash, never as typed, as in the shared table (`shared_limits`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final, Protocol, TypeVar

MAX_ENTRIES: Final = 65_536
"""Entries kept per table (addresses, names, bans) before the oldest are dropped."""

_Key = TypeVar("_Key", str, bytes)


def ban_key(address: str) -> str:
    """The unit that is counted and banned: an IPv4 address, or an IPv6 /64."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


def session_key(address: str) -> str:
    """The unit `max_sessions_per_address` counts: `ban_key`, or the text if not an address."""
    try:
        return ban_key(address.split("%", 1)[0])
    except ValueError:
        return address


def name_ring_size(max_delay: float) -> int:
    """Failures of a name that the delay 2**n (capped at `max_delay`) needs to know about."""
    return max(1, math.ceil(math.log2(max_delay))) if max_delay > 1 else 1


class LoginGuardLike(Protocol):
    """What sessions call on a guard: `LoginGuard`, or shared_limits.SharedLoginGuard."""

    def is_banned(self, address: str, now: float) -> bool: ...
    def failure_delay(self, name: str, now: float) -> float: ...
    def record_failure(self, address: str, name: str, now: float) -> bool: ...


class SessionCounterLike(Protocol):
    """What sessions call on a counter: `SessionCounter`, or shared_limits.SharedSessionCounter."""

    def try_open(self, address: str) -> bool: ...
    def close(self, address: str) -> None: ...


@dataclass
class LoginGuard:
    """Counts failed logins per address (`ban_key`) and per name within `window` seconds.

    Each table maps a key to its failure times within the window, oldest first, and is
    ordered by the newest of them; an address keeps at most `max_failures` times, a name
    as many as the delay needs (`name_ring_size`).
    """

    max_failures: int
    window: float
    max_delay: float = 16.0
    max_entries: int = MAX_ENTRIES
    _failures: OrderedDict[str, tuple[float, ...]] = field(default_factory=OrderedDict)
    _banned_until: OrderedDict[str, float] = field(default_factory=OrderedDict)
    _name_failures: OrderedDict[bytes, tuple[float, ...]] = field(default_factory=OrderedDict)
    _salt: bytes = field(default_factory=lambda: os.urandom(16), repr=False)

    def is_banned(self, address: str, now: float) -> bool:
        self._expire_bans(now)
        until = self._banned_until.get(ban_key(address))
        return until is not None and now < until

    def failure_delay(self, name: str, now: float) -> float:
        """Delay before the `530` of a failed password for `name`: 1, 2, 4, 8 then 16 s."""
        recent = self._recent(self._name_failures, self._name_key(name), now)
        return float(min(self.max_delay, 2 ** len(recent)))

    def record_failure(self, address: str, name: str, now: float) -> bool:
        """Count a failed login; True if the address is now banned."""
        name_key = self._name_key(name)
        names = self._name_failures
        recent_names = self._recent(names, name_key, now)
        self._store(names, name_key, recent_names, now, name_ring_size(self.max_delay))

        key = ban_key(address)
        recent = self._recent(self._failures, key, now) + (now,)
        if len(recent) >= self.max_failures:
            self._failures.pop(key, None)
            self._expire_bans(now)
            self._banned_until[key] = now + self.window
            self._banned_until.move_to_end(key)
            while len(self._banned_until) > self.max_entries:
                self._banned_until.popitem(last=False)
            return True
        self._store(self._failures, key, recent[:-1], now, self.max_failures)
        return False

    def impose_ban(self, address: str, until: float) -> None:
        """Ban `address` until `until`, as another node decided (securetransport.cluster)."""
        key = ban_key(address)
        if until > self._banned_until.get(key, 0.0):
            self._banned_until[key] = until
            self._banned_until.move_to_end(key)
            while len(self._banned_until) > self.max_entries:
                self._banned_until.popitem(last=False)

    def active_bans(self, now: float) -> int:
        """Addresses banned at `now` (the metrics' `bans_active`)."""
        self._expire_bans(now)
        return sum(1 for until in self._banned_until.values() if until > now)

    def _name_key(self, name: str) -> bytes:
        """A fixed-size keyed hash of the name: typed names are not kept."""
        data = name.encode("utf-8", "surrogateescape")
        return hashlib.blake2b(data, key=self._salt, digest_size=16).digest()

    def _recent(
        self, table: OrderedDict[_Key, tuple[float, ...]], key: _Key, now: float
    ) -> tuple[float, ...]:
        """The failure times of `key` within the window, oldest first."""
        horizon = now - self.window
        return tuple(t for t in table.get(key, ()) if t > horizon)

    def _store(
        self,
        table: OrderedDict[_Key, tuple[float, ...]],
        key: _Key,
        recent: tuple[float, ...],
        now: float,
        keep: int,
    ) -> None:
        """Add the failure at `now` to `key`, then drop what is stale or over the cap."""
        table[key] = (recent + (now,))[-keep:]
        table.move_to_end(key)
        horizon = now - self.window
        while table:
            oldest, times = next(iter(table.items()))
            if times[-1] > horizon and len(table) <= self.max_entries:
                break
            del table[oldest]

    def _expire_bans(self, now: float) -> None:
        bans = self._banned_until
        while bans:
            key, until = next(iter(bans.items()))
            if until > now:
                break
            del bans[key]


@dataclass
class SessionCounter:
    """Open sessions, in total and per client address (an IPv6 address per /64, as bans)."""

    max_sessions: int
    max_per_address: int
    total: int = 0
    per_address: dict[str, int] = field(default_factory=dict)

    def try_open(self, address: str) -> bool:
        if self.total >= self.max_sessions:
            return False
        key = session_key(address)
        if self.per_address.get(key, 0) >= self.max_per_address:
            return False
        self.total += 1
        self.per_address[key] = self.per_address.get(key, 0) + 1
        return True

    def close(self, address: str) -> None:
        key = session_key(address)
        self.total -= 1
        left = self.per_address.get(key, 1) - 1
        if left:
            self.per_address[key] = left
        else:
            self.per_address.pop(key, None)
