"""The link's framing, handshake facts and heartbeats, sans-IO (StringTransport, Clock)."""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from securetransport.edge.link import (
    HEARTBEAT_DEADLINE,
    HEARTBEAT_INTERVAL,
    MAX_PAYLOAD,
    Frame,
    FrameDecoder,
    FrameError,
    LinkProtocol,
    decode_json,
    encode,
    encode_json,
    info_from_json,
    info_to_json,
)
from securetransport.tls.facts import HandshakeInfo


class FramingTests(SynchronousTestCase):
    def test_layout(self) -> None:
        """4-byte big-endian payload length, 1-byte type, payload."""
        self.assertEqual(encode(Frame.DATA, b"abc"), b"\x00\x00\x00\x03\x03abc")
        self.assertEqual(encode(Frame.PING), b"\x00\x00\x00\x00\x0c")

    def test_round_trip_byte_by_byte(self) -> None:
        stream = (
            encode(Frame.DATA, b"x" * 1000)
            + encode_json(Frame.OPEN, {"kind": "control"})
            + encode(Frame.START_TLS)
        )
        decoder = FrameDecoder()
        frames: list[tuple[Frame, bytes]] = []
        for index in range(len(stream)):
            frames += decoder.feed(stream[index : index + 1])
        self.assertEqual(
            frames,
            [
                (Frame.DATA, b"x" * 1000),
                (Frame.OPEN, b'{"kind":"control"}'),
                (Frame.START_TLS, b""),
            ],
        )

    def test_oversized_frame_refused_before_buffering(self) -> None:
        header = struct.pack(">IB", MAX_PAYLOAD + 1, int(Frame.DATA))
        with self.assertRaises(FrameError):
            FrameDecoder().feed(header)
        with self.assertRaises(ValueError):
            encode(Frame.DATA, b"x" * (MAX_PAYLOAD + 1))

    def test_unknown_type(self) -> None:
        with self.assertRaises(FrameError):
            FrameDecoder().feed(struct.pack(">IB", 0, 200))

    def test_json_payloads(self) -> None:
        self.assertEqual(decode_json(b'{"a": 1}'), {"a": 1})
        for bad in (b"[1]", b"\xff", b"{"):
            with self.assertRaises(FrameError):
                decode_json(bad)

    def test_handshake_facts_round_trip(self) -> None:
        info = HandshakeInfo(
            tls_version="TLSv1.3",
            cipher="TLS_AES_256_GCM_SHA384",
            resumed=True,
            resumed_from_control=True,
            peer_chain=(b"\x30\x01", b"\x30\x02"),
            verify_errors=((0, 20), (1, 21)),
            group="x25519",
            master_key=b"secret",
        )
        back = info_from_json(decode_json(encode_json(Frame.TLS_UP, info_to_json(info))[5:]))
        self.assertEqual(back.peer_chain, info.peer_chain)
        self.assertEqual(back.verify_errors, info.verify_errors)
        self.assertEqual(
            (back.tls_version, back.cipher, back.resumed, back.resumed_from_control, back.group),
            ("TLSv1.3", "TLS_AES_256_GCM_SHA384", True, True, "x25519"),
        )
        self.assertIsNone(back.master_key)  # the master key never leaves the edge
        with self.assertRaises(FrameError):
            info_from_json({"peer_chain": ["zz"]})


class _Recorder(LinkProtocol):
    def __init__(self, reactor: Any) -> None:
        super().__init__(reactor)
        self.frames: list[tuple[Frame, bytes]] = []

    def frame_received(self, kind: Frame, payload: bytes) -> None:
        if kind is Frame.CLOSE:
            raise FrameError("bad close")
        self.frames.append((kind, payload))


