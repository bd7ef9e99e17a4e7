"""End to end: `session_reuse = "account"` with rclone and ftplib (issue #15).

rclone (Debian's 1.60, Go 1.19) keeps one TLS session cache for all its connections, so
with its default concurrency its data connections resume sessions of its *other* control
connections. In an "account" class that works when those control connections are logged
in as the same account from the same address; a session of another account, of a control
connection that is not logged in or that has logged out, is refused with 522, and a
"required" class refuses rclone with a 522 that names the cause and the fix.

rclone verifies the server certificate against the test CA (SSL_CERT_FILE); files are
checked by SHA-256 on both sides.
"""

from __future__ import annotations

import ftplib
import os
import ssl
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from hardening.server import DEFAULT_CLASSES
from securetransport.tls.groups import SIBLING_LOGIN_WAIT
from securetransport.tls.reuse import NOT_FROM_ACCOUNT, OFFERED_OTHER
from tests.e2e import test_ftps
from tests.e2e.ftps_clients import (
    HOST,
    VERSION_NAMES,
    RawControl,
    ReusingFTP_TLS,
    client_context,
)
from tests.e2e.harness import (
    PASSWORD,
    LiveServer,
    in_thread,
    random_file,
    run_tool,
    sha256_file,
)

ACCOUNT_CLASSES = """
[[class]]
name = "everyone"
ssl = "mandatory"
login = ["password"]
client_certificate = "off"
session_reuse = "account"
"""
REQUIRED_CLASSES = ACCOUNT_CLASSES.replace('"account"', '"required"')

# 34 files in a tree, as in the issue: small and not so small, in three folders.
TREE = {
    f"{folder}file-{index:02d}.bin": 1000 + index * 7919 + (300_000 if index % 11 == 0 else 0)
    for index, folder in zip(range(34), ["", "a/", "a/b/"] * 12, strict=False)
}


def events(server: LiveServer, kind: str, **match: Any) -> list[dict[str, Any]]:
    return [
        event
        for event in server.audit_events()
        if event.get("event") == kind and all(event.get(k) == v for k, v in match.items())
    ]


# ------------------------------------------------------------------------------- rclone


class Rclone:
    """rclone against a live server, on an on-the-fly `:ftp:` remote (no config file)."""

    def __init__(self, server: LiveServer, work: Path, *, version: str, implicit: bool) -> None:
        self.server = server
        self.work = work
        self.version = version
        self.implicit = implicit
        self.obscured: str | None = None

    @defer.inlineCallbacks
    def run(self, *args: str, user: str = "alice") -> Any:
        """Fires with (exit code, stdout + stderr as text)."""
        if self.obscured is None:
            out, err, code = yield run_tool("rclone", ["obscure", PASSWORD], path=self.work)
            if code != 0:
                raise AssertionError(f"rclone obscure failed: {err!r}")
            self.obscured = out.decode().strip()
        port = self.server.implicit_port if self.implicit else self.server.explicit_port
        flags = [
            "--config",
            str(self.work / "rclone.conf"),
            "--ftp-host",
            HOST,
            "--ftp-port",
            str(port),
            "--ftp-user",
            user,
            "--ftp-pass",
            self.obscured,
            "--ftp-tls" if self.implicit else "--ftp-explicit-tls",
            # Failures must show, not be retried away.
            "--retries",
            "1",
            "--low-level-retries",
            "1",
            "--contimeout",
            "10s",
            "--timeout",
            "30s",
        ]
        if self.version == "1.2":
            flags.append("--ftp-disable-tls13")
        env = {"SSL_CERT_FILE": str(self.server.pki / "ca.crt")}
        out, err, code = yield run_tool("rclone", [*args, *flags], path=self.work, env=env)
        return code, (out + err).decode("utf-8", "replace")


def make_tree(root: Path) -> dict[str, str]:
    digests = {}
    for name, size in TREE.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        digests[name] = random_file(root / name, size)
    return digests


