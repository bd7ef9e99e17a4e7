"""ftplib FTPS client that resumes the control connection's TLS session on data connections."""

from __future__ import annotations

import ftplib
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ResumingFTPTLS(ftplib.FTP_TLS):
    """FTP_TLS whose protected data connections resume the control session.

    Stock ftplib wraps data sockets without `session=` (python#63699), so a server
    that requires session reuse refuses them, and every transfer pays a full handshake.
    """

    data_connections = 0
    resumed_data_connections = 0

    def ntransfercmd(
        self, cmd: str, rest: int | str | None = None
    ) -> tuple[socket.socket, int | None]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:  # type: ignore[attr-defined]
            control = self.sock
            session = control.session if isinstance(control, ssl.SSLSocket) else None
            conn = self.context.wrap_socket(conn, server_hostname=self.host, session=session)
            self.data_connections += 1
            if conn.session_reused:
                self.resumed_data_connections += 1
        return conn, size


@dataclass(frozen=True)
class Target:
    """Where and how to log in: one server under test."""

    host: str
    port: int
    user: str
    password: str
    cafile: str

    def tls_context(self) -> ssl.SSLContext:
        """A client context that verifies the bench CA and the 127.0.0.1 address."""
        return ssl.create_default_context(cafile=self.cafile)


def login(target: Target, context: ssl.SSLContext, timeout: float = 15.0) -> ResumingFTPTLS:
    """Connect, AUTH TLS, USER/PASS and PROT P; return the logged-in client."""
    ftp = ResumingFTPTLS(context=context, timeout=timeout)
    try:
        ftp.connect(target.host, target.port)
        ftp.login(target.user, target.password)
        ftp.prot_p()
    except BaseException:
        ftp.close()
        raise
    return ftp


def list_session(target: Target, context: ssl.SSLContext, folder: str, expect: int) -> bool:
    """One FTPS session: login + CWD + LIST + QUIT. Returns whether the LIST data resumed."""
    ftp = login(target, context)
    try:
        ftp.cwd(folder)
        lines: list[str] = []
        ftp.retrlines("LIST", lines.append)
        entries = sum(1 for line in lines if "entry-" in line)
        if entries != expect:
            raise ftplib.Error(f"LIST returned {entries} entries, expected {expect}")
        resumed = ftp.resumed_data_connections > 0
        ftp.quit()
    finally:
        ftp.close()
    return resumed


def close_quietly(ftp: Any) -> None:
    """Close a client without waiting for the server."""
    try:
        ftp.close()
    except OSError:
        pass


def ca_path(pki: Path) -> str:
    """The bench CA certificate that every server's certificate chains to."""
    return str(pki / "ca.crt")
