"""The FTP/FTPS control connection: a thin Twisted shell around the engine.

The shell owns the connection: it buffers and queues command lines, serves the urgent
ones (ABOR, STAT, QUIT) at once during a transfer, hands the others one at a time to the
engine (`engine.Engine`: the command table's check, then a handler group), and stops serving
while the client does not read its replies. The engine is in the modules beside it:
`state` (phases and the session record), `session` (what the handler groups share),
`security`, `login`, `files`, `data_setup`, `transfers` (the handler groups),
`session_audit`, and `channel` (the only way to the client's sockets).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from securetransport.auth import IFTPAvatar
from securetransport.config import ClassConfig
from securetransport.ftp import parser
from securetransport.ftp.channel import LocalControlChannel
from securetransport.ftp.commands import COMMANDS
from securetransport.ftp.engine import Engine
from securetransport.ftp.session import IRunningTransfer, Session
from securetransport.ftp.sniff import describe_first_bytes
from securetransport.replies import Reply
from securetransport.runtime import IServedSession, ServerRuntime

log = Logger(namespace="securetransport.ftp.protocol")

MAX_COMMANDS_BEFORE_LOGIN = 20
MAX_QUEUED_COMMANDS = 32


@implementer(IHandshakeListener, IPushProducer, IServedSession)
class FTPSession(Protocol):
    """One control connection."""

    # Slots keep an idle session small (Twisted's own attributes still go in a small dict).
    __slots__ = (
        "_counted",
        "busy",
        "channel",
        "engine",
        "implicit",
        "lines",
        "make_channel",
        "output_blocked",
        "queue",
        "saw_data",
        "server",
        "session",
    )

    def __init__(
        self,
        server: ServerRuntime,
        implicit: bool = False,
        make_channel: Callable[[FTPSession], Any] | None = None,
    ) -> None:
        self.server = server
        self.implicit = implicit
        # Builds the session's IControlChannel (with tune/register_producer/handshake_done);
        # None: a LocalControlChannel on this transport. An edge link gives its own.
        self.make_channel = make_channel
        self.lines = parser.LineBuffer()
        # A list, not a deque: it holds a few lines at most and costs 0.6 KiB less a session.
        self.queue: list[bytes | parser.LineTooLong] = []
        self.busy = False
        self.output_blocked = False  # unsent replies over the transport's buffer size
        self.saw_data = False  # the first bytes decide "TLS ClientHello on an explicit port"
        self._counted = False
        self.session: Session | None = None
        self.channel: Any = None  # LocalControlChannel, or an edge link's channel
        self.engine: Engine | None = None

    # ------------------------------------------------------------------- what the service sees
    @property
    def username(self) -> str | None:
        return self.session.state.username if self.session is not None else None

    @property
    def avatar(self) -> IFTPAvatar | None:
        return self.session.avatar if self.session is not None else None

    protocol = "ftp"

    @property
    def klass(self) -> ClassConfig | None:
        """The logged-in user's class (None before login)."""
        return self.session.state.klass if self.session is not None else None

    @property
    def transfer(self) -> IRunningTransfer | None:
        return self.session.transfer if self.session is not None else None

    def shutdown(self) -> None:
        """The server is stopping: abort any transfer (426), say 421 and close."""
        if self.session is not None:
            self.session.end("Server shutting down")

    def account_gone(self) -> None:
        """The account was disabled or removed: end the session (421), as at shutdown."""
        log.info("{user}: account disabled or removed; ending its session", user=self.username)
        if self.session is not None:
            self.session.end("Account disabled")

    # ------------------------------------------------------------------- connection
    def connectionMade(self) -> None:
        if self.make_channel is not None:
            channel = self.make_channel(self)
        else:
            channel = LocalControlChannel(
                self.transport, self.server, self._drop_input, self._sibling_logging_in
            )
        channel.tune()
        self.channel = channel
        session_id = f"{channel.peer}:{channel.peer_port}-{int(time.time() * 1000) % 10**9}"
        session = Session(self.server, channel, self.implicit, session_id)
        session.audit.via = channel.via
        self.session = session
        self.engine = Engine(session)
        if self.server.guard.is_banned(session.peer, self.server.reactor.seconds()):
            log.info("refused {peer}: banned", peer=session.peer)
            session.refuse("Too many failed logins; try again later")
            return
        if not self.server.sessions.try_open(session.peer):
            log.info("refused {peer}: too many sessions", peer=session.peer)
            session.refuse("Too many sessions; try again later")
            return
        self._counted = True
        self.server.open_sessions.add(self)
        # The transport pauses us when our unsent replies pass its buffer size (64 KiB):
        # then no command is served and the connection is not read until it drains.
        channel.register_producer(self)
        session.start_login_timer()
        session.audit.session_start(channel.local_port, self.implicit)
        if self.implicit:
            session.state.prot_private = True
            session.state.pbsz = True
        session.reply(Reply.SERVICE_READY, self.server.config.server.banner)

    def handshakeCompleted(self) -> None:
        assert self.channel is not None and self.engine is not None
        self.engine.tls_up(self.channel.handshake_done())

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        session = self.session
        if session is None:
            return
        session.state.closing()
        session.cancel_timers()
        if session.transfer is not None:
            session.transfer.abort()
        session.drop_data_setup()
        session.log_out()
        if self._counted:
            self._counted = False
            self.server.sessions.close(session.peer)
            self.server.open_sessions.discard(self)
            session.audit.session_end(session.state.username)

    # IPushProducer: the transport's write buffer tells us when the client stops reading.
    # Only serving stops here; reading stops once MAX_QUEUED_COMMANDS wait (dataReceived).
    # Pausing the reads at once would stall a TLS handshake: TLS pauses its producer
    # while it buffers what was written before the handshake (the implicit greeting).
    def pauseProducing(self) -> None:
        self.output_blocked = True

    def resumeProducing(self) -> None:
        if not self.output_blocked:
            return
        self.output_blocked = False
        self._drain()

    def stopProducing(self) -> None:
        """The connection is going away: connectionLost does the rest."""

    def _sibling_logging_in(self) -> bool:
        """A TLS control connection from this address has yet to log in ("account" reuse:
        a data connection may be offering that connection's session)."""
        me = self.session
        assert me is not None
        for other in self.server.open_sessions:
            theirs = other.session if isinstance(other, FTPSession) else None
            if other is self or theirs is None or theirs.closing:
                continue
            if theirs.peer == me.peer and theirs.state.protected and not theirs.state.logged_in:
                return True
        return False

    # ------------------------------------------------------------------- input
    def _drop_input(self) -> None:
        """Forget what was received and not yet served (anything after AUTH TLS)."""
        self.lines.clear()
        self.queue.clear()

    def dataReceived(self, data: bytes) -> None:
        session = self.session
        if session is None or session.closing:
            return
        if (
            not session.state.protected
            and not session.state.tls_started
            and not self.implicit
            and not self.saw_data
            and describe_first_bytes(data) == "tls"
        ):
            log.warn(
                "{peer}: TLS ClientHello on an explicit FTPS port: "
                "use AUTH TLS, or the implicit port",
                peer=session.peer,
            )
            session.close()
            return
        self.saw_data = True
        self.queue.extend(self.lines.feed(data))
        if len(self.queue) > MAX_QUEUED_COMMANDS:
            session.channel.pause_reading()
        self._serve_urgent()
        self._drain()

    def _serve_urgent(self) -> None:
        """Urgent commands (ABOR, STAT, QUIT) are served at once during a transfer."""
        assert self.session is not None
        if self.session.transfer is None:
            return
        kept: list[bytes | parser.LineTooLong] = []
        urgent: list[parser.Command] = []
        for item in self.queue:
            if isinstance(item, bytes):
                command = parser.parse_command(item)
                if isinstance(command, parser.Command) and _urgent(command):
                    urgent.append(command)
                    continue
            kept.append(item)
        # Take them out of the queue first: serving one may finish the transfer and
        # drain the queue at once, which must not serve them a second time.
        self.queue = kept
        for command in urgent:
            self._dispatch(command)

    def _drain(self) -> None:
        session = self.session
        assert session is not None
        while not self.busy and self.queue and not session.closing and not self.output_blocked:
            result = self._handle_line(self.queue.pop(0))
            if isinstance(result, Deferred):
                self.busy = True
                result.addErrback(self._internal_error)
                result.addBoth(self._finished_command)
            else:
                session.reset_idle_timer()
        if (
            not self.busy
            and not self.output_blocked
            and len(self.queue) <= MAX_QUEUED_COMMANDS
            and self.transport is not None
        ):
            session.channel.resume_reading()

    def _finished_command(self, _: object) -> None:
        session = self.session
        assert session is not None
        self.busy = False
        assert self.engine is not None
        if self.engine.after_command():
            return
        session.reset_idle_timer()
        self._drain()

    def _internal_error(self, failure: Failure) -> None:
        assert self.session is not None
        log.failure("internal error in session {session}", failure, session=self.session.session_id)
        if not self.session.closing:
            self.session.reply(
                Reply.LOCAL_ERROR, "Requested action aborted: local error in processing"
            )

    def _handle_line(self, item: bytes | parser.LineTooLong) -> Deferred[Any] | None:
        session = self.session
        assert session is not None
        state = session.state
        if not state.logged_in:
            if self.server.guard.is_banned(session.peer, self.server.reactor.seconds()):
                session.reply(Reply.SERVICE_UNAVAILABLE, "Too many failed logins; closing")
                session.close()
                return None
            state.commands_before_login += 1
            if state.commands_before_login > MAX_COMMANDS_BEFORE_LOGIN:
                session.reply(Reply.SERVICE_UNAVAILABLE, "Too many commands before login; closing")
                session.close()
                return None
        if isinstance(item, parser.LineTooLong):
            session.reply(Reply.SYNTAX_ERROR, "Command line too long")
            return None
        command = parser.parse_command(item)
        if isinstance(command, parser.ParseError):
            session.reply(command.code, command.text)
            return None
        return self._dispatch(command)

    def _dispatch(self, command: parser.Command) -> Deferred[Any] | None:
        assert self.engine is not None
        return self.engine.dispatch(command)


def _urgent(command: parser.Command) -> bool:
    spec = COMMANDS.get(command.verb)
    # STAT with a path is a listing: it waits for the transfer like other commands.
    return spec is not None and spec.urgent and not (command.verb == "STAT" and command.argument)


class FTPFactory(Factory):
    """Builds a session per control connection; `implicit` for implicit-FTPS listeners."""

    def __init__(
        self,
        server: ServerRuntime,
        implicit: bool = False,
        make_channel: Callable[[FTPSession], Any] | None = None,
    ) -> None:
        self.server = server
        self.implicit = implicit
        # Builds the session's IControlChannel (with tune/register_producer/handshake_done);
        # None: a LocalControlChannel on this transport. An edge link gives its own.
        self.make_channel = make_channel

    def buildProtocol(self, addr: Any) -> FTPSession:
        session = FTPSession(self.server, self.implicit)
        session.factory = self
        return session
