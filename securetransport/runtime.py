"""What every session shares: the config, the portal, the stores, the TLS state, the logs.

One `ServerRuntime` is built by the service; sessions read it and never copy it, so a
SIGHUP that swaps `tls` changes what new sessions use while open ones keep theirs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.cred.portal import Portal

from securetransport.audit import AuditLog, XferLog
from securetransport.config import Config
from securetransport.ftp.passive import PassivePortProvider
from securetransport.limits import LoginGuard, LoginGuardLike, SessionCounter, SessionCounterLike


@dataclass
class TLSRuntime:
    """Parsed TLS material: the per-session Context factory and the client trust store."""

    contexts: Any  # securetransport.tls.context.SessionContextFactory
    trust: Any  # securetransport.tls.verify.TrustStore


@dataclass
class ServerRuntime:
    config: Config
    reactor: Any
    portal: Portal
    users: Any  # securetransport.userstore.AsyncUserStore
    passive: PassivePortProvider
    audit: AuditLog
    xferlog: XferLog
    tls: TLSRuntime | None = None
    guard: LoginGuardLike = field(default_factory=lambda: LoginGuard(5, 300))
    sessions: SessionCounterLike = field(default_factory=lambda: SessionCounter(1000, 50))
    sendfile_active: int = 0  # clear downloads holding a thread for os.sendfile
    failure_delay_base: float = 1.0  # seconds; tests may shorten it
    open_sessions: set[Any] = field(default_factory=set)
    draining: bool = False  # SIGTERM: no new sessions or transfers; /health says 503
