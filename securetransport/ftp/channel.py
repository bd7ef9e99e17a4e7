"""The seam between the FTP engine and the client's sockets.

The engine (state, login, decisions, files) reaches its client only through
`IControlChannel`: send bytes, start TLS, set up a data connection (passive or active),
close. It learns about the client through `ClientFacts` and `HandshakeInfo` values,
never through a socket or a TLS object. `LocalControlChannel` is the implementation on
a Twisted transport in this process; an edge link is the other one (SPEC section 8).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress
from zope.interface import Attribute, Interface, implementer

from securetransport.client import normalize_address
from securetransport.config import SessionReuse
from securetransport.ftp.data import DataChannel, DataTLS, set_no_delay
from securetransport.runtime import ServerRuntime
from securetransport.tls.context import connection_creator, handshake_info
from securetransport.tls.facts import HandshakeInfo
from securetransport.tls.groups import DataConnectionCreator, GroupMember
from securetransport.tls.membio import renew_idle_bios

# What the channel reports after a protected data connection's handshake and binding
# check (tls.groups: resumed from this control session, or from a sibling's in an
# "account" class): the handshake's facts, whether a sibling's session was used, and the
# 522 text or None. The engine audits it.
DataReport = Callable[[HandshakeInfo, bool, str | None], None]


class IControlChannel(Interface):
    """What the engine may do to its client's control connection."""

    peer = Attribute("str: the client's address, normalized (IPv4-mapped IPv6 as IPv4)")
    peer_port = Attribute("int: the client's port")
    local_host = Attribute("str: the address the client connected to")
    local_port = Attribute("int: the port the client connected to")
    announced = Attribute(
        "str: the passive address this channel's side announces (an edge's), or empty"
    )

    def send(data: bytes) -> None:
        """Queue bytes for the client."""

    def start_tls() -> None:
        """Start TLS as the server on this session's own context, dropping whatever the
        client sent after the command that asked for it (STARTTLS command injection);
        the engine hears `tls_up(HandshakeInfo)` when the handshake has completed."""

    def session_ready() -> bool:
        """True when TLS can be offered (the server has [tls] material)."""

    def pause_reading() -> None:
        """Read no more from the client until `resume_reading`."""

    def resume_reading() -> None:
        """Read from the client again."""

    def close() -> None:
        """Close once what was sent has gone out (TLS: close_notify first)."""

    def abort() -> None:
        """Close at once, sending nothing more."""

    def join_reuse_group(account: str) -> None:
        """Logged in to an "account" class: this control session's TLS sessions may be
        resumed by data connections of the same account and address (SPEC section 5)."""

    def leave_reuse_group() -> None:
        """Logged out or closing: take this control session out of its group."""

    def passive_data(
        reuse: SessionReuse | None, report: DataReport, timeout: float
    ) -> tuple[DataChannel, int] | Deferred[tuple[DataChannel, int]]:
        """Listen for one data connection from the client's address; the set-up and
        the port, or a Deferred firing with them (an edge opens the port at its end).
        `reuse`: the class's session_reuse for protected data, None for clear.
        Raises (or fails with) ftp.passive.NoPassivePort when no port is free."""

    def active_data(
        reuse: SessionReuse | None, report: DataReport, timeout: float, host: str, port: int
    ) -> DataChannel:
        """A data connection the server will make to host:port (already validated)."""


