"""FTPS clients for the end-to-end tests: ftplib variants, a raw control connection, probes.

Everything here is blocking: run it in a thread (`harness.in_thread`), never on the reactor.
"""

from __future__ import annotations

import ftplib
import ssl
import warnings
from pathlib import Path

from hardening.clients import HOST as HOST
from hardening.clients import Control, ResumingFTP_TLS
from hardening.clients import ImplicitFTP_TLS as ImplicitFTP_TLS
from hardening.clients import client_hello as tls_client_hello
from hardening.clients import pasv_port as pasv_port
from hardening.clients import read_until_closed as read_until_closed
from tests.e2e.harness import PASSWORD, LiveServer

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


ReusingFTP_TLS = ResumingFTP_TLS  # noqa: N816 - the name these tests have always used


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


class RawControl(Control):
    """A control connection driven by hand: exact bytes out, whole replies in.

    Before TLS it reads byte by byte, so that it never swallows the server's first TLS bytes.
    """

    def read_line(self) -> str:
        line = bytearray()
        while not line.endswith(b"\r\n"):
            byte = self.sock.recv(1)
            if not byte:
                raise ConnectionError(f"connection closed after {bytes(line)!r}")
            line += byte
        return line[:-2].decode("utf-8", "replace")

    def start_tls(self, context: ssl.SSLContext, server_hostname: str = HOST) -> ssl.SSLSocket:
        return super().start_tls(context, server_hostname)


def client_hello(version: str | None = None) -> bytes:
    """The bytes of a real TLS ClientHello (made in memory, never sent by ssl itself)."""
    return tls_client_hello(None if version is None else VERSIONS[version])


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
