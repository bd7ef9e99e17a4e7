"""How protected transfers END through an edge, compared with the server itself.

Each scenario runs first against the server directly (its own listeners, 127.0.0.1) and
then through the edge (127.0.0.2), with real ftplib FTPS clients over loopback, and the
edge must give what the server gives: a stalled upload (data_timeout), a control
connection dropped in the middle of a download or an upload (the session ends, its data
connection is cut, no temporary is left), QUIT during a download or an upload (226 then
221), a data connection reset in the middle of a download, ABOR after PASV with no
transfer, with or without the data connection made. Every client socket has a 15 s
timeout.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import socket
import time
from typing import Any

from twisted.internet import defer, threads
from twisted.internet import reactor as _reactor

from tests.e2e.harness import in_thread, random_file
from tests.edge.parity import (
    BIG_SPARSE,
    PREVIOUS,
    TIMEOUT,
    ParityTestCase,
    cut_by_peer,
    drop,
    read_some,
    reply_of,
    sha256,
    tls,
)
from tests.hardening.helpers import temporaries, wait_for

QUIT_FILE = 24 * 1024 * 1024 + 5
REACTOR: Any = _reactor


class TransferEndTests(ParityTestCase):
    """Passive mode (PASV): the edge listens for the client's data connections."""

    # 1 ------------------------------------------------------------------ stalled upload

    def stalled_upload(self, where: str, version: str) -> list[Any]:
        (self.home / "keep.bin").write_bytes(PREVIOUS)
        ftp = self.login(where, version)
        conn = ftp.transfercmd("STOR keep.bin")
        conn.sendall(b"x" * 100_000)  # then nothing, the data connection left open
        started = time.monotonic()
        reply = reply_of(ftp)
        waited = time.monotonic() - started
        noop = ftp.sendcmd("NOOP")
        conn.close()
        ftp.quit()
        return [
            reply[:3],
            "timed out" in reply,
            waited < 6,
            noop[:3],
            (self.home / "keep.bin").read_bytes(),
            temporaries(self.home),
        ]

    @defer.inlineCallbacks
    def check_stalled_upload(self, version: str) -> Any:
        yield self.start("data_timeout = 1")
        result = yield self.both(version, self.stalled_upload)
        self.assertEqual(result, ["426", True, True, "200", PREVIOUS, []])

    def test_stalled_upload_tls12(self) -> Any:
        return self.check_stalled_upload("1.2")

    def test_stalled_upload_tls13(self) -> Any:
        return self.check_stalled_upload("1.3")

    # 2, 3 ------------------------------------------------ control dropped mid-transfer

    def after_drop(self, where: str, version: str) -> list[Any]:
        """Whether every session ended within 5 s, then a new session's download."""
        ended = wait_for(self.no_session_left, limit=5)
        ftp = self.login(where, version)
        small = bytearray()
        retrieved = ftp.retrbinary("RETR small.txt", small.extend)
        ftp.quit()
        return [ended, retrieved, bytes(small)]

    def dropped_download(self, where: str, version: str) -> list[Any]:
        ftp = self.login(where, version)
        conn = ftp.transfercmd("RETR big.bin")
        received = read_some(conn, 2 * 1024 * 1024)
        drop(tls(ftp.sock), ftp)  # the data connection stays open, unread
        try:
            after = self.after_drop(where, version)
            cut = cut_by_peer(conn, sending=False)  # the ended session's data connection
        finally:
            drop(conn)
        return [received >= 2 * 1024 * 1024] + after + [cut]

    @defer.inlineCallbacks
    def check_dropped_download(self, version: str) -> Any:
        yield self.start()
        with open(self.home / "big.bin", "wb") as handle:
            handle.truncate(BIG_SPARSE)
        (self.home / "small.txt").write_bytes(b"after the drop")
        result = yield self.both(version, self.dropped_download)
        self.assertEqual(result, [True, True, "226 Transfer complete", b"after the drop", True])

    def test_control_dropped_during_download_tls12(self) -> Any:
        return self.check_dropped_download("1.2")

    def test_control_dropped_during_download_tls13(self) -> Any:
        return self.check_dropped_download("1.3")

    def dropped_upload(self, where: str, version: str) -> list[Any]:
        (self.home / "keep.bin").write_bytes(PREVIOUS)
        ftp = self.login(where, version)
        conn = ftp.transfercmd("STOR keep.bin")
        conn.sendall(b"x" * 1_000_000)
        time.sleep(0.3)  # the bytes reach the server (or the edge) and its thread
        drop(tls(ftp.sock), ftp)  # the data connection stays open, silent
        try:
            after = self.after_drop(where, version)
            # The session has ended: its upload is discarded, the data connection still open.
            gone = wait_for(lambda: not temporaries(self.home), limit=5)
            cut = cut_by_peer(conn, sending=True)
        finally:
            drop(conn)
        home = self.home
        return after + [(home / "keep.bin").read_bytes(), gone, temporaries(home), cut]

    @defer.inlineCallbacks
    def check_dropped_upload(self, version: str) -> Any:
        yield self.start()
        (self.home / "small.txt").write_bytes(b"after the drop")
        result = yield self.both(version, self.dropped_upload)
        self.assertEqual(
            result, [True, "226 Transfer complete", b"after the drop", PREVIOUS, True, [], True]
        )

    def test_control_dropped_during_upload_tls12(self) -> Any:
        return self.check_dropped_upload("1.2")

    def test_control_dropped_during_upload_tls13(self) -> Any:
        return self.check_dropped_upload("1.3")

    # 4 ------------------------------------------------------------ QUIT during RETR

    def quit_during_download(self, where: str, version: str) -> list[Any]:
        ftp = self.login(where, version)
        conn = ftp.transfercmd("RETR quit.bin")
        digest = hashlib.sha256()
        received = 0
        quit_sent = False
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            digest.update(chunk)
            received += len(chunk)
            if not quit_sent and received >= 1024 * 1024:
                ftp.putcmd("QUIT")  # RFC 959: the server ends the transfer first
                quit_sent = True
        tls(conn).unwrap()  # close_notify back, as ftplib's retrbinary does: a clean end
        conn.close()
        first, second = ftp.getline(), ftp.getline()
        ftp.close()
        return [quit_sent, first, second, received, digest.hexdigest()]

    @defer.inlineCallbacks
    def check_quit_during_download(self, version: str) -> Any:
        yield self.start()
        digest = random_file(self.home / "quit.bin", QUIT_FILE)
        result = yield self.both(version, self.quit_during_download)
        self.assertEqual(result, [True, "226 Transfer complete", "221 Goodbye", QUIT_FILE, digest])
        yield in_thread(wait_for, self.no_session_left)
        self.assertTrue(self.no_session_left())

    def test_quit_during_download_tls12(self) -> Any:
        return self.check_quit_during_download("1.2")

    def test_quit_during_download_tls13(self) -> Any:
        return self.check_quit_during_download("1.3")

    # 5 ------------------------------------------------------ ABOR with no transfer

    def abor_after_pasv(self, where: str, version: str) -> list[Any]:
        ftp = self.login(where, version)
        pasv = ftp.sendcmd("PASV")
        abor = ftp.sendcmd("ABOR")
        stored = ftp.storbinary("STOR after.txt", io.BytesIO(b"after ABOR"))
        back = bytearray()
        retrieved = ftp.retrbinary("RETR after.txt", back.extend)
        noop = ftp.sendcmd("NOOP")
        ftp.quit()
        return [pasv[:3], abor, stored, retrieved, bytes(back), noop[:3]]

    @defer.inlineCallbacks
    def check_abor_after_pasv(self, version: str) -> Any:
        yield self.start()
        result = yield self.both(version, self.abor_after_pasv)
        self.assertIn(result[1][:3], ("225", "226"))
        self.assertEqual(result[0], "227")
        self.assertEqual(result[2:], ["226 Transfer complete"] * 2 + [b"after ABOR", "200"])

    def test_abor_after_pasv_tls12(self) -> Any:
        return self.check_abor_after_pasv("1.2")

    def test_abor_after_pasv_tls13(self) -> Any:
        return self.check_abor_after_pasv("1.3")

    # more ends -------------------------------------------------------------------------

    def quit_during_upload(self, where: str, version: str) -> list[Any]:
        """QUIT in the middle of a protected STOR that the client then finishes."""
        ftp = self.login(where, version)
        conn = ftp.transfercmd("STOR quit-up.bin")
        payload = (self.home / "quit.bin").read_bytes()
        half = len(payload) // 2
        conn.sendall(payload[:half])
        ftp.putcmd("QUIT")
        time.sleep(0.3)  # QUIT reaches the server (through the edge) before the end
        conn.sendall(payload[half:])
        tls(conn).unwrap()  # close_notify: a clean end
        conn.close()
        first, second = ftp.getline(), ftp.getline()
        ftp.close()
        stored = self.home / "quit-up.bin"
        digest = sha256(stored.read_bytes()) if stored.exists() else None
        stored.unlink(missing_ok=True)
        return [first, second, digest, temporaries(self.home)]

    @defer.inlineCallbacks
    def check_quit_during_upload(self, version: str) -> Any:
        yield self.start()
        digest = random_file(self.home / "quit.bin", QUIT_FILE)
        result = yield self.both(version, self.quit_during_upload)
        self.assertEqual(result, ["226 Transfer complete", "221 Goodbye", digest, []])
        yield in_thread(wait_for, self.no_session_left)
        self.assertTrue(self.no_session_left())

    def test_quit_during_upload_tls12(self) -> Any:
        return self.check_quit_during_upload("1.2")

    def test_quit_during_upload_tls13(self) -> Any:
        return self.check_quit_during_upload("1.3")

    def data_dropped_during_download(self, where: str, version: str) -> list[Any]:
        """The client resets its data connection in the middle of a protected RETR."""
        ftp = self.login(where, version)
        conn = ftp.transfercmd("RETR big.bin")
        read_some(conn, 2 * 1024 * 1024)
        drop(conn)
        reply = reply_of(ftp)
        small = bytearray()
        retrieved = ftp.retrbinary("RETR small.txt", small.extend)
        noop = ftp.sendcmd("NOOP")
        ftp.quit()
        return [reply[:3], retrieved, bytes(small), noop[:3]]

    @defer.inlineCallbacks
    def check_data_dropped_during_download(self, version: str) -> Any:
        yield self.start()
        with open(self.home / "big.bin", "wb") as handle:
            handle.truncate(BIG_SPARSE)
        (self.home / "small.txt").write_bytes(b"after the reset")
        result = yield self.both(version, self.data_dropped_during_download)
        self.assertEqual(result, ["426", "226 Transfer complete", b"after the reset", "200"])

    def test_data_dropped_during_download_tls12(self) -> Any:
        return self.check_data_dropped_during_download("1.2")

    def test_data_dropped_during_download_tls13(self) -> Any:
        return self.check_data_dropped_during_download("1.3")

    def abor_after_connect(self, where: str, version: str) -> list[Any]:
        """PASV, the data connection made (TCP, no command yet), then ABOR: the server
        closes that connection and the session goes on."""
        ftp = self.login(where, version)
        host, port = ftplib.parse227(ftp.sendcmd("PASV"))
        raw = socket.create_connection((host, port), timeout=TIMEOUT)
        time.sleep(0.2)  # accepted (by the server, or by the edge)
        abor = ftp.sendcmd("ABOR")
        cut = cut_by_peer(raw, sending=False, limit=3)  # the server: at once
        raw.close()
        back = bytearray()
        stored = ftp.storbinary("STOR after.txt", io.BytesIO(b"after ABOR"))
        retrieved = ftp.retrbinary("RETR after.txt", back.extend)
        noop = ftp.sendcmd("NOOP")
        ftp.quit()
        return [abor, cut, stored, retrieved, bytes(back), noop[:3]]

    @defer.inlineCallbacks
    def check_abor_after_connect(self, version: str) -> Any:
        yield self.start()
        result = yield self.both(version, self.abor_after_connect)
        self.assertIn(result[0][:3], ("225", "226"))
        self.assertEqual(
            result[1:], [True] + ["226 Transfer complete"] * 2 + [b"after ABOR", "200"]
        )

    def test_abor_after_connect_tls12(self) -> Any:
        return self.check_abor_after_connect("1.2")

    def test_abor_after_connect_tls13(self) -> Any:
        return self.check_abor_after_connect("1.3")

    @defer.inlineCallbacks
    def test_abor_while_the_edge_waits_for_a_link(self) -> Any:
        """The edge only: ABOR while a protected data connection, handshake done, waits at
        the edge for a link connection (the pool is empty). The edge closes it, and the
        link that comes next goes back to the pool instead of carrying a relay the server
        has already forgotten."""
        yield self.start()
        edge = self.setup.edge

        def take_idle() -> list[Any]:
            taken, edge.idle[:] = list(edge.idle), []
            return taken

        def give_back(links: list[Any]) -> list[int]:
            for link in links:
                edge.link_ready(link)
            return [len(edge.waiting), len(edge.idle)]

        def session() -> list[Any]:
            ftp = self.login("edge", "1.3")
            taken = threads.blockingCallFromThread(REACTOR, take_idle)
            host, port = ftplib.parse227(ftp.sendcmd("PASV"))
            raw = socket.create_connection((host, port), timeout=TIMEOUT)
            session = tls(ftp.sock).session
            data = ftp.context.wrap_socket(raw, server_hostname=host, session=session)
            waiting = wait_for(lambda: len(edge.waiting) == 1)
            abor = ftp.sendcmd("ABOR")
            # Within 3 s: before the edge's own LINK_WAIT (5 s) would give up the wait.
            cut = cut_by_peer(data, sending=False, limit=3)
            data.close()
            after = threads.blockingCallFromThread(REACTOR, give_back, taken)
            listing = ftp.nlst()
            ftp.quit()
            return [len(taken) > 0, waiting, abor[:3], cut, after == [0, len(taken)], listing]

        result = yield in_thread(session)
        self.assertEqual(result, [True, True, "225", True, True, []])
        yield in_thread(wait_for, self.no_session_left)
        self.assertTrue(self.no_session_left())
