"""The server's end of its edges' links (SPEC section 8).

`EdgeDialer` keeps a small pool of idle link connections to one edge and tops it up
(redialling with backoff and jitter). When the edge puts a client connection on a link
connection (OPEN), the server runs the same engine as for a local client: an
`FTPSession` whose channel is a `LinkControlChannel`, or, for a data connection, a
`RelayedDataConnection` in the `RelayedDataChannel` that PASV/EPSV set up.
"""

from __future__ import annotations

import random
import secrets
from typing import Any

from twisted.internet import error as netError
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener, IListeningPort
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from securetransport.client import normalize_address
from securetransport.config import EdgeConfig, SessionReuse
from securetransport.edge.link import (
    Frame,
    FrameError,
    LinkProtocol,
    LinkTLS,
    decode_json,
    info_from_json,
)
from securetransport.edge.settings import digest_of
from securetransport.ftp.channel import DataReport, IControlChannel
from securetransport.ftp.data import DataChannel, DataConnection, DataError, DataTLS
from securetransport.ftp.passive import NoPassivePort
from securetransport.replies import Reply
from securetransport.tls.facts import HandshakeInfo

log = Logger(namespace="securetransport.edge.server_side")

POOL_SIZE = 4
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0


def _address(host: str, port: int) -> IPv4Address | IPv6Address:
    if ":" in host:
        return IPv6Address("TCP", host, port)
    return IPv4Address("TCP", host, port)


class LinkUse:
    """One client connection's hold on a link connection. The link connection goes back
    to the pool when that client connection is over (RESET); whatever is sent for it
    after that (a late reply, a stray close) is dropped, never delivered to the next one."""

    def __init__(self, link: ServerLink) -> None:
        self.link = link
        self.generation = link.generation
        self.dialer = link.dialer
        self.reactor = link.reactor

    @property
    def current(self) -> bool:
        """Whether the link connection still carries this client connection."""
        return self.link.generation == self.generation and not self.link.lost

    @property
    def lost(self) -> bool:
        return not self.current

    @property
    def transport(self) -> Any:
        return self.link.transport if self.current else None

    @property
    def listen_tokens(self) -> set[str]:
        return self.link.listen_tokens if self.current else set()

    def send(self, kind: Frame, payload: bytes = b"") -> None:
        if self.current:
            self.link.send(kind, payload)

    def send_json(self, kind: Frame, value: dict[str, Any]) -> None:
        if self.current:
            self.link.send_json(kind, value)

    def send_data(self, data: bytes) -> None:
        if self.current:
            self.link.send_data(data)

    def pause_link(self) -> None:
        if self.current:
            self.link.pause_link()

    def resume_link(self) -> None:
        if self.current:
            self.link.resume_link()

    def await_tls(self) -> None:
        """START_TLS is out: client bytes are dropped until TLS_UP."""
        if self.current:
            self.link.awaiting_tls = True
            self.link.send(Frame.START_TLS)


class LinkTransport:
    """What a session (or a data connection) on the server sees as its transport: the
    client connection at the edge, reached through one link connection."""

    def __init__(self, link: LinkUse, peer: tuple[str, int], host: tuple[str, int]) -> None:
        self.link = link
        self._peer = _address(*peer)
        self._host = _address(*host)
        self.disconnecting = False
        self.producer: Any = None

    def getPeer(self) -> IPv4Address | IPv6Address:  # noqa: N802
        return self._peer

    def getHost(self) -> IPv4Address | IPv6Address:  # noqa: N802
        return self._host

    def write(self, data: bytes) -> None:
        if not self.disconnecting:
            self.link.send_data(data)

    def writeSequence(self, data: list[bytes]) -> None:  # noqa: N802
        self.write(b"".join(data))

    def loseConnection(self) -> None:  # noqa: N802
        """The edge closes the client connection once what was sent is out (TLS:
        close_notify) and answers CLOSE; connectionLost follows that answer."""
        if not self.disconnecting:
            self.disconnecting = True
            self.link.send_json(Frame.CLOSE, {"how": "clean"})

    def abortConnection(self) -> None:  # noqa: N802
        if not self.disconnecting:
            self.disconnecting = True
            self.link.send_json(Frame.CLOSE, {"how": "abort"})
        # A socket's abort stops its producer within a turn of the reactor; the edge's
        # answer (CLOSE) is a round trip away, and nothing more is sent meanwhile.
        self._stop_producer()

    def client_gone(self) -> None:
        """The client connection is over (the edge's CLOSE, or the link lost): as a
        socket's connectionLost does, the producer writing to it stops."""
        self.disconnecting = True
        self._stop_producer()

    def _stop_producer(self) -> None:
        producer = self.producer
        if producer is not None:
            self.unregisterProducer()
            producer.stopProducing()

    def pauseProducing(self) -> None:  # noqa: N802
        self.link.pause_link()

    def resumeProducing(self) -> None:  # noqa: N802
        self.link.resume_link()

    def stopProducing(self) -> None:  # noqa: N802
        self.abortConnection()

    def registerProducer(self, producer: Any, streaming: bool) -> None:  # noqa: N802
        link: Any = self.link.transport
        if link is not None:
            self.producer = producer
            link.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:  # noqa: N802
        producer, self.producer = self.producer, None
        link: Any = self.link.transport
        if producer is not None and link is not None:
            link.unregisterProducer()


