"""A client that sends commands and never reads its replies must not grow the server.

SPEC section 7: no input stops the server serving others. The server stops reading
a control connection (and serving its commands) while its unsent replies exceed a
small bound, and goes on when the client reads again.
"""

from __future__ import annotations

import select
import socket
import time
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.e2e.harness import PASSWORD, LiveServer, in_thread

COMMANDS = 400_000  # 2.4 MB of commands; HELP replies are 370 bytes: ~150 MB if all buffered
HELP = b"HELP\r\n"
HELP_END = b"214 Help OK\r\n"
NOOP_OK = b"200 NOOP ok\r\n"
SEND_TIMEOUT = 3.0  # seconds a blocked send may wait before we call the server stopped


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def read_reply(sock: socket.socket) -> bytes:
    """One single-line reply (greeting, USER, PASS, NOOP)."""
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


class NeverReadingClientTests(TestCase):
    timeout = 120

    def _flood(self, port: int) -> dict[str, Any]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Small kernel buffers on our side (no autotuning): a stopped server blocks our sends.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        sock.connect(("127.0.0.1", port))
        sock.settimeout(10)
        out: dict[str, Any] = {"greeting": read_reply(sock)}
        sock.sendall(b"USER alice\r\n")
        out["user"] = read_reply(sock)
        sock.sendall(f"PASS {PASSWORD}\r\n".encode())
        out["pass"] = read_reply(sock)
        sock.settimeout(SEND_TIMEOUT)
        payload = HELP * 1000
        sent = 0  # bytes
        try:
            while sent < COMMANDS * len(HELP):
                sent += sock.send(payload[sent % len(payload) :])
        except TimeoutError:
            pass
        # A blocked send may have cut a line: the rest of it goes first when we read again.
        out["pending"] = HELP[sent % len(HELP) :] if sent % len(HELP) else b""
        out["sent"] = (sent + len(out["pending"])) // len(HELP)
        out["sock"] = sock
        return out

    def _noop_latency(self, port: int) -> list[float]:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        read_reply(sock)
        sock.sendall(b"USER bob\r\n")
        read_reply(sock)
        sock.sendall(f"PASS {PASSWORD}\r\n".encode())
        read_reply(sock)
        latencies = []
        for _ in range(20):
            started = time.monotonic()
            sock.sendall(b"NOOP\r\n")
            reply = read_reply(sock)
            latencies.append(time.monotonic() - started)
            assert reply.startswith(b"200"), reply
        sock.close()
        return latencies

    @defer.inlineCallbacks
    def test_server_stops_reading_a_client_that_never_reads(self) -> Any:
        server = LiveServer(self).start()
        port = server.explicit_port
        before = rss_kib()
        flood = yield in_thread(self._flood, port)
        self.addCleanup(flood["sock"].close)
        self.assertTrue(flood["pass"].startswith(b"230"), flood)
        # The server stopped reading: our sends blocked long before every command went out
        # (before the fix all of them did; the kernel buffers on both sides, autotuned,
        # hold a few hundred KB), and the session is paused on its unsent replies.
        self.assertLess(flood["sent"], COMMANDS // 2, flood["sent"])
        paused = [
            s for s in server.runtime.open_sessions if s.username == "alice" and s.output_blocked
        ]
        self.assertEqual(len(paused), 1, "the flooding session is not paused on its output")
        grown_mib = (rss_kib() - before) / 1024
        self.assertLess(grown_mib, 40, f"the server process grew {grown_mib:.0f} MiB")
        latencies = yield in_thread(self._noop_latency, port)
        self.assertLess(max(latencies), 0.5, latencies)
        # Reading again: the session is served again; every HELP gets its reply, then NOOP.
        sock: socket.socket = flood["sock"]

        def drain() -> tuple[int, bool]:
            sock.setblocking(False)
            unsent = flood["pending"] + b"NOOP\r\n"
            helps, carry, noop = 0, b"", False
            deadline = time.monotonic() + 60
            while not noop and time.monotonic() < deadline:
                readable, writable, _ = select.select([sock], [sock] if unsent else [], [], 1)
                if writable:
                    unsent = unsent[sock.send(unsent) :]
                if readable:
                    chunk = sock.recv(1 << 20)
                    if not chunk:
                        break
                    data = carry + chunk
                    helps += data.count(HELP_END)
                    noop = NOOP_OK in data
                    carry = data[-(len(HELP_END) - 1) :]
            return helps, noop

        helps, noop = yield in_thread(drain)
        self.assertTrue(noop, "no reply to the NOOP after the client read again")
        self.assertEqual(helps, flood["sent"])
