"""The link between a server and its edge: frames, mutual TLS 1.3, heartbeats (SPEC section 8).

One link connection carries one client connection (control or data) at a time, for its
whole life, so TCP's flow control works per client connection. When the client connection
is over (the edge's CLOSE), the server answers RESET after everything it sent for it, and
the link connection goes back to both pools: sessions do not pay for link handshakes.
A frame is

    +-------------------+--------+-------------------+
    | length (4 bytes,  | type   | payload           |
    | big-endian, of    | 1 byte | `length` bytes    |
    | the payload)      |        |                   |
    +-------------------+--------+-------------------+

DATA payloads are raw bytes; the others are UTF-8 JSON objects (see `Frame`). A payload
over `MAX_PAYLOAD` is a protocol error and ends the link connection.
"""

from __future__ import annotations

import datetime
import enum
import json
import struct
from collections import deque
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import (
    IDelayedCall,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from securetransport.ftp.data import set_no_delay
from securetransport.pki import (
    CLIENT_AUTH,
    DEFAULT_DAYS,
    SERVER_AUTH,
    PKIError,
    issue_certificate,
    make_ca,
    write_issued,
)
from securetransport.tls.facts import HandshakeInfo

log = Logger(namespace="securetransport.edge.link")

HEADER = struct.Struct(">IB")
MAX_PAYLOAD = 256 * 1024
DATA_CHUNK = 64 * 1024
HEARTBEAT_INTERVAL = 10.0
HEARTBEAT_DEADLINE = 30.0  # a link connection silent this long is dead


class Frame(enum.IntEnum):
    """Frame types. Direction: S = server to edge, E = edge to server."""

    SETTINGS = 1  # S: {"settings": canonical settings, "client_cas": [DER hex]}
    OPEN = 2  # E: {"kind": "control", "address", "port", "local_host", "local_port",
    #            "tls": "explicit"|"implicit"} or {"kind": "data", "token", "address", "port"}
    DATA = 3  # both: raw bytes of the client connection
    START_TLS = 4  # S: start TLS now; the edge drops client bytes read after the command
    TLS_UP = 5  # E: handshake facts (see `info_to_json`)
    LISTEN = 6  # S: {"token", "reuse": "required"|"account"|"off"|null, "timeout"}
    LISTENING = 7  # E: {"token", "port"} or {"token", "error"}
    UNLISTEN = 8  # S: {"token"}: drop that passive set-up
    EXPECT = 9  # S: {"token", "direction": "send"|"receive"}
    DATA_TLS = 10  # E (data link): {"info": facts, "problem": text|null}
    CLOSE = 11  # both: {"how": "clean"|"abort"} (S) / {"clean": bool} (E)
    PING = 12  # both, any time: resets the peer's heartbeat deadline
    REFUSED = 13  # E: {"reason"}: the edge refused the link connection (before use)
    CONNECT = 14  # S: {"token", "host", "port", "reuse", "timeout", "direction"}: PORT/EPRT
    RESET = 15  # S: answers the edge's CLOSE: the link connection is idle again (pool)


class FrameError(Exception):
    """The peer broke the framing: the link connection ends."""


def encode(kind: Frame, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError("payload too large")
    return HEADER.pack(len(payload), int(kind)) + payload


def encode_json(kind: Frame, value: dict[str, Any]) -> bytes:
    return encode(kind, json.dumps(value, separators=(",", ":")).encode("utf-8"))


def decode_json(payload: bytes) -> dict[str, Any]:
    try:
        value = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise FrameError(f"bad JSON payload: {error}") from None
    if not isinstance(value, dict):
        raise FrameError("a JSON payload must be an object")
    return value


class FrameDecoder:
    """Sans-IO: bytes in, (type, payload) frames out."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[Frame, bytes]]:
        """The complete frames so far. A bad header raises FrameError, once the frames
        before it have been returned (the next call raises)."""
        self._buffer += data
        frames: list[tuple[Frame, bytes]] = []
        while len(self._buffer) >= HEADER.size:
            length, kind = HEADER.unpack_from(self._buffer)
            try:
                if length > MAX_PAYLOAD:
                    raise FrameError(f"frame of {length} bytes is over {MAX_PAYLOAD}")
                try:
                    frame = Frame(kind)
                except ValueError:
                    raise FrameError(f"unknown frame type {kind}") from None
            except FrameError:
                if frames:
                    return frames
                raise
            end = HEADER.size + length
            if len(self._buffer) < end:
                break
            frames.append((frame, bytes(self._buffer[HEADER.size : end])))
            del self._buffer[:end]
        return frames


def info_to_json(info: HandshakeInfo) -> dict[str, Any]:
    """Handshake facts as they travel over the link (no master key: it stays at the edge)."""
    return {
        "tls_version": info.tls_version,
        "cipher": info.cipher,
        "resumed": info.resumed,
        "resumed_from_control": info.resumed_from_control,
        "peer_chain": [der.hex() for der in info.peer_chain],
        "verify_errors": [list(pair) for pair in info.verify_errors],
        "group": info.group,
    }


def info_from_json(value: dict[str, Any]) -> HandshakeInfo:
    try:
        return HandshakeInfo(
            tls_version=str(value["tls_version"]),
            cipher=value.get("cipher"),
            resumed=bool(value.get("resumed")),
            resumed_from_control=bool(value.get("resumed_from_control")),
            peer_chain=tuple(bytes.fromhex(h) for h in value.get("peer_chain", ())),
            verify_errors=tuple((int(a), int(b)) for a, b in value.get("verify_errors", ())),
            group=value.get("group"),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise FrameError(f"bad handshake facts: {error}") from None


# ------------------------------------------------------------------------ link TLS


def _pem_chain(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def _chain_ok(
    connection: SSL.Connection, certificate: crypto.X509, error: int, depth: int, ok: int
) -> bool:
    """OpenSSL's verdict on the peer's chain against the link CA stands."""
    return bool(ok)


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLClientConnectionCreator)
class LinkTLS:
    """Mutual TLS 1.3 with the link PKI, for `listenSSL` (edge) and `connectSSL` (server):
    our certificate, and the peer's must chain to `ca`; no certificate means no link.

    The same context serves the edge (TLS server) and the server (TLS client). One
    context for every link connection: the client side resumes its TLS sessions.
    """

    def __init__(self, certificate: Path, private_key: Path, ca: Path) -> None:
        chain = _pem_chain(certificate)
        key = serialization.load_pem_private_key(private_key.read_bytes(), password=None)
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(SSL.TLS1_3_VERSION)
        context.set_options(SSL.OP_NO_COMPRESSION)
        context.set_mode(SSL.MODE_RELEASE_BUFFERS)
        context.use_certificate(chain[0])
        for extra in chain[1:]:
            context.add_extra_chain_cert(extra)
        context.use_privatekey(key)  # type: ignore[arg-type]
        context.check_privatekey()
        store = context.get_cert_store()
        assert store is not None
        for trusted in _pem_chain(ca):
            store.add_cert(crypto.X509.from_cryptography(trusted))
        context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _chain_ok)
        context.set_session_id(b"securetransport-link")
        self._context = context

    def serverConnectionForTLS(self, protocol: object) -> SSL.Connection:  # noqa: N802
        connection = SSL.Connection(self._context, None)
        connection.set_accept_state()
        return connection

    def clientConnectionForTLS(self, protocol: object) -> SSL.Connection:  # noqa: N802
        connection = SSL.Connection(self._context, None)
        connection.set_connect_state()
        return connection


def link_tls_options(certificate: Path, private_key: Path, ca: Path) -> LinkTLS:
    """The link's TLS context factory (see `LinkTLS`)."""
    return LinkTLS(certificate, private_key, ca)


def init_link_pki(
    folder: str | Path, *, days: int = DEFAULT_DAYS, force: bool = False
) -> list[Path]:
    """Write link-ca, link-server and link-edge (.crt/.key) into `folder`: a CA for the
    link and nothing else, and one certificate for each end (both usages, as either end
    may be the TLS client)."""
    folder = Path(folder)
    stems = ["link-ca", "link-server", "link-edge"]
    targets = [folder / f"{stem}.{ext}" for stem in stems for ext in ("crt", "key")]
    if not force:
        existing = [path for path in targets if path.exists()]
        if existing:
            raise PKIError(f"{existing[0]} exists (use --force to replace it)")
    now = datetime.datetime.now(datetime.UTC)
    not_before = now - datetime.timedelta(minutes=5)
    not_after = now + datetime.timedelta(days=days)
    ca_cert, ca_key = make_ca("securetransport link CA", not_before=not_before, not_after=not_after)
    issued = {"link-ca": (ca_cert, ca_key)}
    for stem in ("link-server", "link-edge"):
        issued[stem] = issue_certificate(
            ca_cert,
            ca_key,
            cn=f"securetransport {stem}",
            not_before=not_before,
            not_after=not_after,
            eku=(SERVER_AUTH, CLIENT_AUTH),
        )
    return write_issued(folder, issued)


# ------------------------------------------------------------------------ the protocol base


class LinkProtocol(Protocol):
    """Frames over one link connection, with heartbeats. Subclasses handle `frame_received`."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.decoder = FrameDecoder()
        self._held: deque[tuple[Frame, bytes]] = deque()
        self.reading_paused = False
        self.lost = False
        self._last_heard = 0.0
        self._heartbeat: IDelayedCall | None = None

    def connectionMade(self) -> None:
        set_no_delay(self.transport)  # frames are small requests and replies too
        self._last_heard = self.reactor.seconds()
        self._heartbeat = self.reactor.callLater(HEARTBEAT_INTERVAL, self._beat)

    def _beat(self) -> None:
        self._heartbeat = None
        if self.lost:
            return
        now = self.reactor.seconds()
        if not self.reading_paused and now - self._last_heard > HEARTBEAT_DEADLINE:
            log.warn("link connection silent for {s:.0f} s: dead", s=now - self._last_heard)
            self.link_dead()
            return
        self.send(Frame.PING)
        self._heartbeat = self.reactor.callLater(HEARTBEAT_INTERVAL, self._beat)

    def link_dead(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def send(self, kind: Frame, payload: bytes = b"") -> None:
        if self.transport is not None and not self.lost:
            self.transport.write(encode(kind, payload))

    def send_json(self, kind: Frame, value: dict[str, Any]) -> None:
        if self.transport is not None and not self.lost:
            self.transport.write(encode_json(kind, value))

    def send_data(self, data: bytes) -> None:
        for start in range(0, len(data), DATA_CHUNK):
            self.send(Frame.DATA, data[start : start + DATA_CHUNK])

    def pause_link(self) -> None:
        if not self.reading_paused and self.transport is not None and not self.lost:
            self.reading_paused = True
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resume_link(self) -> None:
        if self.reading_paused and self.transport is not None and not self.lost:
            self.reading_paused = False
            self._last_heard = self.reactor.seconds()
            self._deliver()
            if not self.reading_paused:
                self.transport.resumeProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self._last_heard = self.reactor.seconds()
        while not self.lost:
            try:
                frames = self.decoder.feed(data)
            except FrameError as error:
                self._deliver()  # the frames before the bad one count
                log.warn("link protocol error: {error}", error=error)
                self.link_dead()
                return
            if not frames:
                break
            data = b""
            self._held.extend(frames)
        self._deliver()

    def _deliver(self) -> None:
        """Hand over the frames received; none while reading is paused (back-pressure:
        what was read before the pause waits here, not in the client's buffer)."""
        while self._held and not self.reading_paused and not self.lost:
            kind, payload = self._held.popleft()
            if kind is Frame.PING:
                continue
            try:
                self.frame_received(kind, payload)
            except FrameError as error:
                log.warn("link protocol error: {error}", error=error)
                self.link_dead()
                return

    def frame_received(self, kind: Frame, payload: bytes) -> None:
        raise NotImplementedError

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = True
        if self._heartbeat is not None and self._heartbeat.active():
            self._heartbeat.cancel()
        self._heartbeat = None


def peer_common_name(transport: Any) -> str:
    """The link peer's certificate CN, for logs."""
    try:
        cert = transport.getPeerCertificate().to_cryptography()
        names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        return str(names[0].value) if names else cert.subject.rfc4514_string()
    except Exception:  # noqa: BLE001 - logging only
        return "?"
