"""Data connections: passive and active set-up, TLS on accept, sending and receiving files.

A session owns at most one `DataChannel` set-up at a time (PASV/EPSV or PORT/EPRT).
The channel yields one `DataConnection`, which is ready when connected (clear) or
when its TLS handshake has completed and the TLS session was checked against the
control connection's (protected).
"""

from __future__ import annotations

import os
import select
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import error as netError
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, IListeningPort
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from securetransport.client import normalize_address
from securetransport.replies import Reply
from securetransport.vfs import IReadHandle, IUpload

log = Logger(namespace="securetransport.ftp.data")

SEND_CHUNK = 1024 * 1024
RECEIVE_BUFFER_LIMIT = 1024 * 1024
SOCKET_BUFFER = 1024 * 1024  # bytes per recv() and before a producer is paused (Twisted: 64 KiB)


def socket_transport(transport: Any) -> Any:
    """The TCP transport under any wrappers (TLS, policies), or None."""
    while transport is not None and getattr(transport, "socket", None) is None:
        transport = getattr(transport, "transport", None)
    return transport


def raw_socket(transport: Any) -> Any:
    """The socket under a transport and its wrappers, or None."""
    return getattr(socket_transport(transport), "socket", None)


def set_no_delay(transport: Any, urgent_inline: bool = False) -> None:
    """TCP_NODELAY on the socket under `transport` (no Nagle stall behind a delayed ACK);
    `urgent_inline`: SO_OOBINLINE too, so an urgent ABOR stays in the stream."""
    sock = raw_socket(transport)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if urgent_inline:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
    except OSError:
        pass


def tune_data_transport(transport: Any) -> None:
    """Large reads and writes on the TCP transport under a data connection."""
    tcp = socket_transport(transport)
    if tcp is not None:
        tcp.bufferSize = SOCKET_BUFFER


