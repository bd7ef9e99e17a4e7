"""Blocking clients for the hardening tools: a raw control connection and ftplib variants."""

from __future__ import annotations

import ftplib
import re
import socket
import ssl
import time
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"


class Closed(ConnectionError):
    """The server closed the control connection."""


class Control:
    """A control connection driven by hand: exact bytes out, whole replies in."""

    def __init__(
        self,
        port: int,
        *,
        host: str = HOST,
        timeout: float = 10,
        source: str | None = None,
        greet: bool = True,
        sock: socket.socket | None = None,
    ) -> None:
        self.host = host
        if sock is None:
            sock = socket.create_connection(
                (host, port), timeout=timeout, source_address=(source, 0) if source else None
            )
        self.sock: socket.socket = sock
        self.buffer = bytearray()
        self.greeting = self.read_reply() if greet else ""

    def read_line(self) -> str:
        while True:
            end = self.buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 2]
                return line.decode("utf-8", "replace")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise Closed(f"connection closed after {bytes(self.buffer)!r}")
            self.buffer += chunk

    def read_reply(self) -> str:
        """One whole reply (multi-line replies joined with newlines)."""
        first = self.read_line()
        lines = [first]
        if first[3:4] == "-":
            for _ in range(100_000):
                line = self.read_line()
                lines.append(line)
                if line[:3] == first[:3] and line[3:4] == " ":
                    break
        return "\n".join(lines)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, line: str | bytes) -> str:
        data = line if isinstance(line, bytes) else line.encode("utf-8")
        self.send(data + b"\r\n")
        return self.read_reply()

    def login(self, user: str, password: str) -> str:
        reply = self.command(f"USER {user}")
        if reply.startswith("331"):
            reply = self.command(f"PASS {password}")
        return reply

    def start_tls(
        self, context: ssl.SSLContext, server_hostname: str = "localhost"
    ) -> ssl.SSLSocket:
        if self.buffer:
            raise ValueError("bytes after 234 before the handshake")
        wrapped = context.wrap_socket(self.sock, server_hostname=server_hostname)
        self.sock = wrapped
        return wrapped

    @property
    def tls_session(self) -> ssl.SSLSession | None:
        return getattr(self.sock, "session", None)

    def closed_by_server(self, limit: float = 5) -> bool:
        """True when the server closes within `limit` seconds (whatever it sends first)."""
        _, how = read_until_closed(self.sock, limit)
        return how != "timeout"

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
        raise ValueError(f"not a passive reply: {reply!r}")
    return int(numbers.group(5)) * 256 + int(numbers.group(6))


def read_until_closed(
    sock: socket.socket, limit: float = 10, keep: int = 1 << 20
) -> tuple[bytes, str]:
    """What the peer sends until it closes or `limit` seconds pass: (first `keep` bytes, how)."""
    received = bytearray()
    deadline = time.monotonic() + limit
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(received), "timeout"
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return bytes(received), "timeout"
        except (ssl.SSLError, OSError) as error:
            return bytes(received), f"error: {error.__class__.__name__}"
        if not chunk:
            return bytes(received), "closed"
        if len(received) < keep:
            received += chunk[: keep - len(received)]


def client_context(pki: Path, certificate: str | None = None) -> ssl.SSLContext:
    """A verifying client context trusting the test CA, optionally with a client certificate."""
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if certificate is not None:
        context.load_cert_chain(pki / f"{certificate}.crt", pki / f"{certificate}.key")
    return context


class ResumingFTP_TLS(ftplib.FTP_TLS):  # noqa: N801 - named after ftplib.FTP_TLS
    """ftplib over TLS that resumes the control connection's TLS session on data connections.

    Stock ftplib never does (python#63699), and the server requires it by default.
    `data_resumed` records, per protected data connection, whether the client saw its
    session resumed.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.data_resumed: list[bool] = []

    def ntransfercmd(
        self, cmd: str, rest: int | str | None = None
    ) -> tuple[socket.socket, int | None]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:  # type: ignore[attr-defined]
            session = getattr(self.sock, "session", None)
            tls = self.context.wrap_socket(  # type: ignore[attr-defined]
                conn, server_hostname=self.host, session=session
            )
            self.data_resumed.append(bool(tls.session_reused))
            return tls, size
        return conn, size


class ImplicitFTP_TLS(ResumingFTP_TLS):  # noqa: N801
    """Implicit FTPS: TLS from the first byte; data protected by default."""

    def connect(
        self, host: str = "", port: int = 0, timeout: float = -999, source_address: Any = None
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


def open_session(
    port: int,
    user: str,
    password: str,
    *,
    mode: str = "clear",
    pki: Path | None = None,
    timeout: float = 30,
) -> ftplib.FTP:
    """A logged-in ftplib session: mode "clear", "explicit" (AUTH TLS, PROT P) or "implicit"."""
    ftp: ftplib.FTP
    if mode == "clear":
        ftp = ftplib.FTP(timeout=timeout)
        ftp.connect(HOST, port)
        ftp.login(user, password)
        return ftp
    if pki is None:
        raise ValueError("TLS modes need the PKI folder")
    context = client_context(pki)
    tls: ftplib.FTP_TLS
    if mode == "implicit":
        tls = ImplicitFTP_TLS(context=context, timeout=timeout)
        tls.connect(HOST, port)
        tls.login(user, password)
        return tls
    tls = ResumingFTP_TLS(context=context, timeout=timeout)
    tls.connect(HOST, port)
    tls.login(user, password)
    tls.prot_p()
    return tls


def client_hello(version: ssl.TLSVersion | None = None) -> bytes:
    """The bytes of a real TLS ClientHello (made in memory), optionally pinned to `version`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if version is not None:
        context.minimum_version = context.maximum_version = version
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def implicit_hello_answer(
    host: str, port: int, source: str | None = None, limit: float = 5
) -> tuple[bytes, str]:
    """Send a ClientHello to an implicit FTPS port; what comes back until it closes, as
    `read_until_closed`. A server that refuses the connection may reset it before our
    connect() returns (a loaded machine): that is (b"", "reset at connect")."""
    try:
        sock = socket.create_connection(
            (host, port), limit, source_address=(source, 0) if source else None
        )
    except ConnectionResetError:
        return b"", "reset at connect"
    with sock:
        try:
            sock.sendall(client_hello())
        except OSError:
            pass
        return read_until_closed(sock, limit)
