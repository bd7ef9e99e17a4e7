"""Several nodes on one PostgreSQL (SPEC section 10): changes reach every node within 2 s.

- `ChangeListener`: a thread holding one connection that `LISTEN`s on pgstore.CHANNEL and
  hands each notification to the reactor (`callFromThread`); it reconnects with backoff
  and asks for a resync after each (re)connection, since notifications sent while it was
  away are lost.
- `ClusterGuard`: the sessions' login guard (limits.LoginGuardLike). Decisions stay
  local and synchronous (a local LoginGuard); every failure is also written to the
  database (in the database thread pool, never on the reactor), which counts the
  failures of every node and protocol and bans there; the notifications of the other
  nodes' failures and bans are fed into the local guard.
- A periodic resync (`RESYNC_SECONDS`) re-reads the bans in force and re-checks the
  accounts of open sessions: the backstop when a notification is lost.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from securetransport.limits import LoginGuardLike, ban_key

log = Logger(namespace="securetransport.cluster")

RESYNC_SECONDS = 30.0
LISTEN_POLL_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 10.0


def node_name() -> str:
    """This process's name in the notifications (its own are ignored)."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


def key_address(key: str) -> str:
    """An address whose ban key is `key` (an IPv6 /64 key names its network)."""
    if "/" in key:
        return str(ipaddress.ip_network(key).network_address)
    return key


class ChangeListener:
    """LISTEN in a thread; `on_payload(dict)` and `on_connect()` run on the reactor."""

    def __init__(
        self,
        url: str,
        channel: str,
        reactor: Any,
        on_payload: Callable[[dict[str, Any]], None],
        on_connect: Callable[[], None],
    ) -> None:
        self.url = url
        self.channel = channel
        self.reactor = reactor
        self.on_payload = on_payload
        self.on_connect = on_connect
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = False

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name="securetransport-listen", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        import psycopg

        backoff = 0.5
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(f'LISTEN "{self.channel}"')
                    self.connected = True
                    backoff = 0.5
                    self.reactor.callFromThread(self.on_connect)
                    while not self._stopping.is_set():
                        for notice in conn.notifies(timeout=LISTEN_POLL_SECONDS):
                            self._deliver(notice.payload)
            except psycopg.Error as error:
                self.connected = False
                if self._stopping.is_set():
                    break
                log.warn(
                    "change notifications lost ({error}); reconnecting in {delay} s",
                    error=str(error).strip().splitlines()[0] if str(error).strip() else error,
                    delay=backoff,
                )
                self._stopping.wait(backoff)
                backoff = min(MAX_BACKOFF_SECONDS, backoff * 2)
        self.connected = False

    def _deliver(self, payload: str) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            return
        if isinstance(message, dict):
            self.reactor.callFromThread(self.on_payload, message)


class ClusterGuard:
    """A LoginGuardLike whose failures and bans are shared through the database."""

    def __init__(
        self,
        local: LoginGuardLike,
        store: Any,
        threadpool: Any,
        reactor: Any,
        window: float,
        max_failures: int,
        apply_remote: bool = True,
    ) -> None:
        """`apply_remote`: feed other nodes' failures and bans into `local`. With
        `server.workers` the local table is shared by the workers: only one applies them."""
        self.local = local
        self.apply_remote = apply_remote
        self.store = store
        self.threadpool = threadpool
        self.reactor = reactor
        self.window = window
        self.max_failures = max_failures
        self.node = getattr(store, "node", "")

    # -- what sessions call (synchronous, local) ---------------------------------------------
    def is_banned(self, address: str, now: float) -> bool:
        return self.local.is_banned(address, now)

    def failure_delay(self, name: str, now: float) -> float:
        return self.local.failure_delay(name, now)

    def record_failure(self, address: str, name: str, now: float) -> bool:
        banned = self.local.record_failure(address, name, now)
        d = deferToThreadPool(
            self.reactor,
            self.threadpool,
            self.store.record_failure,
            ban_key(address),
            name,
            now,
            self.window,
            self.max_failures,
        )
        d.addCallbacks(
            lambda until: self.impose(ban_key(address), until) if until else None,
            lambda failure: log.error(
                "cannot record a failed login in the database: {error}", error=failure.value
            ),
        )
        return banned

    def active_bans(self, now: float) -> int:
        counter = getattr(self.local, "active_bans", None)
        return int(counter(now)) if counter is not None else 0

    # -- what the other nodes tell ------------------------------------------------------------
    def impose(self, key: str, until: float) -> None:
        """A ban decided by the database (any node) applies here too."""
        impose = getattr(self.local, "impose_ban", None)
        if impose is not None:
            impose(key_address(key), until)

    def remote_failure(self, key: str, name: str, at: float) -> None:
        """Another node's failed login counts here (toward bans and the name's delay)."""
        self.local.record_failure(key_address(key), name, at)

    def apply(self, message: dict[str, Any]) -> None:
        """A notification of kind `failure` or `ban` from another node."""
        if message.get("node") == self.node or not self.apply_remote:
            return
        try:
            if message.get("kind") == "failure":
                self.remote_failure(str(message["key"]), str(message["name"]), float(message["at"]))
            elif message.get("kind") == "ban":
                self.impose(str(message["key"]), float(message["until"]))
        except (KeyError, TypeError, ValueError) as error:
            log.warn("ignored a malformed notification: {error}", error=error)

    def resync(self) -> Any:
        """Re-read the bans in force (the backstop for lost notifications); forget the
        failures and bans that are over (any node may; it is idempotent)."""
        now = time.time()

        def read() -> list[tuple[str, float]]:
            self.store.prune(now, self.window)
            bans: list[tuple[str, float]] = self.store.active_bans(now)
            return bans

        d = deferToThreadPool(self.reactor, self.threadpool, read)

        def apply(bans: list[tuple[str, float]]) -> None:
            if not self.apply_remote:
                return
            for key, until in bans:
                self.impose(key, until)

        d.addCallbacks(apply, lambda f: log.error("ban resync failed: {error}", error=f.value))
        return d