@implementer(IControlChannel)
class LinkControlChannel:
    """IControlChannel over a link connection: the client's sockets and TLS are at the edge."""

    def __init__(self, link: LinkUse, session: Any, opened: dict[str, Any]) -> None:
        self.link = link
        self.protocol = session  # the FTPSession shell
        self.peer = normalize_address(str(opened["address"]))
        self.peer_port = int(opened["port"])
        self.local_host = str(opened["local_host"])
        self.local_port = int(opened["local_port"])
        self.announced = str(opened.get("announce") or "")  # the edge's passive address
        self.tls_ready = bool(opened.get("tls_ready"))
        self.via = f"edge:{link.dialer.edge.name}"
        self.handshake: HandshakeInfo | None = None

    def tune(self) -> None:
        """Nothing to tune: the edge owns the socket."""

    def register_producer(self, producer: Any) -> None:
        link: Any = self.link.transport
        if link is not None:
            link.registerProducer(producer, True)

    def handshake_done(self) -> HandshakeInfo:
        assert self.handshake is not None
        return self.handshake

    def send(self, data: bytes) -> None:
        self.link.send_data(data)

    def session_ready(self) -> bool:
        return self.tls_ready

    def start_tls(self) -> None:
        # Lines received but not served are dropped here; DATA frames that arrive before
        # TLS_UP were read in clear by the edge before it started TLS: dropped too.
        self.protocol._drop_input()
        self.link.await_tls()

    def pause_reading(self) -> None:
        self.link.pause_link()

    def resume_reading(self) -> None:
        self.link.resume_link()

    def close(self) -> None:
        if self.protocol.transport is not None:
            self.protocol.transport.loseConnection()

    def abort(self) -> None:
        if self.protocol.transport is not None:
            self.protocol.transport.abortConnection()

    def join_reuse_group(self, account: str) -> None:
        """Reuse across control connections ("account") is not relayed yet: an edge
        checks data connections against their own control session."""

    def leave_reuse_group(self) -> None:
        pass

    def passive_data(
        self, reuse: SessionReuse | None, report: DataReport, timeout: float
    ) -> Deferred[tuple[DataChannel, int]]:
        token = secrets.token_hex(12)
        channel = RelayedDataChannel(
            self.link.reactor, self.peer, reuse, report, timeout, self.link, token
        )
        answered: Deferred[tuple[DataChannel, int]] = Deferred()
        self.link.dialer.listening[token] = (channel, answered)
        self.link.listen_tokens.add(token)
        self.link.send_json(Frame.LISTEN, {"token": token, "reuse": reuse, "timeout": timeout})
        return answered

    def active_data(
        self, reuse: SessionReuse | None, report: DataReport, timeout: float, host: str, port: int
    ) -> DataChannel:
        """The edge connects to host:port (validated here) when the transfer command comes."""
        token = secrets.token_hex(12)
        channel = RelayedDataChannel(
            self.link.reactor, self.peer, reuse, report, timeout, self.link, token
        )
        channel.connect_to = (host, port)
        never: Deferred[Any] = Deferred()  # no LISTENING answers an active set-up
        never.addErrback(lambda _: None)
        self.link.dialer.listening[token] = (channel, never)
        self.link.listen_tokens.add(token)
        return channel