class RcloneAccountTests(TestCase):
    """rclone with its default concurrency (4 transfers, 8 checkers, unlimited connections)."""

    timeout = 240

    def setUp(self) -> None:
        self.server = LiveServer(self, classes=ACCOUNT_CLASSES).start()
        self.work = Path(self.mktemp()).absolute()
        self.work.mkdir()
        (self.work / "rclone.conf").write_text("")

    @defer.inlineCallbacks
    def round_trip(self, version: str, implicit: bool) -> Any:
        rclone = Rclone(self.server, self.work, version=version, implicit=implicit)
        digests = make_tree(self.work / "tree")
        code, output = yield rclone.run("copy", str(self.work / "tree"), ":ftp:/tree")
        self.assertEqual(code, 0, output)
        for name, digest in digests.items():
            self.assertEqual(sha256_file(self.server.home() / "tree" / name), digest, name)
        code, output = yield rclone.run(
            "check", "--download", str(self.work / "tree"), ":ftp:/tree"
        )
        self.assertEqual(code, 0, output)
        self.assertIn("0 differences found", output)
        # moveto: one file comes back down and leaves the server.
        moved = self.work / "moved.bin"
        code, output = yield rclone.run("moveto", ":ftp:/tree/a/file-01.bin", str(moved))
        self.assertEqual(code, 0, output)
        self.assertEqual(sha256_file(moved), digests["a/file-01.bin"])
        self.assertFalse((self.server.home() / "tree" / "a" / "file-01.bin").exists())
        code, output = yield rclone.run("purge", ":ftp:/tree")
        self.assertEqual(code, 0, output)
        self.assertFalse((self.server.home() / "tree").exists())

        data = events(self.server, "tls", channel="data")
        self.assertGreaterEqual(len(data), len(TREE) * 2, "an upload and a download per file")
        self.assertEqual({e["version"] for e in data}, {VERSION_NAMES[version]})
        self.assertEqual([e for e in data if not e["accepted"]], [])
        self.assertTrue(all(e["resumed"] for e in data), data)
        # The point of the issue: sessions of the client's other control connections.
        self.assertTrue(any(e["sibling"] for e in data), "no sibling session was resumed")
        logins = events(self.server, "login", result="success")
        self.assertGreater(len(logins), 1, "rclone used one control connection only")
        starts = events(self.server, "session-start")
        self.assertTrue(all(e["implicit"] is implicit for e in starts), starts)
        self.assertEqual(len(self.server.runtime.reuse_groups), 0, "members left at logout")

    @defer.inlineCallbacks
    def test_rclone_tls13_explicit(self) -> Any:
        yield self.round_trip("1.3", implicit=False)

    @defer.inlineCallbacks
    def test_rclone_tls12_explicit(self) -> Any:
        yield self.round_trip("1.2", implicit=False)

    @defer.inlineCallbacks
    def test_rclone_tls13_implicit(self) -> Any:
        yield self.round_trip("1.3", implicit=True)

    @defer.inlineCallbacks
    def test_rclone_tls12_implicit(self) -> Any:
        yield self.round_trip("1.2", implicit=True)


class RcloneRequiredTests(TestCase):
    """Where reuse is "required", rclone with concurrency gets a 522 that says why."""

    timeout = 120

    @defer.inlineCallbacks
    def test_rclone_gets_522_naming_cause_and_fix(self) -> Any:
        server = LiveServer(self, classes=REQUIRED_CLASSES).start()
        work = Path(self.mktemp()).absolute()
        work.mkdir()
        (work / "rclone.conf").write_text("")
        make_tree(work / "tree")
        rclone = Rclone(server, work, version="1.3", implicit=False)
        code, output = yield rclone.run("copy", str(work / "tree"), ":ftp:/tree")
        self.assertNotEqual(code, 0, output)
        self.assertIn("522", output)
        self.assertIn("offered a TLS session of another of its connections", output)
        refused = events(server, "tls", channel="data", accepted=False)
        self.assertTrue(refused, "no data connection was refused")
        self.assertFalse(any(e["sibling"] for e in events(server, "tls", channel="data")))

    @defer.inlineCallbacks
    def test_rclone_with_one_connection_works(self) -> Any:
        """The fix the 522 names, measured: one connection resumes its own session."""
        server = LiveServer(self, classes=REQUIRED_CLASSES).start()
        work = Path(self.mktemp()).absolute()
        work.mkdir()
        (work / "rclone.conf").write_text("")
        digests = make_tree(work / "tree")
        rclone = Rclone(server, work, version="1.2", implicit=False)
        one = ("--ftp-concurrency", "1", "--transfers", "1", "--checkers", "1")
        code, output = yield rclone.run("copy", str(work / "tree"), ":ftp:/tree", *one)
        self.assertEqual(code, 0, output)
        for name, digest in digests.items():
            self.assertEqual(sha256_file(server.home() / "tree" / name), digest, name)
        self.assertEqual(events(server, "tls", channel="data", accepted=False), [])


