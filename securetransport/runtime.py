"""What every session shares: the config, the portal, the stores, the TLS state, the logs.

One `ServerRuntime` is built by the service; sessions read it and never copy it, so a
SIGHUP that swaps `tls` changes what new sessions use while open ones keep theirs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.cred.portal import Portal
from twisted.internet.interfaces import IListeningPort
from zope.interface import Attribute, Interface

from securetransport.audit import AuditLog, XferLog
from securetransport.config import Config, ServerConfig
from securetransport.ftp.passive import PassivePortProvider
from securetransport.limits import LoginGuard, LoginGuardLike, SessionCounter, SessionCounterLike
from securetransport.tls.groups import SessionGroups
from securetransport.tls.material import TLSRuntime
from securetransport.userstore import AsyncUserStore

__all__ = ["IWorkerRole", "ServerRuntime", "TLSRuntime"]


class IServedSession(Interface):
    """What the service sees of an open session (FTP or SFTP): who, and how to end it."""

    protocol = Attribute('str: "ftp" or "sftp"')
    username = Attribute("str | None: the logged-in account, None before login")
    avatar = Attribute("the logged-in avatar, None before login")
    klass = Attribute("config.ClassConfig | None: the logged-in user's class")
    transfer = Attribute("a transfer in progress, or None")

    def shutdown() -> None:
        """The server is stopping: abort any transfer, say goodbye and close."""

    def account_gone() -> None:
        """The account was disabled or removed: end the session."""


class IWorkerRole(Interface):
    """What a worker process got from its supervisor (`workers.WorkerRole`): the
    listening sockets it adopts, its passive ports, and the limits shared by all workers."""

    index = Attribute("int: this worker's number")
    listen_fds = Attribute("tuple[int, ...]: inherited listening sockets, one per [[listen]]")
    passive_ports = Attribute("tuple[int, int]: this worker's slice of the passive range")

    def login_guard(server: ServerConfig) -> LoginGuardLike:
        """Failures and bans shared by every worker."""

    def session_counter(server: ServerConfig) -> SessionCounterLike:
        """Session limits shared by every worker."""

    def audit_log(path: Path | None) -> AuditLog:
        """This worker's audit log writer."""

    def adopt(reactor: Any, fd: int, address: str, factory: Any) -> IListeningPort:
        """Serve `factory` on the inherited listening socket `fd`."""


@dataclass
class ServerRuntime:
    config: Config
    reactor: Any
    portal: Portal
    users: AsyncUserStore
    passive: PassivePortProvider
    audit: AuditLog
    xferlog: XferLog
    tls: TLSRuntime | None = None
    guard: LoginGuardLike = field(default_factory=lambda: LoginGuard(5, 300))
    sessions: SessionCounterLike = field(default_factory=lambda: SessionCounter(1000, 50))
    sendfile_active: int = 0  # clear downloads holding a thread for os.sendfile
    failure_delay_base: float = 1.0  # seconds; tests may shorten it
    open_sessions: set[IServedSession] = field(default_factory=set)
    draining: bool = False  # SIGTERM: no new sessions or transfers; /health says 503
    reuse_groups: SessionGroups = field(default_factory=SessionGroups)  # "account" classes
