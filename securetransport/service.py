"""Service wiring: builds the shared runtime from a Config and opens the listeners."""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime
from typing import Any

from twisted.application.service import MultiService
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.threadpool import ThreadPool

from securetransport.audit import AuditLog, XferLog
from securetransport.auth import make_portal
from securetransport.cluster import RESYNC_SECONDS, ChangeListener, ClusterGuard, node_name
from securetransport.config import Config
from securetransport.ftp.passive import PassivePortProvider
from securetransport.ftp.protocol import FTPFactory
from securetransport.ftp.sniff import ImplicitPortWatch
from securetransport.limits import LoginGuard, SessionCounter
from securetransport.metrics import (
    REFRESH_SECONDS,
    Metrics,
    in_worker_multiprocess_mode,
    listen_metrics,
    render_registry,
)
from securetransport.passwords import VerificationPool
from securetransport.pgstore import CHANNEL, PostgreSQLUserStore
from securetransport.proxy import wrap_factory
from securetransport.runtime import IWorkerRole, ServerRuntime
from securetransport.sftp.auth import SSHKeyChecker, avatar_builders
from securetransport.sftp.server import SFTPFactory, load_host_keys
from securetransport.stores import open_user_store
from securetransport.tls.context import connection_creator
from securetransport.tls.material import TLSFileWatch, TLSRuntime, load_tls
from securetransport.tls.verify import crl_warnings
from securetransport.userstore import AsyncUserStore
from securetransport.vfs import LocalFilesystem, ensure_home, sweep_temporaries

log = Logger(namespace="securetransport.service")

CRL_WARNING_EVERY = 720  # [tls] file checks: every 6 hours
ACCOUNT_CHECK_SECONDS = 15.0
DRAIN_POLL_SECONDS = 0.1
DRAIN_CLOSE_SECONDS = 5.0  # after the grace, for ended sessions to close


