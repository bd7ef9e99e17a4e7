"""Failed logins, bans and per-name delays on a live server (SPEC section 4).

Each client address is a different 127.0.0.x, so the tests see bans as other clients would.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from hardening.clients import (
    Closed,
    Control,
    client_context,
    implicit_hello_answer,
)
from tests.e2e.harness import PASSWORD, LiveServer, in_thread
from tests.hardening.helpers import HOST, Session, code


def fail_logins(port: int, source: str, name: str, count: int) -> list[str]:
    """`count` wrong passwords for `name` on one session; every reply until the server closes."""
    control = Control(port, source=source)
    replies: list[str] = []
    for _ in range(count):
        try:
            replies.append(control.command(f"USER {name}"))
            replies.append(control.command("PASS wrong-password"))
        except (Closed, OSError):
            break
    else:
        control.sock.settimeout(3)
        try:
            replies.append(control.read_reply())  # the 421 after the last 530, if any
        except (Closed, OSError):
            pass
    control.close()
    return replies


def greeting(port: int, source: str) -> tuple[str, bool]:
    """The first reply of a new connection and whether the server then closed it."""
    control = Control(port, source=source, greet=False)
    try:
        first = control.read_reply()
    except (Closed, OSError):
        first = "closed"
    closed = first == "closed" or (not first.startswith("220") and control.closed_by_server(3))
    control.close()
    return first, closed


class BanTests(TestCase):
    """max_login_failures from one address bans it for ban_time."""

    timeout = 60
    # Seconds. What the brute-force test does after the ban (a listing, logins) must end
    # well within it, before the two "during" greetings at +1 s and +2 s.
    BAN_TIME = 6.0

    def setUp(self) -> None:
        self.server = LiveServer(
            self, extra_server=f"max_login_failures = 4\nban_time = {self.BAN_TIME}"
        ).start()
        self.server.runtime.failure_delay_base = 0.01

    @defer.inlineCallbacks
    def test_brute_force_bans_the_address(self) -> Any:
        port, implicit = self.server.explicit_port, self.server.implicit_port
        attacker = "127.0.0.40"

        def run() -> dict[str, Any]:
            out: dict[str, Any] = {}
            waiting = Control(port, source=attacker)  # not logged in, opened before the ban
            out["waiting_user"] = waiting.command("USER alice")
            working = Session(port, source=attacker)  # logged in before the ban
            out["first_session"] = fail_logins(port, attacker, "alice", 5)
            out["not_banned_yet"] = greeting(port, attacker)
            out["second_session"] = fail_logins(port, attacker, "alice", 5)
            banned_at = time.monotonic()
            out["new_connection"] = greeting(port, attacker)
            out["implicit"] = implicit_hello_answer(HOST, implicit, attacker)
            try:
                out["waiting_pass"] = waiting.command(f"PASS {PASSWORD}")
            except (Closed, OSError):
                out["waiting_pass"] = "closed"
            out["waiting_closed"] = waiting.closed_by_server(3)
            waiting.close()
            out["logged_in_noop"] = working.command("NOOP")
            out["logged_in_list"] = working.retr("NLST")[1]
            working.close()
            other = Session(port, source="127.0.0.41")
            out["other_address"] = other.command("NOOP")
            other.close()
            # Connecting during the ban does not extend it.
            during = []
            for at in (1.0, 2.0):
                time.sleep(max(0.0, banned_at + at - time.monotonic()))
                during.append(greeting(port, attacker)[0][:3])
            out["during"] = during
            out["during_ended_at"] = time.monotonic() - banned_at
            time.sleep(max(0.0, banned_at + self.BAN_TIME + 0.4 - time.monotonic()))
            out["after"] = greeting(port, attacker)[0]
            return out

        out = yield in_thread(run)
        self.assertEqual(code(out["waiting_user"]), "331")
        # A session that fails 3 logins is closed with 421 (the address is not banned yet).
        self.assertEqual(
            [code(r) for r in out["first_session"]],
            ["331", "530", "331", "530", "331", "530", "421"],
            out,
        )
        self.assertEqual(code(out["not_banned_yet"][0]), "220", out)
        # The 4th failure from the address bans it: 530 then 421.
        self.assertEqual([code(r) for r in out["second_session"]], ["331", "530", "421"], out)
        self.assertEqual(code(out["new_connection"][0]), "421", out)
        self.assertTrue(out["new_connection"][1], out)
        received, how = out["implicit"]
        self.assertEqual(received, b"", "a banned address must not get a TLS handshake")
        self.assertNotEqual(how, "timeout")
        self.assertEqual(code(out["waiting_pass"]), "421", out)
        self.assertTrue(out["waiting_closed"], out)
        self.assertEqual(code(out["logged_in_noop"]), "200", out)
        self.assertEqual([code(r) for r in out["logged_in_list"]], ["150", "226"], out)
        self.assertEqual(code(out["other_address"]), "200", out)
        self.assertLess(out["during_ended_at"], self.BAN_TIME, out)  # truly during the ban
        self.assertEqual(out["during"], ["421", "421"], out)
        self.assertEqual(code(out["after"]), "220", out)

    @defer.inlineCallbacks
    def test_failures_older_than_the_window_do_not_count(self) -> Any:
        port = self.server.explicit_port
        source = "127.0.0.43"

        def run() -> tuple[list[str], list[str], str]:
            early = fail_logins(port, source, "alice", 3)
            time.sleep(self.BAN_TIME + 0.3)
            late = fail_logins(port, source, "alice", 3)
            return early, late, greeting(port, source)[0]

        early, late, after = yield in_thread(run)
        self.assertEqual([code(r) for r in early][-1], "421")
        self.assertEqual([code(r) for r in late].count("530"), 3, late)
        self.assertEqual(code(after), "220", (early, late, after))


class DelayTests(TestCase):
    """Each failure for a name doubles its delay; never a lockout; certificates never wait."""

    timeout = 40
    BASE = 0.3

    def setUp(self) -> None:
        self.server = LiveServer(self, extra_server="max_login_failures = 100").start()
        self.server.runtime.failure_delay_base = self.BASE

    def timed_failure(self, name: str) -> tuple[str, float]:
        control = Control(self.server.explicit_port)
        control.command(f"USER {name}")
        started = time.perf_counter()
        reply = control.command("PASS wrong-password")
        elapsed = time.perf_counter() - started
        control.close()
        return reply, elapsed

    @defer.inlineCallbacks
    def test_delay_doubles_per_name_and_a_right_password_is_not_delayed(self) -> Any:
        # The delays the server asks for, exactly (factors of BASE), and, on the wire,
        # replies that come no sooner than that: wall-clock upper bounds would measure
        # the machine's load, not the server.
        guard = self.server.runtime.guard
        asked: list[tuple[str, float]] = []
        failure_delay = guard.failure_delay

        def recording(name: str, now: float) -> float:
            factor = failure_delay(name, now)
            asked.append((name, factor))
            return factor

        guard.failure_delay = recording  # type: ignore[method-assign]

        def run() -> dict[str, Any]:
            out: dict[str, Any] = {}
            out["alice"] = [self.timed_failure("alice") for _ in range(3)]
            out["other_name"] = self.timed_failure("zed-unknown")
            control = Control(self.server.explicit_port)
            control.command("USER alice")
            started = time.perf_counter()
            out["right"] = (control.command(f"PASS {PASSWORD}"), time.perf_counter() - started)
            control.close()
            return out

        out = yield in_thread(run)
        replies = [reply for reply, _ in out["alice"]]
        self.assertEqual([code(r) for r in replies], ["530"] * 3, out)
        self.assertEqual(asked, [("alice", 1), ("alice", 2), ("alice", 4), ("zed-unknown", 1)], out)
        for (_, elapsed), factor in zip(out["alice"], (1, 2, 4), strict=True):
            self.assertGreaterEqual(elapsed, factor * self.BASE, out)
        other_reply, other_elapsed = out["other_name"]
        self.assertEqual(code(other_reply), "530")
        self.assertGreaterEqual(other_elapsed, self.BASE, out)
        right_reply, right_elapsed = out["right"]
        self.assertEqual(code(right_reply), "230", out)  # never a lockout
        self.assertEqual(len(asked), 4, out)  # and not delayed: no delay was asked for it,
        self.assertLess(right_elapsed, 4 * self.BASE, out)  # alice's next would be 8 x BASE

    @defer.inlineCallbacks
    def test_certificate_login_is_neither_delayed_nor_blocked(self) -> Any:
        self.server.runtime.failure_delay_base = 0.1
        self.server.runtime.guard.max_failures = 4
        port = self.server.explicit_port
        context = client_context(self.server.pki, certificate="alice")

        def certificate_login() -> tuple[str, float]:
            control = Control(port)
            control.command("AUTH TLS")
            control.start_tls(context)
            started = time.perf_counter()
            reply = control.command("USER alice")
            elapsed = time.perf_counter() - started
            control.close()
            return reply, elapsed

        def run() -> dict[str, Any]:
            out: dict[str, Any] = {}
            out["attack"] = fail_logins(port, "127.0.0.44", "alice", 3)
            out["attack"] += fail_logins(port, "127.0.0.44", "alice", 3)
            out["attacker_banned"] = greeting(port, "127.0.0.44")[0]
            logins = [certificate_login() for _ in range(5)]
            out["certificate"] = [reply for reply, _ in logins]
            out["certificate_seconds"] = statistics.median(t for _, t in logins)
            return out

        out = yield in_thread(run)
        self.assertEqual(code(out["attacker_banned"]), "421", out)
        self.assertEqual([code(r) for r in out["certificate"]], ["232"] * 5, out)
        # alice's next failed password would wait 16 x 0.1 s; the certificate does not wait.
        self.assertLess(out["certificate_seconds"], 0.3, out)
