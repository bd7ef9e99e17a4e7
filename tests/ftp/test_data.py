"""Tests for securetransport.ftp.data: data channels and connections, with no sockets.

A MemoryReactorClock stands in for the reactor (connectTCP is recorded, time moves
when the test says so) and StringTransports for the data connections.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.policies import WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from securetransport.ftp.data import (
    RECEIVE_BUFFER_LIMIT,
    SEND_CHUNK,
    DataChannel,
    DataConnection,
    DataError,
    DataTLS,
    FileReceiver,
    FileSender,
    TicketGate,
)

PEER = "127.0.0.1"


class FakeListeningPort:
    def __init__(self, port: int) -> None:
        self.port = port
        self.stopped = False

    def getHost(self) -> IPv4Address:  # noqa: N802
        return IPv4Address("TCP", "127.0.0.1", self.port)

    def stopListening(self) -> None:  # noqa: N802
        self.stopped = True


class _Handle:
    def __init__(self, version: str) -> None:
        self.version = version

    def get_protocol_version_name(self) -> str:
        return self.version


class TLSTransport(StringTransport):
    """Records startTLS; getHandle returns a handle that names the TLS version."""

    def __init__(self, version: str = "TLSv1.3") -> None:
        super().__init__()
        self.tls_started: list[tuple[Any, bool]] = []
        self.handle = _Handle(version)

    def startTLS(self, creator: Any, normal: bool = True) -> None:  # noqa: N802
        self.tls_started.append((creator, normal))

    def getHandle(self) -> Any:  # noqa: N802
        return self.handle


_CONTEXT: list[Any] = []


def _session_creator() -> Any:
    """A real connection creator over a per-session context (built once per test run)."""
    from securetransport.tls.context import connection_creator
    from tests.tls.helpers import make_pki

    if not _CONTEXT:
        _CONTEXT.append(make_pki().factory().new_session_context())
    return connection_creator(_CONTEXT[0])


def outcome(d: Deferred[Any]) -> list[Any]:
    """Collect what `d` fires with: [("ok", value)] or [("error", failure)]."""
    seen: list[Any] = []
    d.addCallbacks(lambda value: seen.append(("ok", value)), lambda f: seen.append(("error", f)))
    return seen


class DataChannelTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock: Any = MemoryReactorClock()

    def passive(self, tls: DataTLS | None = None) -> tuple[DataChannel, FakeListeningPort, Any]:
        channel = DataChannel(self.clock, PEER, tls, timeout=120)
        listening = FakeListeningPort(61005)
        factories: list[Any] = []

        def listen(factory: Any) -> Any:
            factories.append(factory)
            return listening

        self.assertEqual(channel.listen_passive(listen), 61005)
        self.assertTrue(channel.is_passive)
        return channel, listening, factories[0]

    def test_passive_accepts_one_connection_from_the_peer(self) -> None:
        channel, listening, factory = self.passive()
        for host in ("127.0.0.2", "10.0.0.1", "::1"):
            kind = IPv6Address if ":" in host else IPv4Address
            self.assertIsNone(factory.buildProtocol(kind("TCP", host, 40000)), host)
        self.assertFalse(listening.stopped)
        connection = factory.buildProtocol(IPv6Address("TCP", "::ffff:127.0.0.1", 40000))
        self.assertIsInstance(connection, DataConnection)
        self.assertTrue(listening.stopped)
        self.assertIsNone(factory.buildProtocol(IPv4Address("TCP", PEER, 40001)))

    def test_open_waits_for_the_passive_connection(self) -> None:
        channel, _, factory = self.passive()
        seen = outcome(channel.open())
        self.assertEqual(seen, [])
        connection = factory.buildProtocol(IPv4Address("TCP", PEER, 40000))
        self.assertFalse(channel.settled_before_command())
        connection.makeConnection(StringTransport())
        self.assertEqual(seen, [("ok", connection)])
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.active()], [])

    def test_connection_before_the_command(self) -> None:
        # BUG: DataChannel.open() ends with `return self._waiter`, but when the
        # connection has already settled (clients such as ftplib and curl connect to the
        # passive port before sending LIST/RETR), when_settled -> _settled has already
        # fired the waiter and set self._waiter = None: open() returns None, and
        # FTPSession._run_transfer's `opened.addCallback(...)` raises AttributeError, so
        # the transfer command never gets a reply and the session stays busy for good.
        channel, _, factory = self.passive()
        connection = factory.buildProtocol(IPv4Address("TCP", PEER, 40000))
        connection.makeConnection(StringTransport())
        self.assertTrue(channel.settled_before_command())
        self.assertEqual(outcome(channel.open()), [("ok", connection)])

    def test_open_times_out(self) -> None:
        channel, listening, _ = self.passive()
        seen = outcome(channel.open())
        self.clock.advance(119.9)
        self.assertEqual(seen, [])
        self.clock.advance(0.2)
        self.assertEqual(len(seen), 1)
        kind, failure = seen[0]
        self.assertEqual(kind, "error")
        self.assertEqual(failure.value.code, 425)
        self.assertTrue(listening.stopped)

    def test_close_stops_listening_and_aborts(self) -> None:
        channel, listening, factory = self.passive()
        connection = factory.buildProtocol(IPv4Address("TCP", PEER, 40000))
        transport = StringTransport()
        connection.makeConnection(transport)
        channel.close()
        self.assertTrue(listening.stopped)
        self.assertTrue(transport.disconnected)  # aborted

    def test_active_connects_from_the_control_address(self) -> None:
        channel = DataChannel(self.clock, PEER, None, timeout=30)
        channel.set_active(PEER, 51210, "127.0.0.1")
        self.assertFalse(channel.is_passive)
        seen = outcome(channel.open())
        self.assertEqual(len(self.clock.tcpClients), 1)
        host, port, factory, timeout, bind = self.clock.tcpClients[0]
        self.assertEqual((host, port, timeout, bind), (PEER, 51210, 30, ("127.0.0.1", 0)))
        connection = factory.buildProtocol(IPv4Address("TCP", PEER, 51210))
        self.assertFalse(connection.server_side)
        connection.makeConnection(StringTransport())
        self.assertEqual(seen, [("ok", connection)])

    def test_active_connection_refused(self) -> None:
        channel = DataChannel(self.clock, PEER, None, timeout=30)
        channel.set_active(PEER, 51210, "127.0.0.1")
        seen = outcome(channel.open())
        factory = self.clock.tcpClients[0][2]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.assertEqual(len(seen), 1)
        self.assertEqual(seen[0][1].value.code, 425)

    def test_close_stops_an_active_connect_under_way(self) -> None:
        # ABOR (or the set-up's timeout, or the session's end) while the connect to the
        # client is still under way: no data connection is made after it.
        channel = DataChannel(self.clock, PEER, None, timeout=30)
        channel.set_active(PEER, 51210, "127.0.0.1")
        seen = outcome(channel.open())
        connector = self.clock.connectors[0]
        channel.close()
        self.assertTrue(connector.stoppedConnecting)
        self.assertEqual(seen[0][1].value.code, 426)

    def test_close_after_the_active_connection_leaves_the_connector(self) -> None:
        channel = DataChannel(self.clock, PEER, None, timeout=30)
        channel.set_active(PEER, 51210, "127.0.0.1")
        outcome(channel.open())
        factory = self.clock.tcpClients[0][2]
        connection = factory.buildProtocol(IPv4Address("TCP", PEER, 51210))
        transport = StringTransport()
        connection.makeConnection(transport)
        channel.close()
        self.assertFalse(self.clock.connectors[0].stoppedConnecting)
        self.assertTrue(transport.disconnected)  # aborted


class DataConnectionTests(SynchronousTestCase):
    def tls(self, problem: str | None = None) -> tuple[DataTLS, list[Any]]:
        checked: list[Any] = []

        def check(handle: Any) -> str | None:
            checked.append(handle)
            return problem

        return DataTLS(creator=_session_creator(), check=check), checked

    def test_tls_starts_at_once_as_server(self) -> None:
        # The channel puts TLS (server mode, RFC 4217) under every protected data
        # connection, passive or active, with the ticket gate beneath it.
        for server_side in (True, False):
            tls, checked = self.tls()
            channel = DataChannel(MemoryReactorClock(), PEER, tls, timeout=30)
            protocol = channel._new_connection(
                server_side=server_side, addr=IPv4Address("TCP", PEER, 5000)
            )
            self.assertIsInstance(protocol, TicketGate)
            tls_protocol = protocol.wrappedProtocol
            self.assertIsInstance(tls_protocol, TLSMemoryBIOProtocol)
            self.assertIs(tls_protocol.wrappedProtocol, channel.connection)
            wire = StringTransport()
            protocol.makeConnection(wire)
            # A TLS server waits for the ClientHello; a client would have sent one already.
            self.assertEqual(wire.value(), b"")
            self.assertTrue(tls_protocol.getHandle().get_state_string().startswith(b"before"))
            connection = channel.connection
            assert connection is not None
            connection.transport = TLSTransport()
            self.assertFalse(connection.settled)
            connection.handshakeCompleted()
            self.assertEqual(len(checked), 1)
            self.assertTrue(connection.is_ready)

    def test_ticket_gate_holds_for_uploads_and_keeps_order(self) -> None:
        transport = StringTransport()
        inner = Protocol()
        gate = TicketGate(WrappingFactory(Factory()), inner)
        gate.makeConnection(transport)
        gate.write(b"handshake")
        gate.hold()
        gate.write(b"ticket1")
        gate.writeSequence([b"ticket2"])
        self.assertEqual(transport.value(), b"handshake")
        gate.write(b"close_notify")
        gate.loseConnection()
        self.assertEqual(transport.value(), b"handshaketicket1ticket2close_notify")
        self.assertTrue(transport.disconnecting)

    def test_download_releases_what_the_gate_holds(self) -> None:
        tls, _ = self.tls()
        channel = DataChannel(MemoryReactorClock(), PEER, tls, timeout=30)
        gate = channel._new_connection(server_side=True, addr=IPv4Address("TCP", PEER, 5000))
        assert isinstance(gate, TicketGate)
        transport = StringTransport()
        gate.transport = transport
        connection = channel.connection
        assert connection is not None
        connection.makeConnection(TLSTransport())
        connection.handshakeCompleted()  # direction unknown yet: hold
        self.assertTrue(gate.holding)
        gate.write(b"ticket")
        self.assertEqual(transport.value(), b"")
        channel.expect("send")
        self.assertFalse(gate.holding)
        self.assertEqual(transport.value(), b"ticket")

    def test_tls12_handshake_is_never_held(self) -> None:
        # TLS 1.2: what is unsent at handshakeCompleted is the server's last flight.
        tls, _ = self.tls()
        channel = DataChannel(MemoryReactorClock(), PEER, tls, timeout=30)
        gate = channel._new_connection(server_side=True, addr=IPv4Address("TCP", PEER, 5000))
        assert isinstance(gate, TicketGate)
        transport = StringTransport()
        gate.transport = transport
        channel.expect("receive")
        connection = channel.connection
        assert connection is not None
        connection.makeConnection(TLSTransport("TLSv1.2"))
        connection.handshakeCompleted()
        self.assertFalse(gate.holding)
        gate.write(b"finished")
        self.assertEqual(transport.value(), b"finished")

    def test_tls_session_check_fails_with_522(self) -> None:
        tls, _ = self.tls("TLS session not resumed from the control connection")
        connection = DataConnection(tls, server_side=True)
        errors: list[DataError | None] = []
        connection.when_settled(errors.append)
        transport = TLSTransport()
        connection.makeConnection(transport)
        connection.handshakeCompleted()
        self.assertEqual(len(errors), 1)
        error = errors[0]
        assert error is not None
        self.assertEqual(
            (error.code, error.text), (522, "TLS session not resumed from the control connection")
        )
        self.assertTrue(transport.disconnected)
        self.assertFalse(connection.is_ready)

    def test_lost_before_ready(self) -> None:
        cases = [
            (self.tls()[0], ConnectionLost(), 522),
            (self.tls()[0], ConnectionDone(), 425),
            (None, ConnectionLost(), None),  # clear: ready at once, nothing to fail
        ]
        for tls, reason, code in cases:
            connection = DataConnection(tls, server_side=True)
            errors: list[DataError | None] = []
            connection.when_settled(errors.append)
            connection.makeConnection(TLSTransport())
            outcome(connection.closed)
            connection.connectionLost(Failure(reason))
            self.assertEqual(len(errors), 1)
            self.assertEqual(None if errors[0] is None else errors[0].code, code)

    def test_closed_reports_a_clean_close(self) -> None:
        # `closed` fires (as a result, never an error) with whether the close was clean.
        connection = DataConnection(None, server_side=True)
        connection.makeConnection(StringTransport())
        seen = outcome(connection.finish())
        connection.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(seen), 1)
        kind, reason = seen[0]
        self.assertEqual(kind, "ok")
        self.assertIs(reason, True)

    def test_closed_reports_a_lost_connection(self) -> None:
        connection = DataConnection(None, server_side=True)
        connection.makeConnection(StringTransport())
        seen = outcome(connection.finish())
        connection.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(seen, [("ok", False)])

    def test_finish_closes_after_writing(self) -> None:
        connection = DataConnection(None, server_side=True)
        transport = StringTransport()
        connection.makeConnection(transport)
        connection.write(b"abc")
        connection.finish()
        self.assertEqual((transport.value(), connection.bytes_sent), (b"abc", 3))
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.disconnected)  # a clean close, not an abort
        outcome(connection.closed)  # consumes the result whichever way it fires
        connection.connectionLost(Failure(ConnectionDone()))

    def test_received_data_is_buffered_until_attach(self) -> None:
        connection = DataConnection(None, server_side=True)
        transport = StringTransport()
        connection.makeConnection(transport)
        connection.dataReceived(b"a" * RECEIVE_BUFFER_LIMIT)
        self.assertEqual(transport.producerState, "producing")
        connection.dataReceived(b"b")
        self.assertEqual(transport.producerState, "paused")
        received: list[bytes] = []
        connection.attach(received.append)
        connection.dataReceived(b"c")
        self.assertEqual(b"".join(received), b"a" * RECEIVE_BUFFER_LIMIT + b"bc")
        self.assertEqual(connection.bytes_received, RECEIVE_BUFFER_LIMIT + 2)
        connection.resume_reading()
        self.assertEqual(transport.producerState, "producing")


class FakeReadHandle:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.reads: list[tuple[int, int]] = []

    @property
    def size(self) -> int:
        return len(self.data)

    def fileno(self) -> int:
        return -1

    def read(self, offset: int, length: int) -> Deferred[bytes]:
        self.reads.append((offset, length))
        return succeed(self.data[offset : offset + length])

    def close(self) -> None:
        pass


class ManualReadHandle:
    """Reads that the test completes by hand."""

    def __init__(self) -> None:
        self.pending: list[Deferred[bytes]] = []
        self.offsets: list[int] = []

    def read(self, offset: int, length: int) -> Deferred[bytes]:
        self.offsets.append(offset)
        d: Deferred[bytes] = Deferred()
        self.pending.append(d)
        return d


class FakeUpload:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.pending: list[Deferred[None]] = []
        self.immediate = True

    def write(self, data: bytes) -> Deferred[None]:
        self.chunks.append(data)
        if self.immediate:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self.pending.append(d)
        return d


class FileTransferTests(SynchronousTestCase):
    def test_sender_sends_from_the_offset(self) -> None:
        data = bytes(range(256)) * (SEND_CHUNK // 256) * 2 + b"tail"
        handle = FakeReadHandle(data)
        connection = DataConnection(None, server_side=True)
        transport = StringTransport()
        connection.makeConnection(transport)
        done = outcome(FileSender(handle, connection, 10).start())  # type: ignore[arg-type]
        self.assertEqual(done, [("ok", None)])
        self.assertEqual(transport.value(), data[10:])
        self.assertEqual(handle.reads[0], (10, SEND_CHUNK))
        self.assertIsNone(transport.producer)  # unregistered at the end

    def test_sender_pauses(self) -> None:
        handle = ManualReadHandle()
        connection = DataConnection(None, server_side=True)
        transport = StringTransport()
        connection.makeConnection(transport)
        sender = FileSender(handle, connection, 0)  # type: ignore[arg-type]
        sender.start()
        self.assertEqual(len(handle.pending), 1)
        sender.pauseProducing()
        handle.pending[0].callback(b"first")
        self.assertEqual(transport.value(), b"first")
        self.assertEqual(len(handle.pending), 1)  # paused: no read ahead
        sender.resumeProducing()
        self.assertEqual(len(handle.pending), 2)
        self.assertEqual(handle.offsets, [0, 5])

    def test_sender_stopped_by_the_transport(self) -> None:
        handle = ManualReadHandle()
        connection = DataConnection(None, server_side=True)
        connection.makeConnection(StringTransport())
        sender = FileSender(handle, connection, 0)  # type: ignore[arg-type]
        done = outcome(sender.start())
        sender.stopProducing()
        self.assertEqual(len(done), 1)
        self.assertEqual(done[0][1].value.code, 426)

    def test_receiver_applies_back_pressure(self) -> None:
        upload = FakeUpload()
        connection = DataConnection(None, server_side=True)
        transport = StringTransport()
        connection.makeConnection(transport)
        connection.dataReceived(b"early")
        receiver = FileReceiver(upload, connection)  # type: ignore[arg-type]
        receiver.start()
        self.assertEqual(upload.chunks, [b"early"])
        upload.immediate = False
        connection.dataReceived(b"slow")
        self.assertEqual(transport.producerState, "paused")
        upload.pending[0].callback(None)
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(upload.chunks, [b"early", b"slow"])

    def test_receiver_write_failure_aborts(self) -> None:
        upload = FakeUpload()
        upload.immediate = False
        connection = DataConnection(None, server_side=True)
        transport = StringTransport()
        connection.makeConnection(transport)
        receiver = FileReceiver(upload, connection)  # type: ignore[arg-type]
        receiver.start()
        connection.dataReceived(b"data")
        upload.pending[0].errback(OSError("disk full"))
        self.assertIsNotNone(receiver.error)
        self.assertTrue(transport.disconnected)
        connection.dataReceived(b"more")
        self.assertEqual(upload.chunks, [b"data"])
