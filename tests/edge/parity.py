"""What the edge's parity tests share: each scenario runs against the server itself, then
through the edge, and the results must be equal (tests/edge/test_edge_transfer_ends.py,
passive mode; tests/edge/test_edge_active_ends.py, active mode). Real ftplib FTPS clients
over loopback; every client socket has a `TIMEOUT`."""

from __future__ import annotations

import ftplib
import hashlib
import socket
import ssl
import struct
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.e2e.ftps_clients import ftps_login
from tests.e2e.harness import in_thread
from tests.edge.harness import EdgeSetup
from tests.hardening.helpers import wait_for

TIMEOUT = 15.0  # every client socket
BIG_SPARSE = 256 * 1024 * 1024 + 7  # far more than the buffers on the way hold
PREVIOUS = b"previous version"
WHERE = ("direct", "edge")


def tls(sock: socket.socket | None) -> ssl.SSLSocket:
    """A client socket that is TLS (the control connection, a protected data connection)."""
    assert isinstance(sock, ssl.SSLSocket), sock
    return sock


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bounded(ftp: ftplib.FTP_TLS) -> ftplib.FTP_TLS:
    """`ftp` with TIMEOUT on its control socket and on the data connections it opens."""
    ftp.timeout = TIMEOUT
    tls(ftp.sock).settimeout(TIMEOUT)
    return ftp


def drop(sock: socket.socket, ftp: ftplib.FTP_TLS | None = None) -> None:
    """Close `sock` abruptly: no close_notify, no QUIT, a RST instead of a FIN. For a
    control socket, `ftp`'s reading file goes first: it holds the socket open."""
    if ftp is not None and ftp.file is not None:
        ftp.file.close()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    socket.socket.close(sock)  # the raw close: no TLS shutdown


def cut_by_peer(conn: socket.socket, sending: bool, limit: float = 8) -> bool:
    """Whether the other end closes or resets `conn` within `limit` seconds (reading,
    or sending, what it still takes)."""
    deadline = time.monotonic() + limit
    conn.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            if sending:
                conn.send(b"z" * 65536)
            elif not conn.recv(1 << 20):
                return True
        except TimeoutError:
            continue
        except OSError:  # reset, broken pipe, or a TLS record cut short
            return True
    return False


def read_some(conn: socket.socket, size: int) -> int:
    """Read about `size` bytes of a download (fewer if it ends first); how many came."""
    received = 0
    while received < size:
        chunk = conn.recv(65536)
        if not chunk:
            break
        received += len(chunk)
    return received


def reply_of(ftp: ftplib.FTP_TLS) -> str:
    try:
        return ftp.voidresp()
    except ftplib.Error as error:
        return str(error)


class ParityTestCase(TestCase):
    """An in-process server with an edge (`start`), clients at either (`login`), and
    `both`: a scenario at the server, then through the edge, required equal."""

    timeout = 120
    passive = True  # the clients' data connections; False: PORT/EPRT (active mode)
    # Whether `both` also waits, after each run, for every session to have ended.
    sessions_end_between = False

    @defer.inlineCallbacks
    def start(self, extra_server: str = "") -> Any:
        self.setup = EdgeSetup(self, extra_server=extra_server)
        yield self.setup.start()
        self.server = self.setup.server
        self.home = self.server.home()

    def login(self, where: str, version: str) -> ftplib.FTP_TLS:
        """A logged-in FTPS client (PROT P) at the server itself or through the edge,
        in passive or active mode (`passive`)."""
        if where == "direct":
            ftp = ftps_login(self.server, version)
        else:
            ftp = self.setup.ftps(version=version)
        ftp.set_pasv(self.passive)
        return bounded(ftp)

    def sessions(self) -> int:
        return int(self.server.runtime.sessions.total)

    def no_session_left(self) -> bool:
        """No session at the server, and at the edge no client and no link in use."""
        edge = self.setup.edge
        return (
            self.sessions() == 0
            and not self.server.runtime.open_sessions
            and not edge.clients
            and len(edge.idle) == len(edge.links)
        )

    @defer.inlineCallbacks
    def both(self, version: str, scenario: Callable[[str, str], Any]) -> Any:
        """`scenario(where, version)` in a thread, directly then through the edge; the two
        results must be equal (and, with `sessions_end_between`, every session must end
        after each); returns the direct one."""
        results = {}
        for where in WHERE:
            results[where] = yield in_thread(scenario, where, version)
            if self.sessions_end_between:
                ended = yield in_thread(wait_for, self.no_session_left)
                self.assertTrue(ended, f"a session was left open ({where})")
        self.assertEqual(results["edge"], results["direct"])
        return results["direct"]