class DataError(Exception):
    """A data connection could not be used; `code` is the reply for the transfer command."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text


class DataTLS:
    """What a data connection needs to start TLS and to check it belongs to this session."""

    def __init__(
        self,
        creator: Any,
        check: Callable[[Any], str | None],
    ) -> None:
        self.creator = creator  # IOpenSSLServerConnectionCreator over the session's Context
        self.check = check  # SSL.Connection -> None, or the text of a 522


class TicketGate(ProtocolWrapper):
    """Sits under TLS on a data connection and can hold back what the server writes.

    After a TLS 1.3 handshake OpenSSL sends session tickets that an uploading client
    never reads; when such a client closes, the unread bytes make its kernel send a
    reset, which destroys the end of the upload (curl#6149, lftp#666, proftpd#959).
    Held until the upload ends, the tickets are still in our buffer when the client
    closes, so it closes with a FIN. Order is kept: held bytes go out before anything
    written later, and all of it before the connection is closed.
    """

    def __init__(self, factory: WrappingFactory[Any], wrapped: Protocol) -> None:
        super().__init__(factory, wrapped)
        self.holding = False
        self._held: list[bytes] = []

    def makeConnection(self, transport: Any) -> None:
        tune_data_transport(transport)
        super().makeConnection(transport)

    def hold(self) -> None:
        self.holding = True

    def release(self) -> None:
        self.holding = False
        if self._held and self.transport is not None:
            held, self._held = b"".join(self._held), []
            self.transport.write(held)

    def write(self, data: bytes) -> None:
        if self.holding:
            self._held.append(data)
        else:
            self.transport.write(data)  # type: ignore[union-attr]

    def writeSequence(self, data: Any) -> None:
        for chunk in data:
            self.write(chunk)

    def loseConnection(self) -> None:
        self.release()
        super().loseConnection()


class _Prebuilt(Factory):
    """A factory that hands out one protocol built beforehand."""

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        return self._protocol


def clean_close(reason: Failure) -> bool:
    """True when the peer closed cleanly (FIN in clear, close_notify under TLS)."""
    return reason.check(netError.ConnectionDone) is not None


@implementer(IHandshakeListener)
class DataConnection(Protocol):
    """One data connection; starts TLS at once when the session protects data."""

    def __init__(self, tls: DataTLS | None, server_side: bool) -> None:
        self.tls = tls
        self.server_side = server_side
        self.closed: Deferred[bool] = Deferred()  # fires with clean_close(reason)
        self.is_ready = False
        self.settled = False  # ready, or failed before becoming ready
        self.error: DataError | None = None
        self._observer: Callable[[DataError | None], None] | None = None
        self.lost_reason: Failure | None = None
        self.bytes_received = 0
        self.bytes_sent = 0
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._on_data: Callable[[bytes], None] | None = None
        self._reading_paused = False
        self.tls_connection: Any = None
        self.gate: TicketGate | None = None
        self.in_thread: Any = None  # SendfileSender or a tls_pump.TLSPump: owns the socket
        # An upload pumped in a thread (tls_pump) decides `closed`: close_notify seen or not.
        self.pump_verdict: bool | None = None
        self._abort_when_free = False
        self.direction: str | None = None  # "send" (RETR, listings) or "receive" (uploads)

    # -- connection events ---------------------------------------------------------------
    def connectionMade(self) -> None:
        # Under TLS this is called by the TLS layer, which starts the handshake at once.
        if self.tls is None:
            tune_data_transport(self.transport)
            self._set_ready()

    def handshakeCompleted(self) -> None:
        assert self.tls is not None
        transport: Any = self.transport
        self.tls_connection = transport.getHandle()
        if (
            self.gate is not None
            and self.direction != "send"
            and self.tls_connection.get_protocol_version_name() == "TLSv1.3"
        ):
            # What follows are session tickets (see TicketGate). In TLS 1.2 what is still
            # unsent here is the server's last handshake flight: holding it would hang.
            self.gate.hold()
        problem = self.tls.check(self.tls_connection)
        if problem is not None:
            self._fail(DataError(Reply.DATA_TLS_FAILED, problem))
            transport.abortConnection()
            return
        self._set_ready()

    def dataReceived(self, data: bytes) -> None:
        self.bytes_received += len(data)
        if self._on_data is not None:
            self._on_data(data)
            return
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered > RECEIVE_BUFFER_LIMIT and not self._reading_paused:
            self.pause_reading()

    def connectionLost(self, reason: Failure = netError.ConnectionDone) -> None:  # type: ignore[assignment]
        self.lost_reason = reason
        if not self.is_ready:
            if self.tls is not None and not reason.check(netError.ConnectionDone):
                text = "TLS handshake on the data connection failed"
                self._fail(DataError(Reply.DATA_TLS_FAILED, text))
            else:
                self._fail(DataError(Reply.CANT_OPEN_DATA, "Data connection closed before use"))
        if not self.closed.called:
            clean = clean_close(reason) if self.pump_verdict is None else self.pump_verdict
            self.closed.callback(clean)

    # -- use by transfers ------------------------------------------------------------------
    def when_settled(self, observer: Callable[[DataError | None], None]) -> None:
        """Call `observer(None)` once ready, or `observer(error)` if it failed first."""
        if self.settled:
            observer(self.error)
        else:
            self._observer = observer

    def _settle(self, error: DataError | None) -> None:
        if self.settled:
            return
        self.settled = True
        self.error = error
        self.is_ready = error is None
        observer, self._observer = self._observer, None
        if observer is not None:
            observer(error)

    def _set_ready(self) -> None:
        self._settle(None)

    def _fail(self, error: DataError) -> None:
        self._settle(error)

    def expect(self, direction: str) -> None:
        """The transfer's direction is known: downloads release what the gate holds."""
        self.direction = direction
        if direction == "send" and self.gate is not None:
            self.gate.release()

    def attach(self, on_data: Callable[[bytes], None]) -> None:
        """Deliver received data (buffered data first) to `on_data`."""
        self._on_data = on_data
        buffered, self._buffer, self._buffered = self._buffer, [], 0
        for chunk in buffered:
            on_data(chunk)

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resume_reading(self) -> None:
        if self.in_thread is not None:
            return  # a thread owns the socket; it resumes reading when it hands it back
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def write(self, data: bytes) -> None:
        self.bytes_sent += len(data)
        self.transport.write(data)  # type: ignore[union-attr]

    def finish(self) -> Deferred[bool]:
        """Close after all data is written (TLS: close_notify); fires with whether it was clean."""
        if self.lost_reason is None:
            self.transport.loseConnection()  # type: ignore[union-attr]
        return self.closed

    def abort(self) -> None:
        if self.in_thread is not None:
            # A thread is using the socket (sendfile, TLS pump): stop it first, then close.
            self.in_thread.stop()
            self._abort_when_free = True
            return
        if self.lost_reason is None and self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def thread_done(self) -> None:
        """The thread that used the socket has returned."""
        self.in_thread = None
        if self._abort_when_free:
            self._abort_when_free = False
            self.abort()


class _PassiveFactory(Factory):
    """Accepts exactly one connection, and only from the control connection's peer."""

    noisy = False  # no "Starting factory" log line per PASV

    def __init__(self, channel: DataChannel) -> None:
        self.channel = channel

    def buildProtocol(self, addr: Any) -> Protocol | None:
        return self.channel._accept(addr)


class _ActiveFactory(ClientFactory):
    noisy = False

    def __init__(self, channel: DataChannel) -> None:
        self.channel = channel

    def buildProtocol(self, addr: Any) -> Protocol:
        return self.channel._new_connection(server_side=False, addr=addr)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.channel._connect_failed(reason)


class DataChannel:
    """The data-connection set-up of one session: one passive listener or one active target."""

    def __init__(
        self,
        reactor: Any,
        peer_host: str,
        tls: DataTLS | None,
        timeout: float,
    ) -> None:
        self.reactor = reactor
        self.peer_host = normalize_address(peer_host)
        self.tls = tls
        self.timeout = timeout
        self.listening: IListeningPort | None = None
        self.active_target: tuple[str, int, str] | None = None  # host, port, bind host
        self.connection: DataConnection | None = None
        self._waiter: Deferred[DataConnection] | None = None
        self._timer: IDelayedCall | None = None
        self._connect_error: DataError | None = None
        self._connector: Any = None  # active: the connect under way (IConnector)
        self.direction: str | None = None

    # -- set-up ------------------------------------------------------------------------------
    def listen_passive(self, listen: Callable[[Factory], IListeningPort]) -> int:
        """Open the passive listener with `listen(factory)`; return its port."""
        self.listening = listen(_PassiveFactory(self))
        return int(self.listening.getHost().port)  # type: ignore[attr-defined]

    def set_active(self, host: str, port: int, bind_host: str) -> None:
        self.active_target = (host, port, bind_host)

    @property
    def is_passive(self) -> bool:
        return self.listening is not None or (
            self.connection is not None and self.connection.server_side
        )

    def _accept(self, addr: Any) -> Protocol | None:
        host = normalize_address(getattr(addr, "host", ""))
        if host != self.peer_host:
            log.warn(
                "refused a data connection from {host}: the control connection is from {peer}",
                host=host,
                peer=self.peer_host,
            )
            return None
        if self.connection is not None:
            return None
        self._stop_listening()
        return self._new_connection(server_side=True, addr=addr)

    def _new_connection(self, server_side: bool, addr: Any = None) -> Protocol:
        connection = DataConnection(self.tls, server_side)
        self.connection = connection
        if self.direction is not None:
            connection.expect(self.direction)
        if self._waiter is not None:
            connection.when_settled(self._settled)
        if self.tls is None:
            return connection
        # The server is the TLS server on data connections in both directions (RFC 4217).
        tls_factory = TLSMemoryBIOFactory(self.tls.creator, False, _Prebuilt(connection))
        tls_protocol = tls_factory.buildProtocol(addr)
        gate = TicketGate(WrappingFactory(tls_factory), tls_protocol)
        connection.gate = gate
        return gate

    def expect(self, direction: str) -> None:
        """Tell the (coming) data connection which way the transfer goes."""
        self.direction = direction
        if self.connection is not None:
            self.connection.expect(direction)

    def _connect_failed(self, reason: Failure) -> None:
        self._connect_error = DataError(Reply.CANT_OPEN_DATA, "Can't open data connection")
        self._deliver_error(self._connect_error)

    def _stop_listening(self) -> None:
        if self.listening is not None:
            listening, self.listening = self.listening, None
            listening.stopListening()

    # -- use -----------------------------------------------------------------------------------
    def open(self) -> Deferred[DataConnection]:
        """The data connection, once ready: waits for the passive accept or connects out."""
        if self.active_target is not None and self.connection is None:
            host, port, bind_host = self.active_target
            try:
                self._connector = self.reactor.connectTCP(
                    host,
                    port,
                    _ActiveFactory(self),
                    timeout=self.timeout,
                    bindAddress=(bind_host, 0),
                )
            except (OSError, TypeError, ValueError) as error:
                log.warn(
                    "cannot connect to {host}:{port}: {error}", host=host, port=port, error=error
                )
                self._connect_error = DataError(Reply.CANT_OPEN_DATA, "Can't open data connection")
        waiter: Deferred[DataConnection] = Deferred(lambda d: self.close())
        self._waiter = waiter
        self._timer = self.reactor.callLater(self.timeout, self._timed_out)
        if self.connection is not None:
            self.connection.when_settled(self._settled)
        elif self._connect_error is not None:
            self._deliver_error(self._connect_error)
        return waiter

    def settled_before_command(self) -> bool:
        """True when a data connection is already there and its set-up has ended."""
        return self.connection is not None and self.connection.settled

    def _settled(self, error: DataError | None) -> None:
        if error is not None:
            self._deliver_error(error)
            return
        self._cancel_timer()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.called and self.connection is not None:
            waiter.callback(self.connection)

    def _deliver_error(self, error: DataError) -> None:
        self._cancel_timer()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.called:
            waiter.errback(Failure(error))

    def _timed_out(self) -> None:
        self._timer = None
        self._deliver_error(DataError(Reply.CANT_OPEN_DATA, "Data connection timed out"))
        self.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def close(self) -> None:
        """Drop the set-up: stop listening or connecting, abort any connection, fail a
        pending open()."""
        self._cancel_timer()
        self._deliver_error(DataError(Reply.TRANSFER_ABORTED, "Transfer aborted"))
        self._stop_listening()
        connector, self._connector = self._connector, None
        if connector is not None and self.connection is None:
            # Active, the connect still under way (the client's SYN queue full, a slow
            # network): it would otherwise make a data connection nobody wants.
            try:
                connector.stopConnecting()
            except netError.NotConnectingError:
                pass  # it has failed already
        if self.connection is not None:
            self.connection.abort()
        self.active_target = None


class SendfileSender:
    """Clear data: the kernel copies the file to the socket (`os.sendfile`), in a thread.

    Twisted has no sendfile (twisted#11395). The reactor stops reading the socket
    while the thread owns it (so a FIN cannot close the descriptor under it); ABOR
    stops the thread first and closes the connection after it has returned.
    """

    CHUNK = 16 << 20

    def __init__(
        self, handle: IReadHandle, connection: DataConnection, offset: int, reactor: Any
    ) -> None:
        self.handle = handle
        self.connection = connection
        self.offset = offset
        self.reactor = reactor
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True

    def start(self) -> Deferred[None]:
        sock = raw_socket(self.connection.transport)
        if sock is None:
            return FileSender(self.handle, self.connection, self.offset).start()
        self.connection.pause_reading()
        self.connection.in_thread = self
        d: Deferred[None] = deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), self._pump, sock.fileno()
        )

        def done(result: object) -> object:
            self.connection.thread_done()
            self.connection.resume_reading()
            if isinstance(result, Failure) and not self._stopped:
                return Failure(
                    DataError(Reply.TRANSFER_ABORTED, "Connection closed; transfer aborted")
                )
            if self._stopped:
                return Failure(DataError(Reply.TRANSFER_ABORTED, "Transfer aborted"))
            return None

        return d.addBoth(done)  # type: ignore[return-value]

    def _pump(self, sock_fd: int) -> None:
        file_fd = self.handle.fileno()
        offset, end = self.offset, self.handle.size
        while offset < end and not self._stopped:
            try:
                sent = os.sendfile(sock_fd, file_fd, offset, min(end - offset, self.CHUNK))
            except BlockingIOError:
                select.select([], [sock_fd], [], 0.5)
                continue
            if sent == 0:  # the file shrank under us: send what there is
                break
            offset += sent
            self.connection.bytes_sent += sent


