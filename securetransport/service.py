"""Service wiring: builds the shared runtime from a Config and opens the listeners."""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Any

from twisted.application.service import MultiService
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.threadpool import ThreadPool

from securetransport.audit import AuditLog, XferLog
from securetransport.config import Config
from securetransport.ftp.passive import PassivePortProvider
from securetransport.ftp.protocol import FTPFactory
from securetransport.ftp.sniff import ImplicitPortWatch
from securetransport.limits import LoginGuard, SessionCounter
from securetransport.runtime import ServerRuntime, TLSRuntime

if TYPE_CHECKING:
    from securetransport.workers import WorkerRole

log = Logger(namespace="securetransport.service")

RELOAD_CHECK_SECONDS = 30.0
CRL_WARNING_EVERY = 720  # checks: every 6 hours
ACCOUNT_CHECK_SECONDS = 15.0


def load_tls(config: Config, previous: TLSRuntime | None = None) -> TLSRuntime | None:
    """Parse the [tls] files once; raises the loaders' one-line errors."""
    from securetransport.tls.context import SessionContextFactory, load_server_credentials
    from securetransport.tls.verify import load_trust_store

    if not config.tls.enabled:
        return None
    trust = load_trust_store(
        config.tls.client_ca, config.tls.crl, previous=previous.trust if previous else None
    )
    credentials = load_server_credentials(config.tls)
    from datetime import UTC, datetime

    from securetransport.tls.verify import crl_warnings

    for warning in (
        *credentials.warnings,
        *trust.warnings,
        *crl_warnings(trust, datetime.now(UTC)),
    ):
        log.warn("{text}", text=warning)
    return TLSRuntime(contexts=SessionContextFactory(credentials), trust=trust)


def tls_files(config: Config) -> list[Any]:
    """The [tls] files whose change triggers a reload."""
    tls = config.tls
    return [p for p in (tls.certificate, tls.private_key, tls.client_ca, *tls.crl) if p is not None]


def file_stamps(paths: list[Any]) -> tuple[tuple[str, float, int], ...]:
    stamps = []
    for path in paths:
        try:
            info = os.stat(path)
            stamps.append((str(path), info.st_mtime, info.st_size))
        except OSError:
            stamps.append((str(path), -1.0, -1))
    return tuple(stamps)


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
        worker: WorkerRole | None = None,
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
        self._watch: LoopingCall | None = None
        self._checks = 0
        self._factories: list[FTPFactory] = []
        self._sftp_factories: list[Any] = []
        self._account_watch: LoopingCall | None = None
        self._stamps: tuple[tuple[str, float, int], ...] = ()

    def build_runtime(self) -> ServerRuntime:
        from securetransport.auth import make_portal
        from securetransport.passwords import VerificationPool
        from securetransport.userstore import AsyncUserStore, open_user_store
        from securetransport.vfs import LocalFilesystem, ensure_home, sweep_temporaries

        config = self.config
        server = config.server
        server.home_root.mkdir(parents=True, exist_ok=True)
        worker = self.worker
        if worker is None:  # workers: the supervisor swept once; now others may be uploading
            swept = sweep_temporaries(server.home_root)
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

        from securetransport.sftp.auth import SSHKeyChecker, avatar_builders

        portal: Portal = make_portal(
            users,
            verification,
            filesystem_for,
            extra_checkers=[SSHKeyChecker(users, verification, config.classes)],
            avatar_builders=avatar_builders(),
        )
        runtime = ServerRuntime(
            config=config,
            reactor=self.reactor,
            portal=portal,
            users=users,
            passive=PassivePortProvider(
                self.reactor, *(worker.passive_ports if worker else config.passive.ports)
            ),
            audit=worker.audit_log(server.audit_log) if worker else AuditLog(server.audit_log),
            xferlog=XferLog(server.xferlog),
            tls=tls,
            guard=worker.login_guard(server)
            if worker
            else LoginGuard(server.max_login_failures, server.ban_time),
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
        self._account_watch = LoopingCall(self.end_sessions_of_disabled_accounts)
        self._account_watch.clock = self.reactor
        self._account_watch.start(ACCOUNT_CHECK_SECONDS, now=False)
        if self.config.tls.enabled:
            self._stamps = file_stamps(tls_files(self.config))
            self._watch = LoopingCall(self._check_tls_files)
            self._watch.clock = self.reactor
            self._watch.start(RELOAD_CHECK_SECONDS, now=False)

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

    def _check_tls_files(self) -> None:
        """Reload the [tls] files (CRLs above all) when one of them changed on disk."""
        stamps = file_stamps(tls_files(self.config))
        if stamps != self._stamps:
            self._stamps = stamps
            log.info("a [tls] file changed on disk; reloading")
            self.reload()
        self._checks += 1
        if self._checks % CRL_WARNING_EVERY == 0:
            self.warn_about_crls()

    def warn_about_crls(self) -> list[str]:
        """Log CRLs within 7 days of their next update (or past it); also done at each load."""
        from datetime import UTC, datetime

        from securetransport.tls.verify import crl_warnings

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
            from securetransport.tls.context import connection_creator

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
        port: IListeningPort
        if self.worker is None or fd is None:
            port = self.reactor.listenTCP(listen.port, factory, interface=listen.address)
        else:
            port = self.worker.adopt(self.reactor, fd, listen.address, factory)
        log.info(
            "serving FTP ({mode} TLS) on {address} port {port}",
            mode=listen.tls,
            address=listen.address,
            port=port.getHost().port,  # type: ignore[attr-defined]
        )
        return port

    def _listen_sftp(self, listen: Any, fd: int | None) -> IListeningPort:
        """An SFTP (SSH) listener; the host keys are read here, before privileges drop."""
        from securetransport.sftp.server import SFTPFactory, load_host_keys

        factory = SFTPFactory(self.runtime, load_host_keys(self.config.ssh.host_keys))
        self._sftp_factories.append(factory)
        port: IListeningPort
        if self.worker is None or fd is None:
            port = self.reactor.listenTCP(listen.port, factory, interface=listen.address)
        else:
            port = self.worker.adopt(self.reactor, fd, listen.address, factory)
        log.info(
            "serving SFTP on {address} port {port}",
            address=listen.address,
            port=port.getHost().port,  # type: ignore[attr-defined]
        )
        return port

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

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        for watch in (self._watch, self._account_watch):
            if watch is not None and watch.running:
                watch.stop()
        runtime = self.runtime
        waits = [defer.maybeDeferred(port.stopListening) for port in self.ports]
        self.ports = []
        if runtime is not None:
            for session in list(runtime.open_sessions):
                session.shutdown()
        d = defer.DeferredList(waits)

        def stop_pools(_: object) -> None:
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


def pid_is_root() -> bool:
    return os.geteuid() == 0