class SecureTransportService(MultiService):
    """The whole server: thread pools, the user store, the listeners.

    `worker`: this process is one of `server.workers` (securetransport.workers): it adopts
    the supervisor's listening sockets and shares the session limits and bans with the
    other workers. Without it the service is the whole server, whatever `server.workers`.
    """

    def __init__(
        self,
        config: Config,
        reactor: Any = None,
        tls: TLSRuntime | None = None,
        worker: IWorkerRole | None = None,
    ) -> None:
        super().__init__()
        self._preloaded_tls = tls
        self.worker = worker
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.reactor = reactor
        self.ports: list[IListeningPort] = []
        self.runtime: ServerRuntime | None = None
        self._pools: list[Any] = []
        self._store: Any = None
        self._watch: TLSFileWatch | None = None
        self._checks = 0
        self._factories: list[FTPFactory] = []
        self._sftp_factories: list[Any] = []
        self._account_watch: LoopingCall | None = None
        self._verification: Any = None
        self.metrics: Any = None  # securetransport.metrics.Metrics when [metrics] is set
        self.metrics_port: IListeningPort | None = None
        self._metrics_refresh: LoopingCall | None = None
        self.cluster: Any = None  # securetransport.cluster.ClusterGuard on PostgreSQL
        self._listener: Any = None
        self._resync: LoopingCall | None = None
        self.edge_dialers: list[Any] = []  # securetransport.edge.server_side.EdgeDialer

    def build_runtime(self) -> ServerRuntime:
        config = self.config
        server = config.server
        server.home_root.mkdir(parents=True, exist_ok=True)
        worker = self.worker
        if worker is None:  # workers: the supervisor swept once; now others may be uploading
            swept = sweep_temporaries(server.home_root, sweep_min_age(config))
            if swept:
                log.info("removed {count} interrupted uploads", count=swept)
        tls = self._preloaded_tls or load_tls(config)
        files = ThreadPool(minthreads=2, maxthreads=16, name="securetransport-files")
        database = ThreadPool(minthreads=1, maxthreads=4, name="securetransport-users")
        for pool in (files, database):
            pool.start()
            self._pools.append(pool)
        verification = VerificationPool(self.reactor)
        verification.start()
        self._pools.append(verification)
        self._verification = verification
        self._store = open_user_store(server.users)
        users = AsyncUserStore(self._store, database, self.reactor)

        def filesystem_for(account: Any) -> Any:
            home = ensure_home(server.home_root, account.home_folder, server.umask)
            return LocalFilesystem(
                home,
                threadpool=files,
                reactor=self.reactor,
                upload_mode=server.upload_mode,
                umask=server.umask,
                read_only=account.read_only,
            )

        portal: Portal = make_portal(
            users,
            verification,
            filesystem_for,
            extra_checkers=[SSHKeyChecker(users, verification, config.classes)],
            avatar_builders=avatar_builders(),
        )
        passive_ports: tuple[int, int] = worker.passive_ports if worker else config.passive.ports
        first, last = passive_ports
        runtime = ServerRuntime(
            config=config,
            reactor=self.reactor,
            portal=portal,
            users=users,
            passive=PassivePortProvider(self.reactor, first, last, wrap=self._behind_proxy),
            audit=worker.audit_log(server.audit_log) if worker else AuditLog(server.audit_log),
            xferlog=XferLog(server.xferlog),
            tls=tls,
            guard=self._cluster_guard(
                worker.login_guard(server)
                if worker
                else LoginGuard(server.max_login_failures, server.ban_time),
                database,
            ),
            sessions=worker.session_counter(server)
            if worker
            else SessionCounter(server.max_sessions, server.max_sessions_per_address),
        )
        return runtime

    def privilegedStartService(self) -> None:
        """Before twistd drops privileges: bind the listeners (ports 21 and 990 need root).

        Everything else (the user store, the logs, home folders, thread pools) starts
        in startService, as the unprivileged user, so the files it creates are its own.
        """
        super().privilegedStartService()
        preload_modules(self.config)
        self._bind()

    def _bind(self) -> None:
        if self.ports:
            return
        fds = self.worker.listen_fds if self.worker else (None,) * len(self.config.listen)
        for listen, fd in zip(self.config.listen, fds, strict=True):
            self.ports.append(self._listen(listen, fd))

    def startService(self) -> None:
        super().startService()
        self.runtime = self.build_runtime()
        for factory in self._factories:
            factory.server = self.runtime
        for sftp_factory in self._sftp_factories:
            sftp_factory.runtime = self.runtime
        self._bind()
        try:
            signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload))
        except ValueError:  # not the main thread (tests)
            pass
        if self.config.metrics is not None:
            self._start_metrics(self.runtime)
        if self.cluster is not None:
            self._start_cluster()
        self._account_watch = LoopingCall(self.end_sessions_of_disabled_accounts)
        self._account_watch.clock = self.reactor
        self._account_watch.start(ACCOUNT_CHECK_SECONDS, now=False)
        if self.config.tls.enabled:
            self._watch = TLSFileWatch(self.config, self.reactor, self.reload, self._tick)
            self._watch.start()
        if self.config.edges:
            from securetransport.edge.server_side import start_dialers

            self.edge_dialers = start_dialers(self.reactor, self.runtime, self.config)

    def end_sessions_of_disabled_accounts(self) -> defer.Deferred[None]:
        """Sessions of accounts that were disabled or removed since their login end (421)."""
        runtime = self.runtime
        if runtime is None:
            return defer.succeed(None)
        names = {s.username for s in runtime.open_sessions if s.avatar is not None and s.username}
        checks = [runtime.users.get(name).addCallback(self._end_if_gone, name) for name in names]
        return defer.DeferredList(checks, consumeErrors=True).addCallback(lambda _: None)

    def _end_if_gone(self, account: Any, name: str) -> None:
        if account is not None and account.enabled:
            return
        assert self.runtime is not None
        for session in list(self.runtime.open_sessions):
            if session.username == name and session.avatar is not None:
                session.account_gone()

    def _tick(self) -> None:
        """After each [tls] file check: warn about CRLs near their next update now and then."""
        self._checks += 1
        if self._checks % CRL_WARNING_EVERY == 0:
            self.warn_about_crls()

    def warn_about_crls(self) -> list[str]:
        """Log CRLs within 7 days of their next update (or past it); also done at each load."""
        runtime = self.runtime
        if runtime is None or runtime.tls is None:
            return []
        warnings = crl_warnings(runtime.tls.trust, datetime.now(UTC))
        for warning in warnings:
            log.warn("{text}", text=warning)
        return warnings

    def _listen(self, listen: Any, fd: int | None = None) -> IListeningPort:
        """Listen as `listen` says, or adopt `fd`, a socket the supervisor bound that way."""
        if listen.protocol == "sftp":
            return self._listen_sftp(listen, fd)
        # The runtime is given to the factories in startService, before the reactor runs.
        ftp_factory = FTPFactory(self.runtime, implicit=listen.tls == "implicit")  # type: ignore[arg-type]
        self._factories.append(ftp_factory)
        if listen.tls == "implicit":
            if not self.config.tls.enabled:
                raise ValueError("an implicit listener needs [tls]")

            def new_session_context() -> Any:
                # Looked up per connection, so a reload (SIGHUP) reaches implicit ports too.
                assert self.runtime is not None and self.runtime.tls is not None
                return self.runtime.tls.contexts.new_session_context()

            factory: Any = ImplicitPortWatch(
                TLSMemoryBIOFactory(connection_creator(new_session_context), False, ftp_factory)
            )
        else:
            factory = ftp_factory
        return self._serve(listen, fd, factory, f"FTP ({listen.tls} TLS)")

    def _listen_sftp(self, listen: Any, fd: int | None) -> IListeningPort:
        """An SFTP (SSH) listener; the host keys are read here, before privileges drop."""
        sftp_factory = SFTPFactory(self.runtime, load_host_keys(self.config.ssh.host_keys))
        self._sftp_factories.append(sftp_factory)
        return self._serve(listen, fd, sftp_factory, "SFTP")

    def _serve(self, listen: Any, fd: int | None, factory: Any, what: str) -> IListeningPort:
        """Listen (or, as a worker, adopt the supervisor's socket) behind `[proxy]`."""
        factory = self._behind_proxy(factory)
        port: IListeningPort
        if self.worker is None or fd is None:
            port = self.reactor.listenTCP(listen.port, factory, interface=listen.address)
        else:
            port = self.worker.adopt(self.reactor, fd, listen.address, factory)
        log.info(
            "serving {what} on {address} port {port}",
            what=what,
            address=listen.address,
            port=port.getHost().port,  # type: ignore[attr-defined]
        )
        return port

    def _cluster_guard(self, local: Any, database: ThreadPool) -> Any:
        """On PostgreSQL, failures and bans are shared by every node (securetransport.cluster)."""
        if not isinstance(self._store, PostgreSQLUserStore):
            return local

        self._store.node = node_name()
        server = self.config.server
        self.cluster = ClusterGuard(
            local,
            self._store,
            database,
            self.reactor,
            server.ban_time,
            server.max_login_failures,
            apply_remote=self.worker is None or self.worker.index == 0,
        )
        return self.cluster

    def _start_cluster(self) -> None:
        """LISTEN for the other nodes' changes; resync now and then (the backstop)."""
        self._listener = ChangeListener(
            self.config.server.users, CHANNEL, self.reactor, self.on_change, self.resync
        )
        self._listener.start()
        self._resync = LoopingCall(self.resync)
        self._resync.clock = self.reactor
        self._resync.start(RESYNC_SECONDS, now=False)

    def on_change(self, message: dict[str, Any]) -> None:
        """A change notified by any node: an account (end its sessions if it is gone or
        disabled), or another node's failed login or ban."""
        runtime = self.runtime
        if runtime is None:
            return
        if message.get("kind") == "account":
            name = str(message.get("name"))
            if any(s.username == name and s.avatar is not None for s in runtime.open_sessions):
                runtime.users.get(name).addCallback(self._end_if_gone, name).addErrback(
                    lambda f: log.error("account check failed: {error}", error=f.value)
                )
        elif self.cluster is not None:
            self.cluster.apply(message)

    def resync(self) -> None:
        """After (re)connecting and every RESYNC_SECONDS: bans in force, open accounts."""
        if self.cluster is not None:
            self.cluster.resync()
        self.end_sessions_of_disabled_accounts()

    def _start_metrics(self, runtime: ServerRuntime) -> None:
        """Count the audit events; serve `[metrics]` here, or, as a worker, refresh the
        multiprocess files the supervisor serves (securetransport.metrics)."""
        metrics = self.metrics = Metrics()
        runtime.audit.observers.append(metrics.observe)

        def refresh() -> None:
            links_up = sum(1 for dialer in self.edge_dialers if dialer.is_up)
            metrics.refresh(runtime, self._verification, links_up)

        if self.worker is None:
            assert self.config.metrics is not None
            self.metrics_port = listen_metrics(
                self.reactor,
                self.config.metrics,
                lambda: render_registry(metrics.registry, refresh),
                lambda: runtime.draining,
            )
        elif in_worker_multiprocess_mode():
            self._metrics_refresh = LoopingCall(refresh)
            self._metrics_refresh.clock = self.reactor
            self._metrics_refresh.start(REFRESH_SECONDS, now=True)

    def drain(self, runtime: ServerRuntime, grace: float) -> defer.Deferred[None]:
        """End idle sessions now (421) and the others when their transfer ends, or at `grace`.

        The listeners are closed first and no passive port opens while draining, so a
        session takes no new transfer; after `grace` seconds what is left is ended as
        section 6 says (an interrupted upload is not published).
        """
        done: defer.Deferred[None] = defer.Deferred()
        deadline = self.reactor.seconds() + grace

        def step() -> None:
            now = self.reactor.seconds()
            for session in list(runtime.open_sessions):
                if now >= deadline or getattr(session, "transfer", None) is None:
                    session.shutdown()
            # Done when every session has closed (its interrupted upload, if any, is being
            # removed in the files pool, which finishes its queue when it stops).
            if not runtime.open_sessions or now >= deadline + DRAIN_CLOSE_SECONDS:
                if poll.running:
                    poll.stop()
                done.callback(None)

        poll = LoopingCall(step)
        poll.clock = self.reactor
        if runtime.open_sessions:
            log.info(
                "draining: {count} sessions, up to {grace} s",
                count=len(runtime.open_sessions),
                grace=grace,
            )
        poll.start(DRAIN_POLL_SECONDS, now=True)
        return done

    def _behind_proxy(self, factory: Any) -> Any:
        """The factory behind the `[proxy]` header reader, when configured (SPEC section 10)."""
        return wrap_factory(factory, self.config.proxy, self.reactor)

    def reload(self) -> None:
        """SIGHUP: reopen the logs and reload the [tls] files; keep the last good ones on error."""
        runtime = self.runtime
        if runtime is None:
            return
        runtime.audit.reopen()
        runtime.xferlog.reopen()
        log.info("reopened the logs")
        if self.config.tls.enabled:
            try:
                runtime.tls = load_tls(self.config, previous=runtime.tls)
            except Exception as error:  # noqa: BLE001 - any loading problem keeps the old state
                log.error("TLS reload failed, keeping the previous files: {error}", error=error)
                return
            log.info("reloaded the [tls] files")
        for dialer in self.edge_dialers:
            dialer.push_settings()  # an edge applies new client CAs at once

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        if self._watch is not None:
            self._watch.stop()
        if self._account_watch is not None and self._account_watch.running:
            self._account_watch.stop()
        if self._resync is not None and self._resync.running:
            self._resync.stop()
        if self._listener is not None:
            self._listener.stop(timeout=0)  # a daemon thread; it sees the flag within 0.5 s
            self._listener = None
        runtime = self.runtime
        waits = [defer.maybeDeferred(port.stopListening) for port in self.ports]
        self.ports = []
        d: defer.Deferred[Any] = defer.DeferredList(waits)
        if runtime is not None:
            runtime.draining = True
            runtime.passive.closed = True
            d.addCallback(lambda _: self.drain(runtime, self.config.server.shutdown_grace))
        if self.edge_dialers:
            dialers, self.edge_dialers = self.edge_dialers, []
            d.addCallback(lambda _: defer.gatherResults([x.stop() for x in dialers]))

        def stop_pools(_: object) -> None:
            if self._metrics_refresh is not None and self._metrics_refresh.running:
                self._metrics_refresh.stop()
            if self.metrics_port is not None:  # kept open while draining: /health said 503
                self.metrics_port.stopListening()
                self.metrics_port = None
            for pool in self._pools:
                pool.stop()
            self._pools = []
            if self._store is not None:
                self._store.close()
            if runtime is not None:
                runtime.audit.close()
                runtime.xferlog.close()

        d.addCallback(stop_pools)
        return d  # type: ignore[return-value]


def sweep_min_age(config: Config) -> float:
    """How old an upload temporary must be to be swept at start-up. On PostgreSQL the file
    tree is shared by other live nodes: spare what may still be written (a live upload
    writes at least every data_timeout, or is ended)."""
    if config.server.users.startswith("postgresql://"):
        return 2 * config.server.data_timeout
    return 0.0


def preload_modules(config: Config) -> None:
    """Import what the optional features need while still root: the interpreter's own
    files may be unreadable once twistd has dropped privileges."""
    if config.metrics is not None:
        import prometheus_client.multiprocess  # noqa: F401
    if config.server.users.startswith("postgresql://"):
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401


def pid_is_root() -> bool:
    return os.geteuid() == 0