# ------------------------------------------------------------------------------- ftplib


class HandedSessionFTP(ReusingFTP_TLS):  # type: ignore[misc, valid-type]
    """ftplib whose data connections offer `offer`, a session of another connection made
    with the same SSLContext (as one shared session cache would)."""

    offer: ssl.SSLSession | None = None

    def ntransfercmd(self, cmd: str, rest: int | str | None = None) -> Any:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        session = self.offer if self.offer is not None else self.sock.session
        tls = self.context.wrap_socket(conn, server_hostname=self.host, session=session)
        self.data_resumed.append(bool(tls.session_reused))
        return tls, size


def login(server: LiveServer, context: ssl.SSLContext, user: str) -> HandedSessionFTP:
    ftp = HandedSessionFTP(context=context, timeout=30)
    ftp.connect(HOST, server.explicit_port)
    ftp.auth()
    ftp.sendcmd("NOOP")  # TLS 1.3: the session tickets arrive with the first reply
    ftp.login(user, PASSWORD)
    ftp.prot_p()
    return ftp


def retr(ftp: ftplib.FTP, name: str) -> tuple[bytes, str]:
    received = bytearray()
    try:
        reply = ftp.retrbinary(f"RETR {name}", received.extend)
    except ftplib.Error as error:
        reply = str(error)
    except (ssl.SSLError, OSError):
        try:
            reply = ftp.getresp()
        except ftplib.Error as error:
            reply = str(error)
    return bytes(received), reply


