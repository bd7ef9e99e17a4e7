"""PROXY protocol v1 and v2 (HAProxy's proxy-protocol.txt): a sans-IO parser and a listener wrapper.

Rules (SPEC section 10):

1. Only a connection whose peer lies in `[proxy] from` is asked for a header; from any
   other address no header is read (it is served as it is, or closed when
   `required = true`), so a header from an untrusted sender is never believed.
2. A trusted connection must send a complete, valid header within `timeout` seconds
   (3 by default); otherwise it is aborted. Nothing of the client's reaches the wrapped
   protocol before the header has been parsed.
3. The header's source address becomes the connection's peer (`getPeer()`), so classes,
   bans, limits, the data-connection peer check and the audit see the client. `LOCAL`
   (v2) and `UNKNOWN` (v1) headers, and address families other than TCP over IPv4/IPv6,
   keep the balancer's own address (health checks send these).
4. Reads are bounded: at most 107 bytes for v1 and 16 + `MAX_V2_PAYLOAD` for v2; the
   parser never raises on input, it answers `Invalid` with a reason.

Twisted's `twisted.protocols.haproxy` is not used: it requires the header on every
connection, has no list of trusted senders and no timeout.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from zope.interface import alsoProvides, directlyProvides, providedBy

from securetransport.client import normalize_address

log = Logger(namespace="securetransport.proxy")

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 line, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER = 16
MAX_V2_PAYLOAD = 4096  # addresses (36 bytes at most) plus TLVs; HAProxy sends far less
HEADER_TIMEOUT = 3.0

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ProxyHeader:
    """A parsed header. `source`/`destination` are None for LOCAL/UNKNOWN headers."""

    version: int
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None


@dataclass(frozen=True)
class Parsed:
    header: ProxyHeader
    rest: bytes  # what followed the header: the client's first bytes


@dataclass(frozen=True)
class Invalid:
    reason: str


Result = Parsed | Invalid


def _port(text: bytes) -> int | None:
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[:1] == b"0"):
        return None
    value = int(text)
    return value if value <= 65535 else None


def _address(text: bytes, version: int) -> str | None:
    try:
        ip = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    return str(ip) if ip.version == version else None


def parse_v1(line: bytes) -> ProxyHeader | Invalid:
    """A v1 line without CRLF: `PROXY TCP4|TCP6 SRC DST SPORT DPORT` or `PROXY UNKNOWN ...`."""
    parts = line.split(b" ")
    if len(parts) < 2 or parts[0] != b"PROXY":
        return Invalid("not a PROXY v1 line")
    if parts[1] == b"UNKNOWN":
        return ProxyHeader(1)
    if parts[1] not in (b"TCP4", b"TCP6") or len(parts) != 6:
        return Invalid("bad PROXY v1 protocol or field count")
    version = 4 if parts[1] == b"TCP4" else 6
    source, destination = _address(parts[2], version), _address(parts[3], version)
    sport, dport = _port(parts[4]), _port(parts[5])
    if source is None or destination is None or sport is None or dport is None:
        return Invalid("bad PROXY v1 address or port")
    return ProxyHeader(1, (source, sport), (destination, dport))


def parse_v2(header: bytes, payload: bytes) -> ProxyHeader | Invalid:
    """The 16-byte v2 header (signature checked by the caller) and its payload."""
    version_command, family = header[12], header[13]
    if version_command >> 4 != 2:
        return Invalid("bad PROXY v2 version")
    command = version_command & 0x0F
    if command == 0:  # LOCAL: the balancer's own connection (health checks)
        return ProxyHeader(2)
    if command != 1:
        return Invalid("bad PROXY v2 command")
    address_family, transport = family >> 4, family & 0x0F
    if address_family > 3 or transport > 2:
        return Invalid("bad PROXY v2 address family")
    if transport != 1 or address_family not in (1, 2):
        return ProxyHeader(2)  # UNSPEC, UNIX or datagram: keep the connection's address
    size, kind = (12, ipaddress.IPv4Address) if address_family == 1 else (36, ipaddress.IPv6Address)
    if len(payload) < size:
        return Invalid("PROXY v2 payload too short for its addresses")
    width = size // 2 - 2
    source = str(kind(payload[:width]))
    destination = str(kind(payload[width : 2 * width]))
    sport, dport = struct.unpack("!HH", payload[2 * width : size])
    return ProxyHeader(2, (source, sport), (destination, dport))


class ProxyParser:
    """Feed bytes until a `Parsed` or `Invalid` comes out; `None` means "need more".

    Holds at most one header's worth of bytes; after a result, feeding again returns it.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self.result: Result | None = None

    def feed(self, data: bytes) -> Result | None:
        if self.result is not None:
            return self.result
        self._buffer += data
        self.result = self._step()
        if self.result is not None:
            self._buffer = b""
        return self.result

    def _step(self) -> Result | None:
        buffer = self._buffer
        head = buffer[: len(V2_SIGNATURE)]
        if V2_SIGNATURE.startswith(head) and not V1_PREFIX.startswith(buffer[:6]):
            return self._step_v2(buffer)
        if V1_PREFIX.startswith(buffer[:6]) and not V2_SIGNATURE.startswith(head):
            return self._step_v1(buffer)
        if not buffer:
            return None
        return Invalid("no PROXY protocol header")

    @staticmethod
    def _step_v1(buffer: bytes) -> Result | None:
        end = buffer.find(b"\r\n", 0, V1_MAX)
        if end < 0:
            if len(buffer) >= V1_MAX or b"\n" in buffer[:V1_MAX]:
                return Invalid("PROXY v1 line too long or without CRLF")
            return None
        header = parse_v1(buffer[:end])
        if isinstance(header, Invalid):
            return header
        return Parsed(header, buffer[end + 2 :])

    @staticmethod
    def _step_v2(buffer: bytes) -> Result | None:
        if len(buffer) < V2_HEADER:
            return None
        (length,) = struct.unpack("!H", buffer[14:16])
        if length > MAX_V2_PAYLOAD:
            return Invalid(f"PROXY v2 payload of {length} bytes is over {MAX_V2_PAYLOAD}")
        if len(buffer) < V2_HEADER + length:
            return None
        header = parse_v2(buffer[:V2_HEADER], buffer[V2_HEADER : V2_HEADER + length])
        if isinstance(header, Invalid):
            return header
        return Parsed(header, buffer[V2_HEADER + length :])


