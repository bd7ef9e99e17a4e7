"""Attacks on a live server: path escapes, reply injection, bounces, hijacks, brute force,
enumeration, IPv4-mapped addresses and commands before login (SPEC sections 4, 6 and 7).

Destructive commands (STOR, MKD, DELE, RNFR/RNTO) only ever aim at files inside the test's
own folder; read-only commands also aim at /etc/passwd.
"""

from __future__ import annotations

import gc
import os
import re
import socket
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SkipTest, TestCase

from hardening.clients import Closed, Control, pasv_port, read_until_closed
from tests.e2e.harness import PASSWORD, LiveServer, in_thread
from tests.hardening.helpers import HOST, Session, code, tree_snapshot

SECRET = b"S3CRET-outside-the-home " * 300 + b"1234567"  # 7207 bytes
BOBS = b"bob's own file " * 400  # 6000 bytes
LEAK_MARKERS = (
    b"S3CRET",
    b"bob's own",
    b"root:x:0:0",
    b"secret.txt",
    b"bobfile.txt",
    b"users.sqlite3",
    b"passwd",
)
REPLY_LINE = re.compile(r"^\d{3}[ -]")


def escapes(root: Path) -> list[str]:
    """Paths (as a client would type them) that aim at files outside alice's home."""
    secret = str(root / "secret.txt")
    bob = str(root / "home" / "bob" / "bobfile.txt")
    deep = "../" * 12
    return [
        "../secret.txt",
        "../../secret.txt",
        "/../../secret.txt",
        f"{deep}{secret.lstrip('/')}",
        secret,
        "//" + secret,
        "/./../.././../secret.txt",
        "./../../secret.txt",
        "sub/../../../secret.txt",
        "..%2f..%2fsecret.txt",
        "%2e%2e/%2e%2e/secret.txt",
        "%252e%252e%252fsecret.txt",
        "..\\..\\secret.txt",
        "\\..\\..\\secret.txt",
        "....//....//secret.txt",
        ".../.../secret.txt",
        "..;/..;/secret.txt",
        "~/../../secret.txt",
        "~bob/bobfile.txt",
        "../bob/bobfile.txt",
        bob,
        "up/secret.txt",
        "up/home/bob/bobfile.txt",
        "rootlink" + secret,
        "secretlink",
        "abslink",
        "bobhome/bobfile.txt",
        "loop/secret.txt",
        "sub/uplink/secret.txt",
        "..\u2215..\u2215secret.txt",  # division slash
        "..\uff0f..\uff0fsecret.txt",  # fullwidth solidus
        "\uff0e\uff0e/\uff0e\uff0e/secret.txt",  # fullwidth full stops
        "\u2024\u2024/\u2024\u2024/secret.txt",  # one dot leaders
        "..\u0000/../secret.txt",
        "x" * 300,
        "a/" * 1500 + "secret.txt",
        "../" * 1400 + "secret.txt",  # a line over 4 KiB
        "file:///etc/passwd",
        "C:\\Windows\\win.ini",
        "*",
        "../.st-upload-0000",
    ]


def read_only_escapes(root: Path) -> list[str]:
    return escapes(root) + [
        "/etc/passwd",
        "../../../../../../../../etc/passwd",
        "etclink/passwd",
        "rootlink/etc/passwd",
        "up/../../../../../../etc/passwd",
    ]


def restore(home: Path) -> None:
    """Put back what an earlier RNFR/RNTO inside the home may have moved."""
    if not (home / "inside.txt").exists():
        (home / "inside.txt").write_bytes(b"inside")
    (home / "sub").mkdir(exist_ok=True)
    if not (home / "sub" / "uplink").is_symlink():
        (home / "sub" / "uplink").symlink_to("../../..")


