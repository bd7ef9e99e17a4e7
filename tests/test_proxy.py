"""PROXY protocol: the sans-IO parser (tables and properties) and the listener wrapper."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from securetransport.proxy import (
    MAX_V2_PAYLOAD,
    V1_MAX,
    V2_SIGNATURE,
    Invalid,
    Parsed,
    ProxyHeader,
    ProxyHeaderProtocol,
    ProxyParser,
    ProxyProtocolFactory,
    format_v1,
    format_v2,
)


def parse(data: bytes) -> Parsed | Invalid | None:
    return ProxyParser().feed(data)


V2_TCP4 = format_v2(("203.0.113.7", 40000), ("198.51.100.1", 21))

# (input, expected header or None for "need more" or an Invalid marker)
VALID = [
    (
        b"PROXY TCP4 192.0.2.1 198.51.100.1 5000 21\r\n",
        ProxyHeader(1, ("192.0.2.1", 5000), ("198.51.100.1", 21)),
    ),
    (
        b"PROXY TCP6 2001:db8::1 2001:db8::2 65535 0\r\n",
        ProxyHeader(1, ("2001:db8::1", 65535), ("2001:db8::2", 0)),
    ),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(1)),
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", ProxyHeader(1)),
    (V2_TCP4, ProxyHeader(2, ("203.0.113.7", 40000), ("198.51.100.1", 21))),
    (
        format_v2(("2001:db8::5", 1), ("2001:db8::6", 2)),
        ProxyHeader(2, ("2001:db8::5", 1), ("2001:db8::6", 2)),
    ),
    (format_v2(None, None), ProxyHeader(2)),  # LOCAL (health checks)
    # UNSPEC family with PROXY command: keep the connection's address
    (V2_SIGNATURE + bytes([0x21, 0x00]) + struct.pack("!H", 0), ProxyHeader(2)),
    # UNIX stream: keep the connection's address
    (V2_SIGNATURE + bytes([0x21, 0x31]) + struct.pack("!H", 216) + bytes(216), ProxyHeader(2)),
    # TLVs after the addresses are skipped
    (
        V2_SIGNATURE
        + bytes([0x21, 0x11])
        + struct.pack("!H", 12 + 7)
        + bytes([192, 0, 2, 9, 192, 0, 2, 10])
        + struct.pack("!HH", 7, 8)
        + b"\x04\x00\x04abcd",
        ProxyHeader(2, ("192.0.2.9", 7), ("192.0.2.10", 8)),
    ),
]

INVALID = [
    b"USER alice\r\n",
    b"GET / HTTP/1.0\r\n",
    b"\x16\x03\x01\x02\x00",  # a TLS ClientHello
    b"PROXY TCP4 192.0.2.1 198.51.100.1 5000\r\n",  # a field missing
    b"PROXY TCP4 2001:db8::1 198.51.100.1 5000 21\r\n",  # family mismatch
    b"PROXY TCP6 192.0.2.1 198.51.100.1 5000 21\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.1 65536 21\r\n",  # port out of range
    b"PROXY TCP4 192.0.2.1 198.51.100.1 0500 21\r\n",  # leading zero
    b"PROXY TCP4 192.0.2.1 198.51.100.1 -1 21\r\n",
    b"PROXY TCP4 192.0.2.256 198.51.100.1 5 21\r\n",
    b"PROXY UDP4 192.0.2.1 198.51.100.1 5 21\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.1 5 21\n",  # bare LF
    b"PROXY " + b"A" * (V1_MAX + 10),  # no CRLF within 107 bytes
    b"PROXY  TCP4 192.0.2.1 198.51.100.1 5 21\r\n",  # two spaces
    V2_SIGNATURE + bytes([0x11, 0x11]) + struct.pack("!H", 12) + bytes(12),  # version 1 in v2
    V2_SIGNATURE + bytes([0x22, 0x11]) + struct.pack("!H", 12) + bytes(12),  # command 2
    V2_SIGNATURE + bytes([0x21, 0x41]) + struct.pack("!H", 12) + bytes(12),  # family 4
    V2_SIGNATURE + bytes([0x21, 0x13]) + struct.pack("!H", 12) + bytes(12),  # transport 3
    V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", 4) + bytes(4),  # too short for IPv4
    V2_SIGNATURE + bytes([0x21, 0x21]) + struct.pack("!H", 12) + bytes(12),  # too short for IPv6
    V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", MAX_V2_PAYLOAD + 1),  # over the cap
]

INCOMPLETE = [
    b"",
    b"P",
    b"PROXY TCP4 192.0.2.1",
    b"PROXY TCP4 192.0.2.1 198.51.100.1 5000 21\r",
    V2_SIGNATURE[:5],
    V2_SIGNATURE,
    V2_TCP4[:-1],
]


class ParserTable(SynchronousTestCase):
    def test_valid(self) -> None:
        for data, header in VALID:
            result = parse(data + b"USER x\r\n")
            self.assertEqual(result, Parsed(header, b"USER x\r\n"), data)

    def test_invalid(self) -> None:
        for data in INVALID:
            self.assertIsInstance(parse(data), Invalid, data)

    def test_incomplete(self) -> None:
        for data in INCOMPLETE:
            self.assertIsNone(parse(data), data)

    def test_byte_by_byte_is_the_same_as_at_once(self) -> None:
        for data, header in VALID:
            parser = ProxyParser()
            results = [parser.feed(data[i : i + 1]) for i in range(len(data))]
            self.assertEqual(results[:-1], [None] * (len(data) - 1), data)
            self.assertEqual(results[-1], Parsed(header, b""), data)

    def test_result_is_sticky(self) -> None:
        parser = ProxyParser()
        first = parser.feed(b"PROXY UNKNOWN\r\nabc")
        self.assertEqual(parser.feed(b"more"), first)

    def test_v1_longest_line_is_accepted(self) -> None:
        line = format_v1(
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff1", 65535),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff2", 65535),
        )
        self.assertEqual(len(line), 104)
        unknown = b"PROXY UNKNOWN " + b"x" * (V1_MAX - 16) + b"\r\n"
        self.assertEqual(len(unknown), V1_MAX)
        self.assertIsInstance(parse(line), Parsed)
        self.assertIsInstance(parse(unknown), Parsed)
        self.assertIsInstance(parse(unknown[:-2] + b"y\r\n"), Invalid)


addresses = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str))
ports = st.integers(0, 65535)


class ParserProperties(SynchronousTestCase):
    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=600), st.lists(st.integers(1, 64), max_size=20))
    def test_never_raises_and_holds_a_bounded_buffer(self, data: bytes, cuts: list[int]) -> None:
        parser = ProxyParser()
        position = 0
        for size in [*cuts, len(data)]:
            result = parser.feed(data[position : position + size])
            position += size
            self.assertLessEqual(len(parser._buffer), 16 + MAX_V2_PAYLOAD)
            if result is not None:
                self.assertIsInstance(result, Parsed | Invalid)
                break

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200))
    def test_random_bytes_after_a_signature(self, tail: bytes) -> None:
        for prefix in (V2_SIGNATURE, b"PROXY ", b"PROXY TCP4 "):
            result = parse(prefix + tail)
            self.assertIn(type(result), (Parsed, Invalid, type(None)))

    @settings(max_examples=300, deadline=None)
    @given(st.data(), st.binary(max_size=50), st.booleans())
    def test_round_trip(self, data: st.DataObject, rest: bytes, v2: bool) -> None:
        version = data.draw(st.sampled_from([4, 6]))
        source = (str(data.draw(st.ip_addresses(v=version))), data.draw(ports))
        destination = (str(data.draw(st.ip_addresses(v=version))), data.draw(ports))
        header = (format_v2 if v2 else format_v1)(source, destination)
        self.assertEqual(
            parse(header + rest),
            Parsed(ProxyHeader(2 if v2 else 1, source, destination), rest),
        )

    @settings(max_examples=200, deadline=None)
    @given(st.integers(0, 0xFFFF), st.integers(0, 255), st.integers(0, 255), st.binary(max_size=64))
    def test_v2_any_fields(self, length: int, version: int, family: int, payload: bytes) -> None:
        data = V2_SIGNATURE + bytes([version, family]) + struct.pack("!H", length) + payload
        result = parse(data)
        if length > MAX_V2_PAYLOAD:
            self.assertIsInstance(result, Invalid)
        elif length > len(payload):
            self.assertIn(type(result), (Invalid, type(None)))
        if isinstance(result, Parsed) and result.header.source is not None:
            ipaddress.ip_address(result.header.source[0])


# --- the wrapper --------------------------------------------------------------------------


@implementer(IHandshakeListener)
class Recorder(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.peer: object = None
        self.lost = False
        self.handshakes = 0

    def connectionMade(self) -> None:
        self.peer = self.transport.getPeer()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: object = None) -> None:
        self.lost = True

    def handshakeCompleted(self) -> None:
        self.handshakes += 1


class RecordingFactory(Factory):
    def __init__(self) -> None:
        self.built: list[tuple[object, Recorder]] = []

    def buildProtocol(self, addr: object) -> Recorder:
        protocol = Recorder()
        self.built.append((addr, protocol))
        return protocol


class AbortableTransport(StringTransport):
    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()


class WrapperTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.inner = RecordingFactory()
        self.factory = ProxyProtocolFactory(
            self.inner, [ipaddress.ip_network("10.0.0.0/8")], False, self.clock
        )

    def connect(self, host: str) -> tuple[object, AbortableTransport]:
        address = IPv4Address("TCP", host, 5555)
        protocol = self.factory.buildProtocol(address)
        transport = AbortableTransport(peerAddress=address)
        assert protocol is not None
        protocol.makeConnection(transport)
        return protocol, transport

    def test_trusted_sender_header_sets_the_peer(self) -> None:
        protocol, transport = self.connect("10.1.1.1")
        self.assertIsInstance(protocol, ProxyHeaderProtocol)
        self.assertEqual(self.inner.built, [])  # nothing before the header
        protocol.dataReceived(b"PROXY TCP4 192.0.2.7 10.1.1.2 4000 21\r\nUSER a\r\n")  # type: ignore[attr-defined]
        ((addr, inner),) = self.inner.built
        self.assertEqual((addr.host, addr.port), ("192.0.2.7", 4000))  # type: ignore[attr-defined]
        self.assertEqual(inner.peer, addr)
        self.assertEqual(inner.data, b"USER a\r\n")
        protocol.dataReceived(b"PASS b\r\n")  # type: ignore[attr-defined]
        self.assertEqual(inner.data, b"USER a\r\nPASS b\r\n")
        self.assertEqual(protocol.getHost(), transport.getHost())  # type: ignore[attr-defined]
        inner.transport.write(b"220 hi\r\n")  # type: ignore[union-attr]
        self.assertEqual(transport.value(), b"220 hi\r\n")
        self.clock.advance(10)
        self.assertFalse(transport.aborted)

    def test_handshake_is_forwarded(self) -> None:
        protocol, _ = self.connect("10.1.1.1")
        protocol.dataReceived(format_v2(("192.0.2.7", 1), ("10.0.0.1", 21)))  # type: ignore[attr-defined]
        self.assertTrue(IHandshakeListener.providedBy(protocol))
        protocol.handshakeCompleted()  # type: ignore[attr-defined]
        self.assertEqual(self.inner.built[0][1].handshakes, 1)

    def test_local_header_keeps_the_sender_address(self) -> None:
        protocol, _ = self.connect("10.1.1.1")
        protocol.dataReceived(format_v2(None, None))  # type: ignore[attr-defined]
        self.assertEqual(self.inner.built[0][0].host, "10.1.1.1")  # type: ignore[attr-defined]

    def test_header_timeout_is_three_seconds(self) -> None:
        protocol, transport = self.connect("10.1.1.1")
        protocol.dataReceived(b"PROXY TCP4 ")  # type: ignore[attr-defined]
        self.clock.advance(2.9)
        self.assertFalse(transport.aborted)
        self.clock.advance(0.2)
        self.assertTrue(transport.aborted)
        self.assertEqual(self.inner.built, [])

    def test_bad_header_aborts(self) -> None:
        protocol, transport = self.connect("10.1.1.1")
        protocol.dataReceived(b"USER alice\r\n")  # type: ignore[attr-defined]
        self.assertTrue(transport.aborted)
        self.assertEqual(self.inner.built, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_untrusted_sender_is_never_believed(self) -> None:
        protocol, _ = self.connect("192.0.2.50")
        self.assertIsInstance(protocol, Recorder)
        protocol.dataReceived(b"PROXY TCP4 10.9.9.9 10.0.0.1 4000 21\r\n")  # type: ignore[attr-defined]
        ((addr, inner),) = self.inner.built
        self.assertEqual(addr.host, "192.0.2.50")  # type: ignore[attr-defined]
        self.assertEqual(inner.data, b"PROXY TCP4 10.9.9.9 10.0.0.1 4000 21\r\n")

    def test_required_refuses_other_senders(self) -> None:
        self.factory.required = True
        protocol, transport = self.connect("192.0.2.50")
        self.assertTrue(transport.aborted)
        self.assertEqual(self.inner.built, [])
        trusted, transport = self.connect("10.2.2.2")
        self.assertFalse(transport.aborted)

    def test_mapped_ipv6_sender_is_matched_as_ipv4(self) -> None:
        self.assertTrue(self.factory.is_trusted("::ffff:10.1.2.3"))
        self.assertFalse(self.factory.is_trusted("::ffff:11.1.2.3"))
        self.assertFalse(self.factory.is_trusted("not an address"))

    def test_refused_inner_protocol_closes(self) -> None:
        self.inner.buildProtocol = lambda addr: None  # type: ignore[method-assign,assignment,return-value]
        protocol, transport = self.connect("10.1.1.1")
        protocol.dataReceived(b"PROXY UNKNOWN\r\n")  # type: ignore[attr-defined]
        self.assertTrue(transport.disconnecting)

    def test_connection_lost_before_header(self) -> None:
        protocol, _ = self.connect("10.1.1.1")
        protocol.connectionLost(None)  # type: ignore[attr-defined]
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_connection_lost_reaches_the_inner_protocol(self) -> None:
        protocol, _ = self.connect("10.1.1.1")
        protocol.dataReceived(b"PROXY UNKNOWN\r\n")  # type: ignore[attr-defined]
        protocol.connectionLost(None)  # type: ignore[attr-defined]
        self.assertTrue(self.inner.built[0][1].lost)