@implementer(IListeningPort)
class _RemoteListening:
    """The edge's passive listener, as DataChannel sees it."""

    def __init__(self, link: LinkUse, token: str, port: int) -> None:
        self.link = link
        self.token = token
        self.port = port

    def startListening(self) -> None:  # noqa: N802
        pass

    def stopListening(self) -> None:  # noqa: N802
        self.link.dialer.listening.pop(self.token, None)
        self.link.listen_tokens.discard(self.token)
        self.link.send_json(Frame.UNLISTEN, {"token": self.token})

    def getHost(self) -> IPv4Address:  # noqa: N802
        return IPv4Address("TCP", "0.0.0.0", self.port)


class RelayedDataConnection(DataConnection):
    """A data connection at the edge, as the transfers see it. Protected: ready when the
    edge has reported the handshake and the binding check (DATA_TLS)."""

    def connectionMade(self) -> None:
        if self.tls is None:
            self._set_ready()

    def expect(self, direction: str) -> None:
        """Also told on the data link itself, ahead of any file bytes: the edge holds TLS
        1.3 tickets on uploads only, and must know before it passes a download on."""
        super().expect(direction)
        transport = self.transport
        if isinstance(transport, LinkTransport) and not transport.disconnecting:
            transport.link.send_json(Frame.EXPECT, {"direction": direction})

    def tls_reported(self, info: HandshakeInfo, problem: str | None, report: DataReport) -> None:
        report(info, False, problem)
        if problem is not None:
            self._fail(DataError(Reply.DATA_TLS_FAILED, problem))
            if self.transport is not None:
                self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        self._set_ready()


class RelayedDataChannel(DataChannel):
    """A passive set-up whose listener is at the edge."""

    def __init__(
        self,
        reactor: Any,
        peer: str,
        reuse: SessionReuse | None,
        report: DataReport,
        timeout: float,
        control: LinkUse | None,
        token: str,
    ) -> None:
        tls = DataTLS(None, lambda connection: None) if reuse is not None else None
        super().__init__(reactor, peer, tls, timeout)
        self.reuse = reuse
        self.report = report
        self.control = control
        self.token = token
        self.connect_to: tuple[str, int] | None = None  # PORT/EPRT: the edge connects there

    @property
    def is_passive(self) -> bool:
        return self.connect_to is None

    def open(self) -> Deferred[DataConnection]:
        if self.connect_to is not None and self.connection is None and self.control is not None:
            host, port = self.connect_to
            self.listening = _RemoteListening(self.control, self.token, 0)
            self.control.send_json(
                Frame.CONNECT,
                {
                    "token": self.token,
                    "host": host,
                    "port": port,
                    "reuse": "off" if self.tls is None else self.reuse,
                    "protected": self.tls is not None,
                    "timeout": self.timeout,
                    "direction": self.direction,
                },
            )
        return super().open()

    def listening_at(self, port: int) -> None:
        assert self.control is not None
        self.listening = _RemoteListening(self.control, self.token, port)

    def expect(self, direction: str) -> None:
        super().expect(direction)
        if self.control is not None and not self.control.lost:
            self.control.send_json(Frame.EXPECT, {"token": self.token, "direction": direction})

    def data_link(self, link: LinkUse, opened: dict[str, Any]) -> RelayedDataConnection | None:
        """The edge accepted the client's data connection on `link`."""
        host = normalize_address(str(opened.get("address", "")))
        if host != self.peer_host or self.connection is not None:
            log.warn(
                "refused a relayed data connection from {host}: the control connection "
                "is from {peer}",
                host=host,
                peer=self.peer_host,
            )
            return None
        self._stop_listening()
        connection = RelayedDataConnection(self.tls, server_side=True)
        self.connection = connection
        if self._waiter is not None:
            connection.when_settled(self._settled)
        transport = LinkTransport(link, (host, int(opened.get("port", 0))), ("0.0.0.0", 0))
        connection.makeConnection(transport)  # type: ignore[arg-type]
        if self.direction is not None:
            connection.expect(self.direction)
        return connection