class PathEscapeTests(TestCase):
    """No path, `..`, symlink or encoded form leads out of the home, whatever the command."""

    timeout = 60

    def setUp(self) -> None:
        self.server = LiveServer(self).start()
        root = self.server.root
        (root / "secret.txt").write_bytes(SECRET)
        (self.server.home("bob") / "bobfile.txt").write_bytes(BOBS)
        home = self.server.home()
        (home / "inside.txt").write_bytes(b"inside")
        (home / "sub").mkdir()
        (home / "up").symlink_to("../..")
        (home / "rootlink").symlink_to("/")
        (home / "etclink").symlink_to("/etc")
        (home / "bobhome").symlink_to("../bob")
        (home / "secretlink").symlink_to("../../secret.txt")
        (home / "abslink").symlink_to(root / "secret.txt")
        (home / "loop").symlink_to("loop")
        (home / "sub" / "uplink").symlink_to("../../..")

    def outside_state(self) -> tuple[dict[str, Any], list[str], list[str]]:
        root = self.server.root
        skip = (self.server.home(), root / "log") + tuple(
            root / f"users.sqlite3{suffix}" for suffix in ("", "-wal", "-shm", "-journal")
        )
        return tree_snapshot(root, skip), sorted(os.listdir("/")), sorted(os.listdir("/etc"))

    def attack(self) -> list[tuple[str, str, Any]]:
        """Every command on every path; (command, path, what came back) for each."""
        root = self.server.root
        session = Session(self.server.explicit_port)
        seen: list[tuple[str, str, Any]] = []

        def send(verb: str, path: str, **kwargs: Any) -> Any:
            line = f"{verb} {path}".encode("utf-8", "surrogateescape")
            if verb in ("RETR", "LIST", "NLST", "MLSD"):
                result: Any = session.retr(line)
            elif verb in ("STOR", "APPE"):
                result = session.stor(line, b"ESCAPE-PROBE")
            else:
                result = session.command(line)
            seen.append((verb, path, result))
            return result

        for path in read_only_escapes(root):
            for verb in ("RETR", "SIZE", "MDTM", "MLST", "LIST", "NLST", "MLSD", "HASH", "STAT"):
                send(verb, path)
            if code(send("CWD", path)) == "250":
                seen.append(("CWD+LIST", path, session.retr("LIST -a")))
                seen.append(("CWD+PWD", path, session.command("PWD")))
                session.command("CWD /")
        for path in escapes(root):
            for verb in ("STOR", "APPE", "MKD", "DELE", "RMD"):
                send(verb, path)
            if code(send("RNFR", path)) == "350":
                seen.append(("RNTO", path, session.command("RNTO stolen.txt")))
            restore(self.server.home())
            session.command("RNFR inside.txt")
            seen.append(("RNTO", path, session.command(f"RNTO {path}".encode())))
            restore(self.server.home())
            session.command("RNFR sub")
            seen.append(("RNTO(folder)", path, session.command(f"RNTO {path}".encode())))
        seen.append(("NOOP", "", session.command("NOOP")))
        session.close()
        return seen

    @defer.inlineCallbacks
    def test_corpus_never_leaves_the_home(self) -> Any:
        before = self.outside_state()
        seen = yield in_thread(self.attack)
        after = self.outside_state()
        changed = {
            path: (before[0].get(path), after[0].get(path))
            for path in set(before[0]) | set(after[0])
            if before[0].get(path) != after[0].get(path)
        }
        self.assertEqual(changed, {}, "something outside the home changed")
        self.assertEqual(before, after, "something outside the home changed")
        self.assertEqual(code(seen[-1][2]), "200", seen[-1])
        outside_sizes = {str(len(SECRET)), str(len(BOBS)), str(os.stat("/etc/passwd").st_size)}
        leaks = []
        for verb, path, result in seen:
            text = repr(result).encode()
            data = result[0] if isinstance(result, tuple) else b""
            if any(marker in data for marker in LEAK_MARKERS):
                leaks.append((verb, path[:60], data[:200]))
            if verb in ("SIZE", "MLST", "STAT") and any(
                re.search(rf"\b{size}\b", text.decode()) for size in outside_sizes
            ):
                leaks.append((verb, path[:60], text[:200]))
            if verb == "CWD+PWD" and "secret" in str(result):
                leaks.append((verb, path[:60], result))
        self.assertEqual(leaks, [])
        # Every reply stayed well formed (no desync of the control connection).
        for verb, path, result in seen:
            replies = (
                result[1]
                if isinstance(result, tuple)
                else (result if isinstance(result, list) else [result])
            )
            for reply in replies:
                self.assertTrue(REPLY_LINE.match(reply), (verb, path[:60], reply))
        stored = sum(1 for verb, _, result in seen if verb == "STOR" and code(result[-1]) == "226")
        refused = sum(
            1
            for _, _, result in seen
            if code(
                str(
                    result[-1]
                    if isinstance(result, list)
                    else result[1][-1]
                    if isinstance(result, tuple)
                    else result
                )
            )
            >= "500"
        )
        print(
            f"\npath escapes: {len(seen)} commands on {len(read_only_escapes(self.server.root))}"
            f" paths, {refused} refused, {stored} uploads stored (inside the home), no leak"
        )