class FileSender:
    """Streams a file to a data connection, reading ahead in the filesystem's thread pool."""

    def __init__(self, handle: IReadHandle, connection: DataConnection, offset: int) -> None:
        self.handle = handle
        self.connection = connection
        self.offset = offset
        self.done: Deferred[None] = Deferred()
        self._paused = False
        self._stopped = False
        self._reading = False
        self._eof = False

    def start(self) -> Deferred[None]:
        self.connection.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self._read_next()
        return self.done

    def _read_next(self) -> None:
        if self._reading or self._paused or self._stopped or self._eof:
            return
        self._reading = True
        self.handle.read(self.offset, SEND_CHUNK).addCallbacks(self._got, self._failed)

    def _got(self, data: bytes) -> None:
        self._reading = False
        if self._stopped:
            return
        if not data:
            self._eof = True
            self._finish(None)
            return
        self.offset += len(data)
        self.connection.write(data)
        self._read_next()

    def _failed(self, failure: Failure) -> None:
        self._reading = False
        self._finish(failure)

    def _finish(self, failure: Failure | None) -> None:
        if self.done.called:
            return
        transport = self.connection.transport
        if transport is not None:
            transport.unregisterProducer()  # type: ignore[attr-defined]
        if failure is None:
            self.done.callback(None)
        else:
            self.done.errback(failure)

    # IPushProducer
    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._read_next()

    def stopProducing(self) -> None:
        self._stopped = True
        self._finish(
            Failure(DataError(Reply.TRANSFER_ABORTED, "Connection closed; transfer aborted"))
        )


class FileReceiver:
    """Feeds a data connection's bytes into an upload, pausing the socket for back-pressure."""

    def __init__(self, upload: IUpload, connection: DataConnection) -> None:
        self.upload = upload
        self.connection = connection
        self.error: Failure | None = None
        self._pending = 0

    def start(self) -> Deferred[bool]:
        """Fires with True when the peer closed cleanly (the upload is complete)."""
        self.connection.attach(self._on_data)
        return self.connection.closed

    def _on_data(self, data: bytes) -> None:
        if self.error is not None:
            return
        self._pending += 1
        d = self.upload.write(data)
        if not d.called:
            self.connection.pause_reading()
        d.addCallbacks(self._written, self._write_failed)

    def _written(self, _: object) -> None:
        self._pending -= 1
        if self._pending == 0:
            self.connection.resume_reading()

    def _write_failed(self, failure: Failure) -> None:
        self._pending -= 1
        if self.error is None:
            self.error = failure
            self.connection.abort()
