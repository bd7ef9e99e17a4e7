"""End to end with paramiko: password and two-factor logins, enumeration, bounds,
refused channel requests, interrupted uploads, shared bans, real files by SHA-256."""

from __future__ import annotations

import ftplib
import hashlib
import os
import socket
import struct
import time
from typing import Any

import paramiko
from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from hardening.server import PASSWORD
from tests.e2e.harness import in_thread
from tests.sftp import paramiko_client as pc
from tests.sftp.harness import SFTPServer, banner_after


def _wait_for(predicate: Any, seconds: float = 10.0) -> defer.Deferred[None]:
    """Poll `predicate` on the reactor until it holds (AssertionError after `seconds`)."""
    deadline = time.monotonic() + seconds

    @defer.inlineCallbacks
    def poll() -> Any:
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("condition not reached in time")
            yield task.deferLater(reactor, 0.05, lambda: None)

    return poll()


class Logins(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.server = SFTPServer(self).start()
        self.server.runtime.failure_delay_base = 0.01

    @defer.inlineCallbacks
    def test_password_round_trip(self) -> Any:
        data = os.urandom(700_000)

        def run() -> bytes:
            transport, sftp = pc.sftp_by_password(self.server, "bob", PASSWORD)
            try:
                with sftp.open("/p.bin", "wb") as handle:
                    handle.write(data)
                with sftp.open("/p.bin", "rb") as handle:
                    return bytes(handle.read())
            finally:
                transport.close()

        back = yield in_thread(run)
        self.assertEqual(hashlib.sha256(back).hexdigest(), hashlib.sha256(data).hexdigest())
        self.assertEqual((self.server.home("bob") / "p.bin").read_bytes(), data)

    @defer.inlineCallbacks
    def test_two_factor(self) -> Any:
        """carol's class is publickey+password: the key is a partial success, then the
        password; the password alone and the key alone are not enough."""

        def run() -> tuple[list[str], list[str], bool, str]:
            offered = pc.allowed_methods(self.server, "carol")
            transport = pc.connect(self.server)
            try:
                remaining = transport.auth_publickey("carol", pc.user_key(self.server, "carol"))
                self.assertFalse(transport.is_authenticated())
                transport.auth_password("carol", PASSWORD)
                sftp = paramiko.SFTPClient.from_transport(transport)
                assert sftp is not None
                cwd = sftp.normalize(".")
                authenticated = transport.is_authenticated()
            finally:
                transport.close()
            return offered, list(remaining), authenticated, cwd

        offered, remaining, authenticated, cwd = yield in_thread(run)
        self.assertEqual(offered, ["publickey"])
        self.assertEqual(remaining, ["password"])
        self.assertTrue(authenticated)
        self.assertEqual(cwd, "/")

        def password_alone() -> None:
            transport = pc.connect(self.server)
            try:
                transport.auth_password("carol", PASSWORD)
            finally:
                transport.close()

        yield self.assertFailure(in_thread(password_alone), paramiko.BadAuthenticationType)
        events = [e for e in self.server.audit_events() if e["event"] == "login"]
        self.assertIn(
            ("carol", "publickey+password", "success"),
            [(e["user"], e["method"], e["result"]) for e in events],
        )

    @defer.inlineCallbacks
    def test_unknown_names_offered_what_known_ones_are(self) -> Any:
        def run() -> dict[str, list[str]]:
            return {
                name: pc.allowed_methods(self.server, name)
                for name in ("alice", "ghost1", "bob", "nobody", "carol")
            }

        offered = yield in_thread(run)
        self.assertEqual(offered["alice"], ["publickey", "password"])
        self.assertEqual(offered["ghost1"], offered["alice"])
        self.assertEqual(offered["bob"], ["password"])
        self.assertEqual(offered["nobody"], offered["bob"])
        self.assertEqual(offered["carol"], ["publickey"])

    @defer.inlineCallbacks
    def test_disabled_account_refused_like_unknown(self) -> Any:
        store = self.server.store()
        account = store.get("alice")
        from dataclasses import replace

        store.update(replace(account, enabled=False))

        def run() -> tuple[list[str], type[Exception] | None]:
            offered = pc.allowed_methods(self.server, "alice")
            transport = pc.connect(self.server)
            try:
                transport.auth_publickey("alice", pc.user_key(self.server, "alice"))
            except paramiko.AuthenticationException as error:
                return offered, type(error)
            finally:
                transport.close()
            return offered, None

        offered, error = yield in_thread(run)
        self.assertEqual(offered, ["publickey", "password"])
        self.assertIsNotNone(error)

    @defer.inlineCallbacks
    def test_wrong_key_refused(self) -> Any:
        def run() -> None:
            transport = pc.connect(self.server)
            try:
                transport.auth_publickey("alice", pc.user_key(self.server, "bob"))
            finally:
                transport.close()

        yield self.assertFailure(in_thread(run), paramiko.AuthenticationException)

    @defer.inlineCallbacks
    def test_at_most_six_attempts(self) -> Any:
        def run() -> int:
            transport = pc.connect(self.server)
            tries = 0
            try:
                for _ in range(10):
                    try:
                        transport.auth_password("ghost2", "wrong")
                    except paramiko.AuthenticationException:
                        tries += 1
                    except (paramiko.SSHException, EOFError, OSError):
                        break
                    if not transport.is_active():
                        break
            finally:
                transport.close()
            return tries

        self.server.runtime.guard.max_failures = 1000
        yield in_thread(run)
        failures = [
            e
            for e in self.server.audit_events()
            if e["event"] == "login" and e["result"] == "failure" and e["user"] == "ghost2"
        ]
        self.assertEqual(len(failures), 6)


class Bounds(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.server = SFTPServer(self).start()

    @defer.inlineCallbacks
    def test_oversized_packet_refused_and_session_goes_on(self) -> Any:
        def run() -> tuple[int, int, int, int]:
            transport, channel = pc.raw_sftp_channel(self.server)
            try:
                # A WRITE announcing 300 KiB: refused with BAD_MESSAGE, its bytes skipped.
                body = struct.pack("!BL", 6, 7) + b"x" * (300 * 1024)
                channel.sendall(struct.pack("!L", len(body)) + body)
                kind, payload = pc.read_packet(channel)
                request, code = struct.unpack("!LL", payload[:8])
                realpath = struct.pack("!BL", 16, 8) + pc.sftp_string(b".")
                channel.sendall(struct.pack("!L", len(realpath)) + realpath)
                kind2, payload2 = pc.read_packet(channel)
                return kind, request, code, kind2 * 1000 + struct.unpack("!L", payload2[:4])[0]
            finally:
                transport.close()

        kind, request, code, second = yield in_thread(run)
        self.assertEqual((kind, request, code), (101, 7, 5))  # STATUS, id 7, BAD_MESSAGE
        self.assertEqual(second, 104 * 1000 + 8)  # NAME for request 8

    @defer.inlineCallbacks
    def test_more_than_64_outstanding_refused(self) -> Any:
        def run() -> list[tuple[int, int]]:
            transport, channel = pc.raw_sftp_channel(self.server)
            try:
                requests = b""
                for request in range(100):
                    body = struct.pack("!BL", 17, request) + pc.sftp_string(b"/")  # STAT
                    requests += struct.pack("!L", len(body)) + body
                channel.sendall(requests)
                replies = []
                for _ in range(100):
                    kind, payload = pc.read_packet(channel)
                    replies.append((kind, struct.unpack("!L", payload[:4])[0]))
                return replies
            finally:
                transport.close()

        replies = yield in_thread(run)
        attrs = [r for r in replies if r[0] == 105]
        refused = [r for r in replies if r[0] == 101]
        self.assertEqual(len(attrs), 64)
        self.assertEqual(len(refused), 36)
        self.assertEqual(sorted(r[1] for r in replies), list(range(100)))

    @defer.inlineCallbacks
    def test_shell_exec_and_forwarding_refused(self) -> Any:
        def run() -> list[str]:
            refused = []
            transport = pc.connect(self.server)
            transport.auth_publickey("alice", pc.user_key(self.server, "alice"))
            try:
                for action in ("exec", "shell", "subsystem"):
                    channel = transport.open_session()
                    try:
                        if action == "exec":
                            channel.exec_command("id")
                        elif action == "shell":
                            channel.invoke_shell()
                        else:
                            channel.invoke_subsystem("netconf")
                    except paramiko.SSHException:
                        refused.append(action)
                    channel.close()
                try:
                    transport.open_channel("direct-tcpip", ("127.0.0.1", 22), ("127.0.0.1", 5))
                except paramiko.ChannelException:
                    refused.append("direct-tcpip")
                if transport.request_port_forward("127.0.0.1", 0) is None:
                    refused.append("tcpip-forward")
            except paramiko.SSHException:
                refused.append("tcpip-forward")
            finally:
                transport.close()
            return refused

        refused = yield in_thread(run)
        self.assertEqual(refused, ["exec", "shell", "subsystem", "direct-tcpip", "tcpip-forward"])

    @defer.inlineCallbacks
    def test_login_timeout_covers_key_exchange(self) -> Any:
        self.server.runtime.config = _with_login_timeout(self.server.runtime.config, 1.0)

        def run() -> float:
            started = time.monotonic()
            with socket.create_connection(("127.0.0.1", self.server.port), timeout=10) as sock:
                sock.sendall(b"SSH-2.0-stall\r\n")
                while sock.recv(4096):
                    pass
            return time.monotonic() - started

        elapsed = yield in_thread(run)
        self.assertLess(elapsed, 5.0)


def _with_login_timeout(config: Any, seconds: float) -> Any:
    from dataclasses import replace

    return replace(config, server=replace(config.server, login_timeout=seconds))


class Files(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.server = SFTPServer(self).start()

    @defer.inlineCallbacks
    def test_killed_upload_leaves_the_old_file(self) -> Any:
        old = os.urandom(50_000)
        target = self.server.home("alice") / "keep.bin"
        pc.write_path(target, old)

        def run() -> None:
            transport, sftp = pc.sftp_by_key(self.server)
            handle = sftp.open("/keep.bin", "wb")
            handle.set_pipelined(True)
            handle.write(os.urandom(2 * 1024 * 1024))
            handle.flush()
            transport.sock.shutdown(socket.SHUT_RDWR)  # dropped, never closed
            transport.close()

        yield in_thread(run)
        folder = self.server.home("alice")
        yield _wait_for(lambda: not [p for p in os.listdir(folder) if p.startswith(".st-upload-")])
        self.assertEqual(target.read_bytes(), old)
        yield _wait_for(
            lambda: any(
                e["event"] == "transfer" and e["result"] == "failed"
                for e in self.server.audit_events()
            )
        )

    @defer.inlineCallbacks
    def test_posix_rename_statvfs_limits_fsync(self) -> Any:
        pc.write_path(self.server.home("alice") / "a.txt", b"one")
        pc.write_path(self.server.home("alice") / "b.txt", b"two")

        def run() -> tuple[bytes, int, list[str]]:
            transport, sftp = pc.sftp_by_key(self.server)
            try:
                sftp.posix_rename("/a.txt", "/b.txt")
                content = sftp.open("/b.txt").read()
                info = sftp._request(paramiko.sftp.CMD_EXTENDED, "statvfs@openssh.com", "/")
                limits = sftp._request(paramiko.sftp.CMD_EXTENDED, "limits@openssh.com")
                _, limits_msg = limits
                max_packet = limits_msg.get_int64()
                handle = sftp.open("/b.txt", "rb")
                handle.close()
                names = sorted(sftp.listdir("/"))
                _ = info
            finally:
                transport.close()
            return content, max_packet, names

        content, max_packet, names = yield in_thread(run)
        self.assertEqual(content, b"one")
        self.assertEqual(max_packet, 256 * 1024)
        self.assertEqual(names, ["b.txt"])

    @defer.inlineCallbacks
    def test_plain_rename_refuses_existing_target(self) -> Any:
        pc.write_path(self.server.home("alice") / "a.txt", b"one")
        pc.write_path(self.server.home("alice") / "b.txt", b"two")

        def run() -> None:
            transport, sftp = pc.sftp_by_key(self.server)
            try:
                sftp.rename("/a.txt", "/b.txt")
            finally:
                transport.close()

        yield self.assertFailure(in_thread(run), OSError)
        self.assertEqual((self.server.home("alice") / "b.txt").read_bytes(), b"two")


class SharedBans(TestCase):
    """SSH failures ban FTP too, and FTP failures ban SSH."""

    timeout = 120

    def setUp(self) -> None:
        self.server = SFTPServer(self, extra_server="max_login_failures = 3").start()
        self.server.runtime.failure_delay_base = 0.01

    @defer.inlineCallbacks
    def test_ssh_failures_ban_ftp(self) -> Any:
        def fail_ssh() -> None:
            for _ in range(3):
                transport = pc.connect(self.server)
                try:
                    transport.auth_password("bob", "wrong")
                except paramiko.AuthenticationException:
                    pass
                finally:
                    transport.close()

        yield in_thread(fail_ssh)

        def ftp_greeting() -> str:
            with socket.create_connection(("127.0.0.1", self.server.ftp_port), timeout=10) as s:
                return s.recv(200).decode()

        greeting = yield in_thread(ftp_greeting)
        self.assertTrue(greeting.startswith("421"), greeting)

    @defer.inlineCallbacks
    def test_ftp_failures_ban_ssh_before_key_exchange(self) -> Any:
        def fail_ftp() -> None:
            for _ in range(3):
                ftp = ftplib.FTP()
                ftp.connect("127.0.0.1", self.server.ftp_port, timeout=10)
                try:
                    ftp.login("bob", "wrong")
                except ftplib.all_errors:
                    pass
                finally:
                    ftp.close()

        yield in_thread(fail_ftp)

        banner = yield in_thread(banner_after, self.server.port)
        self.assertEqual(banner, b"")  # closed before even the version line


class AccountsAndModes(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_disabled_account_session_ends(self) -> Any:
        server = SFTPServer(self).start()
        holder: dict[str, Any] = {}

        def login() -> None:
            holder["transport"], holder["sftp"] = pc.sftp_by_key(server)
            holder["sftp"].listdir("/")

        yield in_thread(login)
        from dataclasses import replace

        store = server.store()
        store.update(replace(store.get("alice"), enabled=False))
        yield server.service.end_sessions_of_disabled_accounts()
        yield _wait_for(lambda: not holder["transport"].is_active())
        holder["transport"].close()
        self.assertEqual(server.runtime.open_sessions, set())

    @defer.inlineCallbacks
    def test_resumable_mode_keeps_a_partial_new_file(self) -> Any:
        server = SFTPServer(self, upload_mode="resumable").start()
        first = os.urandom(300_000)

        def upload_and_drop() -> None:
            transport, sftp = pc.sftp_by_key(server)
            handle = sftp.open("/part.bin", "wb")
            handle.write(first)
            handle.flush()
            transport.sock.shutdown(socket.SHUT_RDWR)
            transport.close()

        yield in_thread(upload_and_drop)
        target = server.home("alice") / "part.bin"
        yield _wait_for(lambda: target.exists() and target.stat().st_size == len(first))
        rest = os.urandom(200_000)

        def resume() -> None:
            transport, sftp = pc.sftp_by_key(server)
            try:
                handle = sftp.open("/part.bin", "a")  # APPEND: continue the partial
                handle.write(rest)
                handle.close()
            finally:
                transport.close()

        yield in_thread(resume)
        self.assertEqual(target.read_bytes(), first + rest)
        events = [e for e in server.audit_events() if e["event"] == "session-start"]
        self.assertTrue(events and all(e["protocol"] == "sftp" for e in events))


class IdleTimeout(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_idle_session_ends_busy_one_does_not(self) -> Any:
        server = SFTPServer(self, extra_server="idle_timeout = 2").start()
        holder: dict[str, Any] = {}

        def busy_then_idle() -> bool:
            holder["transport"], sftp = pc.sftp_by_key(server)
            for _ in range(12):  # 3 s of activity, 0.25 s apart: longer than the timeout
                sftp.listdir("/")
                time.sleep(0.25)
            still_active = holder["transport"].is_active()
            return bool(still_active)

        alive_while_busy = yield in_thread(busy_then_idle)
        self.assertTrue(alive_while_busy)
        yield _wait_for(lambda: not holder["transport"].is_active(), seconds=10)
        holder["transport"].close()
        self.assertIn("idle-timeout", [e["event"] for e in server.audit_events()])