class ReplyInjectionTests(TestCase):
    """Names with CR, LF or NUL cannot be created (553) and never inject reply lines."""

    timeout = 30

    def setUp(self) -> None:
        self.server = LiveServer(self).start()

    @defer.inlineCallbacks
    def test_cr_and_nul_in_names(self) -> Any:
        home = self.server.home()
        (home / "inside.txt").write_bytes(b"inside")
        (home / "evil\n226 fake listing end").write_bytes(b"x")
        (home / "evil\r\n550 injected").mkdir()
        injected = [
            "STOR a\r226 Transfer complete",
            "APPE a\r226 x",
            "STOU a\rb",
            'MKD d\r257 "/etc" created',
            "MKD nul\x00byte",
            "RNTO r\r250 ok",
            "RNTO nul\x00",
            "MFMT 20200101000000 inside.txt\r213 x",
            "CWD c\r250 x",
            "DELE x\r250 deleted",
            "SIZE s\r213 1",
            "HELP X\r214 injected",
            "SITE X\r200 injected",
            "OPTS MLST size\r200 x",
            "STAT evil\r211 x",
            "HASH h\r213 x",
        ]

        def run() -> list[tuple[str, list[str], str]]:
            session = Session(self.server.explicit_port)
            out = []
            for line in injected:
                if line.startswith("RNTO"):
                    session.command("RNFR inside.txt")
                if line.startswith(("STOR", "APPE", "STOU")):
                    replies = session.stor(line, b"data")
                else:
                    replies = [session.command(line)]
                out.append((line, replies, session.command("NOOP")))
            for listing in ("LIST -a", "NLST", "MLSD"):
                data, replies = session.retr(listing)
                out.append((listing, replies + [data.decode("utf-8", "replace")], "200"))
            out.append(("STAT .", [session.command("STAT .")], session.command("NOOP")))
            session.close()
            return out

        out = yield in_thread(run)
        for line, replies, noop in out:
            self.assertEqual(noop[:3], "200", (line, replies, noop))  # no extra line queued
            if line.split(" ")[0] in ("STOR", "APPE", "STOU", "MKD", "RNTO", "MFMT"):
                self.assertEqual(code(replies[-1]), "553", (line, replies))
            for reply in replies:
                self.assertNotIn("injected", reply, line)
                self.assertNotIn("fake", reply, line)
        listings = ("LIST -a", "NLST", "MLSD", "STAT .")
        listed = [replies for line, replies, _ in out if line in listings]
        for replies in listed:
            self.assertFalse(any("evil" in reply for reply in replies), replies)
        names = sorted(p.name for p in home.iterdir())
        self.assertEqual(
            names, sorted(["inside.txt", "evil\n226 fake listing end", "evil\r\n550 injected"])
        )