class HandedSessionTests(TestCase):
    """ftplib hands one control connection's TLS session to another's data connection."""

    timeout = 120

    def setUp(self) -> None:
        self.payload = os.urandom(200_000)

    def start(self, classes: str) -> LiveServer:
        server = LiveServer(self, classes=classes).start()
        for user in ("alice", "bob"):
            (server.home(user) / "f.bin").write_bytes(self.payload)
        return server

    def handed(self, server: LiveServer, version: str) -> dict[str, Any]:
        context = client_context(server, version)
        out: dict[str, Any] = {}
        alice = login(server, context, "alice")
        sibling = login(server, context, "alice")
        bob = login(server, context, "bob")
        alice.offer = sibling.sock.session
        out["sibling"] = retr(alice, "f.bin")
        alice.offer = bob.sock.session
        out["other_account"] = retr(alice, "f.bin")
        alice.offer = None
        out["own"] = retr(alice, "f.bin")
        # REIN logs the sibling out: its session stops counting (the data connection first
        # waits for its login, in vain), and counts again once it has logged in again.
        out["rein"] = sibling.sendcmd("REIN")
        alice.offer = sibling.sock.session
        out["after_rein"] = retr(alice, "f.bin")
        sibling.login("alice", PASSWORD)
        out["relogin"] = retr(alice, "f.bin")
        gone = sibling.sock.session
        out["sibling_quit"] = sibling.quit()
        alice.offer = gone
        out["after_quit"] = retr(alice, "f.bin")
        # A control connection that did AUTH TLS and no login: the data connection waits
        # for it to log in (SIBLING_LOGIN_WAIT), then is refused.
        stranger = RawControl(server.explicit_port)
        try:
            stranger.command("AUTH TLS")
            stranger.start_tls(context)
            stranger.command("NOOP")
            alice.offer = stranger.tls_session
            started = time.monotonic()
            out["not_logged_in"] = retr(alice, "f.bin")
            out["waited"] = time.monotonic() - started
        finally:
            stranger.close()
        out["resumed"] = list(alice.data_resumed)
        out["noop"] = alice.sendcmd("NOOP")
        alice.quit()
        bob.quit()
        return out

    @defer.inlineCallbacks
    def check_account(self, version: str) -> Any:
        server = self.start(ACCOUNT_CLASSES)
        out = yield in_thread(self.handed, server, version)
        self.assertEqual(out["sibling"], (self.payload, out["sibling"][1]))
        self.assertTrue(out["sibling"][1].startswith("226"), out["sibling"])
        self.assertEqual(out["own"][0], self.payload)
        self.assertTrue(out["rein"].startswith("220"), out["rein"])
        self.assertEqual(out["relogin"][0], self.payload)
        for case in ("other_account", "after_rein", "not_logged_in", "after_quit"):
            received, reply = out[case]
            self.assertEqual(received, b"", case)
            self.assertTrue(reply.startswith("522 "), (case, reply))
            self.assertIn(NOT_FROM_ACCOUNT, reply, case)
        # The client resumed three times (the sibling's session, its own, the sibling's
        # again); the refused handshakes were full ones (TLS 1.2: cut before the server's
        # Finished, so the client saw no handshake end at all).
        self.assertEqual(out["resumed"][0], True)
        self.assertEqual([r for r in out["resumed"] if r], [True, True, True])
        self.assertTrue(out["noop"].startswith("200"))
        data = events(server, "tls", channel="data")
        self.assertEqual(
            [(e["accepted"], e["sibling"]) for e in data],
            [
                (True, True),  # the sibling's session
                (False, False),  # bob's
                (True, False),  # its own
                (False, False),  # the sibling's, after REIN
                (True, True),  # the sibling's, logged in again
                (False, False),  # the sibling's, after QUIT
                (False, False),  # a connection that never logged in
            ],
        )
        self.assertGreaterEqual(out["waited"], SIBLING_LOGIN_WAIT - 0.5)
        self.assertEqual({e["version"] for e in data}, {VERSION_NAMES[version]})

    @defer.inlineCallbacks
    def test_account_class_tls12(self) -> Any:
        yield self.check_account("1.2")

    @defer.inlineCallbacks
    def test_account_class_tls13(self) -> Any:
        yield self.check_account("1.3")

    @defer.inlineCallbacks
    def test_required_class_refuses_the_sibling(self) -> Any:
        server = self.start(REQUIRED_CLASSES)
        for version in ("1.2", "1.3"):
            out = yield in_thread(self.handed, server, version)
            received, reply = out["sibling"]
            self.assertEqual(received, b"")
            self.assertTrue(reply.startswith("522 "), reply)
            self.assertIn(OFFERED_OTHER, reply)
            self.assertEqual(out["own"][0], self.payload)
        self.assertFalse(any(e["sibling"] for e in events(server, "tls", channel="data")))


class AccountHijackTests(test_ftps.HijackTests):
    """The passive-port race of test_ftps, against an "account" class: an attacker from
    the same address who only did AUTH TLS offers its own session on the victim's data
    port. It is not logged in, so its session is never routed: after the wait for its
    login, 522; the victim's data stays its own."""

    timeout = 90

    def setUp(self) -> None:
        classes = DEFAULT_CLASSES.replace('session_reuse = "required"', 'session_reuse = "account"')
        assert 'session_reuse = "account"' in classes
        self.server = LiveServer(self, classes=classes).start()
        self.secret = b"VICTIM-SECRET-" + os.urandom(256 * 1024)
        (self.server.home() / "secret.bin").write_bytes(self.secret)