def format_v1(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """A v1 header (for tests and tools)."""
    family = "TCP6" if ":" in source[0] else "TCP4"
    return (f"PROXY {family} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n").encode(
        "ascii"
    )


def format_v2(source: tuple[str, int] | None, destination: tuple[str, int] | None) -> bytes:
    """A v2 PROXY header, or LOCAL when `source` is None (for tests and tools)."""
    if source is None or destination is None:
        return V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", 0)
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    family = 0x11 if src.version == 4 else 0x21
    payload = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    return V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(payload)) + payload


# --- Twisted wrapper ------------------------------------------------------------------------


def _twisted_address(host: str, port: int) -> IPv4Address | IPv6Address:
    if ":" in host:
        return IPv6Address("TCP", host, port)
    return IPv4Address("TCP", host, port)


class ProxyHeaderProtocol(ProtocolWrapper):
    """Reads the header of one trusted connection, then builds and feeds the real protocol."""

    def __init__(self, factory: ProxyProtocolFactory, proxy_address: Any) -> None:
        super().__init__(factory, None)  # type: ignore[arg-type]
        self.proxy_factory = factory
        self.proxy_address = proxy_address
        self.client_address: Any = None
        self.proxy_header: ProxyHeader | None = None
        self._parser: ProxyParser | None = ProxyParser()
        self._timer: IDelayedCall | None = None

    def makeConnection(self, transport: Any) -> None:
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)

    def connectionMade(self) -> None:
        self._timer = self.proxy_factory.reactor.callLater(
            self.proxy_factory.timeout, self._timed_out
        )

    def _timed_out(self) -> None:
        self._timer = None
        log.warn(
            "{proxy}: no PROXY protocol header within {timeout} s; closing",
            proxy=self.proxy_address.host,
            timeout=self.proxy_factory.timeout,
        )
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def getPeer(self) -> Any:
        return self.client_address if self.client_address is not None else self.proxy_address

    def dataReceived(self, data: bytes) -> None:
        if self._parser is None:
            if self.wrappedProtocol is not None:
                self.wrappedProtocol.dataReceived(data)
            return
        result = self._parser.feed(data)
        if result is None:
            return
        self._parser = None
        self._cancel_timer()
        if isinstance(result, Invalid):
            log.warn(
                "{proxy}: bad PROXY protocol header ({reason}); closing",
                proxy=self.proxy_address.host,
                reason=result.reason,
            )
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self.proxy_header = result.header
        if result.header.source is not None:
            self.client_address = _twisted_address(*result.header.source)
        inner = self.proxy_factory.wrapped.buildProtocol(self.getPeer())
        if inner is None:
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self.wrappedProtocol = inner
        if IHandshakeListener.providedBy(inner):
            alsoProvides(self, IHandshakeListener)
        inner.makeConnection(self)  # type: ignore[arg-type]
        if result.rest and self.wrappedProtocol is not None and not self.disconnecting:
            self.wrappedProtocol.dataReceived(result.rest)

    def handshakeCompleted(self) -> None:
        """TLS started under this wrapper (AUTH TLS, data TLS): tell the real protocol."""
        inner = self.wrappedProtocol
        if inner is not None and IHandshakeListener.providedBy(inner):
            inner.handshakeCompleted()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._cancel_timer()
        inner, self.wrappedProtocol = self.wrappedProtocol, None  # type: ignore[assignment]
        if inner is not None:
            inner.connectionLost(reason)

    def logPrefix(self) -> str:
        return "ProxyHeaderProtocol"


class _Refused(Protocol):
    def connectionMade(self) -> None:
        self.transport.abortConnection()  # type: ignore[union-attr]


class ProxyProtocolFactory(Factory):
    """Wraps a listener's factory as `[proxy]` says (rules 1 to 3 at the top)."""

    noisy = False

    def __init__(
        self,
        wrapped: Factory,
        trusted: Iterable[IPNetwork],
        required: bool,
        reactor: Any,
        timeout: float = HEADER_TIMEOUT,
    ) -> None:
        self.wrapped = wrapped
        self.trusted = tuple(trusted)
        self.required = required
        self.reactor = reactor
        self.timeout = timeout

    def is_trusted(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(normalize_address(host))
        except ValueError:
            return False
        return any(ip in network for network in self.trusted)

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def buildProtocol(self, addr: Any) -> Any:
        if self.is_trusted(getattr(addr, "host", "")):
            return ProxyHeaderProtocol(self, addr)
        if self.required:
            log.info("{peer}: refused, not a PROXY protocol sender", peer=addr.host)
            return _Refused()
        return self.wrapped.buildProtocol(addr)


def wrap_factory(factory: Factory, proxy: Any, reactor: Any) -> Factory:
    """`factory` behind `[proxy]` (a config.ProxyConfig), or unchanged when there is none."""
    if proxy is None:
        return factory
    return ProxyProtocolFactory(factory, proxy.trusted, proxy.required, reactor, proxy.timeout)