class BounceAndHijackTests(TestCase):
    """PORT/EPRT bounces are refused; a passive port serves only the client's own address."""

    timeout = 30

    def setUp(self) -> None:
        self.server = LiveServer(self).start()
        (self.server.home() / "inside.txt").write_bytes(b"inside data")

    @defer.inlineCallbacks
    def test_port_and_eprt_bounces(self) -> Any:
        def run() -> dict[str, Any]:
            trap = socket.socket()
            trap.bind(("127.0.0.2", 0))
            trap.listen(5)
            trap.settimeout(0.5)
            tp = trap.getsockname()[1]
            own = socket.socket()
            own.bind(("127.0.0.1", 0))
            own.listen(1)
            own.settimeout(5)
            op = own.getsockname()[1]
            session = Session(self.server.explicit_port)
            attempts = [
                f"PORT 127,0,0,2,{tp >> 8},{tp & 255}",
                f"EPRT |1|127.0.0.2|{tp}|",
                "PORT 127,0,0,1,0,22",
                "PORT 127,0,0,1,3,255",  # 1023
                "EPRT |1|127.0.0.1|25|",
                "PORT 10,0,0,1,200,10",
                "PORT 0,0,0,0,200,10",
                "PORT 255,255,255,255,200,10",
                "PORT 127,0,0,1,256,1",
                "PORT 127,0,0,1,1,2,3",
                "PORT 2130706433,200,10",
                f"EPRT |2|::1|{tp}|",
                f"EPRT |1|::ffff:127.0.0.2|{tp}|",
                f"EPRT |1|127.000.000.002|{tp}|",
                f"EPRT !1!127.0.0.2!{tp}!",
                f"EPRT |3|127.0.0.2|{tp}|",
                "EPRT |1|127.0.0.1|0|",
                "EPRT |1|127.0.0.1|70000|",
            ]
            out: dict[str, Any] = {"refused": []}
            for line in attempts:
                reply = session.command(line)
                after = session.command("RETR inside.txt")
                out["refused"].append((line, reply, after))
            try:
                connection, peer = trap.accept()
                out["trap"] = peer
                connection.close()
            except TimeoutError:
                out["trap"] = None
            out["own"] = session.command(f"PORT 127,0,0,1,{op >> 8},{op & 255}")
            out["own_retr"] = session.command("RETR inside.txt")
            connection, _ = own.accept()
            out["own_data"], _ = read_until_closed(connection, 5)
            connection.close()
            out["own_final"] = session.read_reply()
            session.close()
            trap.close()
            own.close()
            return out

        out = yield in_thread(run)
        for line, reply, after in out["refused"]:
            self.assertIn(code(reply), ("501", "504", "522"), (line, reply))
            self.assertIn(code(after), ("425", "503"), (line, after))
        self.assertIsNone(out["trap"], "the server connected to another address")
        self.assertEqual(code(out["own"]), "200")
        self.assertEqual(code(out["own_retr"]), "150")
        self.assertEqual(out["own_data"], b"inside data")
        self.assertEqual(code(out["own_final"]), "226")

    @defer.inlineCallbacks
    def test_passive_connection_from_another_loopback_address(self) -> Any:
        def steal(verb: str) -> tuple[bytes, str, bytes, list[str]]:
            session = Session(self.server.explicit_port)
            port = pasv_port(session.command(verb))
            session.send(b"RETR inside.txt\r\n")  # the server now waits for the data connection
            intruder = socket.socket()
            intruder.bind(("127.0.0.2", 0))
            intruder.connect((HOST, port))
            stolen, how = read_until_closed(intruder, 5)
            intruder.close()
            own = socket.create_connection((HOST, port), timeout=5)
            received, _ = read_until_closed(own, 5)
            own.close()
            replies = [session.read_reply(), session.read_reply()]
            session.close()
            return stolen, how, received, replies

        for verb in ("PASV", "EPSV"):
            stolen, how, received, replies = yield in_thread(steal, verb)
            self.assertEqual(stolen, b"", verb)
            self.assertNotEqual(how, "timeout", verb)
            self.assertEqual(received, b"inside data", verb)
            self.assertEqual([code(r) for r in replies], ["150", "226"], verb)


