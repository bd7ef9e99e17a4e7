"""The FTP/FTPS control connection: a thin Twisted shell around the sans-IO pieces.

Commands are parsed by `parser`, dispatched through the `commands` table to
`ftp_VERB` methods, and served one at a time: a command that waits (a store lookup,
a password check, a transfer) holds the queue, except ABOR, STAT and QUIT, which are
served at once during a transfer. Access decisions come from `policy.decide_user`.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from securetransport.audit import login_name_fields
from securetransport.client import ClientFacts, normalize_address
from securetransport.config import ClassConfig
from securetransport.ftp import addresses, listing, parser
from securetransport.ftp.commands import COMMANDS, DATA_COMMANDS, FEATURES, Argument, help_text
from securetransport.ftp.data import (
    DataChannel,
    DataConnection,
    DataError,
    DataTLS,
    FileReceiver,
    FileSender,
    SendfileSender,
    raw_socket,
)
from securetransport.ftp.passive import NoPassivePort
from securetransport.ftp.sniff import describe_first_bytes
from securetransport.replies import Reply, format_multiline, format_reply
from securetransport.runtime import ServerRuntime
from securetransport.userstore import valid_account_name
from securetransport.vfs import FilesystemError, IFilesystem

log = Logger(namespace="securetransport.ftp.protocol")

MAX_COMMANDS_BEFORE_LOGIN = 20
MAX_QUEUED_COMMANDS = 32
MAX_FAILED_LOGINS_PER_SESSION = 3
SENDFILE_THREADS = 6  # of the reactor's 10 pool threads
MAX_DATA_TLS_REFUSALS = 20  # 522s in a row: lftp retries a 522 in a tight loop


class _Transfer:
    """The transfer a session is running, for ABOR and STAT."""

    def __init__(self, verb: str, path: str, channel: DataChannel) -> None:
        self.verb = verb
        self.path = path
        self.connection: DataConnection | None = None
        self.channel: DataChannel | None = channel
        # What the data connection really is, whatever PROT says by now.
        self.protected = channel.tls is not None
        self.aborted = False
        self.stalled = False
        self.watchdog: IDelayedCall | None = None
        self.started = time.monotonic()

    @property
    def bytes(self) -> int:
        if self.connection is None:
            return 0
        return self.connection.bytes_sent + self.connection.bytes_received


@implementer(IHandshakeListener)
class FTPSession(Protocol):
    """One control connection."""

    # Slots keep an idle session small: its state lives in slots, not in a per-instance dict
    # (Twisted's own attributes still go in a small one).
    __slots__ = (
        "_counted",
        "_idle_timer",
        "_login_timer",
        "avatar",
        "binary",
        "busy",
        "saw_data",
        "certificate",
        "client_name",
        "closing",
        "commands_before_login",
        "config",
        "cwd",
        "data",
        "data_tls_refusals",
        "epsv_all",
        "failed_logins",
        "fs",
        "output_blocked",
        "handshake",
        "implicit",
        "klass",
        "lines",
        "local_host",
        "logout",
        "mlst_facts",
        "pbsz",
        "peer",
        "pending_user",
        "prot_private",
        "protected",
        "queue",
        "quit_after_transfer",
        "reactor",
        "rest",
        "reuse_member",
        "rnfr",
        "server",
        "session_id",
        "tls_context",
        "tls_started",
        "transfer",
        "username",
    )

    def __init__(self, server: ServerRuntime, implicit: bool = False) -> None:
        self.server = server
        self.config = server.config
        self.reactor = server.reactor
        self.implicit = implicit
        self.lines = parser.LineBuffer()
        # A list, not a deque: it holds a few lines at most and costs 0.6 KiB less a session.
        self.queue: list[bytes | parser.LineTooLong] = []
        self.busy = False
        self.output_blocked = False  # unsent replies over the transport's buffer size
        self.saw_data = False  # the first bytes decide "TLS ClientHello on an explicit port"
        self.closing = False
        self.peer = "0.0.0.0"
        self.local_host = "0.0.0.0"
        self.session_id = ""
        # TLS
        self.protected = False
        self.tls_started = False  # AUTH accepted or implicit port: a handshake is under way
        self.tls_context: Any = None
        self.handshake: Any = None  # tls.context.HandshakeInfo of the control connection
        self.certificate: Any = None  # tls.verify.CertificateVerdict (without account pins)
        self.pbsz = False
        self.prot_private = False
        # login
        # After 331: (name, UserDecision, the audit fields of the name)
        self.pending_user: tuple[str, Any, dict[str, str | None]] | None = None
        self.username: str | None = None
        self.avatar: Any = None
        self.logout: Callable[[], None] | None = None
        self.klass: ClassConfig | None = None
        self.reuse_member: Any = None  # tls.groups.GroupMember ("account" classes, logged in)
        self.commands_before_login = 0
        self.failed_logins = 0
        self.data_tls_refusals = 0
        # file state
        self.fs: IFilesystem | None = None
        self.cwd = "/"
        self.rnfr: str | None = None
        self.rest = 0
        self.binary = True
        self.epsv_all = False
        self.mlst_facts: tuple[str, ...] = listing.DEFAULT_FACTS
        self.data: DataChannel | None = None
        self.transfer: _Transfer | None = None
        self.quit_after_transfer = False
        self.client_name: str | None = None
        # timers
        self._login_timer: IDelayedCall | None = None
        self._idle_timer: IDelayedCall | None = None
        self._counted = False

    # ----------------------------------------------------------------------------- connection
    def connectionMade(self) -> None:
        peer: Any = self.transport.getPeer()  # type: ignore[union-attr]
        host: Any = self.transport.getHost()  # type: ignore[union-attr]
        self.peer = normalize_address(peer.host)
        self.local_host = host.host
        self.session_id = f"{self.peer}:{peer.port}-{int(time.time() * 1000) % 10**9}"
        self._set_nodelay()
        now = self.reactor.seconds()
        if self.server.guard.is_banned(self.peer, now):
            log.info("refused {peer}: banned", peer=self.peer)
            self._refuse("Too many failed logins; try again later")
            return
        if not self.server.sessions.try_open(self.peer):
            log.info("refused {peer}: too many sessions", peer=self.peer)
            self._refuse("Too many sessions; try again later")
            return
        self._counted = True
        self.server.open_sessions.add(self)
        # The transport pauses us when our unsent replies pass its buffer size (64 KiB):
        # then no command is served and the connection is not read until it drains.
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self._login_timer = self.reactor.callLater(
            self.config.server.login_timeout, self._login_timed_out
        )
        self.server.audit.event(
            "session-start",
            session=self.session_id,
            client=self.peer,
            port=host.port,
            implicit=self.implicit,
        )
        if self.implicit:
            self.prot_private = True
            self.pbsz = True
        self._send(Reply.SERVICE_READY, self.config.server.banner)

    def _refuse(self, text: str) -> None:
        """421 and close; on an implicit port close before the TLS handshake, saying nothing."""
        self.closing = True
        if self.implicit:
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self._send(Reply.SERVICE_UNAVAILABLE, text)
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _set_nodelay(self) -> None:
        """TCP_NODELAY (no Nagle stalls), and SO_OOBINLINE so an urgent ABOR stays in the stream."""
        sock = raw_socket(self.transport)
        if sock is None:
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
        except OSError:
            pass

    def handshakeCompleted(self) -> None:
        from securetransport.tls.context import handshake_info
        from securetransport.tls.verify import verify_certificate

        connection = self.transport.getHandle()  # type: ignore[union-attr]
        if self.tls_context is None:
            self.tls_context = connection.get_context()
        self.protected = True
        self.handshake = handshake_info(connection)
        trust = self.server.tls.trust if self.server.tls is not None else None
        self.certificate = None
        if self.handshake.peer_chain and trust is not None:
            self.certificate = verify_certificate(
                self.handshake.peer_chain, trust, now=datetime.now(UTC)
            )
        cert = self.certificate
        self.server.audit.event(
            "tls",
            session=self.session_id,
            channel="control",
            version=self.handshake.tls_version,
            cipher=self.handshake.cipher,
            resumed=self.handshake.resumed,
            certificate_subject=getattr(cert, "subject", None),
            certificate_fingerprint=getattr(cert, "fingerprint", None),
            certificate_good=getattr(cert, "good", None),
            certificate_reason=getattr(cert, "reason", None),
        )

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closing = True
        for timer in (self._login_timer, self._idle_timer):
            if timer is not None and timer.active():
                timer.cancel()
        if self.transfer is not None:
            self._abort_transfer()
        if self.data is not None:
            self.data.close()
            self.data = None
        self._do_logout()
        if self._counted:
            self._counted = False
            self.server.sessions.close(self.peer)
            self.server.open_sessions.discard(self)
            self.server.audit.event("session-end", session=self.session_id, user=self.username)

    def shutdown(self) -> None:
        """The server is stopping: abort any transfer (426), say 421 and close."""
        self._end("Server shutting down")

    def account_gone(self) -> None:
        """The account was disabled or removed: end the session (421), as at shutdown."""
        log.info("{user}: account disabled or removed; ending its session", user=self.username)
        self._end("Account disabled")

    def _end(self, why: str) -> None:
        if self.closing:
            return
        if self.transfer is not None:
            self._abort_transfer()
            self._send(Reply.TRANSFER_ABORTED, f"{why}; transfer aborted")
        self._send(Reply.SERVICE_UNAVAILABLE, f"{why}; closing")
        self._close()

    def _do_logout(self) -> None:
        if self.reuse_member is not None:
            self.server.reuse_groups.leave(self.reuse_member)
            self.reuse_member = None
        if self.logout is not None:
            logout, self.logout = self.logout, None
            logout()

    # ----------------------------------------------------------------------------- input
    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        if (
            not self.protected
            and not self.tls_started
            and not self.implicit
            and not self.saw_data
            and describe_first_bytes(data) == "tls"
        ):
            log.warn(
                "{peer}: TLS ClientHello on an explicit FTPS port: "
                "use AUTH TLS, or the implicit port",
                peer=self.peer,
            )
            self._close()
            return
        self.saw_data = True
        for item in self.lines.feed(data):
            self.queue.append(item)
        if len(self.queue) > MAX_QUEUED_COMMANDS:
            self.transport.pauseProducing()  # type: ignore[union-attr]
        self._serve_urgent()
        self._drain()

    def _serve_urgent(self) -> None:
        """Commands marked `during_transfer` (ABOR, STAT, QUIT) are served at once."""
        if self.transfer is None:
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

    def _drain(self) -> None:
        while not self.busy and self.queue and not self.closing and not self.output_blocked:
            item = self.queue.pop(0)
            result = self._handle_line(item)
            if isinstance(result, Deferred):
                self.busy = True
                result.addErrback(self._internal_error)
                result.addBoth(self._finished_command)
            else:
                self._reset_idle_timer()
        if (
            not self.busy
            and not self.output_blocked
            and len(self.queue) <= MAX_QUEUED_COMMANDS
            and self.transport is not None
        ):
            self.transport.resumeProducing()  # type: ignore[union-attr,attr-defined]

    def _finished_command(self, _: object) -> None:
        self.busy = False
        if self.quit_after_transfer and self.transfer is None:
            self._quit()
            return
        self._reset_idle_timer()
        self._drain()

    def _internal_error(self, failure: Failure) -> None:
        log.failure("internal error in session {session}", failure, session=self.session_id)
        if not self.closing:
            self._send(Reply.LOCAL_ERROR, "Requested action aborted: local error in processing")

    def _handle_line(self, item: bytes | parser.LineTooLong) -> Deferred[Any] | None:
        if self.avatar is None:
            if self.server.guard.is_banned(self.peer, self.reactor.seconds()):
                self._send(Reply.SERVICE_UNAVAILABLE, "Too many failed logins; closing")
                self._close()
                return None
            self.commands_before_login += 1
            if self.commands_before_login > MAX_COMMANDS_BEFORE_LOGIN:
                self._send(Reply.SERVICE_UNAVAILABLE, "Too many commands before login; closing")
                self._close()
                return None
        if isinstance(item, parser.LineTooLong):
            self._send(Reply.SYNTAX_ERROR, "Command line too long")
            return None
        command = parser.parse_command(item)
        if isinstance(command, parser.ParseError):
            self._send(command.code, command.text)
            return None
        return self._dispatch(command)

    def _dispatch(self, command: parser.Command) -> Deferred[Any] | None:
        if self.closing:
            return None
        spec = COMMANDS.get(command.verb)
        if spec is None:
            self._send(Reply.SYNTAX_ERROR, f"{command.verb} not understood")
            return None
        if self.avatar is None and not spec.before_login:
            self._send(Reply.NOT_LOGGED_IN, "Please log in with USER and PASS")
            return None
        if self.avatar is None and command.verb == "STAT" and command.argument:
            self._send(Reply.NOT_LOGGED_IN, "Please log in with USER and PASS")
            return None
        if spec.argument is Argument.REQUIRED and not command.argument:
            self._send(Reply.SYNTAX_ERROR_ARGS, f"{command.verb} needs an argument")
            return None
        if spec.argument is Argument.NONE and command.argument:
            self._send(Reply.SYNTAX_ERROR_ARGS, f"{command.verb} takes no argument")
            return None
        if spec.writes and self.avatar is not None and getattr(self.avatar, "read_only", False):
            self._send(Reply.FILE_UNAVAILABLE, "Permission denied: read-only account")
            return None
        if command.verb != "REST" and command.verb not in DATA_COMMANDS and spec.writes:
            self.rest = 0
        handler = getattr(self, spec.method)
        try:
            result: Deferred[Any] | None = handler(command.argument or "")
        except FilesystemError as error:
            self._send(error.code, parser.sanitize_reply_text(error.message))
            return None
        return result

    # ----------------------------------------------------------------------------- output
    def _send(self, code: int, text: str) -> None:
        if self.transport is None:
            return
        self.transport.write(format_reply(int(code), text))

    def _send_raw(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _close(self) -> None:
        self.closing = True
        self.queue.clear()
        if self.transport is not None:
            self.transport.loseConnection()

    def _fs_error(self, failure: Failure) -> None:
        error = failure.value
        if isinstance(error, FilesystemError):
            self._send(error.code, parser.sanitize_reply_text(error.message))
            return
        failure.raiseException()

    # ----------------------------------------------------------------------------- timers
    def _login_timed_out(self) -> None:
        self._login_timer = None
        if self.avatar is None and not self.closing:
            log.info("{peer}: login timeout", peer=self.peer)
            if self.protected or not (self.implicit or self.tls_started):
                self._send(Reply.SERVICE_UNAVAILABLE, "Login timeout; closing")
                self._close()
            else:
                self.transport.abortConnection()  # type: ignore[union-attr]

    def _reset_idle_timer(self) -> None:
        if self.avatar is None or self.closing:
            return
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.reset(self.config.server.idle_timeout)
        else:
            self._idle_timer = self.reactor.callLater(self.config.server.idle_timeout, self._idle)

    def _idle(self) -> None:
        self._idle_timer = None
        if self.transfer is not None:
            self._reset_idle_timer()
            return
        self._send(Reply.SERVICE_UNAVAILABLE, "Idle timeout; closing")
        self._close()

    # ----------------------------------------------------------------------------- TLS
    def _session_context(self) -> Any:
        if self.tls_context is None:
            assert self.server.tls is not None
            self.tls_context = self.server.tls.contexts.new_session_context()
        return self.tls_context

    def ftp_AUTH(self, argument: str) -> None:
        mechanism = argument.strip().upper()
        if self.avatar is not None:
            self._send(Reply.BAD_SEQUENCE, "AUTH is not allowed after login")
            return
        if self.protected or self.implicit:
            self._send(Reply.BAD_SEQUENCE, "TLS is already active")
            return
        if mechanism not in ("TLS", "TLS-C", "SSL", "TLS-P"):
            self._send(Reply.NOT_IMPLEMENTED_PARAMETER, f"AUTH {mechanism} not supported; use TLS")
            return
        if self.server.tls is None:
            self._send(Reply.NOT_IMPLEMENTED_PARAMETER, "TLS is not configured on this server")
            return
        from securetransport.tls.context import connection_creator

        context = self._session_context()
        self.pending_user = None
        if mechanism in ("SSL", "TLS-P"):
            self.prot_private = True
            self.pbsz = True
        self._send(Reply.AUTH_OK, f"AUTH {mechanism} successful; starting TLS")
        # Anything pipelined after AUTH in the same packet came in clear: drop it.
        self.lines.clear()
        self.queue.clear()
        self.tls_started = True
        self.transport.startTLS(connection_creator(context))  # type: ignore[union-attr]

    def ftp_PBSZ(self, argument: str) -> None:
        if not self.protected:
            self._send(Reply.BAD_SEQUENCE, "PBSZ needs a protected control channel (AUTH TLS)")
            return
        if not argument.strip().isdigit():
            self._send(Reply.SYNTAX_ERROR_ARGS, "PBSZ takes a number")
            return
        self.pbsz = True
        self._send(Reply.OK, "PBSZ=0")

    def ftp_PROT(self, argument: str) -> None:
        if not self.protected:
            self._send(Reply.BAD_SEQUENCE, "PROT needs a protected control channel (AUTH TLS)")
            return
        level = argument.strip().upper()
        if level == "C":
            self.prot_private = False
            self._send(Reply.OK, "Protection level set to Clear")
        elif level == "P":
            self.prot_private = True
            self._send(Reply.OK, "Protection level set to Private")
        elif level in ("S", "E"):
            self._send(Reply.PROT_NOT_SUPPORTED, f"Protection level {level} not supported")
        else:
            self._send(Reply.NOT_IMPLEMENTED_PARAMETER, f"Unknown protection level {level}")

    def ftp_CCC(self, argument: str) -> None:
        if self.protected:
            self._send(Reply.POLICY_DENIED, "CCC refused: the control channel stays protected")
        else:
            self._send(Reply.CCC_REFUSED, "CCC needs a protected control channel")

    # ----------------------------------------------------------------------------- login
    def _facts(self) -> ClientFacts:
        handshake = self.handshake
        return ClientFacts(
            address=self.peer,
            protected=self.protected,
            tls_version=getattr(handshake, "tls_version", None),
            cipher=getattr(handshake, "cipher", None),
            peer_chain=tuple(getattr(handshake, "peer_chain", ()) or ()),
        )

    def ftp_USER(self, argument: str) -> Deferred[Any] | None:
        if self.avatar is not None:
            self._send(Reply.BAD_SEQUENCE, "Already logged in")
            return None
        name = argument
        self.pending_user = None
        if valid_account_name(name):
            lookup: Deferred[Any] = self.server.users.get(name)
        else:
            lookup = defer.succeed(None)
        fingerprint = getattr(self.certificate, "fingerprint", None)
        if fingerprint:
            pins: Deferred[Any] = self.server.users.pinned_by_any_account(fingerprint)
        else:
            pins = defer.succeed(False)
        both: Deferred[Any] = defer.gatherResults([lookup, pins], consumeErrors=True)
        both.addErrback(_first_error)
        return both.addCallback(lambda found: self._decide_user(found[0], name, found[1]))

    def _decide_user(self, account: Any, name: str, pinned: bool = False) -> Deferred[Any] | None:
        from securetransport.policy import decide_user

        logged_name = login_name_fields(name, account is not None)
        if account is not None and not account.enabled:
            account = None
        trust = self.server.tls.trust if self.server.tls is not None else _empty_trust()
        decision = decide_user(
            name=name,
            account=account,
            facts=self._facts(),
            classes=self.config.classes,
            trust=trust,
            certificate_user=self.config.tls.certificate_user,
            now=datetime.now(UTC),
            pinned_elsewhere=pinned,
        )
        verdict = decision.verdict
        self.server.audit.event(
            "user",
            session=self.session_id,
            client=self.peer,
            **logged_name,
            **{"class": getattr(decision.klass, "name", None)},
            matched=decision.matched,
            reply=decision.reply,
            row=decision.row,
            method=decision.method,
            protected=self.protected,
            certificate_subject=getattr(verdict, "subject", None),
            certificate_fingerprint=getattr(verdict, "fingerprint", None),
            certificate_result=(
                None
                if verdict is None or not verdict.presented
                else ("good" if verdict.good else f"failed: {verdict.reason}")
            ),
        )
        if decision.reply == Reply.LOGGED_IN_CERTIFICATE:
            from securetransport.auth import CertificateLogin

            assert verdict is not None and verdict.fingerprint is not None
            credentials = CertificateLogin(name, verdict.fingerprint)
            return self._login(credentials, name, decision, "certificate", logged_name)
        if decision.reply == Reply.NEED_PASSWORD:
            self.pending_user = (name, decision, logged_name)
            self._send(Reply.NEED_PASSWORD, decision.text)
            return None
        self._send(Reply.NOT_LOGGED_IN, decision.text)
        return None

    def ftp_PASS(self, argument: str) -> Deferred[Any] | None:
        if self.avatar is not None:
            self._send(Reply.BAD_SEQUENCE, "Already logged in")
            return None
        if self.pending_user is None:
            self._send(Reply.BAD_SEQUENCE, "Login with USER first")
            return None
        name, decision, logged_name = self.pending_user
        self.pending_user = None
        credentials = UsernamePassword(name.encode(), argument.encode())
        method = decision.method or "password"
        return self._login(credentials, name, decision, method, logged_name)

    def _login(
        self,
        credentials: Any,
        name: str,
        decision: Any,
        method: str,
        logged_name: dict[str, str | None],
    ) -> Deferred[Any]:
        from securetransport.auth import IFTPAvatar

        d = self.server.portal.login(credentials, None, IFTPAvatar)
        d.addCallback(self._logged_in, name, decision, method)
        d.addErrback(self._login_failed, name, method, logged_name)
        return d

    def _logged_in(
        self, result: tuple[Any, Any, Callable[[], None]], name: str, decision: Any, method: str
    ) -> None:
        _, avatar, logout = result
        if self.closing:
            logout()
            return
        if method != "certificate" and self.server.guard.is_banned(
            self.peer, self.reactor.seconds()
        ):
            # The address was banned while this password was being checked.
            logout()
            self._send(Reply.SERVICE_UNAVAILABLE, "Too many failed logins; closing")
            self._close()
            return
        self.avatar = avatar
        self.logout = logout
        self.username = name
        self.klass = decision.klass
        self.fs = avatar.filesystem
        self.cwd = "/"
        if self.klass is not None and self.klass.session_reuse == "account" and self.protected:
            self.reuse_member = self.server.reuse_groups.join(
                self.peer,
                name,
                self._session_context(),
                self.transport.getHandle(),  # type: ignore[union-attr]
                self.handshake,
            )
        if self._login_timer is not None and self._login_timer.active():
            self._login_timer.cancel()
        self._login_timer = None
        self._reset_idle_timer()
        self.server.audit.event(
            "login",
            session=self.session_id,
            user=name,
            method=method,
            result="success",
            **{"class": getattr(self.klass, "name", None)},
        )
        if method == "certificate":
            self._send(Reply.LOGGED_IN_CERTIFICATE, decision.text)
        else:
            self._send(Reply.LOGGED_IN, f"User {name} logged in")

    def _login_failed(
        self, failure: Failure, name: str, method: str, logged_name: dict[str, str | None]
    ) -> Deferred[None] | None:
        from securetransport.passwords import PoolFull

        if failure.check(PoolFull):
            self._send(Reply.SERVICE_UNAVAILABLE, "Server busy; try again later")
            self._close()
            return None
        failure.trap(UnauthorizedLogin)
        if method == "certificate":
            # Never delayed, never counted (SPEC section 4): e.g. disabled since USER.
            self._send(Reply.NOT_LOGGED_IN, "Login incorrect")
            return None
        now = self.reactor.seconds()
        guard = self.server.guard
        delay = guard.failure_delay(name, now) * self.server.failure_delay_base
        banned = guard.record_failure(self.peer, name, now)
        self.failed_logins += 1
        self.server.audit.event(
            "login",
            session=self.session_id,
            **logged_name,
            method=method,
            result="failure",
            client=self.peer,
            banned=banned,
        )
        done: Deferred[None] = Deferred()

        def reply() -> None:
            if self.closing:
                done.callback(None)
                return
            self._send(Reply.NOT_LOGGED_IN, "Login incorrect")
            if self.failed_logins >= MAX_FAILED_LOGINS_PER_SESSION or banned:
                self._send(Reply.SERVICE_UNAVAILABLE, "Too many failed logins; closing")
                self._close()
            done.callback(None)

        self.reactor.callLater(delay, reply)
        return done

    def ftp_ACCT(self, argument: str) -> None:
        self._send(Reply.SUPERFLUOUS, "ACCT not needed")

    def ftp_REIN(self, argument: str) -> None:
        # Never during a transfer: REIN waits in the queue until the transfer has ended.
        if self.data is not None:
            self.data.close()
            self.data = None
        was_logged_in = self.avatar is not None
        self._do_logout()
        self.avatar = None
        self.username = None
        self.klass = None
        self.fs = None
        self.pending_user = None
        self.cwd = "/"
        self.rnfr = None
        self.rest = 0
        self.binary = True
        self.epsv_all = False
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        if was_logged_in:
            self.commands_before_login = 0
            self._login_timer = self.reactor.callLater(
                self.config.server.login_timeout, self._login_timed_out
            )
        self._send(Reply.SERVICE_READY, "Session reset; log in again")

    def ftp_QUIT(self, argument: str) -> None:
        if self.transfer is not None:
            self.quit_after_transfer = True
            return
        self._quit()

    def _quit(self) -> None:
        self._send(Reply.CLOSING_CONTROL, "Goodbye")
        self._close()

    # ----------------------------------------------------------------------------- simple commands
    def ftp_SYST(self, argument: str) -> None:
        self._send(Reply.SYSTEM_TYPE, "UNIX Type: L8")

    def ftp_NOOP(self, argument: str) -> None:
        self._send(Reply.OK, "NOOP ok")

    def ftp_CLNT(self, argument: str) -> None:
        self.client_name = argument[:128]
        self._send(Reply.OK, "Noted")

    def ftp_FEAT(self, argument: str) -> None:
        body = [" " + feature for feature in FEATURES]
        body.append(" " + listing.format_feat_mlst(self.mlst_facts))
        self._send_raw(
            format_multiline(Reply.SYSTEM_STATUS, "Extensions supported:", sorted(body), "End")
        )

    def ftp_OPTS(self, argument: str) -> None:
        option, _, value = argument.partition(" ")
        option = option.upper()
        if option == "UTF8":
            if value.strip().upper() in ("ON", ""):
                self._send(Reply.OK, "UTF8 is always on")
            else:
                self._send(Reply.NOT_IMPLEMENTED_PARAMETER, "UTF8 cannot be turned off")
        elif option == "MLST":
            self.mlst_facts = listing.parse_opts_mlst(value)
            self._send(Reply.OK, "MLST OPTS " + "".join(f + ";" for f in self.mlst_facts))
        elif option == "HASH":
            if value.strip().upper() in ("", "SHA-256"):
                self._send(Reply.OK, "SHA-256")
            else:
                self._send(Reply.SYNTAX_ERROR_ARGS, "Only SHA-256 is supported")
        else:
            self._send(Reply.SYNTAX_ERROR_ARGS, f"Option {option} not understood")

    def ftp_HELP(self, argument: str) -> None:
        verb = argument.strip().upper()
        if verb:
            spec = COMMANDS.get(verb)
            if spec is None:
                self._send(
                    Reply.SYNTAX_ERROR_ARGS, f"Unknown command {parser.sanitize_reply_text(verb)}"
                )
            else:
                self._send(Reply.HELP, spec.help)
            return
        self._send_raw(
            format_multiline(
                Reply.HELP, "The following commands are recognized:", help_text(), "Help OK"
            )
        )

    def ftp_SITE(self, argument: str) -> None:
        if argument.strip().upper() == "HELP":
            self._send(Reply.HELP, "SITE HELP: no SITE commands are served")
        else:
            self._send(Reply.NOT_IMPLEMENTED, "SITE command not implemented")

    def ftp_STAT(self, argument: str) -> Deferred[Any] | None:
        if self.transfer is not None:
            transfer = self.transfer
            self._send(
                Reply.SYSTEM_STATUS,
                f"Transfer in progress: {transfer.verb} "
                f"{parser.sanitize_reply_text(transfer.path)}, "
                f"{transfer.bytes} bytes",
            )
            return None
        if argument:
            fs = self._filesystem()
            path = fs.resolve(self.cwd, _strip_list_options(argument))
            d = self._listing_lines(path, "LIST")
            d.addCallback(
                lambda lines: self._send_raw(
                    format_multiline(
                        Reply.FILE_STATUS, "Status follows:", [" " + line for line in lines], "End"
                    )
                )
            )
            d.addErrback(self._fs_error)
            return d
        state = [
            f" Connected from {self.peer}",
            f" Logged in as {self.username}" if self.username else " Not logged in",
            f" Control channel: {self._channel_text()}",
            f" Data protection: {'Private' if self.prot_private else 'Clear'}",
            f" Type: {'BINARY' if self.binary else 'ASCII'}; mode: Stream; structure: File",
        ]
        self._send_raw(
            format_multiline(Reply.SYSTEM_STATUS, "securetransport status:", state, "End of status")
        )
        return None

    def _channel_text(self) -> str:
        if not self.protected:
            return "clear"
        return f"TLS {getattr(self.handshake, 'tls_version', '')}"

    def ftp_TYPE(self, argument: str) -> None:
        kind = argument.strip().upper().split()
        if kind and kind[0] in ("I", "L"):
            if kind[0] == "L" and kind[1:] != ["8"]:
                self._send(Reply.NOT_IMPLEMENTED_PARAMETER, "Only TYPE L 8 is supported")
                return
            self.binary = True
            self._send(Reply.OK, "Type set to I")
        elif kind and kind[0] == "A" and kind[1:] in ([], ["N"]):
            self.binary = False
            self._send(Reply.OK, "Type set to A (bytes are transferred unchanged)")
        else:
            self._send(Reply.NOT_IMPLEMENTED_PARAMETER, "Type not supported")

    def ftp_MODE(self, argument: str) -> None:
        if argument.strip().upper() == "S":
            self._send(Reply.OK, "Mode set to S")
        else:
            self._send(Reply.NOT_IMPLEMENTED_PARAMETER, "Only stream mode is supported")

    def ftp_STRU(self, argument: str) -> None:
        if argument.strip().upper() == "F":
            self._send(Reply.OK, "Structure set to F")
        else:
            self._send(Reply.NOT_IMPLEMENTED_PARAMETER, "Only file structure is supported")

    def ftp_ALLO(self, argument: str) -> None:
        self._send(Reply.SUPERFLUOUS, "ALLO not needed")

    def ftp_REST(self, argument: str) -> None:
        text = argument.strip()
        if not (text.isascii() and text.isdigit()) or len(text) > 18:
            self._send(Reply.SYNTAX_ERROR_ARGS, "REST needs a non-negative byte offset")
            return
        self.rest = int(text)
        self._send(
            Reply.PENDING_FURTHER_INFO, f"Restarting at {self.rest}; send RETR, STOR or APPE"
        )

    # ----------------------------------------------------------------------------- paths
    def _filesystem(self) -> IFilesystem:
        assert self.fs is not None
        return self.fs

    def _resolve(self, argument: str) -> str:
        return self._filesystem().resolve(self.cwd, argument)

    def ftp_PWD(self, argument: str) -> None:
        self._send(Reply.PATH_CREATED, f"{parser.quote_path(self.cwd)} is the current folder")

    def ftp_CWD(self, argument: str) -> Deferred[Any]:
        path = self._resolve(argument)
        d = self._filesystem().stat(path)

        def changed(stat: Any) -> None:
            if not stat.is_dir:
                self._send(Reply.FILE_UNAVAILABLE, "Not a folder")
                return
            self.cwd = path
            self._send(
                Reply.FILE_ACTION_OK, f"Folder changed to {parser.sanitize_reply_text(path)}"
            )

        return d.addCallbacks(changed, self._fs_error)

    def ftp_CDUP(self, argument: str) -> Deferred[Any]:
        return self.ftp_CWD("..")

    def ftp_MKD(self, argument: str) -> Deferred[Any]:
        path = self._resolve(argument)
        d = self._filesystem().mkdir(path)
        d.addCallback(
            lambda _: self._send(Reply.PATH_CREATED, f"{parser.quote_path(path)} created")
        )
        return d.addErrback(self._fs_error)

    def ftp_RMD(self, argument: str) -> Deferred[Any]:
        path = self._resolve(argument)
        d = self._filesystem().rmdir(path)
        d.addCallback(lambda _: self._send(Reply.FILE_ACTION_OK, "Folder removed"))
        return d.addErrback(self._fs_error)

    def ftp_DELE(self, argument: str) -> Deferred[Any]:
        path = self._resolve(argument)
        d = self._filesystem().remove(path)
        d.addCallback(lambda _: self._send(Reply.FILE_ACTION_OK, "File deleted"))
        return d.addErrback(self._fs_error)

    def ftp_RNFR(self, argument: str) -> Deferred[Any]:
        path = self._resolve(argument)
        self.rnfr = None

        def found(_: Any) -> None:
            self.rnfr = path
            self._send(Reply.PENDING_FURTHER_INFO, "Ready for RNTO")

        return self._filesystem().stat(path).addCallbacks(found, self._fs_error)

    def ftp_RNTO(self, argument: str) -> Deferred[Any] | None:
        source, self.rnfr = self.rnfr, None
        if source is None:
            self._send(Reply.BAD_SEQUENCE, "RNFR first")
            return None
        target = self._resolve(argument)
        d = self._filesystem().rename(source, target)
        d.addCallback(lambda _: self._send(Reply.FILE_ACTION_OK, "Renamed"))
        return d.addErrback(self._fs_error)

    def ftp_SIZE(self, argument: str) -> Deferred[Any]:
        path = self._resolve(argument)

        def size(stat: Any) -> None:
            if stat.is_dir:
                self._send(Reply.FILE_UNAVAILABLE, "Not a regular file")
            else:
                self._send(Reply.FILE_STATUS, str(stat.size))

        return self._filesystem().stat(path).addCallbacks(size, self._fs_error)

    def ftp_MDTM(self, argument: str) -> Deferred[Any]:
        path = self._resolve(argument)

        def mdtm(stat: Any) -> None:
            self._send(Reply.FILE_STATUS, listing.format_mdtm(stat.mtime))

        return self._filesystem().stat(path).addCallbacks(mdtm, self._fs_error)

    def ftp_MFMT(self, argument: str) -> Deferred[Any] | None:
        stamp, _, name = argument.partition(" ")
        try:
            mtime = listing.parse_mfmt_time(stamp)
        except ValueError:
            self._send(Reply.SYNTAX_ERROR_ARGS, "MFMT needs YYYYMMDDHHMMSS and a path")
            return None
        if not name:
            self._send(Reply.SYNTAX_ERROR_ARGS, "MFMT needs YYYYMMDDHHMMSS and a path")
            return None
        path = self._resolve(name)
        d = self._filesystem().set_mtime(path, mtime)
        d.addCallback(
            lambda _: self._send(
                Reply.FILE_STATUS,
                f"Modify={listing.format_mdtm(mtime)}; {parser.sanitize_reply_text(name)}",
            )
        )
        return d.addErrback(self._fs_error)

    def ftp_HASH(self, argument: str) -> Deferred[Any]:
        path = self._resolve(argument)
        fs = self._filesystem()
        d = fs.stat(path)

        def digest(stat: Any) -> Deferred[Any]:
            if stat.is_dir:
                raise FilesystemError("Not a regular file")
            return fs.digest(path, 0, None).addCallback(
                lambda hexdigest: self._send(
                    Reply.FILE_STATUS,
                    f"SHA-256 0-{stat.size} {hexdigest} {parser.sanitize_reply_text(argument)}",
                )
            )

        return d.addCallback(digest).addErrback(self._fs_error)

    def ftp_MLST(self, argument: str) -> Deferred[Any]:
        path = self._resolve(argument or ".")

        def facts(stat: Any) -> None:
            line = listing.format_mlst_reply_line(
                stat, self.mlst_facts, name=path, writable=not self._read_only()
            )
            self._send_raw(
                format_multiline(
                    Reply.FILE_ACTION_OK,
                    "Listing " + parser.sanitize_reply_text(path),
                    [line],
                    "End",
                )
            )

        return self._filesystem().stat(path).addCallbacks(facts, self._fs_error)

    def _read_only(self) -> bool:
        return bool(getattr(self.avatar, "read_only", False))

    # ----------------------------------------------------------------------------- data set-up
    def _data_tls(self) -> DataTLS | None:
        if not self.prot_private:
            return None
        from securetransport.tls.groups import DataConnectionCreator

        creator = DataConnectionCreator(
            self._session_context(),
            self.handshake,
            self.klass.session_reuse if self.klass is not None else "required",
            self.reuse_member,
            self.server.reuse_groups,
            self.reactor,
            self._sibling_logging_in,
        )

        def check(connection: Any) -> str | None:
            result = creator.check(connection)
            info = result.info
            self.server.audit.event(
                "tls",
                session=self.session_id,
                channel="data",
                version=info.tls_version,
                cipher=info.cipher,
                resumed=info.resumed,
                sibling=result.sibling,
                accepted=result.problem is None,
            )
            return result.problem

        return DataTLS(creator, check)

    def _sibling_logging_in(self) -> bool:
        """A TLS control connection from this address has yet to log in ("account" reuse)."""
        return any(
            other.peer == self.peer and other.protected and other.avatar is None
            for other in self.server.open_sessions
            if other is not self and not other.closing
        )

    def _new_channel(self) -> DataChannel:
        if self.data is not None:
            self.data.close()
        self.data = DataChannel(
            self.reactor, self.peer, self._data_tls(), self.config.server.data_timeout
        )
        return self.data

    def _listen_passive(self) -> int | None:
        channel = self._new_channel()
        interface = self.local_host
        try:
            return channel.listen_passive(
                lambda factory: self.server.passive.listen(factory, interface)
            )
        except NoPassivePort:
            self.data = None
            self._send(Reply.CANT_OPEN_DATA, "No passive port free; try again")
            return None

    def ftp_PASV(self, argument: str) -> None:
        if self.epsv_all:
            self._send(Reply.BAD_SEQUENCE, "EPSV ALL in effect; use EPSV")
            return
        announced = self.config.passive.address or normalize_address(self.local_host)
        if ":" in announced:
            self._send(Reply.NOT_IMPLEMENTED_PARAMETER, "PASV is for IPv4; use EPSV")
            return
        port = self._listen_passive()
        if port is not None:
            self._send(Reply.PASSIVE, addresses.format_pasv_reply(announced, port))

    def ftp_EPSV(self, argument: str) -> None:
        try:
            mode = addresses.parse_epsv_argument(argument or None)
        except addresses.AddressError as error:
            self._send(error.code, error.text)
            return
        if isinstance(mode, int) and mode != addresses.network_protocol(self.local_host):
            self._send(
                Reply.NETWORK_PROTOCOL_NOT_SUPPORTED,
                "Network protocol not supported, use "
                f"({addresses.network_protocol(self.local_host)})",
            )
            return
        if mode == "ALL":
            self.epsv_all = True
            self._send(Reply.OK, "EPSV ALL ok")
            return
        port = self._listen_passive()
        if port is not None:
            self._send(Reply.EXTENDED_PASSIVE, addresses.format_epsv_reply(port))

    def _active(self, verb: str, argument: str) -> None:
        if self.epsv_all:
            self._send(Reply.BAD_SEQUENCE, "EPSV ALL in effect; use EPSV")
            return
        try:
            if verb == "PORT":
                host, port = addresses.parse_port(argument)
            else:
                host, port = addresses.parse_eprt(argument)
        except addresses.AddressError as error:
            self._send(error.code, error.text)
            return
        refused = addresses.check_active_target(host, port, self.peer, verb)
        if refused is not None:
            log.warn(
                "{peer}: {verb} to {host}:{port} refused",
                peer=self.peer,
                verb=verb,
                host=host,
                port=port,
            )
            self._send(refused.code, refused.text)
            return
        channel = self._new_channel()
        channel.set_active(host, port, normalize_address(self.local_host))
        self._send(Reply.OK, f"{verb} command successful")

    def ftp_PORT(self, argument: str) -> None:
        self._active("PORT", argument)

    def ftp_EPRT(self, argument: str) -> None:
        self._active("EPRT", argument)

    # ----------------------------------------------------------------------------- transfers
    def _data_allowed(self) -> bool:
        if self.data is None:
            self._send(Reply.CANT_OPEN_DATA, "Use PASV, EPSV, PORT or EPRT first")
            return False
        # The data set-up's own protection decides (it was fixed at PASV/PORT), not the
        # PROT level now: PROT C, PASV, PROT P must not open a clear transfer.
        clear = self.data.tls is None
        if self.klass is not None and self.klass.ssl == "mandatory" and clear:
            self.data.close()
            self.data = None
            self._send(
                Reply.PROT_NOT_ALLOWED, "Data protection required for this account: use PROT P"
            )
            return False
        return True

    def _run_transfer(
        self,
        verb: str,
        path: str,
        prepare: Callable[[], Deferred[Any]],
        run: Callable[[Any, DataConnection, _Transfer], Deferred[tuple[int, str]]],
        cleanup: Callable[[Any, bool], Deferred[Any] | None],
    ) -> Deferred[Any] | None:
        """Open the resource, then the data connection, run the transfer and reply."""
        if not self._data_allowed():
            return None
        channel = self.data
        assert channel is not None
        self.data = None
        transfer = _Transfer(verb, path, channel)
        self.transfer = transfer
        result: Deferred[Any] = Deferred()

        def finish(code: int, text: str) -> None:
            if self.transfer is transfer:
                self.transfer = None
            if not transfer.aborted:
                self._send(code, text)
            channel.close()
            result.callback(None)

        def prepared(resource: Any) -> Deferred[Any] | None:
            if transfer.aborted or self.closing:
                # ABOR (or a disconnect) came while the file was being opened.
                cleaned = cleanup(resource, False)
                if isinstance(cleaned, Deferred):
                    return cleaned.addBoth(lambda _: finish(Reply.TRANSFER_ABORTED, "Aborted"))
                finish(Reply.TRANSFER_ABORTED, "Aborted")
                return None
            channel.expect("receive" if verb in ("STOR", "APPE", "STOU") else "send")
            announced = False
            if not channel.settled_before_command():
                self._send(Reply.OPENING_DATA, f"Opening data connection for {verb}")
                announced = True
            opened = channel.open()

            def connected(connection: DataConnection) -> Deferred[Any]:
                transfer.connection = connection
                self._watch_progress(transfer, -1)
                if not announced:
                    self._send(Reply.OPENING_DATA, f"Opening data connection for {verb}")
                return run(resource, connection, transfer)

            def done(outcome: Any) -> Deferred[Any] | None:
                if isinstance(outcome, Failure):
                    ok = False
                    error = outcome.value
                    if isinstance(error, DataError):
                        code, text = error.code, error.text
                    elif isinstance(error, FilesystemError):
                        code, text = error.code, parser.sanitize_reply_text(error.message)
                    else:
                        log.failure("transfer failed", outcome)
                        code, text = Reply.LOCAL_ERROR, "Transfer failed: local error"
                else:
                    code, text = outcome
                    ok = code == Reply.TRANSFER_COMPLETE
                    if transfer.aborted:
                        ok = False
                if transfer.stalled:
                    ok = False
                    code, text = Reply.TRANSFER_ABORTED, "Data connection timed out"
                if transfer.watchdog is not None and transfer.watchdog.active():
                    transfer.watchdog.cancel()
                seconds = time.monotonic() - transfer.started
                cleaned = cleanup(resource, ok)

                def report(_: object = None) -> None:
                    self._record_transfer(transfer, ok, seconds, code)
                    finish(code, text)
                    self._count_tls_refusal(code)

                if isinstance(cleaned, Deferred):

                    def cleanup_failed(failure: Failure) -> None:
                        nonlocal code, text, ok
                        ok = False
                        error = failure.value
                        if isinstance(error, FilesystemError):
                            code, text = error.code, parser.sanitize_reply_text(error.message)
                        else:
                            log.failure("finishing a transfer failed", failure)
                            code, text = Reply.LOCAL_ERROR, "Transfer failed: local error"

                    cleaned.addErrback(cleanup_failed).addCallback(report)
                    return cleaned
                report()
                return None

            opened.addCallback(connected).addBoth(done)
            return None

        def not_prepared(failure: Failure) -> None:
            error = failure.value
            self.transfer = None
            channel.close()
            if isinstance(error, FilesystemError):
                self._send(error.code, parser.sanitize_reply_text(error.message))
            else:
                log.failure("cannot start {verb}", failure, verb=verb)
                self._send(Reply.LOCAL_ERROR, "Local error")
            result.callback(None)

        def unexpected(failure: Failure) -> None:
            log.failure("{verb} failed", failure, verb=verb)
            if self.transfer is transfer:
                self.transfer = None
            channel.close()
            if not result.called:
                self._send(Reply.LOCAL_ERROR, "Local error")
                result.callback(None)

        try:
            started = prepare()
        except FilesystemError as error:
            started = defer.fail(error)
        started.addCallbacks(prepared, not_prepared).addErrback(unexpected)
        return result

    def _count_tls_refusal(self, code: int) -> None:
        """Close a session that keeps retrying data connections we refuse (522)."""
        if code != Reply.DATA_TLS_FAILED:
            self.data_tls_refusals = 0
            return
        self.data_tls_refusals += 1
        if self.data_tls_refusals >= MAX_DATA_TLS_REFUSALS and not self.closing:
            self._send(Reply.SERVICE_UNAVAILABLE, "Too many refused data connections; closing")
            self._close()

    def _watch_progress(self, transfer: _Transfer, last: int, since: float | None = None) -> None:
        """Abort the transfer when no byte moved for `data_timeout` seconds.

        Checked ten times per `data_timeout`, so a stall is caught within 10% of it.
        """
        if self.transfer is not transfer or transfer.connection is None:
            return
        now = self.reactor.seconds()
        timeout = self.config.server.data_timeout
        moved = transfer.bytes
        if moved != last or since is None:
            since = now
        elif now - since >= timeout:
            transfer.stalled = True
            transfer.connection.abort()
            return
        transfer.watchdog = self.reactor.callLater(
            timeout / 10, self._watch_progress, transfer, moved, since
        )

    def _record_transfer(self, transfer: _Transfer, ok: bool, seconds: float, code: int) -> None:
        connection = transfer.connection
        size = 0
        if connection is not None:
            size = (
                connection.bytes_sent
                if transfer.verb in ("RETR", "LIST", "NLST", "MLSD")
                else connection.bytes_received
            )
        if transfer.verb in ("LIST", "NLST", "MLSD"):
            return
        direction = "download" if transfer.verb == "RETR" else "upload"
        self.server.audit.event(
            "transfer",
            session=self.session_id,
            user=self.username,
            command=transfer.verb,
            path=transfer.path,
            bytes=size,
            seconds=round(seconds, 3),
            direction=direction,
            result="ok" if ok else "failed",
            reply=int(code),
            protected=transfer.protected,
        )
        self.server.xferlog.transfer(
            seconds=seconds,
            host=self.peer,
            size=size,
            path=transfer.path,
            binary=self.binary,
            direction="o" if transfer.verb == "RETR" else "i",
            user=self.username or "-",
            completed=ok,
        )

    def ftp_RETR(self, argument: str) -> Deferred[Any] | None:
        path = self._resolve(argument)
        fs = self._filesystem()
        offset, self.rest = self.rest, 0

        def prepare() -> Deferred[Any]:
            return fs.open_read(path)

        def run(
            handle: Any, connection: DataConnection, transfer: _Transfer
        ) -> Deferred[tuple[int, str]]:
            if offset > handle.size:
                raise DataError(Reply.BAD_RESTART, "Restart offset beyond the end of the file")
            sender: Any
            runtime = self.server
            if (
                connection.tls is None
                and hasattr(self.reactor, "getThreadPool")
                and runtime.sendfile_active < SENDFILE_THREADS
            ):
                # sendfile holds a thread of the reactor's pool for the whole transfer:
                # a few at a time; further clear downloads stream from the files pool.
                sender = SendfileSender(handle, connection, offset, self.reactor)
                runtime.sendfile_active += 1
                started = sender.start()

                def release(result: object) -> object:
                    runtime.sendfile_active -= 1
                    return result

                started.addBoth(release)
            else:
                sender = FileSender(handle, connection, offset)
                started = sender.start()
            finished: Deferred[bool] = started.addCallback(lambda _: connection.finish())
            return finished.addCallback(_sent_result)

        def cleanup(handle: Any, ok: bool) -> None:
            handle.close()

        return self._run_transfer("RETR", path, prepare, run, cleanup)

    def _upload(
        self, verb: str, argument: str, *, append: bool = False, unique: bool = False
    ) -> Deferred[Any] | None:
        fs = self._filesystem()
        path = self._resolve(argument)
        offset, self.rest = self.rest, 0

        def prepare() -> Deferred[Any]:
            return fs.open_upload(path, offset=offset, append=append, unique=unique)

        def run(
            upload: Any, connection: DataConnection, transfer: _Transfer
        ) -> Deferred[tuple[int, str]]:
            transfer.path = upload.path
            receiver = FileReceiver(upload, connection)

            def closed(clean: bool) -> tuple[int, str]:
                if receiver.error is not None:
                    receiver.error.raiseException()
                if transfer.aborted:
                    return Reply.TRANSFER_ABORTED, "Transfer aborted"
                if not clean:
                    if transfer.protected:
                        return (
                            Reply.TRANSFER_ABORTED,
                            "Upload ended without TLS close_notify: "
                            "transfer failed, file not stored",
                        )
                    return Reply.TRANSFER_ABORTED, "Connection lost; transfer aborted"
                name = parser.sanitize_reply_text(upload.path)
                if unique:
                    return Reply.TRANSFER_COMPLETE, f"Transfer complete; stored as {name}"
                return Reply.TRANSFER_COMPLETE, "Transfer complete"

            return receiver.start().addCallback(closed)

        def cleanup(upload: Any, ok: bool) -> Deferred[Any]:
            return upload.commit() if ok else upload.abort()

        return self._run_transfer(verb, path, prepare, run, cleanup)

    def ftp_STOR(self, argument: str) -> Deferred[Any] | None:
        return self._upload("STOR", argument)

    def ftp_APPE(self, argument: str) -> Deferred[Any] | None:
        return self._upload("APPE", argument, append=True)

    def ftp_STOU(self, argument: str) -> Deferred[Any] | None:
        return self._upload("STOU", argument or "file", unique=True)

    def _listing_lines(self, path: str, verb: str) -> Deferred[list[str]]:
        fs = self._filesystem()
        now = time.time()  # calendar time for ls dates ("recent" vs year), not the reactor clock
        writable = not self._read_only()

        def render(stats: Any, single: bool) -> list[str]:
            if verb == "NLST":
                if single:
                    return [path]
                return [listing.format_nlst_line(stat) for stat in stats]
            if verb == "MLSD":
                return [
                    listing.format_mlsx_facts(stat, self.mlst_facts, writable=writable)
                    for stat in stats
                ]
            return [listing.format_list_line(stat, now) for stat in stats]

        def stat_done(stat: Any) -> Deferred[list[str]] | list[str]:
            if stat.is_dir:
                return fs.listdir(path).addCallback(render, False)
            if verb == "MLSD":
                raise FilesystemError("Not a folder")
            return render([stat], True)

        return fs.stat(path).addCallback(stat_done)

    def _list(self, verb: str, argument: str) -> Deferred[Any] | None:
        target = _strip_list_options(argument) if verb in ("LIST", "NLST") else argument
        path = self._resolve(target or ".")

        def prepare() -> Deferred[Any]:
            return self._listing_lines(path, verb)

        def run(
            lines: list[str], connection: DataConnection, transfer: _Transfer
        ) -> Deferred[tuple[int, str]]:
            payload = "".join(line + "\r\n" for line in lines).encode("utf-8")
            if payload:
                connection.write(payload)
            return connection.finish().addCallback(_sent_result)

        return self._run_transfer(verb, path, prepare, run, lambda resource, ok: None)

    def ftp_LIST(self, argument: str) -> Deferred[Any] | None:
        return self._list("LIST", argument)

    def ftp_NLST(self, argument: str) -> Deferred[Any] | None:
        return self._list("NLST", argument)

    def ftp_MLSD(self, argument: str) -> Deferred[Any] | None:
        return self._list("MLSD", argument)

    def ftp_ABOR(self, argument: str) -> None:
        if self.transfer is not None:
            self._abort_transfer()
            self._send(Reply.TRANSFER_ABORTED, "Transfer aborted")
            self._send(Reply.TRANSFER_COMPLETE, "ABOR successful")
            return
        if self.data is not None:
            self.data.close()
            self.data = None
        self._send(Reply.DATA_OPEN_NO_TRANSFER, "ABOR successful; no transfer in progress")

    def _abort_transfer(self) -> None:
        transfer = self.transfer
        if transfer is None:
            return
        transfer.aborted = True
        if transfer.watchdog is not None and transfer.watchdog.active():
            transfer.watchdog.cancel()
        if transfer.connection is not None:
            transfer.connection.abort()
        if transfer.channel is not None:
            transfer.channel.close()


def _urgent(command: parser.Command) -> bool:
    spec = COMMANDS.get(command.verb)
    # STAT with a path is a listing: it waits for the transfer like other commands.
    return (
        spec is not None
        and spec.during_transfer
        and not (command.verb == "STAT" and command.argument)
    )


def _first_error(failure: Failure) -> Failure:
    """gatherResults wraps the first failure in a FirstError: unwrap it."""
    return getattr(failure.value, "subFailure", failure)  # type: ignore[no-any-return]


def _sent_result(clean: bool) -> tuple[int, str]:
    if clean:
        return Reply.TRANSFER_COMPLETE, "Transfer complete"
    return Reply.TRANSFER_ABORTED, "Connection closed; transfer aborted"


def _strip_list_options(argument: str) -> str:
    """`LIST -la dir` -> `dir`: clients send ls options, which we ignore."""
    words = argument.split(" ")
    while words and words[0].startswith("-") and len(words[0]) > 1:
        words.pop(0)
    return " ".join(words)


def _empty_trust() -> Any:
    from securetransport.tls.verify import load_trust_store

    return load_trust_store(None, ())


class FTPFactory(Factory):
    """Builds a session per control connection; `implicit` for implicit-FTPS listeners."""

    def __init__(self, server: ServerRuntime, implicit: bool = False) -> None:
        self.server = server
        self.implicit = implicit

    def buildProtocol(self, addr: Any) -> FTPSession:
        session = FTPSession(self.server, self.implicit)
        session.factory = self
        return session
