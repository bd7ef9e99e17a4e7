"""`server.workers = N`: N reactor processes sharing the listeners, under one supervisor.

With workers > 1 the twistd process is a `WorkerSupervisor`:

- `privilegedStartService` (before twistd drops privileges) binds the listening sockets,
  as the single-process server does; the supervisor never accepts on them itself.
- `startService` (after the drop) sweeps leftover upload temporaries once, creates the
  shared limits file (`shared_limits.SharedLimits`, mode 0600 in /dev/shm) and spawns N
  workers: `python -m securetransport.worker`, the listening sockets inherited as fds
  3, 4, ..., the worker's index, the limits file and its slice of `[passive].ports` on the
  command line, and on stdin (then closed) the parsed config and the `[tls]` material the
  supervisor read while privileged (the key may be readable by root only).
- Each worker runs the normal `service.SecureTransportService` with a `WorkerRole`: it
  adopts the inherited sockets (`BalancedPort`: one accept per wake-up, the worker with
  the fewest sessions first), counts sessions and failed logins in the shared file, and
  writes its index and pid in the audit log's `session-start` events.
- A worker that dies is started again (at most `RESTARTS_PER_MINUTE` times a minute per
  worker; later restarts wait) after its open sessions are forgotten in the shared
  counts. SIGHUP is forwarded to the workers (each reopens its logs and reloads `[tls]`,
  as a single process does) and reloads the supervisor's own copy of `[tls]` (for workers
  started later). SIGTERM stops the workers (SIGKILL after `STOP_SECONDS`), then twistd.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from twisted.application.service import MultiService
from twisted.internet import defer, error, protocol, tcp
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

import securetransport
from securetransport.audit import AuditLog
from securetransport.config import Config, ListenConfig, ServerConfig
from securetransport.metrics import listen_metrics, multiprocess_render
from securetransport.runtime import IWorkerRole
from securetransport.service import preload_modules, sweep_min_age
from securetransport.shared_limits import SharedLimits, SharedLoginGuard, SharedSessionCounter
from securetransport.tls.material import (
    TLSFileWatch,
    TLSMaterial,
    TLSRuntime,
    load_tls,
    tls_material,
)
from securetransport.vfs import sweep_temporaries

log = Logger(namespace="securetransport.workers")

FIRST_LISTEN_FD: Final = 3
RESTARTS_PER_MINUTE: Final = 5
RESTART_DELAY: Final = 0.5  # seconds before a worker that died is started again
STOP_SECONDS: Final = 20.0  # SIGTERM to SIGKILL when stopping
LISTEN_BACKLOG: Final = 128
SHARED_MEMORY: Final = Path("/dev/shm")
ACCEPT_PAUSE: Final = 0.01  # seconds a busier worker leaves a new connection to the others


# ------------------------------------------------------------------ pure helpers


def passive_slice(first: int, last: int, index: int, count: int) -> tuple[int, int]:
    """Worker `index`'s share of the passive range: an even split, the first ones one
    port longer; the whole range for each when it has fewer ports than workers."""
    size = last - first + 1
    if size < count:
        return first, last
    share, extra = divmod(size, count)
    start = first + index * share + min(index, extra)
    return start, start + share - 1 + (1 if index < extra else 0)


def address_family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def restart_delay(restarts: Sequence[float], now: float) -> float:
    """Seconds to wait before the next restart, given the times of earlier ones."""
    recent = [t for t in restarts if t > now - 60.0]
    if len(recent) < RESTARTS_PER_MINUTE:
        return RESTART_DELAY
    return max(RESTART_DELAY, recent[-RESTARTS_PER_MINUTE] + 60.0 - now)


def accept_now(mine: tuple[int, int], others: Sequence[tuple[int, int]]) -> bool:
    """Whether a worker takes a new connection at once, or first leaves it a moment to
    another. A load is (open sessions, connections accepted so far): least open sessions
    first; between equals, the one that has accepted fewer, so that connections one after
    the other take turns instead of all landing on whichever worker the kernel wakes first."""
    return not others or mine <= min(others)


@dataclass(frozen=True)
class WorkerBoot:
    """What a worker reads from its stdin: the parsed config and `[tls]` material."""

    config: Config
    tls: TLSMaterial | None


# ------------------------------------------------------------------ the worker's side


class WorkerAuditLog(AuditLog):
    """The audit log of a worker: `session-start` events name the worker and its pid."""

    def __init__(self, path: Path | None, worker: int) -> None:
        self.worker = worker
        super().__init__(path)

    def event(self, event: str, **fields: Any) -> None:
        if event == "session-start":
            fields = {**fields, "worker": self.worker, "pid": os.getpid()}
        super().event(event, **fields)


class BalancedPort(tcp.Port):
    """A worker's handle on a shared listening socket.

    Every worker is woken for each new connection; the first to call accept() gets it.
    This port accepts one connection per wake-up (Twisted accepts up to 100), and a worker
    with a heavier load than another one (`accept_now`) pauses `ACCEPT_PAUSE` before
    accepting, so that connections spread over the workers. It pauses at most once per
    wake-up: a dead or stuck worker delays new sessions by that much, never more.
    """

    limits: SharedLimits
    index: int
    _paused = False

    def doRead(self) -> None:
        if not self._paused:
            loads = self.limits.worker_loads()
            others = loads[: self.index] + loads[self.index + 1 :]
            if not accept_now(loads[self.index], others):
                self._paused = True
                self.stopReading()
                reactor: Any = self.reactor
                reactor.callLater(ACCEPT_PAUSE, self._resume)
                return
        self._paused = False
        self.numberAccepts = 1
        before = self.sessionno
        super().doRead()  # type: ignore[no-untyped-call]
        if self.sessionno > before:
            self.limits.note_accepted(self.index, self.sessionno - before)

    def _resume(self) -> None:
        if self.connected:
            self.startReading()


@implementer(IWorkerRole)
class WorkerRole:
    """What one worker process got from its supervisor; builds its shared parts."""

    def __init__(
        self,
        index: int,
        listen_fds: Sequence[int],
        limits_path: Path,
        passive_ports: tuple[int, int],
    ) -> None:
        self.index = index
        self.listen_fds = tuple(listen_fds)
        self.limits_path = limits_path
        self.passive_ports = passive_ports
        self._limits: SharedLimits | None = None

    def limits(self) -> SharedLimits:
        if self._limits is None:
            self._limits = SharedLimits.open(self.limits_path)
        return self._limits

    def login_guard(self, server: ServerConfig) -> SharedLoginGuard:
        return SharedLoginGuard(self.limits(), server.max_login_failures, server.ban_time)

    def session_counter(self, server: ServerConfig) -> SharedSessionCounter:
        return SharedSessionCounter(
            self.limits(), self.index, server.max_sessions, server.max_sessions_per_address
        )

    def audit_log(self, path: Path | None) -> WorkerAuditLog:
        return WorkerAuditLog(path, self.index)

    def adopt(self, reactor: Any, fd: int, address: str, factory: Any) -> IListeningPort:
        """Serve `factory` on the inherited listening socket `fd` (as adoptStreamPort)."""
        port = BalancedPort._fromListeningDescriptor(  # type: ignore[no-untyped-call]
            reactor, fd, address_family(address), factory
        )
        port.limits = self.limits()
        port.index = self.index
        port.startListening()  # type: ignore[no-untyped-call]
        return port  # type: ignore[no-any-return]


# ------------------------------------------------------------------ the supervisor


def bind_listener(listen: ListenConfig) -> socket.socket:
    """A listening, non-blocking TCP socket, as `reactor.listenTCP` would make it."""
    sock = socket.socket(address_family(listen.address), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((listen.address, listen.port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError as problem:
        sock.close()
        raise error.CannotListenError(listen.address, listen.port, problem) from None
    return sock


class _WorkerProcess(protocol.ProcessProtocol):
    """One worker: hands it its boot data, relays its output to the log, reports its end."""

    def __init__(self, supervisor: WorkerSupervisor, index: int, boot: bytes) -> None:
        self.supervisor = supervisor
        self.index = index
        self.boot = boot
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._partial = {1: b"", 2: b""}
        self.pid: int | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.boot)
        self.transport.closeStdin()
        self.boot = b""

    def childDataReceived(self, childFD: int, data: bytes) -> None:  # noqa: N803
        lines = (self._partial.get(childFD, b"") + data).split(b"\n")
        self._partial[childFD] = lines.pop()
        for line in lines:
            self._relay(line)

    def _relay(self, line: bytes) -> None:
        if line.strip():
            pid = getattr(self.transport, "pid", None)
            text = line.decode("utf-8", "replace").rstrip()
            log.info("worker {index} (pid {pid}): {line}", index=self.index, pid=pid, line=text)

    def processEnded(self, reason: Failure) -> None:
        for childFD, rest in self._partial.items():
            self._relay(rest)
            self._partial[childFD] = b""
        self.supervisor.worker_ended(self, reason)
        self.ended.callback(None)


class WorkerSupervisor(MultiService):
    """The twistd service when `server.workers` > 1: see the module's docstring."""

    def __init__(self, config: Config, tls: TLSRuntime | None = None, reactor: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.tls = tls
        self.reactor = reactor
        self.count = config.server.workers
        self.sockets: list[socket.socket] = []
        self.limits: SharedLimits | None = None
        self.processes: dict[int, _WorkerProcess] = {}
        self._restarts: dict[int, deque[float]] = {i: deque(maxlen=16) for i in range(self.count)}
        self._pending: dict[int, Any] = {}  # index -> IDelayedCall of a restart
        self._stopping = False
        self._started_once = False
        self._watch: TLSFileWatch | None = None
        self.metrics_dir: str | None = None  # the workers' multiprocess metrics files
        self.metrics_port: Any = None

    # ------------------------------------------------------------- start

    def privilegedStartService(self) -> None:
        """Before twistd drops privileges: bind the listeners (ports 21 and 990 need root)."""

        super().privilegedStartService()
        preload_modules(self.config)
        self._bind()

    def _bind(self) -> None:
        if self.sockets:
            return
        for listen in self.config.listen:
            sock = bind_listener(listen)
            self.sockets.append(sock)
            log.info(
                "serving FTP ({mode} TLS) on {address} port {port} with {count} workers",
                mode=listen.tls,
                address=listen.address,
                port=sock.getsockname()[1],
                count=self.count,
            )

    def startService(self) -> None:
        super().startService()
        self._bind()
        server = self.config.server
        server.home_root.mkdir(parents=True, exist_ok=True)

        # once, before any worker uploads (sparing other nodes' uploads on a shared tree)
        swept = sweep_temporaries(server.home_root, sweep_min_age(self.config))
        if swept:
            log.info("removed {count} interrupted uploads", count=swept)
        self.limits = SharedLimits.create(
            self._limits_path(),
            workers=self.count,
            max_sessions=server.max_sessions,
            max_login_failures=server.max_login_failures,
        )
        try:
            signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload))
        except ValueError:  # not the main thread (tests)
            pass
        if self.config.metrics is not None:
            self._start_metrics()
        for index in range(self.count):
            self._spawn(index)
        if self.config.tls.enabled:
            self._watch = TLSFileWatch(self.config, self.reactor, self._reload_own_tls)
            self._watch.start()

    def _start_metrics(self) -> None:
        """One endpoint for the whole server: the workers' values, aggregated (metrics.py)."""

        folder = SHARED_MEMORY if os.access(SHARED_MEMORY, os.W_OK) else Path("/tmp")
        self.metrics_dir = tempfile.mkdtemp(prefix="securetransport-metrics-", dir=folder)
        assert self.config.metrics is not None
        self.metrics_port = listen_metrics(
            self.reactor,
            self.config.metrics,
            multiprocess_render(self.metrics_dir),
            lambda: self._stopping,
        )

    def _limits_path(self) -> Path:
        folder = SHARED_MEMORY if os.access(SHARED_MEMORY, os.W_OK) else Path("/tmp")
        return folder / f"securetransport-limits-{os.getpid()}-{os.urandom(4).hex()}"

    def _boot(self) -> bytes:
        boot = WorkerBoot(config=self.config, tls=tls_material(self.tls))
        return pickle.dumps(boot, protocol=pickle.HIGHEST_PROTOCOL)

    def _spawn(self, index: int) -> None:
        self._pending.pop(index, None)
        if self._stopping:
            return
        assert self.limits is not None
        first, last = passive_slice(*self.config.passive.ports, index, self.count)
        fds = [FIRST_LISTEN_FD + i for i in range(len(self.sockets))]
        args = [
            sys.executable,
            "-m",
            "securetransport.worker",
            "--config",
            str(self.config.path),
            "--index",
            str(index),
            "--limits",
            str(self.limits.path),
            "--listen-fds",
            ",".join(map(str, fds)) or "-",
            "--passive",
            f"{first}-{last}",
            "--supervisor",
            str(os.getpid()),
        ]
        child_fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r"}
        for fd, sock in zip(fds, self.sockets, strict=True):
            child_fds[fd] = sock.fileno()
        package_root = str(Path(securetransport.__file__).resolve().parent.parent)
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": package_root + (os.pathsep + path if path else "")}
        if self.metrics_dir is not None:
            from securetransport.metrics import MULTIPROC_ENV

            env[MULTIPROC_ENV] = self.metrics_dir
        process = _WorkerProcess(self, index, self._boot())
        try:
            self.reactor.spawnProcess(process, sys.executable, args, env=env, childFDs=child_fds)
            process.pid = getattr(process.transport, "pid", None)  # gone once it is reaped
        except OSError as problem:
            log.error(
                "cannot start worker {index}: {python}: {error} (the user twistd runs as "
                "must be able to run it and read the securetransport package)",
                index=index,
                python=sys.executable,
                error=problem.strerror,
            )
            if self._started_once:
                self._schedule_restart(index)
            else:  # it never worked: stop rather than hold connections nobody serves
                self._stopping = True
                self.reactor.callWhenRunning(self.reactor.stop)
            return
        self._started_once = True
        self.processes[index] = process
        log.info(
            "started worker {index} (pid {pid}), passive ports {first}-{last}",
            index=index,
            pid=getattr(process.transport, "pid", None),
            first=first,
            last=last,
        )

    # ------------------------------------------------------------- a worker ended

    def worker_ended(self, process: _WorkerProcess, reason: Failure) -> None:
        index = process.index
        if self.processes.get(index) is process:
            del self.processes[index]
        if self.limits is not None:
            self.limits.forget_worker(index)  # its sessions ended with it
        pid = process.pid
        if self.metrics_dir is not None and pid is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, self.metrics_dir)  # its gauges no longer count
        if self._stopping:
            return
        status = reason.value
        log.error("worker {index} ended ({status}); starting it again", index=index, status=status)
        self._schedule_restart(index)

    def _schedule_restart(self, index: int) -> None:
        now = time.monotonic()
        delay = restart_delay(self._restarts[index], now)
        if delay > RESTART_DELAY:
            log.error(
                "worker {index} was restarted {count} times within a minute; next try in "
                "{delay:.0f} s",
                index=index,
                count=RESTARTS_PER_MINUTE,
                delay=delay,
            )
        self._restarts[index].append(now + delay)
        self._pending[index] = self.reactor.callLater(delay, self._spawn, index)

    # ------------------------------------------------------------- signals

    def reload(self) -> None:
        """SIGHUP: forward to every worker; reload the [tls] copy given to new workers."""
        for process in list(self.processes.values()):
            self._signal(process, "HUP")
        self._reload_own_tls()

    def _reload_own_tls(self) -> None:
        if self.config.tls.enabled:
            try:
                self.tls = load_tls(self.config, previous=self.tls)
            except Exception as problem:  # noqa: BLE001 - keep the last good material
                log.error("TLS reload failed in the supervisor: {error}", error=problem)

    def _signal(self, process: _WorkerProcess, name: str) -> None:
        try:
            process.transport.signalProcess(name)  # type: ignore[union-attr]
        except error.ProcessExitedAlready:
            pass

    # ------------------------------------------------------------- stop

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        self._stopping = True
        if self._watch is not None:
            self._watch.stop()
        for call in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()
        for sock in self.sockets:
            sock.close()
        self.sockets = []
        processes = list(self.processes.values())
        for process in processes:
            self._signal(process, "TERM")

        def kill_the_rest() -> None:
            for process in list(self.processes.values()):
                log.warn("worker {index} did not stop; killing it", index=process.index)
                self._signal(process, "KILL")

        # Workers drain for up to server.shutdown_grace seconds before they stop.
        killer = self.reactor.callLater(
            STOP_SECONDS + self.config.server.shutdown_grace, kill_the_rest
        )
        done = defer.DeferredList([process.ended for process in processes])

        def cleanup(_: object) -> None:
            if killer.active():
                killer.cancel()
            if self.metrics_port is not None:  # open while draining: /health said 503
                self.metrics_port.stopListening()
                self.metrics_port = None
            if self.metrics_dir is not None:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)
                self.metrics_dir = None
            if self.limits is not None:
                path = self.limits.path
                self.limits.close()
                self.limits = None
                try:
                    path.unlink()
                except OSError:
                    pass

        done.addCallback(cleanup)
        return done  # type: ignore[return-value]