class BruteForceTests(TestCase):
    """Pipelined and parallel password guessing ends in the ban; figures are printed."""

    timeout = 40

    def setUp(self) -> None:
        self.server = LiveServer(self, extra_server="max_login_failures = 5\nban_time = 30").start()
        self.server.runtime.failure_delay_base = 0.01

    def failures(self) -> int:
        return sum(
            1
            for e in self.server.audit_events()
            if e.get("event") == "login" and e.get("result") == "failure"
        )

    @defer.inlineCallbacks
    def test_pipelined_guesses_stop_at_three(self) -> Any:
        packet = b"".join(b"USER alice\r\nPASS guess-%d\r\n" % i for i in range(10))

        def run() -> tuple[bytes, str]:
            control = Control(self.server.explicit_port, source="127.0.0.60")
            control.send(packet)
            received, how = read_until_closed(control.sock, 10)
            control.close()
            return bytes(control.buffer) + received, how

        received, how = yield in_thread(run)
        codes = [line[:3] for line in received.decode().split("\r\n") if line]
        self.assertEqual(codes, ["331", "530"] * 3 + ["421"], received)
        self.assertNotEqual(how, "timeout")
        self.assertEqual(self.failures(), 3)

    @defer.inlineCallbacks
    def test_parallel_guesses_end_in_the_ban(self) -> Any:
        sessions = 12
        source = "127.0.0.61"

        def guess(index: int) -> str:
            try:
                control = Control(self.server.explicit_port, source=source, greet=False)
                first = control.read_reply()
                if not first.startswith("220"):
                    control.close()
                    return first
                control.command("USER alice")
                reply = control.command(f"PASS parallel-{index}")
                control.close()
                return reply
            except (Closed, OSError) as error:
                return f"closed {error}"

        replies = yield defer.gatherResults([in_thread(guess, i) for i in range(sessions)])
        verified = self.failures()
        late = yield in_thread(guess, 99)
        print(
            f"\nparallel brute force: {sessions} sessions at once from one address, "
            f"{verified} passwords checked before the ban (max_login_failures = 5); "
            f"replies {sorted(code(r) for r in replies)}"
        )
        self.assertEqual(code(late), "421")
        self.assertGreaterEqual(verified, 5)
        self.assertLessEqual(verified, sessions)

    @defer.inlineCallbacks
    def test_a_right_password_checked_after_the_ban_does_not_log_in(self) -> Any:
        from securetransport.passwords import VerificationPool

        pool = next(p for p in self.server.service._pools if isinstance(p, VerificationPool))
        wrong = min(pool.capacity - 1, 3 * pool.size + 5)  # queued ahead of the right one
        source = "127.0.0.62"

        def run() -> tuple[list[str], str, str, str]:
            guessers = [Control(self.server.explicit_port, source=source) for _ in range(wrong)]
            lucky = Control(self.server.explicit_port, source=source)
            for control in guessers + [lucky]:
                control.command("USER alice")
            for index, control in enumerate(guessers):
                control.send(b"PASS wrong-%d\r\n" % index)
            time.sleep(0.05)
            lucky.send(f"PASS {PASSWORD}\r\n".encode())  # checked after the others
            replies = [code(control.read_reply()) for control in guessers]
            reply = lucky.read_reply()
            try:
                after = lucky.command("PWD")
            except (Closed, OSError):
                after = "closed"
            new = Control(self.server.explicit_port, source=source, greet=False)
            refused = new.read_reply()
            for control in guessers + [lucky, new]:
                control.close()
            return replies, reply, after, refused

        replies, reply, after, refused = yield in_thread(run)
        self.assertEqual(replies, ["530"] * wrong)
        self.assertEqual(code(refused), "421")  # the address was banned meanwhile
        self.assertNotEqual(code(reply), "230", (reply, after))


def disable(server: LiveServer, name: str) -> None:
    store = server.store()
    account = store.get(name)
    assert account is not None
    store.update(replace(account, enabled=False))