class HeartbeatTests(SynchronousTestCase):
    def connect(self) -> tuple[_Recorder, StringTransport, Clock]:
        clock = Clock()
        protocol = _Recorder(clock)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.addCleanup(protocol.connectionLost, None)
        return protocol, transport, clock

    def test_pings_while_idle(self) -> None:
        protocol, transport, clock = self.connect()
        clock.advance(HEARTBEAT_INTERVAL)
        self.assertEqual(transport.value(), encode(Frame.PING))

    def test_dead_after_the_deadline(self) -> None:
        protocol, transport, clock = self.connect()
        for _ in range(int(HEARTBEAT_DEADLINE / HEARTBEAT_INTERVAL)):
            clock.advance(HEARTBEAT_INTERVAL)
            self.assertFalse(transport.disconnecting)
        clock.advance(HEARTBEAT_INTERVAL)
        self.assertTrue(transport.disconnecting)  # within 30 s + one interval

    def test_any_frame_keeps_it_alive(self) -> None:
        protocol, transport, clock = self.connect()
        for _ in range(10):
            clock.advance(HEARTBEAT_INTERVAL)
            protocol.dataReceived(encode(Frame.PING))
        self.assertFalse(transport.disconnecting)
        self.assertEqual(protocol.frames, [])  # pings are not delivered

    def test_paused_reading_is_not_silence(self) -> None:
        protocol, transport, clock = self.connect()
        protocol.pause_link()
        clock.advance(HEARTBEAT_DEADLINE * 3)
        self.assertFalse(transport.disconnecting)

    def test_protocol_error_ends_the_link(self) -> None:
        protocol, transport, clock = self.connect()
        protocol.dataReceived(encode(Frame.DATA, b"ok") + struct.pack(">IB", 0, 99))
        self.assertEqual(protocol.frames, [(Frame.DATA, b"ok")])
        self.assertTrue(transport.disconnecting)

    def test_handler_error_ends_the_link(self) -> None:
        protocol, transport, clock = self.connect()
        protocol.dataReceived(encode_json(Frame.CLOSE, {}) + encode(Frame.DATA, b"late"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(protocol.frames, [])


class _Edge:
    name = "dmz1"
    address = "127.0.0.3"
    port = 1


class _Producer:
    def pauseProducing(self) -> None:  # noqa: N802
        pass

    def resumeProducing(self) -> None:  # noqa: N802
        pass

    def stopProducing(self) -> None:  # noqa: N802
        pass


def _no_settings() -> dict[str, Any]:
    return {"settings": {}, "client_cas": []}


def server_link(
    case: SynchronousTestCase, transport: StringTransport, settings: Any = _no_settings
) -> tuple[Any, Any]:
    """A server's dialer (dialling nothing) and one link connection of it, up, on
    `transport`; `settings()` is what the dialer pushes."""
    from securetransport.edge.server_side import EdgeDialer, ServerLink

    dialer = EdgeDialer(Clock(), None, _Edge(), None, settings)  # type: ignore[arg-type]
    dialer.running = True
    dialer.top_up = lambda: None  # type: ignore[method-assign]  # no dialling here
    link = ServerLink(dialer)
    link.makeConnection(transport)
    link.handshakeCompleted()
    case.addCleanup(link.connectionLost, None)
    return dialer, link


class LinkReuseTests(SynchronousTestCase):
    """A server's link connection goes back to the pool when its client connection ends."""

    settings: dict[str, Any]

    def connect(self) -> tuple[Any, Any, StringTransport]:
        self.settings = {"settings": {}, "client_cas": []}
        transport = StringTransport()
        dialer, link = server_link(self, transport, lambda: dict(self.settings))
        self.assertEqual(dialer.idle, {link})
        transport.clear()
        return dialer, link, transport

    def frames(self, transport: StringTransport) -> list[tuple[Frame, bytes]]:
        frames = FrameDecoder().feed(transport.value())
        transport.clear()
        return frames

    def test_close_answered_by_reset_and_idle_again(self) -> None:
        from securetransport.edge.server_side import LinkUse

        dialer, link, transport = self.connect()
        link.dataReceived(encode_json(Frame.OPEN, {"kind": "data", "token": "unknown"}))
        self.assertNotIn(link, dialer.idle)
        self.assertEqual(self.frames(transport), [(Frame.CLOSE, b'{"how":"abort"}')])
        use = LinkUse(link)  # what the refused client connection's objects would hold
        transport.registerProducer(_Producer(), True)
        link.dataReceived(encode_json(Frame.CLOSE, {"clean": False}))
        self.assertEqual(self.frames(transport), [(Frame.RESET, b"")])
        self.assertIn(link, dialer.idle)
        self.assertIsNone(transport.producer)  # the old client connection's producer is off
        # Late sends for the old client connection go nowhere.
        use.send_data(b"late reply\r\n")
        use.send_json(Frame.CLOSE, {"how": "clean"})
        self.assertEqual(transport.value(), b"")
        self.assertTrue(use.lost)
        # The next client connection can take it.
        link.dataReceived(encode_json(Frame.OPEN, {"kind": "data", "token": "other"}))
        self.assertNotIn(link, dialer.idle)
        self.assertEqual(self.frames(transport), [(Frame.CLOSE, b'{"how":"abort"}')])

    def test_a_full_pool_closes_what_comes_back(self) -> None:
        dialer, link, transport = self.connect()
        link.dataReceived(encode_json(Frame.OPEN, {"kind": "data", "token": "unknown"}))
        dialer.idle.update(object() for _ in range(2 * dialer.pool_size))  # type: ignore[misc]
        transport.registerProducer(_Producer(), True)
        link.dataReceived(encode_json(Frame.CLOSE, {"clean": True}))
        self.assertNotIn(link, dialer.idle)
        self.assertTrue(transport.disconnecting)

    def test_changed_settings_reach_idle_and_returning_link_connections(self) -> None:
        dialer, idle, idle_transport = self.connect()
        from securetransport.edge.server_side import ServerLink

        busy = ServerLink(dialer)
        busy_transport = StringTransport()
        busy.makeConnection(busy_transport)
        busy.handshakeCompleted()
        self.addCleanup(busy.connectionLost, None)
        busy.dataReceived(encode_json(Frame.OPEN, {"kind": "data", "token": "unknown"}))
        busy_transport.clear()
        dialer.push_settings()
        self.assertEqual(self.frames(idle_transport), [])  # unchanged: nothing sent
        self.settings = {"settings": {}, "client_cas": ["30ab"]}  # new client CAs (SIGHUP)
        dialer.push_settings()
        self.assertEqual(
            self.frames(idle_transport),
            [(Frame.SETTINGS, encode_json(Frame.SETTINGS, self.settings)[5:])],
        )
        self.assertEqual(self.frames(busy_transport), [])  # in use: not now
        busy_transport.registerProducer(_Producer(), True)
        busy.dataReceived(encode_json(Frame.CLOSE, {"clean": True}))
        self.assertEqual(
            [kind for kind, _ in self.frames(busy_transport)], [Frame.RESET, Frame.SETTINGS]
        )
        self.assertIn(busy, dialer.idle)


class _EdgeStub:
    def __init__(self) -> None:
        self.reactor = Clock()
        self.links: set[Any] = set()
        self.idle: list[Any] = []
        self.ready: list[Any] = []

    def link_ready(self, link: Any) -> None:
        self.ready.append(link)


class EdgeLinkReleaseTests(SynchronousTestCase):
    """The edge's side of a link connection going back to the pool."""

    def test_release_sends_close_and_frees_waiters_then_reset_makes_it_ready(self) -> None:
        from securetransport.edge.relay import EdgeLink

        edge = _EdgeStub()
        link = EdgeLink(edge)  # type: ignore[arg-type]
        link_transport = StringTransport()
        link.makeConnection(link_transport)
        self.addCleanup(link.connectionLost, None)
        client_transport = StringTransport()
        link.bind(object(), client_transport)  # type: ignore[arg-type]
        link._link_full()  # the link's send buffer is full
        self.assertEqual(client_transport.producerState, "paused")  # the client is not read
        waiter = link.send_with_room(b"upload bytes")
        self.assertFalse(waiter.called)
        link_transport.clear()
        link.release(True)
        self.assertTrue(waiter.called)  # not left to fire for the next client connection
        self.assertIsNone(link_transport.producer)
        self.assertEqual(
            FrameDecoder().feed(link_transport.value()), [(Frame.CLOSE, b'{"clean":true}')]
        )
        link.dataReceived(encode(Frame.DATA, b"late, for the old client"))  # dropped
        self.assertFalse(link_transport.disconnecting)
        link.dataReceived(encode(Frame.RESET))
        self.assertEqual(edge.ready, [link])
        self.assertIsNone(link.client)


class _PendingHandle:
    """An IReadHandle whose read never completes: a FileSender waiting on the disk."""

    size = 1 << 30

    def read(self, offset: int, length: int) -> Any:
        from twisted.internet.defer import Deferred

        return Deferred()


class _TLSLikeTransport(StringTransport):
    """As Twisted's TLS transport (the link's): unregistering no producer does nothing."""

    def unregisterProducer(self) -> None:  # noqa: N802
        if self.producer is not None:
            super().unregisterProducer()


class RelayedDownloadEndTests(SynchronousTestCase):
    """A file sent over a relayed data connection stops when that connection ends, as on a
    socket (whose connectionLost stops its producer): before, a download paused by a full
    link outlived ABOR, and the session served no command after it."""

    def relayed(self) -> tuple[Any, Any, StringTransport]:
        from securetransport.edge.server_side import RelayedDataChannel

        transport = _TLSLikeTransport()
        dialer, link = server_link(self, transport)
        channel = RelayedDataChannel(
            dialer.reactor, "127.0.0.1", None, lambda *a: None, 30, None, "t1"
        )
        dialer.listening["t1"] = (channel, None)
        link.dataReceived(
            encode_json(Frame.OPEN, {"kind": "data", "token": "t1", "address": "127.0.0.1"})
        )
        self.assertIsNotNone(link.data)
        transport.clear()
        return link.data, link, transport

    def sending(self) -> tuple[Any, Any, StringTransport, list[Any]]:
        from securetransport.ftp.data import FileSender

        connection, link, transport = self.relayed()
        outcome: list[Any] = []
        FileSender(_PendingHandle(), connection, 0).start().addBoth(outcome.append)  # type: ignore[arg-type]
        self.assertIsNotNone(transport.producer)
        transport.pauseProducing()  # the link is full
        return connection, link, transport, outcome

    def test_the_edges_close_stops_a_paused_download(self) -> None:
        connection, link, transport, outcome = self.sending()
        link.dataReceived(encode_json(Frame.CLOSE, {"clean": False}))
        self.assertEqual(len(outcome), 1)
        self.assertIn("transfer aborted", str(outcome[0].value))
        self.assertIsNotNone(connection.lost_reason)
        self.assertIsNone(transport.producer)
        self.assertEqual(
            [kind for kind, _ in FrameDecoder().feed(transport.value())], [Frame.RESET]
        )

    def test_an_abort_stops_the_download_at_once(self) -> None:
        connection, link, transport, outcome = self.sending()
        connection.abort()  # ABOR, the watchdog, the session's end
        self.assertEqual(len(outcome), 1)
        self.assertIsNone(transport.producer)
        self.assertEqual(
            FrameDecoder().feed(transport.value()), [(Frame.CLOSE, b'{"how":"abort"}')]
        )
        self.assertIsNone(connection.lost_reason)  # lost when the edge answers
        link.dataReceived(encode_json(Frame.CLOSE, {"clean": False}))
        self.assertIsNotNone(connection.lost_reason)