@implementer(IHandshakeListener)
class ServerLink(LinkProtocol):
    """One link connection, dialled by the server. Idle until the edge OPENs it."""

    def __init__(self, dialer: EdgeDialer) -> None:
        super().__init__(dialer.reactor)
        self.dialer = dialer
        self.up = False
        self.used = False
        self.awaiting_tls = False
        self.session: Any = None  # the FTPSession of a control connection
        self.data: RelayedDataConnection | None = None
        self.data_channel: RelayedDataChannel | None = None
        self.listen_tokens: set[str] = set()
        self.generation = 0  # one more each time the link connection goes back to the pool
        self.settings_sent: dict[str, Any] | None = None
        self.gone: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        super().connectionMade()
        self.dialer.links.add(self)
        self.send_settings(self.dialer.current)

    def send_settings(self, message: dict[str, Any]) -> None:
        """SETTINGS, on a link connection not in use (the edge refuses it otherwise)."""
        self.settings_sent = message
        self.send_json(Frame.SETTINGS, message)

    def handshakeCompleted(self) -> None:  # noqa: N802
        self.up = True
        self.dialer.link_up(self)

    def frame_received(self, kind: Frame, payload: bytes) -> None:
        if kind is Frame.OPEN:
            self._open(decode_json(payload))
        elif kind is Frame.DATA:
            if self.session is not None:
                if not self.awaiting_tls:
                    self.session.dataReceived(payload)
            elif self.data is not None:
                self.data.dataReceived(payload)
        elif kind is Frame.TLS_UP:
            if self.session is None:
                raise FrameError("TLS_UP on a link connection without a session")
            self.awaiting_tls = False
            self.session.channel.handshake = info_from_json(decode_json(payload))
            self.session.handshakeCompleted()
        elif kind is Frame.LISTENING:
            self._listening(decode_json(payload))
        elif kind is Frame.DATA_TLS:
            value = decode_json(payload)
            if self.data is None or self.data_channel is None:
                raise FrameError("DATA_TLS without a data connection")
            problem = value.get("problem")
            self.data.tls_reported(
                info_from_json(value.get("info") or {}),
                str(problem) if problem is not None else None,
                self.data_channel.report,
            )
        elif kind is Frame.CLOSE:
            clean = bool(decode_json(payload).get("clean"))
            self._client_gone(clean)
            self._reset()
        elif kind is Frame.REFUSED:
            log.warn(
                "edge {edge} refused a link connection: {why}",
                edge=self.dialer.edge.name,
                why=decode_json(payload).get("reason"),
            )
        else:
            raise FrameError(f"unexpected frame {kind.name} from the edge")

    def _open(self, opened: dict[str, Any]) -> None:
        if self.used:
            raise FrameError("OPEN on a link connection already in use")
        self.used = True
        self.dialer.taken(self)
        use = LinkUse(self)
        kind = opened.get("kind")
        if kind == "control":
            self._open_control(use, opened)
        elif kind == "data":
            token = str(opened.get("token", ""))
            pending = self.dialer.listening.get(token)
            connection = None
            if pending is not None:
                self.data_channel = pending[0]
                connection = pending[0].data_link(use, opened)
            if connection is None:
                self.send_json(Frame.CLOSE, {"how": "abort"})
                return
            self.data = connection
        else:
            raise FrameError(f"OPEN of unknown kind {kind!r}")

    def _open_control(self, use: LinkUse, opened: dict[str, Any]) -> None:
        from securetransport.ftp.protocol import FTPSession

        runtime = self.dialer.runtime
        implicit = opened.get("tls") == "implicit"
        try:
            peer = (normalize_address(str(opened["address"])), int(opened["port"]))
            host = (str(opened["local_host"]), int(opened["local_port"]))
        except (KeyError, ValueError) as error:
            raise FrameError(f"bad OPEN: {error}") from None
        session = FTPSession(
            runtime, implicit, make_channel=lambda s: LinkControlChannel(use, s, opened)
        )
        self.session = session
        session.makeConnection(LinkTransport(use, peer, host))

    def _listening(self, value: dict[str, Any]) -> None:
        token = str(value.get("token", ""))
        pending = self.dialer.listening.get(token)
        if pending is None:
            return
        channel, answered = pending
        if channel.connect_to is not None:  # the edge could not connect: 425 now
            self.dialer.listening.pop(token, None)
            channel._deliver_error(DataError(Reply.CANT_OPEN_DATA, "Can't open data connection"))
            return
        if answered.called:
            return
        if "port" in value:
            channel.listening_at(int(value["port"]))
            answered.callback((channel, int(value["port"])))
        else:
            self.dialer.listening.pop(token, None)
            answered.errback(Failure(NoPassivePort(str(value.get("error", "")))))

    def _client_gone(self, clean: bool) -> None:
        reason: Failure = Failure(
            netError.ConnectionDone() if clean else netError.ConnectionLost("client side reset")
        )
        session, self.session = self.session, None
        data, self.data = self.data, None
        if session is not None:
            session.connectionLost(reason)
        if data is not None:
            if isinstance(data.transport, LinkTransport):
                data.transport.client_gone()
            data.connectionLost(reason)

    def _drop_listening(self, why: str) -> None:
        for token in list(self.listen_tokens):
            pending = self.dialer.listening.pop(token, None)
            if pending is not None and not pending[1].called:
                pending[1].errback(Failure(NoPassivePort(why)))
        self.listen_tokens.clear()

    def _reset(self) -> None:
        """The client connection is over on both sides: the link connection is idle
        again. RESET tells the edge, after everything sent for the old client connection;
        the edge puts the link connection back in its pool when it reads it."""
        self._drop_listening("client connection closed")
        self.generation += 1
        self.used = False
        self.awaiting_tls = False
        self.session = None
        self.data = None
        self.data_channel = None
        if self.transport is not None and not self.lost:
            self.transport.unregisterProducer()  # type: ignore[attr-defined]
        self.resume_link()
        self.send(Frame.RESET)
        self.dialer.returned(self)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        super().connectionLost(reason)
        self._drop_listening("link lost")
        if self.session is not None or self.data is not None:
            self._client_gone(False)
        self.dialer.links.discard(self)
        self.dialer.lost(self, reason)
        self.gone.callback(None)