class EnumerationTests(TestCase):
    """Known, unknown and disabled names: the same replies; the timing difference is printed."""

    timeout = 60

    def setUp(self) -> None:
        self.server = LiveServer(self, extra_server="max_login_failures = 100000").start()
        self.server.runtime.failure_delay_base = 0.001
        disable(self.server, "bob")

    def dialogue(self, name: str, tls: bool) -> tuple[list[str], float, float]:
        control = Control(self.server.explicit_port)
        replies = []
        if tls:
            from hardening.clients import client_context

            replies.append(control.command("AUTH TLS"))
            control.start_tls(client_context(self.server.pki))
        started = time.perf_counter()
        replies.append(control.command(f"USER {name}"))
        user_time = time.perf_counter() - started
        started = time.perf_counter()
        replies.append(control.command("PASS wrong-password"))
        pass_time = time.perf_counter() - started
        control.close()
        return [r.replace(name, "NAME") for r in replies], user_time, pass_time

    @defer.inlineCallbacks
    def test_replies_and_timing(self) -> Any:
        names = {"known": "alice", "unknown": "nobody-here", "disabled": "bob"}

        def run() -> dict[str, Any]:
            out: dict[str, Any] = {"replies": {}, "user": {}, "pass": {}}
            for tls in (False, True):
                for label, name in names.items():
                    out["replies"][(label, tls)] = self.dialogue(name, tls)[0]
            for label in names:
                out["user"][label], out["pass"][label] = [], []
            for _ in range(15):  # interleaved, so all names see the same load and delays
                for label, name in names.items():
                    _, user_time, pass_time = self.dialogue(name, False)
                    out["user"][label].append(user_time)
                    out["pass"][label].append(pass_time)
            return out

        out = yield in_thread(run)
        for tls in (False, True):
            known = out["replies"][("known", tls)]
            self.assertEqual(code(known[-2]), "331", known)
            for label in ("unknown", "disabled"):
                self.assertEqual(out["replies"][(label, tls)], known, (label, tls))
        medians = {
            kind: {label: statistics.median(values) * 1000 for label, values in out[kind].items()}
            for kind in ("user", "pass")
        }
        for kind, values in medians.items():
            known = values["known"]
            print(
                f"\nenumeration timing, {kind.upper()} median of 15 (ms): "
                + ", ".join(f"{label} {value:.2f}" for label, value in values.items())
                + f"; unknown-known {values['unknown'] - known:+.2f}, "
                f"disabled-known {values['disabled'] - known:+.2f}"
            )
            for label in ("unknown", "disabled"):
                self.assertLess(abs(values[label] - known), 100, medians)  # a sanity bound only


V4_CLASSES = """
[[class]]
name = "v4-loopback"
addresses = ["127.0.0.1/32"]
ssl = "optional"
login = ["password"]

[[class]]
name = "others"
ssl = "mandatory"
"""


class DualStackTests(TestCase):
    """On a listener bound to "::", an IPv4 client (::ffff:127.0.0.1) is matched like IPv4."""

    timeout = 30

    def setUp(self) -> None:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        try:
            v6only = probe.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
        finally:
            probe.close()
        if v6only:
            raise SkipTest("net.ipv6.bindv6only = 1: no IPv4-mapped clients on '::' here")
        # Collected last, so that an error left in a Deferred is reported by this test.
        self.addCleanup(gc.collect)
        # A listening socket on "::" for a few seconds; every client below connects to
        # 127.0.0.1 or ::1 only.
        self.server = LiveServer(self, classes=V4_CLASSES, listen_address="::").start()
        (self.server.home() / "inside.txt").write_bytes(b"inside data")

    @defer.inlineCallbacks
    def test_mapped_client_gets_the_ipv4_class(self) -> Any:
        port = self.server.explicit_port
        counter = self.server.runtime.sessions

        def run() -> dict[str, Any]:
            out: dict[str, Any] = {}
            session = Session(port)  # 127.0.0.1: the v4-loopback class, password in clear
            out["per_address"] = dict(counter.per_address)
            out["pasv"] = session.command("PASV")
            out["nlst"] = session.retr("NLST")
            v6 = Control(port, host="::1")
            out["v6_user"] = v6.command("USER alice")
            v6.close()
            own = socket.socket()
            own.bind(("127.0.0.1", 0))
            own.listen(1)
            own.settimeout(3)
            op = own.getsockname()[1]
            out["eprt"] = session.command(f"EPRT |1|127.0.0.1|{op}|")
            out["retr"] = session.command("RETR inside.txt")
            out["active_data"], out["retr_final"] = b"", "no connection came"
            try:
                connection, _ = own.accept()
                out["active_data"], _ = read_until_closed(connection, 5)
                connection.close()
                out["retr_final"] = session.read_reply()
            except TimeoutError:
                pass
            own.close()
            session.close()
            return out

        out = yield in_thread(run)
        self.assertEqual(out["per_address"], {"127.0.0.1": 1}, out)
        self.assertEqual(code(out["pasv"]), "227", out)
        self.assertIn("(127,0,0,1,", out["pasv"])
        self.assertEqual(out["nlst"][0], b"inside.txt\r\n", out)
        self.assertEqual(code(out["v6_user"]), "530", out)  # ::1 is no IPv4 client
        users = [e for e in self.server.audit_events() if e.get("event") == "user"]
        self.assertEqual([e["class"] for e in users], ["v4-loopback", "others"], users)
        self.assertEqual(code(out["eprt"]), "200", out)
        self.assertEqual(out["active_data"], b"inside data", out)
        self.assertEqual(code(out["retr_final"]), "226", out)


