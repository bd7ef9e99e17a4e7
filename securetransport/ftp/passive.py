"""Passive-mode port allocation from `[passive].ports`, behind one provider."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory


class NoPassivePort(Exception):
    """Every port tried in the range was busy."""


class PassivePortProvider:
    """Listens on a free port of an inclusive range, trying ports in random order.

    A random start spreads sessions over the range and makes the next passive port
    hard to guess; a busy port (another session, another process) is skipped.
    """

    def __init__(
        self,
        reactor: Any,
        first: int,
        last: int,
        attempts: int = 64,
        wrap: Callable[[Factory], Factory] | None = None,
    ) -> None:
        """`wrap`: applied to each listener's factory (the `[proxy]` header reader)."""
        self.reactor = reactor
        self.wrap = wrap
        self.closed = False  # draining (SIGTERM): no new passive listener
        self.first = first
        self.last = last
        self.attempts = attempts
        self._random = random.SystemRandom()

    def listen(self, factory: Factory, interface: str) -> IListeningPort:
        if self.closed:
            raise NoPassivePort("the server is shutting down")
        if self.wrap is not None:
            factory = self.wrap(factory)
        size = self.last - self.first + 1
        start = self._random.randrange(size)
        step = 1
        for attempt in range(min(self.attempts, size)):
            port = self.first + (start + attempt * step) % size
            try:
                listening: IListeningPort = self.reactor.listenTCP(
                    port, factory, backlog=1, interface=interface
                )
            except CannotListenError:
                continue
            return listening
        raise NoPassivePort(f"no free passive port in {self.first}-{self.last}")
