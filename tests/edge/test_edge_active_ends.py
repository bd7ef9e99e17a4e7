"""How ACTIVE-mode (PORT/EPRT) protected transfers end through an edge, compared with the
server itself.

The passive-mode counterpart is test_edge_transfer_ends. In active mode the client
listens and the server (through an edge: the edge, when the transfer command comes,
on the server's CONNECT) connects to it. Each scenario runs first against the server
directly (127.0.0.1) and then through the edge (127.0.0.2), with ftplib FTPS clients
in active mode (curl 7.88's active FTPS is broken upstream, curl/curl#10666), TLS 1.2
and 1.3, and the edge must give what the server gives: downloads and uploads past the
edge's pump threshold, ABOR during a download and during an upload, a download stalled
past data_timeout, ABOR after PORT with no transfer, PORT to a port where nothing
listens, ABOR while the connect to the client is under way and during the data
connection's TLS handshake, the control connection reset mid-download. After each
scenario every session has ended (server and edge). Loopback only; every client socket
has a 15 s timeout.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import socket
import time
from typing import Any

from twisted.internet import defer

from securetransport.edge.relay import PUMP_AFTER
from tests.e2e.harness import random_file
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

PAYLOAD = 3 * 1024 * 1024 + 5  # past the edge's pump threshold, not a multiple of a record

assert PAYLOAD > 4 * PUMP_AFTER


def replies_until_final(ftp: ftplib.FTP_TLS) -> list[str]:
    """Reply lines up to and including the first that is not a preliminary 1xx (at most
    four)."""
    lines = []
    for _ in range(4):
        line = ftp.getline()
        lines.append(line)
        if not line.startswith("1"):
            break
    return lines


def closed_port() -> int:
    """A loopback port where nothing listens (bound, then closed)."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = int(probe.getsockname()[1])
    probe.close()
    return port