# SPEC section 6 lists the commands; section 7 lists those allowed before login.
SPEC_COMMANDS = (
    "USER PASS ACCT QUIT REIN SYST FEAT OPTS HELP NOOP STAT SITE PWD XPWD CWD CDUP XCUP MKD "
    "XMKD RMD XRMD DELE RNFR RNTO SIZE MDTM MFMT LIST NLST MLSD MLST RETR STOR STOU APPE REST "
    "ALLO ABOR TYPE MODE STRU PASV EPSV PORT EPRT HASH CLNT AUTH PBSZ PROT CCC"
).split()
BEFORE_LOGIN = "USER PASS ACCT AUTH PBSZ PROT CCC FEAT OPTS HELP SYST NOOP STAT CLNT REIN QUIT"
ARGUMENTS = {
    "SITE": "HELP",
    "CWD": "/",
    "MKD": "d",
    "XMKD": "d",
    "RMD": "d",
    "XRMD": "d",
    "DELE": "f",
    "RNFR": "f",
    "RNTO": "g",
    "SIZE": "f",
    "MDTM": "f",
    "MFMT": "20200101000000 f",
    "RETR": "f",
    "STOR": "f",
    "APPE": "f",
    "REST": "0",
    "TYPE": "I",
    "MODE": "S",
    "STRU": "F",
    "PORT": "127,0,0,1,200,10",
    "EPRT": "|1|127.0.0.1|51210|",
    "HASH": "f",
    "USER": "alice",
    "OPTS": "UTF8 ON",
    "CLNT": "probe",
    "AUTH": "BOGUS",
    "PBSZ": "0",
    "PROT": "P",
}


class BeforeLoginTests(TestCase):
    """Commands outside SPEC section 7's list get 530 before login; the listed ones do not."""

    timeout = 30

    def setUp(self) -> None:
        self.server = LiveServer(self).start()

    @defer.inlineCallbacks
    def test_commands_before_login(self) -> Any:
        allowed = set(BEFORE_LOGIN.split())
        lines = [
            f"{verb} {ARGUMENTS[verb]}" if verb in ARGUMENTS else verb
            for verb in SPEC_COMMANDS
            if verb not in ("QUIT", "REIN", "PASS")
        ]
        lines = ["PASS without-user"] + lines + ["STAT /", "STAT -la", "REIN"]

        def run() -> list[tuple[str, str]]:
            out = []
            for start in range(0, len(lines), 15):  # under the 20-command budget
                control = Control(self.server.explicit_port)
                for line in lines[start : start + 15]:
                    out.append((line, control.command(line)))
                out.append(("QUIT", control.command("QUIT")))
                control.close()
            return out

        out = yield in_thread(run)
        for line, reply in out:
            verb = line.split(" ")[0]
            refused = verb not in allowed or (verb == "STAT" and " " in line)
            if refused:
                self.assertEqual(code(reply), "530", (line, reply))
            else:
                self.assertNotEqual(code(reply), "530", (line, reply))