class _LinkFactory(ClientFactory):
    noisy = False

    def __init__(self, dialer: EdgeDialer) -> None:
        self.dialer = dialer

    def buildProtocol(self, addr: Any) -> ServerLink:  # noqa: N802
        protocol = ServerLink(self.dialer)
        protocol.factory = self
        return protocol

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:  # noqa: N802
        self.dialer.connectors.discard(connector)
        self.dialer.failed(reason)

    def clientConnectionLost(self, connector: Any, reason: Failure) -> None:  # noqa: N802
        self.dialer.connectors.discard(connector)


class EdgeDialer:
    """Keeps `pool_size` idle link connections to one edge; redials with backoff + jitter."""

    def __init__(
        self,
        reactor: Any,
        runtime: Any,
        edge: EdgeConfig,
        options: LinkTLS,
        settings: Any,
        pool_size: int = POOL_SIZE,
    ) -> None:
        self.reactor = reactor
        self.runtime = runtime
        self.edge = edge
        self.options = options
        self.settings = settings  # () -> the SETTINGS message, built anew
        self.current: dict[str, Any] = settings()  # what link connections get; see push_settings
        self.pool_size = pool_size
        self.idle: set[ServerLink] = set()
        self.links: set[ServerLink] = set()  # every connected link connection, idle or used
        self.connectors: set[Any] = set()
        self.dialling = 0
        self.dialled = 0  # link connections dialled so far
        self.released = 0  # client connections ended on a link connection (RESET sent)
        self.delay = 0.0
        self.running = False
        self.was_up = False
        self.listening: dict[str, tuple[RelayedDataChannel, Deferred[Any]]] = {}
        self._retry: Any = None
        self._random = random.SystemRandom()

    @property
    def is_up(self) -> bool:
        return any(link.up for link in self.idle)

    def start(self) -> None:
        self.running = True
        self.top_up()

    def stop(self) -> Deferred[Any]:
        """Stop dialling and close every link connection; fires once they are all gone."""
        from twisted.internet.defer import gatherResults

        self.running = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        for connector in list(self.connectors):
            if connector.state == "connecting":
                connector.stopConnecting()
        waits = [link.gone for link in self.links]
        for link in list(self.links):
            if link.transport is not None:
                link.transport.abortConnection()  # type: ignore[attr-defined]
        return gatherResults(waits)

    def top_up(self) -> None:
        self._retry = None
        if not self.running:
            return
        while len(self.idle) + self.dialling < self.pool_size:
            self.dialling += 1
            self.dialled += 1
            connector = self.reactor.connectSSL(
                self.edge.address, self.edge.port, _LinkFactory(self), self.options, timeout=10
            )
            self.connectors.add(connector)

    def _schedule(self) -> None:
        if not self.running or (self._retry is not None and self._retry.active()):
            return
        self.delay = min(BACKOFF_MAX, max(BACKOFF_FIRST, self.delay * 2))
        wait = self.delay * self._random.uniform(0.8, 1.2)
        self._retry = self.reactor.callLater(wait, self.top_up)

    def link_up(self, link: ServerLink) -> None:
        self.dialling = max(0, self.dialling - 1)
        self.idle.add(link)
        self.delay = 0.0
        if not self.was_up:
            self.was_up = True
            digest = digest_of(self.current["settings"])
            log.info(
                "edge {edge}: link up ({address} port {port}); ssl-access digest {digest}",
                edge=self.edge.name,
                address=self.edge.address,
                port=self.edge.port,
                digest=digest,
            )

    def push_settings(self) -> None:
        """The settings may have changed (SIGHUP, new [tls] files): every idle link
        connection gets them now, one in use when it comes back (`returned`)."""
        fresh = self.settings()
        if fresh != self.current:
            self.current = fresh
        for link in self.idle:
            if link.settings_sent is not self.current:
                link.send_settings(self.current)

    def taken(self, link: ServerLink) -> None:
        self.idle.discard(link)
        self.top_up()

    def returned(self, link: ServerLink) -> None:
        """A link connection whose client connection is over: idle again, unless the pool
        already holds twice its size (what a burst left behind is closed)."""
        self.released += 1
        if link.lost:
            return
        if link.settings_sent is not self.current:  # changed while it was in use
            link.send_settings(self.current)
        if not self.running or len(self.idle) >= 2 * self.pool_size:
            if link.transport is not None:
                link.transport.loseConnection()
            return
        self.idle.add(link)

    def failed(self, reason: Failure) -> None:
        self.dialling = max(0, self.dialling - 1)
        log.warn(
            "edge {edge}: cannot connect the link to {address} port {port}: {why}",
            edge=self.edge.name,
            address=self.edge.address,
            port=self.edge.port,
            why=reason.getErrorMessage(),
        )
        self._schedule()

    def lost(self, link: ServerLink, reason: Failure) -> None:
        if link.used:
            return
        if link in self.idle:
            self.idle.discard(link)
        elif not link.up:
            self.dialling = max(0, self.dialling - 1)
            log.warn(
                "edge {edge}: link refused ({address} port {port}): {why}",
                edge=self.edge.name,
                address=self.edge.address,
                port=self.edge.port,
                why=reason.getErrorMessage() if reason is not None else "closed",
            )
        if self.was_up and not self.idle:
            self.was_up = False
            log.warn("edge {edge}: link down", edge=self.edge.name)
        self._schedule()


def start_dialers(reactor: Any, runtime: Any, config: Any) -> list[EdgeDialer]:
    """Dial every `[[edge]]` of a server config; the SETTINGS message follows SIGHUP
    reloads of the [tls] files (built once, and again by `EdgeDialer.push_settings`)."""
    from securetransport.edge.link import link_tls_options
    from securetransport.edge.settings import settings_message

    def settings() -> dict[str, Any]:
        tls = runtime.tls
        cas = tls.contexts.credentials.client_cas if tls is not None else ()
        return settings_message(config, cas)

    dialers = []
    for edge in config.edges:
        options = link_tls_options(edge.certificate, edge.private_key, edge.ca)
        dialer = EdgeDialer(reactor, runtime, edge, options, settings)
        dialer.start()
        dialers.append(dialer)
    return dialers
