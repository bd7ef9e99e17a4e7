"""Failed-login accounting, bans and session limits (SPEC section 4). Pure: the clock is given."""

from __future__ import annotations

import ipaddress
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol


def ban_key(address: str) -> str:
    """The unit that is counted and banned: an IPv4 address, or an IPv6 /64."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


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
    """Counts failed logins per address and per name within `window` seconds."""

    max_failures: int
    window: float
    max_delay: float = 16.0
    _failures: dict[str, deque[float]] = field(default_factory=dict)
    _banned_until: dict[str, float] = field(default_factory=dict)
    _name_failures: dict[str, deque[float]] = field(default_factory=dict)

    def is_banned(self, address: str, now: float) -> bool:
        key = ban_key(address)
        until = self._banned_until.get(key)
        if until is None:
            return False
        if now >= until:
            del self._banned_until[key]
            return False
        return True

    def failure_delay(self, name: str, now: float) -> float:
        """Delay before the `530` of a failed password for `name`: 1, 2, 4, 8 then 16 s."""
        recent = self._recent(self._name_failures, name, now)
        return float(min(self.max_delay, 2 ** len(recent)))

    def record_failure(self, address: str, name: str, now: float) -> bool:
        """Count a failed login; True if the address is now banned."""
        key = ban_key(address)
        recent = self._recent(self._failures, key, now)
        recent.append(now)
        self._recent(self._name_failures, name, now).append(now)
        if len(recent) >= self.max_failures:
            self._banned_until[key] = now + self.window
            recent.clear()
            return True
        return False

    def impose_ban(self, address: str, until: float) -> None:
        """Ban `address` until `until`, as another node decided (securetransport.cluster)."""
        key = ban_key(address)
        if until > self._banned_until.get(key, 0.0):
            self._banned_until[key] = until

    def active_bans(self, now: float) -> int:
        """Addresses banned at `now` (the metrics' `bans_active`)."""
        return sum(1 for until in self._banned_until.values() if until > now)

    def _recent(self, table: dict[str, deque[float]], key: str, now: float) -> deque[float]:
        entries = table.setdefault(key, deque())
        while entries and entries[0] <= now - self.window:
            entries.popleft()
        if len(table) > 100_000:  # bound memory under a spray of addresses or names
            for stale in [k for k, v in table.items() if not v and k != key]:
                del table[stale]
        return entries


@dataclass
class SessionCounter:
    """Open sessions, in total and per address."""

    max_sessions: int
    max_per_address: int
    total: int = 0
    per_address: dict[str, int] = field(default_factory=dict)

    def try_open(self, address: str) -> bool:
        if self.total >= self.max_sessions:
            return False
        if self.per_address.get(address, 0) >= self.max_per_address:
            return False
        self.total += 1
        self.per_address[address] = self.per_address.get(address, 0) + 1
        return True

    def close(self, address: str) -> None:
        self.total -= 1
        left = self.per_address.get(address, 1) - 1
        if left:
            self.per_address[address] = left
        else:
            self.per_address.pop(address, None)
