"""The edge (SPEC section 8): the clients' sockets and TLS, relayed to the server.

The edge listens for its server's link connections (mutual TLS 1.3) and keeps the idle
ones in a pool; each client connection (control or data) takes one for its whole life,
and gives it back when it ends (CLOSE, answered by the server's RESET).
It makes no decision: the server's engine answers every command, and the edge applies
the settings the server pushed (SETTINGS) before it serves anyone. What the edge does
on its own is what needs the sockets: TLS handshakes on a per-session context, the
data connection's binding check (resumed from this control session, next to both
sockets), and dropping what a client pipelined after AUTH TLS.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from twisted.application.service import MultiService
from twisted.internet import error as netError
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener, IListeningPort, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from securetransport.client import normalize_address
from securetransport.config import Config, SessionReuse
from securetransport.edge.link import (
    Frame,
    FrameError,
    LinkProtocol,
    decode_json,
    info_to_json,
    link_tls_options,
    peer_common_name,
)
from securetransport.edge.settings import apply_settings, digest_of
from securetransport.ftp.data import (
    DataChannel,
    DataConnection,
    DataError,
    DataTLS,
    set_no_delay,
)
from securetransport.ftp.passive import NoPassivePort, PassivePortProvider
from securetransport.ftp.tls_pump import TLSFileReceiver, TLSPump, TLSQueueSender
from securetransport.tls.context import (
    ServerCredentials,
    SessionContextFactory,
    connection_creator,
    handshake_info,
)
from securetransport.tls.facts import HandshakeInfo
from securetransport.tls.groups import DataConnectionCreator

log = Logger(namespace="securetransport.edge.relay")

NO_LINK_REPLY = b"421 Service not available: no link to the server; try again later\r\n"
LINK_LOST_REPLY = b"421 Connection to the server lost; closing\r\n"
LINK_WAIT = 5.0  # seconds a client waits for a link connection when the pool ran dry
PUMP_AFTER = 256 * 1024  # relayed bytes after which a protected transfer goes to a thread


@implementer(IPushProducer)
class _Pauser:
    """Registered on one transport: pauses reading on another (back-pressure)."""

    def __init__(self, pause: Any, resume: Any) -> None:
        self.pauseProducing = pause
        self.resumeProducing = resume

    def stopProducing(self) -> None:  # noqa: N802
        pass


class EdgeLink(LinkProtocol):
    """One link connection the server dialled; idle in the pool until a client takes it."""

    def __init__(self, edge: EdgeService) -> None:
        super().__init__(edge.reactor)
        self.edge = edge
        self.client: EdgeControl | EdgeData | _Closed | None = None
        self.ready = False  # settings applied
        self.congested = False  # the link's send buffer is full
        self._room_waiters: list[Deferred[None]] = []
        self._pause_client: Callable[[], None] = lambda: None
        self._resume_client: Callable[[], None] = lambda: None
        self.gone: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        super().connectionMade()
        self.edge.links.add(self)

    def frame_received(self, kind: Frame, payload: bytes) -> None:
        if kind is Frame.SETTINGS:
            if self.client is not None:
                raise FrameError("SETTINGS on a link connection in use")
            self.edge.apply(decode_json(payload), peer_common_name(self.transport))
            if not self.ready:
                self.ready = True
                self.edge.link_ready(self)
            return
        if kind is Frame.RESET:
            if not isinstance(self.client, _Closed):
                raise FrameError("RESET on a link connection not released")
            self.client = None
            self.edge.link_ready(self)
            return
        if self.client is None:
            raise FrameError(f"{kind.name} on an idle link connection")
        self.client.link_frame(kind, payload)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        super().connectionLost(reason)
        if self in self.edge.idle:
            self.edge.idle.remove(self)
        if not self.ready and reason is not None and not reason.check(netError.ConnectionDone):
            log.warn("link connection refused or failed: {why}", why=reason.getErrorMessage())
        self.edge.links.discard(self)
        client, self.client = self.client, None
        if client is not None:
            client.link_lost()
        self._link_room()  # nothing waits on a dead link
        self.gone.callback(None)

    def bind(
        self,
        client: EdgeControl | EdgeData | _Closed,
        transport: Any,
        pause: Callable[[], None] | None = None,
        resume: Callable[[], None] | None = None,
    ) -> None:
        """A client connection takes this link connection: back-pressure both ways.
        `pause`/`resume`: how to stop reading the client (default: its transport's)."""
        self.client = client
        self.congested = False
        self._pause_client = pause or transport.pauseProducing
        self._resume_client = resume or transport.resumeProducing
        link: Any = self.transport
        assert link is not None
        # The link slow: stop reading the client. The client slow: stop reading the link.
        link.registerProducer(_Pauser(self._link_full, self._link_room), True)
        transport.registerProducer(_Pauser(self.pause_link, self.resume_link), True)

    def _link_full(self) -> None:
        self.congested = True
        self._pause_client()

    def _link_room(self) -> None:
        self.congested = False
        self._resume_client()
        waiting, self._room_waiters = self._room_waiters, []
        for waiter in waiting:
            waiter.callback(None)

    def send_with_room(self, data: bytes) -> Deferred[None]:
        """Send client bytes; the Deferred fires when the link can take more."""
        self.send_data(data)
        waiter: Deferred[None] = Deferred()
        if self.congested and not self.lost:
            self._room_waiters.append(waiter)
        else:
            waiter.callback(None)
        return waiter

    def release(self, clean: bool) -> None:
        """The client connection is gone: CLOSE to the server, then wait for its RESET
        (frames sent for the old client connection until then are dropped)."""
        self.client = _Closed()
        self._pause_client = self._resume_client = lambda: None
        waiting, self._room_waiters = self._room_waiters, []
        for waiter in waiting:  # nothing of the old client connection waits on the next one
            waiter.callback(None)
        if self.transport is None or self.lost:
            return
        link: Any = self.transport
        link.unregisterProducer()
        self.send_json(Frame.CLOSE, {"clean": clean})
        self.resume_link()


@implementer(IHandshakeListener)
class EdgeControl(Protocol):
    """A client's control connection at the edge."""

    def __init__(self, edge: EdgeService, implicit: bool, local: tuple[str, int]) -> None:
        self.edge = edge
        self.implicit = implicit
        self.local = local
        self.link: EdgeLink | None = None
        self.context: SSL.Context | None = None
        self.control_info: HandshakeInfo | None = None
        self.tls_pending = False
        self.passive: dict[str, EdgePassive] = {}
        self.peer = ""
        self.peer_port = 0
        self.closed = False

    def connectionMade(self) -> None:
        set_no_delay(self.transport, urgent_inline=True)  # as the server does for its own
        self.edge.clients.add(self)
        peer: Any = self.transport.getPeer()  # type: ignore[union-attr]
        self.peer = normalize_address(peer.host)
        self.peer_port = int(peer.port)
        # Nothing is read until the server has the session: on an implicit port no byte of
        # the ClientHello (so no handshake) before the server accepts it; on an explicit
        # one nothing is lost while a link connection is on its way.
        self.transport.pauseProducing()  # type: ignore[union-attr]
        self.edge.request_link(self._got_link)

    def _got_link(self, link: EdgeLink | None) -> None:
        transport: Any = self.transport
        if self.closed:
            if link is not None:
                self.edge.link_ready(link)  # the client left while waiting: not used
            return
        if link is None:
            log.info("{peer}: no link to the server: refused", peer=self.peer)
            if not self.implicit:
                transport.write(NO_LINK_REPLY)
            transport.loseConnection()  # implicit: nothing read, closed before the handshake
            return
        self.link = link
        link.bind(self, transport)
        link.send_json(
            Frame.OPEN,
            {
                "kind": "control",
                "address": self.peer,
                "port": self.peer_port,
                "local_host": self.local[0],
                "local_port": self.local[1],
                "announce": self.edge.config.passive.address or self.local[0],
                "tls": "implicit" if self.implicit else "explicit",
                "tls_ready": self.edge.own is not None,
            },
        )
        if not self.implicit:
            transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.link is None or self.tls_pending:
            return  # read in clear after AUTH TLS: never relayed
        self.link.send_data(data)

    def handshakeCompleted(self) -> None:  # noqa: N802
        connection = self.transport.getHandle()  # type: ignore[union-attr]
        if self.context is None:
            self.context = connection.get_context()  # implicit: the listener made it
        self.control_info = handshake_info(connection)
        self.tls_pending = False
        if self.link is not None:
            self.link.send_json(Frame.TLS_UP, info_to_json(self.control_info))

    def link_frame(self, kind: Frame, payload: bytes) -> None:
        transport: Any = self.transport
        if self.implicit and self.context is None and kind is not Frame.CLOSE:
            # The server accepted the session (its greeting comes): TLS from now on.
            assert self.edge.contexts is not None
            self.context = self.edge.contexts.new_session_context()
            transport.startTLS(connection_creator(self.context))
            transport.resumeProducing()
        if kind is Frame.DATA:
            transport.write(payload)
        elif kind is Frame.START_TLS:
            assert self.edge.contexts is not None
            self.tls_pending = True
            self.context = self.edge.contexts.new_session_context()
            transport.startTLS(connection_creator(self.context))
        elif kind is Frame.LISTEN:
            self._listen(decode_json(payload))
        elif kind is Frame.CONNECT:
            self._connect(decode_json(payload))
        elif kind is Frame.UNLISTEN:
            passive = self.passive.get(str(decode_json(payload).get("token")))
            if passive is not None:
                passive.drop()
        elif kind is Frame.EXPECT:
            value = decode_json(payload)
            passive = self.passive.get(str(value.get("token")))
            if passive is not None:
                passive.channel.expect(str(value.get("direction")))
        elif kind is Frame.CLOSE:
            if decode_json(payload).get("how") == "abort":
                transport.abortConnection()
            else:
                # TLS shuts down (close_notify) only once no producer is registered.
                transport.unregisterProducer()
                transport.loseConnection()
        else:
            raise FrameError(f"unexpected frame {kind.name} on a control link")

    def _listen(self, value: dict[str, Any]) -> None:
        token = str(value.get("token", ""))
        reuse: SessionReuse | None = value.get("reuse")
        timeout = float(value.get("timeout", 120))
        assert self.link is not None
        try:
            passive = EdgePassive(self, token, reuse, timeout)
        except NoPassivePort as error:
            self.link.send_json(Frame.LISTENING, {"token": token, "error": str(error)})
            return
        self.passive[token] = passive
        self.link.send_json(Frame.LISTENING, {"token": token, "port": passive.port})

    def _connect(self, value: dict[str, Any]) -> None:
        """PORT/EPRT: the server validated the target; the edge connects from its address."""
        token = str(value.get("token", ""))
        reuse: SessionReuse | None = value.get("reuse") if value.get("protected") else None
        try:
            target = (str(value["host"]), int(value["port"]))
        except (KeyError, ValueError) as error:
            raise FrameError(f"bad CONNECT: {error}") from None
        try:
            active = EdgePassive(
                self,
                token,
                reuse,
                float(value.get("timeout", 120)),
                target=target,
                direction=value.get("direction"),
            )
        except NoPassivePort:
            return  # the server's own timeout answers 425
        self.passive[token] = active

    def link_lost(self) -> None:
        """The server is gone: 421, and every relayed data connection cut."""
        self.link = None
        for passive in list(self.passive.values()):
            if passive.data is None:
                passive.cut()
        self.passive.clear()
        if not self.closed and self.transport is not None:
            self.transport.write(LINK_LOST_REPLY)
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closed = True
        self.edge.clients.discard(self)
        for passive in list(self.passive.values()):
            passive.drop_listener()
        link, self.link = self.link, None
        if link is not None:
            link.release(reason is None or reason.check(netError.ConnectionDone) is not None)


class EdgePassive:
    """One PASV/EPSV set-up at the edge: the listener, the data connection's TLS and its
    binding check, then the relay on a link connection of its own."""

    def __init__(
        self,
        control: EdgeControl,
        token: str,
        reuse: SessionReuse | None,
        timeout: float,
        target: tuple[str, int] | None = None,
        direction: str | None = None,
    ) -> None:
        self.control = control
        self.token = token
        self.info: HandshakeInfo | None = None
        self.data: EdgeData | None = None
        self.dropped = False  # the server dropped the set-up (UNLISTEN) before any relay
        edge = control.edge
        tls: DataTLS | None = None
        if reuse is not None:
            if control.context is None or control.control_info is None:
                raise NoPassivePort("protected data without TLS on the control connection")
            # "account" reuse (siblings) is not relayed yet: the session's own only.
            creator = DataConnectionCreator(
                control.context,
                control.control_info,
                "off" if reuse == "off" else "required",
                reactor=edge.reactor,
            )

            def check(connection: SSL.Connection) -> str | None:
                result = creator.check(connection)
                self.info = result.info
                return result.problem

            tls = DataTLS(creator, check)
        self.channel = DataChannel(edge.reactor, control.peer, tls, timeout)
        interface = control.local[0]
        self.port = 0
        if target is None:
            self.port = self.channel.listen_passive(
                lambda factory: edge.passive.listen(factory, interface)
            )
        else:
            self.channel.set_active(target[0], target[1], interface)
        if direction is not None:
            self.channel.expect(direction)
        self.channel.open().addCallbacks(self._ready, self._failed)

    def _open(self, link: EdgeLink, connection: DataConnection | None) -> None:
        """Put this data connection on `link`: OPEN with the set-up's token."""
        transport: Any = connection.transport if connection is not None else None
        peer: Any = transport.getPeer() if transport is not None else None
        link.send_json(
            Frame.OPEN,
            {
                "kind": "data",
                "token": self.token,
                "address": self.control.peer,
                "port": int(peer.port) if peer is not None else 0,
            },
        )

    def _ready(self, connection: DataConnection) -> None:
        self.control.edge.request_link(lambda link: self._relay(connection, link))

    def _relay(self, connection: DataConnection, link: EdgeLink | None) -> None:
        if self.dropped:  # while waiting for a link: the server no longer wants it
            if link is not None:
                self.control.edge.link_ready(link)
            return
        if link is None:
            connection.abort()
            return
        self._open(link, connection)
        self.data = EdgeData(link, connection, lambda: self.control.passive.pop(self.token, None))
        link.bind(
            self.data, connection.transport, connection.pause_reading, connection.resume_reading
        )
        if self.info is not None:
            link.send_json(Frame.DATA_TLS, {"info": info_to_json(self.info), "problem": None})
        self.data.start()

    def _failed(self, failure: Failure) -> None:
        """The set-up failed at the edge: tell the server as a local one would learn it."""
        self.control.passive.pop(self.token, None)
        error = failure.value
        if not isinstance(error, DataError) or self.dropped:
            return  # dropped: the server has forgotten the set-up, nothing to report
        if self.channel.connection is None:
            if self.port == 0 and self.control.link is not None:  # PORT/EPRT: no connection
                self.control.link.send_json(
                    Frame.LISTENING, {"token": self.token, "error": error.text}
                )
            return  # passive: the server's own timeout answers
        self.control.edge.request_link(lambda link: self._report_failure(link, error))

    def _report_failure(self, link: EdgeLink | None, error: DataError) -> None:
        if link is None:
            return
        self._open(link, None)
        link.client = _Closed()
        if error.code == 522 and self.info is not None:  # the binding check refused it
            link.send_json(Frame.DATA_TLS, {"info": info_to_json(self.info), "problem": error.text})
        # Otherwise the handshake failed or the client left first: a close before ready.
        link.release(False)

    def drop_listener(self) -> None:
        self.channel._stop_listening()

    def drop(self) -> None:
        """UNLISTEN: the server took the relay, or dropped the set-up (ABOR, another
        PASV, its timeout). Stop listening; a data connection accepted here and not
        relayed yet (its TLS handshake under way, or waiting for a link) is closed, as the
        server closes one of its own; a relayed one the server ends through its link."""
        self.channel._stop_listening()
        if self.data is None:
            self.dropped = True
            self.control.passive.pop(self.token, None)
            self.channel.close()

    def cut(self) -> None:
        """The control connection or the link is gone: cut everything (no close_notify)."""
        self.channel.close()


class _Closed:
    """Stands for a client connection that is already gone."""

    def link_frame(self, kind: Frame, payload: bytes) -> None:
        pass

    def link_lost(self) -> None:
        pass


class EdgeData:
    """A relayed data connection: client bytes to the link, link bytes to the client.

    Protected, once `PUMP_AFTER` bytes have gone the way the server said the transfer
    goes (EXPECT), the client's TLS moves to a pool thread on the socket (`tls_pump`), as
    the server does for large files: downloads are queued there from the link, uploads
    read there and sent to the link. Listings and small files stay on the reactor.
    """

    def __init__(self, link: EdgeLink, connection: DataConnection, done: Any) -> None:
        self.link = link
        self.connection = connection
        self.ended = False
        self.done = done
        self.direction: str | None = None
        self.sender: TLSQueueSender | None = None
        self.pumped = False

    def start(self) -> None:
        # Relayed bytes come in frames: the last short write (a listing's tail, the
        # close_notify after a pumped send) must not wait behind a delayed ACK.
        set_no_delay(self.connection.transport)
        self.connection.attach(self._from_client)
        self.connection.closed.addCallback(self._client_closed)

    def _from_client(self, data: bytes) -> None:
        self.link.send_data(data)
        if self.direction == "receive" and self.connection.bytes_received >= PUMP_AFTER:
            self._pump()

    def _client_closed(self, clean: bool) -> None:
        if self.ended:
            return
        self.ended = True
        self.done()
        self.link.release(bool(clean))

    def _pump(self) -> None:
        """Hand the client's TLS to a pool thread, if it can be."""
        connection = self.connection
        transport: Any = connection.transport
        reactor = self.link.edge.reactor
        if self.pumped or connection.tls is None or transport is None:
            return
        self.pumped = True
        # The pump owns the socket: Twisted's producer on it (pausing the link) goes.
        transport.unregisterProducer()
        self.link.resume_link()
        if not TLSPump.usable(connection, reactor):
            transport.registerProducer(_Pauser(self.link.pause_link, self.link.resume_link), True)
            return
        if self.direction == "send":
            self.sender = TLSQueueSender(
                connection, reactor, self.link.pause_link, self.link.resume_link
            )
            self.sender.start().addCallbacks(self._sent, self._pump_failed)
        else:
            TLSFileReceiver(_LinkSink(self.link), connection, reactor).start()

    def _sent(self, _: object) -> None:
        self.sender = None
        self.connection.finish()

    def _pump_failed(self, failure: Failure) -> None:
        self.sender = None
        self.connection.abort()

    def link_frame(self, kind: Frame, payload: bytes) -> None:
        if kind is Frame.DATA:
            if self.sender is not None:
                self.sender.feed(payload)
                return
            self.connection.write(payload)
            if self.direction == "send" and self.connection.bytes_sent >= PUMP_AFTER:
                self._pump()
        elif kind is Frame.EXPECT:
            self.direction = str(decode_json(payload).get("direction"))
            self.connection.expect(self.direction)
        elif kind is Frame.CLOSE:
            if decode_json(payload).get("how") == "abort":
                if self.sender is not None:
                    self.sender.stop()
                self.connection.abort()
            elif self.sender is not None:
                self.sender.end()  # finishes (close_notify) once all is sent
            else:
                # TLS shuts down (close_notify) only once no producer is registered.
                if self.connection.transport is not None:
                    self.connection.transport.unregisterProducer()  # type: ignore[attr-defined]
                self.connection.finish()
        else:
            raise FrameError(f"unexpected frame {kind.name} on a data link")

    def link_lost(self) -> None:
        """The server is gone: cut the client's data connection without close_notify."""
        self.ended = True
        if self.sender is not None:
            self.sender.stop()
        self.connection.abort()


class _LinkSink:
    """A pumped upload's bytes go to the link (`tls_pump.ChunkSink`)."""

    def __init__(self, link: EdgeLink) -> None:
        self.link = link

    def write(self, data: bytes) -> Deferred[None]:
        return self.link.send_with_room(data)


class _ClientFactory(Factory):
    noisy = False

    def __init__(self, edge: EdgeService, implicit: bool, local: tuple[str, int]) -> None:
        self.edge = edge
        self.implicit = implicit
        self.local = local

    def buildProtocol(self, addr: Any) -> Protocol | None:  # noqa: N802
        return EdgeControl(self.edge, self.implicit, self.local)


class _LinkFactory(Factory):
    noisy = False

    def __init__(self, edge: EdgeService) -> None:
        self.edge = edge

    def buildProtocol(self, addr: Any) -> EdgeLink:  # noqa: N802
        link = EdgeLink(self.edge)
        link.factory = self
        return link


class EdgeService(MultiService):
    """`server.role = "edge"`: the link listener and the clients' listeners."""

    def __init__(self, config: Config, own: ServerCredentials | None, reactor: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.config = config
        self.own = own  # the edge's [tls] certificate and key; None: clear FTP only
        self.contexts: SessionContextFactory | None = None
        self.digest: str | None = None
        self._applied: tuple[str, tuple[str, ...]] | None = None
        self.idle: list[EdgeLink] = []
        self.links: set[EdgeLink] = set()
        self.clients: set[EdgeControl] = set()
        self.waiting: list[list[Any]] = []  # [use, timer]: clients waiting for a link
        self.ports: list[IListeningPort] = []
        first, last = config.passive.ports
        self.passive = PassivePortProvider(reactor, first, last)

    def apply(self, message: dict[str, Any], server: str) -> None:
        """The server's settings: applied before anyone is served, logged by digest.
        The same settings again (every link connection brings them) change nothing; new
        client CAs (the server reloaded its [tls] files) are applied with the same digest."""
        try:
            digest = digest_of(message["settings"])
            applied = (digest, tuple(str(ca) for ca in message["client_cas"]))
            if applied == self._applied:
                return
            if self.own is not None:
                self.contexts = SessionContextFactory(apply_settings(self.own, message))
        except (KeyError, TypeError, ValueError) as error:
            raise FrameError(f"bad SETTINGS: {error}") from None
        self.digest = digest
        self._applied = applied
        log.info(
            "settings from {server} applied; ssl-access digest {digest}; {cas} client CA(s)",
            server=server,
            digest=digest,
            cas=len(applied[1]),
        )

    def request_link(self, use: Callable[[EdgeLink | None], None]) -> None:
        """Call `use` with an idle link connection: at once, or when the server's next one
        comes up (the pool ran dry: wait up to LINK_WAIT seconds), or with None when there
        is no link to the server at all."""
        link = self.take_link()
        if link is not None or not any(not each.lost for each in self.links):
            use(link)
            return
        entry: list[Any] = [use]
        entry.append(self.reactor.callLater(LINK_WAIT, self._wait_over, entry))
        self.waiting.append(entry)

    def _wait_over(self, entry: list[Any]) -> None:
        if entry in self.waiting:
            self.waiting.remove(entry)
            entry[0](None)

    def link_ready(self, link: EdgeLink) -> None:
        """A link connection with applied settings: to the first waiting client, or idle."""
        if link.lost:
            return
        if self.waiting:
            use, call = self.waiting.pop(0)
            if call.active():
                call.cancel()
            use(link)
            return
        self.idle.append(link)

    def take_link(self) -> EdgeLink | None:
        while self.idle:
            link = self.idle.pop(0)
            if not link.lost:
                return link
        return None

    def privilegedStartService(self) -> None:  # noqa: N802
        super().privilegedStartService()
        link = self.config.link
        assert link is not None
        options = link_tls_options(link.certificate, link.private_key, link.ca)
        port = self.reactor.listenSSL(
            link.port, _LinkFactory(self), options, interface=link.address
        )
        self.ports.append(port)
        log.info(
            "edge: link listener on {address} port {port}",
            address=link.address,
            port=port.getHost().port,
        )
        for listen in self.config.listen:
            factory = _ClientFactory(self, listen.tls == "implicit", (listen.address, 0))
            if listen.tls == "implicit" and self.own is None:
                raise ValueError("an implicit listener needs [tls]")
            # Implicit ports start TLS once the server has accepted the session (EdgeControl).
            port = self.reactor.listenTCP(listen.port, factory, interface=listen.address)
            factory.local = (listen.address, int(port.getHost().port))
            self.ports.append(port)
            log.info(
                "edge: serving FTP ({mode} TLS) on {address} port {port}",
                mode=listen.tls,
                address=listen.address,
                port=port.getHost().port,
            )

    def startService(self) -> None:  # noqa: N802
        super().startService()
        if self.config.metrics is not None:
            self._serve_metrics()

    @property
    def serving(self) -> bool:
        """A link with applied settings: clients are served."""
        return self.digest is not None and any(not link.lost for link in self.idle)

    def _serve_metrics(self) -> None:
        """`[metrics]` on an edge: /health is 503 without a link; /metrics has the links."""
        from securetransport.metrics import Metrics, listen_metrics, render_registry

        metrics = Metrics()

        def refresh() -> None:
            metrics.edge_links_up.set(1 if self.serving else 0)

        assert self.config.metrics is not None
        self.ports.append(
            listen_metrics(
                self.reactor,
                self.config.metrics,
                lambda: render_registry(metrics.registry, refresh),
                lambda: not self.serving,
            )
        )

    def stopService(self) -> Deferred[None]:  # noqa: N802
        from twisted.internet.defer import gatherResults

        results = [d for d in (port.stopListening() for port in self.ports) if d is not None]
        self.ports = []
        waiting, self.waiting = self.waiting, []
        for _, call in waiting:
            if call.active():
                call.cancel()
        for client in list(self.clients):
            if client.transport is not None:
                client.transport.abortConnection()  # type: ignore[attr-defined]
        results += [link.gone for link in self.links]
        for link in list(self.links):
            if link.transport is not None:
                link.transport.abortConnection()  # type: ignore[attr-defined]
        parent = super().stopService()
        return gatherResults([*results, *(d for d in [parent] if d is not None)]).addCallback(
            lambda _: None
        )