@implementer(IControlChannel)
class LocalControlChannel:
    """A control connection on a Twisted transport in this process."""

    announced = ""  # PASV announces [passive] address, or the address the client reached

    via: str | None = None  # an edge link's channel names its edge (audit "via")

    def __init__(
        self,
        transport: Any,
        runtime: ServerRuntime,
        drop_input: Callable[[], None],
        sibling_logging_in: Callable[[], bool],
    ) -> None:
        self.transport = transport
        self.runtime = runtime
        self.drop_input = drop_input  # forgets lines received but not yet served
        # True while a TLS control connection from this address has yet to log in.
        self.sibling_logging_in = sibling_logging_in
        self._handshake: HandshakeInfo | None = None
        self._member: GroupMember | None = None
        peer: IAddress = transport.getPeer()
        host: IAddress = transport.getHost()
        self.peer = normalize_address(peer.host)  # type: ignore[attr-defined]
        self.peer_port = int(peer.port)  # type: ignore[attr-defined]
        self.local_host = str(host.host)  # type: ignore[attr-defined]
        self.local_port = int(host.port)  # type: ignore[attr-defined]
        self._context: SSL.Context | None = None

    def tune(self) -> None:
        """TCP_NODELAY (no Nagle stalls), and SO_OOBINLINE so an urgent ABOR stays in the stream."""
        set_no_delay(self.transport, urgent_inline=True)

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    def session_ready(self) -> bool:
        return self.runtime.tls is not None

    def _session_context(self) -> SSL.Context:
        if self._context is None:
            tls = self.runtime.tls
            assert tls is not None
            self._context = tls.contexts.new_session_context()
        return self._context

    def start_tls(self) -> None:
        # Anything pipelined after AUTH in the same packet came in clear: drop it.
        self.drop_input()
        self.transport.startTLS(connection_creator(self._session_context()))

    def handshake_done(self) -> HandshakeInfo:
        """The control handshake has completed (explicit or implicit port): its facts."""
        connection = self.transport.getHandle()
        if self._context is None:
            self._context = connection.get_context()  # implicit: the listener made it
        self._handshake = handshake_info(connection)
        # Once Twisted has flushed the handshake's last flight, its buffers can go.
        self.runtime.reactor.callLater(0, renew_idle_bios, connection)
        return self._handshake

    def join_reuse_group(self, account: str) -> None:
        assert self._handshake is not None
        self._member = self.runtime.reuse_groups.join(
            self.peer,
            account,
            self._session_context(),
            self.transport.getHandle(),
            self._handshake,
        )

    def leave_reuse_group(self) -> None:
        if self._member is not None:
            member, self._member = self._member, None
            self.runtime.reuse_groups.leave(member)

    def register_producer(self, producer: Any) -> None:
        self.transport.registerProducer(producer, True)

    def pause_reading(self) -> None:
        self.transport.pauseProducing()

    def resume_reading(self) -> None:
        self.transport.resumeProducing()

    def close(self) -> None:
        self.transport.loseConnection()

    def abort(self) -> None:
        self.transport.abortConnection()

    def _data_tls(self, reuse: SessionReuse | None, report: DataReport) -> DataTLS | None:
        if reuse is None:
            return None
        assert self._handshake is not None  # data is protected under a protected control
        creator = DataConnectionCreator(
            self._session_context(),
            self._handshake,
            reuse,
            self._member,
            self.runtime.reuse_groups,
            self.runtime.reactor,
            self.sibling_logging_in,
        )

        def check(connection: SSL.Connection) -> str | None:
            result = creator.check(connection)
            report(result.info, result.sibling, result.problem)
            return result.problem

        return DataTLS(creator, check)

    def passive_data(
        self, reuse: SessionReuse | None, report: DataReport, timeout: float
    ) -> tuple[DataChannel, int]:
        channel = DataChannel(
            self.runtime.reactor, self.peer, self._data_tls(reuse, report), timeout
        )
        interface = self.local_host
        port = channel.listen_passive(
            lambda factory: self.runtime.passive.listen(factory, interface)
        )
        return channel, port

    def active_data(
        self, reuse: SessionReuse | None, report: DataReport, timeout: float, host: str, port: int
    ) -> DataChannel:
        channel = DataChannel(
            self.runtime.reactor, self.peer, self._data_tls(reuse, report), timeout
        )
        channel.set_active(host, port, normalize_address(self.local_host))
        return channel
