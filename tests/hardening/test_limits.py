"""Limits on a live server (SPEC sections 3 and 4): sessions, timeouts, work before login.

The server runs in the test's reactor (`LiveServer`); clients are raw sockets in threads,
several of them bound to other loopback addresses (127.0.0.x) to act as other clients.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SkipTest, TestCase

from hardening.clients import (
    Closed,
    Control,
    client_context,
    client_hello,
    implicit_hello_answer,
    pasv_port,
    read_until_closed,
)
from tests.e2e.harness import LiveServer, in_thread
from tests.hardening.helpers import HOST, Session, code, temporaries, wait_for


def rst_close(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0), as a killed client would."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def raw_connect(port: int, source: str | None = None) -> socket.socket:
    return socket.create_connection(
        (HOST, port), timeout=10, source_address=(source, 0) if source else None
    )


class SessionLimitTests(TestCase):
    """max_sessions and max_sessions_per_address: 421 and close; counts right after closes."""

    timeout = 30

    def setUp(self) -> None:
        self.server = LiveServer(
            self, extra_server="max_sessions = 3\nmax_sessions_per_address = 2"
        ).start()

    @defer.inlineCallbacks
    def test_per_address_and_total_limits(self) -> Any:
        port, implicit = self.server.explicit_port, self.server.implicit_port
        counter = self.server.runtime.sessions

        def run() -> dict[str, Any]:
            out: dict[str, Any] = {}
            a1, a2 = Control(port), Control(port)
            out["first_two"] = [code(a1.greeting), code(a2.greeting)]
            a3 = Control(port, greet=False)
            out["same_address_third"] = a3.read_reply()
            out["same_address_third_closed"] = a3.closed_by_server()
            b1 = Control(port, source="127.0.0.2")
            out["other_address"] = b1.greeting
            c1 = Control(port, source="127.0.0.3", greet=False)
            out["over_total"] = c1.read_reply()
            out["over_total_closed"] = c1.closed_by_server()
            out["implicit_over_total"] = implicit_hello_answer(HOST, implicit, "127.0.0.3")
            out["quit"] = a1.command("QUIT")
            out["quit_closed"] = a1.closed_by_server()
            a4 = Control(port)  # QUIT's slot is free as soon as the server has closed
            out["after_quit"] = a4.greeting
            out["counted"] = (counter.total, dict(counter.per_address))
            for control in (a2, a3, b1, c1, a4):
                control.close()
            return out

        out = yield in_thread(run)
        self.assertEqual(out["first_two"], ["220", "220"], out)
        self.assertEqual(code(out["same_address_third"]), "421", out)
        self.assertTrue(out["same_address_third_closed"], out)
        self.assertEqual(code(out["other_address"]), "220", out)
        self.assertEqual(code(out["over_total"]), "421", out)
        self.assertTrue(out["over_total_closed"], out)
        received, how = out["implicit_over_total"]
        self.assertEqual(received, b"", "no TLS byte (no ServerHello) over the limit")
        self.assertNotEqual(how, "timeout", out)
        self.assertEqual(code(out["quit"]), "221", out)
        self.assertEqual(code(out["after_quit"]), "220", out)
        self.assertEqual(out["counted"], (3, {"127.0.0.1": 2, "127.0.0.2": 1}), out)

    @defer.inlineCallbacks
    def test_counts_are_right_after_every_kind_of_disconnect(self) -> Any:
        port = self.server.explicit_port
        counter = self.server.runtime.sessions
        context = client_context(self.server.pki)

        def drained() -> bool:
            return counter.total == 0 and not counter.per_address

        def run() -> dict[str, Any]:
            out: dict[str, Any] = {"not_drained": []}
            for round_ in range(3):
                endings: list[tuple[str, Any]] = []
                one = Control(port)
                endings.append(("quit", lambda c=one: c.command("QUIT")))
                two = Control(port)
                endings.append(("fin", lambda c=two: c.close()))
                refused = Control(port, greet=False)
                out.setdefault("refused", []).append(refused.read_reply()[:3])
                refused.close()
                for _, end in endings:
                    end()
                if not wait_for(drained, 5):
                    out["not_drained"].append((round_, "quit+fin", counter.total))
                three = Control(port)
                rst_close(three.sock)
                session = Session(port)
                session.close()
                if not wait_for(drained, 5):
                    out["not_drained"].append((round_, "rst+login", counter.total))
                tls = Control(port)
                tls.command("AUTH TLS")
                tls.start_tls(context)
                tls.command("USER nobody-here")
                tls.close()
                midway = Control(port)
                midway.command("AUTH TLS")
                midway.send(client_hello()[:40])
                rst_close(midway.sock)
                if not wait_for(drained, 5):
                    out["not_drained"].append((round_, "tls", counter.total))
            last = [Control(port), Control(port)]
            out["last"] = [code(c.greeting) for c in last]
            for control in last:
                control.close()
            out["drained_at_end"] = wait_for(drained, 5)
            return out

        out = yield in_thread(run)
        self.assertEqual(out["not_drained"], [], out)
        self.assertEqual(out["refused"], ["421"] * 3, out)
        self.assertEqual(out["last"], ["220", "220"], out)
        self.assertTrue(out["drained_at_end"], out)


def ended(sock: socket.socket, started: float, limit: float = 8) -> tuple[bytes, str, float]:
    """Read until the server closes: (bytes, how, seconds since `started`)."""
    received, how = read_until_closed(sock, limit)
    return received, how, time.monotonic() - started


class LoginTimeoutTests(TestCase):
    """login_timeout covers the TLS handshake and the login; commands do not extend it."""

    timeout = 40
    # 3 s: the upper bounds below get 2-2.5 s of slack for seven clients at once on a
    # loaded machine, and stay under twice the timeout (what an extended login would take).
    LOGIN_TIMEOUT = 3.0

    def setUp(self) -> None:
        self.server = LiveServer(
            self,
            extra_server=f"login_timeout = {self.LOGIN_TIMEOUT}\nmax_sessions_per_address = 2",
        ).start()

    def scenario(self, name: str, source: str) -> tuple[str, bytes, str, float]:
        explicit, implicit = self.server.explicit_port, self.server.implicit_port
        started = time.monotonic()
        sock = raw_connect(implicit if name.startswith("implicit") else explicit, source)
        if name == "clear, silent":
            pass
        elif name == "clear, NOOP every 0.4 s":
            control = Control(0, sock=sock)
            for _ in range(20):  # bounded: 8 s at most
                try:
                    reply = control.command("NOOP")
                except (Closed, OSError):
                    break
                if not reply.startswith("200"):
                    return name, reply.encode(), "replied", time.monotonic() - started
                time.sleep(0.4)
            return name, b"", "closed", time.monotonic() - started
        elif name == "clear, waiting at PASS":
            control = Control(0, sock=sock)
            control.command("USER alice")
        elif name == "implicit, silent":
            pass
        elif name == "implicit, half a ClientHello":
            sock.sendall(client_hello()[:60])
        elif name == "implicit, handshake done, no login":
            control = Control(
                0,
                sock=client_context(self.server.pki).wrap_socket(sock, server_hostname="localhost"),
            )
            reply = ""
            try:
                reply = control.read_reply()
            except (Closed, OSError):
                pass
            return name, reply.encode(), "closed", time.monotonic() - started
        elif name == "explicit, AUTH TLS then silent":
            control = Control(0, sock=sock)
            control.command("AUTH TLS")
        else:
            raise AssertionError(name)
        received, how, lived = ended(sock, started)
        sock.close()
        return name, received, how, lived

    @defer.inlineCallbacks
    def test_every_kind_of_stalled_login_ends_on_time(self) -> Any:
        names = [
            "clear, silent",
            "clear, NOOP every 0.4 s",
            "clear, waiting at PASS",
            "implicit, silent",
            "implicit, half a ClientHello",
            "implicit, handshake done, no login",
            "explicit, AUTH TLS then silent",
        ]
        results = yield defer.gatherResults(
            [in_thread(self.scenario, name, f"127.0.0.{10 + i}") for i, name in enumerate(names)]
        )
        for name, received, how, lived in results:
            where = (name, received[-200:], how, lived)
            self.assertNotEqual(how, "timeout", where)
            self.assertGreater(lived, self.LOGIN_TIMEOUT - 0.2, where)
            self.assertLess(lived, self.LOGIN_TIMEOUT + 2.5, where)
            if name.startswith("clear") or name == "implicit, handshake done, no login":
                self.assertIn(b"421", received, where)
            if name in ("implicit, silent", "implicit, half a ClientHello"):
                self.assertNotIn(b"421", received, where)
        self.assertEqual(self.server.runtime.sessions.total, 0)

    @defer.inlineCallbacks
    def test_slow_loris_cannot_hold_a_slot_past_login_timeout(self) -> Any:
        port = self.server.explicit_port
        source = "127.0.0.30"

        def loris() -> tuple[bytes, float]:
            started = time.monotonic()
            sock = raw_connect(port, source)
            received = bytearray()
            for byte in b"USER alice\r\nPASS " * 2:  # a byte a second; bounded
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    break
                readable, _, _ = select.select([sock], [], [], 1.0)
                if readable:
                    chunk = sock.recv(4096)
                    received += chunk
                    if not chunk:
                        break
            sock.close()
            return bytes(received), time.monotonic() - started

        def third() -> tuple[str, str, float]:
            time.sleep(0.5)  # both lorises hold their slots now
            refused = Control(port, source=source, greet=False)
            during = refused.read_reply()
            refused.close()
            started = time.monotonic()
            after = ""
            for _ in range(100):  # bounded: about 10 s
                control = Control(port, source=source, greet=False)
                after = control.read_reply()
                control.close()
                if after.startswith("220"):
                    break
                time.sleep(0.1)
            return during, after, time.monotonic() - started + 0.5

        first, second, other = yield defer.gatherResults(
            [in_thread(loris), in_thread(loris), in_thread(third)]
        )
        for received, lived in (first, second):
            self.assertIn(b"421", received, (received, lived))
            self.assertLess(lived, self.LOGIN_TIMEOUT + 2.5, (received, lived))
        during, after, waited = other
        self.assertEqual(code(during), "421", other)
        self.assertEqual(code(after), "220", other)
        self.assertLess(waited, self.LOGIN_TIMEOUT + 2.0, other)


class IdleAndDataTimeoutTests(TestCase):
    """idle_timeout on a logged-in session; data_timeout on a data connection that stalls."""

    timeout = 60
    # Seconds. 2, not 1: a keep-alive every 0.5 s then has 1.5 s of slack for a loaded
    # machine's scheduling, and the bounds below stay tight around the timeouts.
    TIMEOUT = 2

    def setUp(self) -> None:
        self.server = LiveServer(
            self, extra_server=f"idle_timeout = {self.TIMEOUT}\ndata_timeout = {self.TIMEOUT}"
        ).start()

    @defer.inlineCallbacks
    def test_idle_timeout(self) -> Any:
        port = self.server.explicit_port

        def run() -> tuple[list[str], bytes, str, float]:
            session = Session(port)
            replies = []
            for _ in range(4 * self.TIMEOUT):  # commands keep it alive past the timeout
                time.sleep(0.5)
                replies.append(session.command("NOOP"))
            started = time.monotonic()
            received, how, lived = ended(session.sock, started)
            session.close()
            return replies, bytes(session.buffer) + received, how, lived

        replies, received, how, lived = yield in_thread(run)
        self.assertEqual([code(r) for r in replies], ["200"] * 4 * self.TIMEOUT)
        self.assertIn(b"421", received)
        self.assertNotEqual(how, "timeout")
        self.assertTrue(self.TIMEOUT - 0.3 < lived < self.TIMEOUT + 2.0, lived)

    @defer.inlineCallbacks
    def test_stalled_upload_gets_426_and_keeps_the_previous_file(self) -> Any:
        target = self.server.home() / "keep.bin"
        target.write_bytes(b"previous version")
        port = self.server.explicit_port

        def run() -> tuple[str, str, float, str, str]:
            session = Session(port)
            data = raw_connect(pasv_port(session.command("EPSV")))
            first = session.command("STOR keep.bin")
            data.sendall(os.urandom(65536))
            started = time.monotonic()
            final = session.read_reply()  # nothing more is sent: the transfer stalls
            waited = time.monotonic() - started
            _, how = read_until_closed(data, 5)
            data.close()
            noop = session.command("NOOP")
            session.close()
            return first, final, waited, how, noop

        first, final, waited, how, noop = yield in_thread(run)
        self.assertEqual(code(first), "150")
        self.assertEqual(code(final), "426", final)
        self.assertTrue(self.TIMEOUT - 0.3 < waited < self.TIMEOUT + 1.0, waited)
        self.assertNotEqual(how, "timeout")
        self.assertEqual(code(noop), "200")
        self.assertEqual(target.read_bytes(), b"previous version")
        self.assertEqual(temporaries(self.server.home()), [])

    @defer.inlineCallbacks
    def test_stalled_download_gets_426(self) -> Any:
        big = self.server.home() / "big.bin"
        with open(big, "wb") as handle:
            handle.truncate(48 * 1024 * 1024)
        port = self.server.explicit_port

        def run() -> tuple[str, str, float, str]:
            session = Session(port)
            data = raw_connect(pasv_port(session.command("EPSV")))
            data.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            first = session.command("RETR big.bin")
            started = time.monotonic()
            session.sock.settimeout(15)
            final = session.read_reply()  # the client never reads the data connection
            waited = time.monotonic() - started
            data.close()
            noop = session.command("NOOP")
            session.close()
            return first, final, waited, noop

        first, final, waited, noop = yield in_thread(run)
        self.assertEqual(code(first), "150")
        self.assertEqual(code(final), "426", final)
        self.assertLess(waited, self.TIMEOUT + 7)
        self.assertEqual(code(noop), "200")

    @defer.inlineCallbacks
    def test_passive_port_never_connected(self) -> Any:
        (self.server.home() / "a.txt").write_text("a")
        port = self.server.explicit_port

        def run() -> tuple[str, str, float]:
            session = Session(port)
            session.command("EPSV")
            started = time.monotonic()
            reply = session.command("RETR a.txt")
            if reply.startswith("1"):
                reply = session.read_reply()
            waited = time.monotonic() - started
            noop = session.command("NOOP")
            session.close()
            return reply, noop, waited

        reply, noop, waited = yield in_thread(run)
        self.assertEqual(code(reply), "425", reply)
        self.assertEqual(code(noop), "200")
        self.assertTrue(self.TIMEOUT - 0.3 < waited < self.TIMEOUT + 2.0, waited)


class CommandsBeforeLoginTests(TestCase):
    """At most 20 commands are served before login; the 21st gets 421 and the close."""

    timeout = 30

    def setUp(self) -> None:
        self.server = LiveServer(self).start()

    @defer.inlineCallbacks
    def test_twentieth_served_twenty_first_refused(self) -> Any:
        port = self.server.explicit_port

        def run() -> tuple[list[str], str, bool]:
            control = Control(port)
            replies = [control.command("NOOP") for _ in range(20)]
            try:
                last = control.command("NOOP")
            except (Closed, OSError):
                last = "closed"
            closed = control.closed_by_server()
            control.close()
            return [code(r) for r in replies], last, closed

        replies, last, closed = yield in_thread(run)
        self.assertEqual(replies, ["200"] * 20)
        self.assertEqual(code(last), "421", last)
        self.assertTrue(closed)

    @defer.inlineCallbacks
    def test_pipelined_bad_lines_count_too(self) -> Any:
        port = self.server.explicit_port
        lines = [b"NOOP", b"garbage here", b"LIST", b"\xff\xfe\xfd", b"CWD /", b"X" * 5000]
        packet = b"".join(lines[i % len(lines)] + b"\r\n" for i in range(30))

        def run() -> tuple[list[str], bytes]:
            control = Control(port)
            control.send(packet)
            replies = []
            for _ in range(25):
                try:
                    replies.append(control.read_reply())
                except (Closed, OSError):
                    break
            rest, _ = read_until_closed(control.sock, 3)
            control.close()
            return [code(r) for r in replies], rest

        replies, rest = yield in_thread(run)
        self.assertEqual(len(replies), 21, replies)
        self.assertNotIn("421", replies[:20])
        self.assertEqual(replies[20], "421")
        self.assertEqual(rest, b"")

    @defer.inlineCallbacks
    def test_the_budget_is_per_login(self) -> Any:
        port = self.server.explicit_port

        def run() -> tuple[list[str], str, list[str], str]:
            session = Session(port)
            logged_in = [code(session.command("NOOP")) for _ in range(30)]
            rein = session.command("REIN")
            again = [code(session.command("NOOP")) for _ in range(20)]
            try:
                last = session.command("NOOP")
            except (Closed, OSError):
                last = "closed"
            session.close()
            return logged_in, rein, again, last

        logged_in, rein, again, last = yield in_thread(run)
        self.assertEqual(logged_in, ["200"] * 30)
        self.assertEqual(code(rein), "220")
        self.assertEqual(again, ["200"] * 20)
        self.assertEqual(code(last), "421")


class VerificationPoolTests(TestCase):
    """Password checks run on a bounded pool; when its queue is full, PASS gets 421."""

    timeout = 60

    def setUp(self) -> None:
        self.server = LiveServer(self, extra_server="max_login_failures = 100000").start()
        self.server.runtime.failure_delay_base = 0.01

    def pool_capacity(self) -> int:
        from securetransport.passwords import VerificationPool

        pools = [p for p in self.server.service._pools if isinstance(p, VerificationPool)]
        self.assertEqual(len(pools), 1)
        return int(pools[0].capacity)

    @defer.inlineCallbacks
    def test_a_flood_of_password_checks_gets_421(self) -> Any:
        capacity = self.pool_capacity()
        if capacity > 100:
            raise SkipTest(f"a pool of {capacity} would need too many sessions for a short test")
        count = capacity + 15
        port = self.server.explicit_port
        barrier = threading.Barrier(count, timeout=20)

        def attempt(index: int) -> str:
            control = Control(port, source=f"127.0.0.{70 + index % 20}")
            control.command(f"USER nobody-{index}")
            barrier.wait()
            try:
                reply = control.command("PASS wrong-password")
            except (Closed, OSError):
                reply = "closed"
            control.close()
            return reply

        def flood() -> list[str]:
            replies = ["no reply"] * count

            def one(index: int) -> None:
                replies[index] = attempt(index)

            threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            return replies

        replies = yield in_thread(flood)
        codes = sorted(code(r) for r in replies)
        print(
            f"\npassword pool of {capacity}: {count} PASS at once -> "
            f"{codes.count('530')} x 530, {codes.count('421')} x 421"
        )
        self.assertEqual(set(codes) - {"530", "421"}, set(), replies)
        self.assertGreaterEqual(codes.count("421"), 1, replies)
        self.assertGreaterEqual(codes.count("530"), capacity, replies)
        after = yield in_thread(Session, port)  # the server serves logins again at once
        after.close()
