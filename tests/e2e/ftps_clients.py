"""FTPS clients for the end-to-end tests: ftplib variants, a raw control connection, probes.

Everything here is blocking: run it in a thread (`harness.in_thread`), never on the reactor.
"""

from __future__ import annotations

import ftplib
import re
import socket
import ssl
import time
import warnings
from pathlib import Path
from typing import Any

from tests.e2e.harness import PASSWORD, LiveServer

HOST = "127.0.0.1"
VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
VERSION_NAMES = {"1.2": "TLSv1.2", "1.3": "TLSv1.3"}


def client_context(
    server: LiveServer, version: str | None = None, *, certificate: str | None = None
) -> ssl.SSLContext:
    """A verifying client context trusting the server's CA, pinned to one TLS version."""
    context = ssl.create_default_context(cafile=str(server.pki / "ca.crt"))
    if version is not None:
        context.minimum_version = context.maximum_version = VERSIONS[version]
    if certificate is not None:
        context.load_cert_chain(
            server.pki / f"{certificate}.crt", server.pki / f"{certificate}.key"
        )
    return context


def legacy_context(maximum: ssl.TLSVersion) -> ssl.SSLContext:
    """A client context that offers only TLS 1.0 up to `maximum` (no verification)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the point is to offer them
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = maximum
    return context


def control_session(ftp: ftplib.FTP) -> ssl.SSLSession | None:
    """The TLS session of an ftplib control connection."""
    control = ftp.sock
    assert isinstance(control, ssl.SSLSocket), "the control connection is not TLS"
    return control.session


class ReusingFTP_TLS(ftplib.FTP_TLS):  # noqa: N801 - named after ftplib.FTP_TLS
    """ftplib over TLS that resumes the control connection's TLS session on data connections.

    Stock ftplib never does (python#63699). `data_resumed` records, per data connection,
    whether the client saw its session resumed.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.data_resumed: list[bool] = []

    def ntransfercmd(
        self, cmd: str, rest: int | str | None = None
    ) -> tuple[socket.socket, int | None]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:  # type: ignore[attr-defined]
            tls = self.context.wrap_socket(  # type: ignore[attr-defined]
                conn, server_hostname=self.host, session=control_session(self)
            )
            self.data_resumed.append(bool(tls.session_reused))
            return tls, size
        return conn, size


class ImplicitFTP_TLS(ReusingFTP_TLS):  # noqa: N801
    """Implicit FTPS: TLS from the first byte; data protected by default, as the server says."""

    def connect(
        self,
        host: str = "",
        port: int = 0,
        timeout: float = -999,
        source_address: Any = None,
    ) -> str:
        self.host, self.port = host, port
        if timeout != -999:
            self.timeout = timeout
        raw = socket.create_connection((host, port), self.timeout)
        self.af = raw.family
        self.sock = self.context.wrap_socket(raw, server_hostname=host)  # type: ignore[attr-defined]
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        self._prot_p = True
        return self.welcome


def ftps_login(
    server: LiveServer,
    version: str | None = None,
    *,
    implicit: bool = False,
    reuse: bool = True,
    user: str = "alice",
    protect: bool = True,
) -> ftplib.FTP_TLS:
    """A logged-in ftplib FTPS session (explicit: AUTH TLS before USER), PROT P if `protect`."""
    context = client_context(server, version)
    ftp: ftplib.FTP_TLS
    if implicit:
        ftp = ImplicitFTP_TLS(context=context, timeout=30)
        ftp.connect(HOST, server.implicit_port)
    else:
        ftp = (ReusingFTP_TLS if reuse else ftplib.FTP_TLS)(context=context, timeout=30)
        ftp.connect(HOST, server.explicit_port)
    ftp.login(user, PASSWORD)
    if protect and not implicit:
        ftp.prot_p()
    return ftp


def upload_download(ftp: ftplib.FTP, source: Path, name: str) -> tuple[str, str]:
    """STOR `source` as `name`, RETR it back; (STOR reply, SHA-256 of what came back)."""
    import hashlib

    with open(source, "rb") as handle:
        stored = ftp.storbinary(f"STOR {name}", handle, blocksize=1 << 16)
    digest = hashlib.sha256()
    ftp.retrbinary(f"RETR {name}", digest.update, blocksize=1 << 16)
    return stored, digest.hexdigest()


def reply_code(error: BaseException | str) -> str:
    return str(error)[:3]


# ----------------------------------------------------------------------------- raw control


class RawControl:
    """A control connection driven by hand: exact bytes out, whole replies in.

    Before TLS it reads byte by byte, so that it never swallows the server's first TLS bytes.
    """

    def __init__(
        self, port: int, *, timeout: float = 10, source: str | None = None, greet: bool = True
    ) -> None:
        self.sock: socket.socket = socket.create_connection(
            (HOST, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        self.greeting = self.read_reply() if greet else ""

    def read_line(self) -> str:
        line = bytearray()
        while not line.endswith(b"\r\n"):
            byte = self.sock.recv(1)
            if not byte:
                raise ConnectionError(f"connection closed after {bytes(line)!r}")
            line += byte
        return line[:-2].decode("utf-8", "replace")

    def read_reply(self) -> str:
        """One whole reply (multi-line replies joined with newlines)."""
        first = self.read_line()
        lines = [first]
        if first[3:4] == "-":
            while True:
                line = self.read_line()
                lines.append(line)
                if line[:3] == first[:3] and line[3:4] == " ":
                    break
        return "\n".join(lines)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, line: str) -> str:
        self.send(line.encode() + b"\r\n")
        return self.read_reply()

    def start_tls(self, context: ssl.SSLContext) -> ssl.SSLSocket:
        wrapped = context.wrap_socket(self.sock, server_hostname=HOST)
        self.sock = wrapped
        return wrapped

    @property
    def tls_session(self) -> ssl.SSLSession | None:
        return getattr(self.sock, "session", None)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def pasv_port(reply: str) -> int:
    """The port of a 227 (PASV) or 229 (EPSV) reply."""
    if reply.startswith("229"):
        match = re.search(r"\(\|\|\|(\d+)\|\)", reply)
        if match is None:
            raise ValueError(f"bad 229 reply: {reply!r}")
        return int(match.group(1))
    numbers = re.search(r"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)", reply)
    if not reply.startswith("227") or numbers is None:
        raise ValueError(f"bad 227 reply: {reply!r}")
    return int(numbers.group(5)) * 256 + int(numbers.group(6))


def read_until_closed(sock: socket.socket, limit: float = 10) -> tuple[bytes, str]:
    """Everything the peer sends until it closes (or `limit` seconds); (bytes, how it ended)."""
    sock.settimeout(limit)
    received = bytearray()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return bytes(received), "timeout"
        except (ssl.SSLError, OSError) as error:
            return bytes(received), f"error: {error!r}"
        if not chunk:
            return bytes(received), "closed"
        received += chunk
    return bytes(received), "timeout"


def client_hello(version: str | None = None) -> bytes:
    """The bytes of a real TLS ClientHello (made in memory, never sent by ssl itself)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if version is not None:
        context.minimum_version = context.maximum_version = VERSIONS[version]
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def store_and_close_at_once(ftp: ReusingFTP_TLS, name: str, payload: bytes) -> tuple[bool, str]:
    """STOR `payload` the way lftp (GnuTLS) and curl end a TLS upload: send close_notify and
    close the socket at once, without reading what the server sent after the handshake
    (TLS 1.3 session tickets). Returns (session resumed, the final reply)."""
    raw, _ = ftplib.FTP.ntransfercmd(ftp, f"STOR {name}")
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ftp.context.wrap_bio(  # type: ignore[attr-defined]
        incoming, outgoing, server_hostname=HOST, session=control_session(ftp)
    )
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            raw.sendall(outgoing.read())
            data = raw.recv(65536)
            if not data:
                raise ConnectionError("data connection closed during the handshake") from None
            incoming.write(data)
    raw.sendall(outgoing.read())
    resumed = tls.session_reused
    view = memoryview(payload)
    for start in range(0, len(payload), 16384):
        tls.write(view[start : start + 16384])
        raw.sendall(outgoing.read())
    try:
        tls.unwrap()  # writes close_notify; would then wait for the server's
    except ssl.SSLWantReadError:
        pass
    raw.sendall(outgoing.read())
    raw.close()
    try:
        return resumed, ftp.voidresp()
    except ftplib.Error as error:
        return resumed, str(error)
