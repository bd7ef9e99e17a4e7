"""What every handler group of one FTP session shares: its state, its channel to the
client, its audit, its login and its timers. No handler touches a socket: replies go
through `reply`, everything else through `channel` (an `IControlChannel`)."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface

from securetransport.auth import IFTPAvatar
from securetransport.client import ClientFacts
from securetransport.config import ClassConfig, Config
from securetransport.ftp import parser
from securetransport.ftp.channel import IControlChannel
from securetransport.ftp.data import DataChannel
from securetransport.ftp.session_audit import SessionAudit
from securetransport.ftp.state import Phase, SessionState
from securetransport.replies import Reply, format_reply
from securetransport.runtime import ServerRuntime
from securetransport.tls.facts import HandshakeInfo
from securetransport.tls.verify import CertificateVerdict
from securetransport.vfs import FilesystemError, IFilesystem

log = Logger(namespace="securetransport.ftp.session")


class IRunningTransfer(Interface):
    """The transfer a session is running (`transfers.Transfer`), for ABOR, STAT and ends."""

    verb = Attribute("str: RETR, STOR, LIST, ...")
    path = Attribute("str: the path as the user sees it")
    bytes = Attribute("int: bytes moved so far")

    def abort() -> None:
        """Stop it now: the data connection is closed, the reply is the caller's."""


class Session:
    """One control connection as the engine sees it."""

    def __init__(
        self,
        runtime: ServerRuntime,
        channel: IControlChannel,
        implicit: bool,
        session_id: str,
    ) -> None:
        self.runtime = runtime
        self.config: Config = runtime.config
        self.reactor = runtime.reactor
        self.channel = channel
        self.implicit = implicit
        self.session_id = session_id
        self.peer: str = channel.peer
        self.state = SessionState()
        self.audit = SessionAudit(runtime.audit, runtime.xferlog, session_id, self.peer)
        # TLS facts of the control connection
        self.handshake: HandshakeInfo | None = None
        self.certificate: CertificateVerdict | None = None  # without account pins
        # login
        self.avatar: IFTPAvatar | None = None
        self.fs: IFilesystem | None = None
        self._logout: Callable[[], None] | None = None
        # data
        self.data: DataChannel | None = None  # the pending data set-up (PASV/PORT)
        self.transfer: IRunningTransfer | None = None
        # timers
        self._login_timer: IDelayedCall | None = None
        self._idle_timer: IDelayedCall | None = None

    # ------------------------------------------------------------------- facts
    @property
    def closing(self) -> bool:
        return self.state.phase is Phase.CLOSING

    @property
    def username(self) -> str | None:
        return self.state.username

    def facts(self) -> ClientFacts:
        """The client as the access decision sees it."""
        handshake = self.handshake
        return ClientFacts(
            address=self.peer,
            protected=self.state.protected,
            tls_version=handshake.tls_version if handshake else None,
            cipher=handshake.cipher if handshake else None,
            peer_chain=handshake.peer_chain if handshake else (),
            certificate=self.certificate,
        )

    @property
    def read_only(self) -> bool:
        return self.avatar is not None and self.avatar.read_only

    def filesystem(self) -> IFilesystem:
        assert self.fs is not None
        return self.fs

    def resolve(self, argument: str) -> str:
        return self.filesystem().resolve(self.state.cwd, argument)

    # ------------------------------------------------------------------- output
    def reply(self, code: int, text: str) -> None:
        self.channel.send(format_reply(int(code), text))

    def reply_raw(self, data: bytes) -> None:
        self.channel.send(data)

    def fs_error(self, failure: Failure) -> None:
        """Errback: a FilesystemError becomes its reply; anything else goes on."""
        error = failure.value
        if isinstance(error, FilesystemError):
            self.reply(error.code, parser.sanitize_reply_text(error.message))
            return
        failure.raiseException()

    def close(self) -> None:
        """Close the control connection once the replies sent so far are out."""
        self.state.closing()
        self.channel.close()

    def abort(self) -> None:
        """Close at once, saying nothing (implicit ports before the handshake)."""
        self.state.closing()
        self.channel.abort()

    def refuse(self, text: str) -> None:
        """421 and close; on an implicit port close before the TLS handshake, saying nothing."""
        if self.implicit:
            self.abort()
            return
        self.state.closing()
        self.reply(Reply.SERVICE_UNAVAILABLE, text)
        self.channel.close()

    def end(self, why: str) -> None:
        """The server ends the session: abort any transfer (426), say 421 and close."""
        if self.closing:
            return
        transfer = self.transfer
        if transfer is not None:
            transfer.abort()
            self.reply(Reply.TRANSFER_ABORTED, f"{why}; transfer aborted")
        self.reply(Reply.SERVICE_UNAVAILABLE, f"{why}; closing")
        self.close()

    # ------------------------------------------------------------------- login
    def logged_in(
        self,
        avatar: IFTPAvatar,
        logout: Callable[[], None],
        name: str,
        klass: ClassConfig | None,
    ) -> None:
        self.avatar = avatar
        self._logout = logout
        self.fs = avatar.filesystem
        self.state.logged_in_as(name, klass)
        if klass is not None and klass.session_reuse == "account" and self.state.protected:
            self.channel.join_reuse_group(name)
        self.cancel_login_timer()
        self.reset_idle_timer()

    def log_out(self) -> None:
        """Forget the login (REIN, close); the realm's logout runs once."""
        self.channel.leave_reuse_group()
        if self._logout is not None:
            logout, self._logout = self._logout, None
            logout()
        self.avatar = None
        self.fs = None

    # ------------------------------------------------------------------- timers
    def start_login_timer(self) -> None:
        self._login_timer = self.reactor.callLater(
            self.config.server.login_timeout, self._login_timed_out
        )

    def cancel_login_timer(self) -> None:
        if self._login_timer is not None and self._login_timer.active():
            self._login_timer.cancel()
        self._login_timer = None

    def _login_timed_out(self) -> None:
        self._login_timer = None
        if self.state.logged_in or self.closing:
            return
        log.info("{peer}: login timeout", peer=self.peer)
        if self.state.protected or not (self.implicit or self.state.tls_started):
            self.reply(Reply.SERVICE_UNAVAILABLE, "Login timeout; closing")
            self.close()
        else:
            self.abort()  # during a TLS handshake: just close

    def reset_idle_timer(self) -> None:
        if not self.state.logged_in or self.closing:
            return
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.reset(self.config.server.idle_timeout)
        else:
            self._idle_timer = self.reactor.callLater(self.config.server.idle_timeout, self._idle)

    def cancel_idle_timer(self) -> None:
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None

    def _idle(self) -> None:
        self._idle_timer = None
        if self.transfer is not None:
            self.reset_idle_timer()
            return
        self.reply(Reply.SERVICE_UNAVAILABLE, "Idle timeout; closing")
        self.close()

    def cancel_timers(self) -> None:
        self.cancel_login_timer()
        self.cancel_idle_timer()

    # ------------------------------------------------------------------- data set-up
    def drop_data_setup(self) -> None:
        if self.data is not None:
            data, self.data = self.data, None
            data.close()