class ActiveTransferEndTests(ParityTestCase):
    passive = False
    sessions_end_between = True

    # 1 ---------------------------------------------------------- download and upload

    def both_ways(self, where: str, version: str) -> list[Any]:
        payload = (self.home / "source.bin").read_bytes()
        ftp = self.login(where, version)
        stored = ftp.storbinary("STOR up.bin", io.BytesIO(payload))
        digest = hashlib.sha256()
        retrieved = ftp.retrbinary("RETR source.bin", digest.update)
        noop = ftp.sendcmd("NOOP")
        ftp.quit()
        up = self.home / "up.bin"
        on_disk = sha256(up.read_bytes())
        up.unlink()
        return [stored, retrieved, digest.hexdigest(), on_disk, noop[:3], temporaries(self.home)]

    @defer.inlineCallbacks
    def check_both_ways(self, version: str) -> Any:
        yield self.start()
        digest = random_file(self.home / "source.bin", PAYLOAD)
        result = yield self.both(version, self.both_ways)
        self.assertEqual(result, ["226 Transfer complete"] * 2 + [digest, digest, "200", []])

    def test_both_ways_tls12(self) -> Any:
        return self.check_both_ways("1.2")

    def test_both_ways_tls13(self) -> Any:
        return self.check_both_ways("1.3")

    # 2 ------------------------------------------------------ ABOR during a download

    def abor_download(self, where: str, version: str) -> list[Any]:
        ftp = self.login(where, version)
        conn = ftp.transfercmd("RETR big.bin")
        received = read_some(conn, 2 * 1024 * 1024)
        ftp.putcmd("ABOR")
        first, second = ftp.getline(), ftp.getline()
        cut = cut_by_peer(conn, sending=False)  # the server ended the data connection
        conn.close()
        small = bytearray()
        retrieved = ftp.retrbinary("RETR small.txt", small.extend)
        noop = ftp.sendcmd("NOOP")
        ftp.quit()
        enough = received >= 2 * 1024 * 1024
        return [enough, first[:3], second[:3], cut, retrieved, bytes(small), noop[:3]]

    @defer.inlineCallbacks
    def check_abor_download(self, version: str) -> Any:
        yield self.start()
        with open(self.home / "big.bin", "wb") as handle:
            handle.truncate(BIG_SPARSE)
        (self.home / "small.txt").write_bytes(b"after ABOR")
        result = yield self.both(version, self.abor_download)
        self.assertEqual(
            result, [True, "426", "226", True, "226 Transfer complete", b"after ABOR", "200"]
        )

    def test_abor_during_download_tls12(self) -> Any:
        return self.check_abor_download("1.2")

    def test_abor_during_download_tls13(self) -> Any:
        return self.check_abor_download("1.3")

    # 3 -------------------------------------------------------- ABOR during an upload

    def abor_upload(self, where: str, version: str) -> list[Any]:
        (self.home / "keep.bin").write_bytes(PREVIOUS)
        ftp = self.login(where, version)
        conn = ftp.transfercmd("STOR keep.bin")
        conn.sendall(b"x" * 1_000_000)
        time.sleep(0.3)  # the server (or the edge) hands the socket to its thread meanwhile
        conn.sendall(b"x" * 3_000_000)
        ftp.putcmd("ABOR")
        first, second = ftp.getline(), ftp.getline()
        conn.close()
        gone = wait_for(lambda: not temporaries(self.home), limit=5)
        kept = (self.home / "keep.bin").read_bytes()
        after = ftp.storbinary("STOR after.txt", io.BytesIO(b"after ABOR"))
        noop = ftp.sendcmd("NOOP")
        ftp.quit()
        back = (self.home / "after.txt").read_bytes()
        (self.home / "after.txt").unlink()
        return [first[:3], second[:3], kept, gone, temporaries(self.home), after, back, noop[:3]]

    @defer.inlineCallbacks
    def check_abor_upload(self, version: str) -> Any:
        yield self.start()
        result = yield self.both(version, self.abor_upload)
        self.assertEqual(
            result,
            ["426", "226", PREVIOUS, True, [], "226 Transfer complete", b"after ABOR", "200"],
        )

    def test_abor_during_upload_tls12(self) -> Any:
        return self.check_abor_upload("1.2")

    def test_abor_during_upload_tls13(self) -> Any:
        return self.check_abor_upload("1.3")

    # 4 -------------------------------------------------- a download stalled (timeout)

    def stalled_download(self, where: str, version: str) -> list[Any]:
        ftp = self.login(where, version)
        conn = ftp.transfercmd("RETR big.bin")
        conn.recv(65536)  # then nothing: the buffers on the way fill, and no byte moves
        started = time.monotonic()
        reply = reply_of(ftp)
        waited = time.monotonic() - started
        cut = cut_by_peer(conn, sending=False)
        conn.close()
        small = bytearray()
        retrieved = ftp.retrbinary("RETR small.txt", small.extend)
        noop = ftp.sendcmd("NOOP")
        ftp.quit()
        timed_out = "timed out" in reply
        return [reply[:3], timed_out, waited < 8, cut, retrieved, bytes(small), noop[:3]]

    @defer.inlineCallbacks
    def check_stalled_download(self, version: str) -> Any:
        yield self.start("data_timeout = 1")
        with open(self.home / "big.bin", "wb") as handle:
            handle.truncate(BIG_SPARSE)
        (self.home / "small.txt").write_bytes(b"after the timeout")
        result = yield self.both(version, self.stalled_download)
        self.assertEqual(
            result,
            ["426", True, True, True, "226 Transfer complete", b"after the timeout", "200"],
        )

    def test_stalled_download_tls12(self) -> Any:
        return self.check_stalled_download("1.2")

    def test_stalled_download_tls13(self) -> Any:
        return self.check_stalled_download("1.3")

    # 5 ------------------------------------------------------ ABOR with no transfer

    def abor_after_port(self, where: str, version: str) -> list[Any]:
        ftp = self.login(where, version)
        listener = ftp.makeport()  # PORT (ftplib sends it), the client now listens
        abor = ftp.sendcmd("ABOR")
        listener.settimeout(1)
        try:
            conn, _ = listener.accept()  # nobody connects: the set-up is gone
            conn.close()
            connected = True
        except TimeoutError:
            connected = False
        listener.close()
        stored = ftp.storbinary("STOR after.txt", io.BytesIO(b"after ABOR"))
        back = bytearray()
        retrieved = ftp.retrbinary("RETR after.txt", back.extend)
        noop = ftp.sendcmd("NOOP")
        ftp.quit()
        (self.home / "after.txt").unlink()
        return [abor, connected, stored, retrieved, bytes(back), noop[:3]]

    @defer.inlineCallbacks
    def check_abor_after_port(self, version: str) -> Any:
        yield self.start()
        result = yield self.both(version, self.abor_after_port)
        self.assertIn(result[0][:3], ("225", "226"))
        self.assertEqual(
            result[1:], [False] + ["226 Transfer complete"] * 2 + [b"after ABOR", "200"]
        )

    def test_abor_after_port_tls12(self) -> Any:
        return self.check_abor_after_port("1.2")

    def test_abor_after_port_tls13(self) -> Any:
        return self.check_abor_after_port("1.3")

    # 6 ------------------------------------------------- PORT to where nothing listens

    def port_to_nothing(self, where: str, version: str) -> list[Any]:
        ftp = self.login(where, version)
        port = ftp.sendport("127.0.0.1", closed_port())
        started = time.monotonic()
        ftp.putcmd("RETR small.txt")
        replies = replies_until_final(ftp)
        waited = time.monotonic() - started
        noop = ftp.sendcmd("NOOP")
        small = bytearray()
        retrieved = ftp.retrbinary("RETR small.txt", small.extend)
        ftp.quit()
        return [port, replies, waited < 5, noop[:3], retrieved, bytes(small)]

    @defer.inlineCallbacks
    def check_port_to_nothing(self, version: str) -> Any:
        yield self.start()
        (self.home / "small.txt").write_bytes(b"after the refusal")
        result = yield self.both(version, self.port_to_nothing)
        self.assertEqual(result[0], "200 PORT command successful")
        self.assertEqual(result[1][-1][:3], "425", result[1])
        self.assertEqual(result[2:], [True, "200", "226 Transfer complete", b"after the refusal"])

    def test_port_to_nothing_tls12(self) -> Any:
        return self.check_port_to_nothing("1.2")

    def test_port_to_nothing_tls13(self) -> Any:
        return self.check_port_to_nothing("1.3")

    # 7 ------------------------------------------- ABOR while the connection is made

    def abor_while_connecting(self, where: str, version: str) -> list[Any]:
        """RETR after PORT to a listener whose accept queue is full (its SYNs are dropped,
        the connect hangs), then ABOR: once the queue has room again, nothing connects,
        or what does is cut at once: no data connection outlives the aborted set-up."""
        listener = socket.create_server(("127.0.0.1", 0), backlog=0)
        fillers = []
        try:
            for _ in range(4):  # until a connect hangs: the queue is full
                filler = socket.socket()
                filler.settimeout(0.5)
                fillers.append(filler)
                try:
                    filler.connect(listener.getsockname())
                except TimeoutError:
                    break
            ftp = self.login(where, version)
            ftp.sendport(*listener.getsockname())
            ftp.putcmd("RETR small.txt")
            opening = ftp.getline()
            time.sleep(0.3)  # the server (or the edge) is connecting
            ftp.putcmd("ABOR")
            replies = replies_until_final(ftp) + replies_until_final(ftp)
            for filler in fillers:
                filler.close()
            listener.settimeout(0.2)
            for _ in range(8):  # the queued fillers out of the way
                try:
                    listener.accept()[0].close()
                except TimeoutError:
                    break
            listener.settimeout(5)  # past the next two SYN retransmits
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                left_open = False
            else:
                left_open = not cut_by_peer(conn, sending=False, limit=3)
                conn.close()
        finally:
            listener.close()
            for filler in fillers:
                filler.close()
        noop = ftp.sendcmd("NOOP")
        small = bytearray()
        retrieved = ftp.retrbinary("RETR small.txt", small.extend)
        ftp.quit()
        codes = [reply[:3] for reply in replies]
        return [opening[:3], codes, left_open, noop[:3], retrieved, bytes(small)]

    @defer.inlineCallbacks
    def check_abor_while_connecting(self, version: str) -> Any:
        yield self.start()
        (self.home / "small.txt").write_bytes(b"after ABOR")
        result = yield self.both(version, self.abor_while_connecting)
        self.assertEqual(
            result,
            ["150", ["426", "226"], False, "200", "226 Transfer complete", b"after ABOR"],
        )

    def test_abor_while_connecting_tls12(self) -> Any:
        return self.check_abor_while_connecting("1.2")

    def test_abor_while_connecting_tls13(self) -> Any:
        return self.check_abor_while_connecting("1.3")

    # 8 ------------------------------------------- ABOR during the data TLS handshake

    def abor_during_handshake(self, where: str, version: str) -> list[Any]:
        """RETR after PORT; the client accepts the connection and starts no TLS; ABOR:
        the server (through the edge: the edge) cuts that connection at once."""
        listener = socket.create_server(("127.0.0.1", 0), backlog=1)
        listener.settimeout(TIMEOUT)
        try:
            ftp = self.login(where, version)
            ftp.sendport(*listener.getsockname())
            ftp.putcmd("RETR small.txt")
            opening = ftp.getline()
            conn, _ = listener.accept()
        finally:
            listener.close()
        time.sleep(0.2)  # connected at the server (or the edge), its handshake waiting
        ftp.putcmd("ABOR")
        replies = replies_until_final(ftp) + replies_until_final(ftp)
        cut = cut_by_peer(conn, sending=False, limit=3)
        conn.close()
        noop = ftp.sendcmd("NOOP")
        small = bytearray()
        retrieved = ftp.retrbinary("RETR small.txt", small.extend)
        ftp.quit()
        codes = [reply[:3] for reply in replies]
        return [opening[:3], codes, cut, noop[:3], retrieved, bytes(small)]

    @defer.inlineCallbacks
    def check_abor_during_handshake(self, version: str) -> Any:
        yield self.start()
        (self.home / "small.txt").write_bytes(b"after ABOR")
        result = yield self.both(version, self.abor_during_handshake)
        self.assertEqual(
            result, ["150", ["426", "226"], True, "200", "226 Transfer complete", b"after ABOR"]
        )

    def test_abor_during_handshake_tls12(self) -> Any:
        return self.check_abor_during_handshake("1.2")

    def test_abor_during_handshake_tls13(self) -> Any:
        return self.check_abor_during_handshake("1.3")

    # 9 ---------------------------------------------- control dropped mid-download

    def dropped_download(self, where: str, version: str) -> list[Any]:
        """The control connection reset in the middle of an active download: the session
        ends, its data connection is cut, and a new session downloads."""
        ftp = self.login(where, version)
        conn = ftp.transfercmd("RETR big.bin")
        received = read_some(conn, 2 * 1024 * 1024)
        drop(tls(ftp.sock), ftp)  # the data connection stays open, unread
        try:
            ended = wait_for(self.no_session_left, limit=5)
            cut = cut_by_peer(conn, sending=False)
        finally:
            drop(conn)
        ftp = self.login(where, version)
        small = bytearray()
        retrieved = ftp.retrbinary("RETR small.txt", small.extend)
        ftp.quit()
        return [received >= 2 * 1024 * 1024, ended, cut, retrieved, bytes(small)]

    @defer.inlineCallbacks
    def check_dropped_download(self, version: str) -> Any:
        yield self.start()
        with open(self.home / "big.bin", "wb") as handle:
            handle.truncate(BIG_SPARSE)
        (self.home / "small.txt").write_bytes(b"after the drop")
        result = yield self.both(version, self.dropped_download)
        self.assertEqual(result, [True, True, True, "226 Transfer complete", b"after the drop"])

    def test_control_dropped_during_download_tls12(self) -> Any:
        return self.check_dropped_download("1.2")

    def test_control_dropped_during_download_tls13(self) -> Any:
        return self.check_dropped_download("1.3")
