"""PROXY protocol end to end: a live server, raw sockets that speak as a balancer would."""

from __future__ import annotations

import re
import socket
import time
from typing import Any

from twisted.trial.unittest import TestCase

from hardening.server import PASSWORD
from securetransport.proxy import format_v1, format_v2
from tests.e2e.harness import LiveServer, in_thread

CLASSES = """
[[class]]
name = "proxied"
addresses = ["10.1.2.0/24"]
ssl = "optional"
login = ["password"]
client_certificate = "off"

[[class]]
name = "everyone"
ssl = "mandatory"
"""


class Control:
    """A blocking FTP control connection that may start with a PROXY header."""

    def __init__(self, port: int, header: bytes = b"") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if header:
            self.sock.sendall(header)
        self.reader = self.sock.makefile("rb")

    def reply(self) -> str:
        line = self.reader.readline().decode()
        text = line
        if re.match(r"\d{3}-", line):
            while not (re.match(r"\d{3} ", line) and line[:3] == text[:3]):
                line = self.reader.readline().decode()
                if not line:
                    break
        return text.strip()

    def command(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except OSError:
            return True

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def pasv_port(reply: str) -> int:
    numbers = re.search(r"\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)", reply)
    assert numbers is not None, reply
    return int(numbers.group(5)) * 256 + int(numbers.group(6))


class ProxyEndToEnd(TestCase):
    timeout = 60

    def serve(self, proxy: str, extra_server: str = "") -> LiveServer:
        server = LiveServer(self, classes=CLASSES + proxy, extra_server=extra_server).start()
        server.runtime.failure_delay_base = 0.05
        return server

    def test_real_address_feeds_class_data_check_and_audit(self) -> Any:
        server = self.serve('[proxy]\nfrom = ["127.0.0.0/8"]\n')
        (server.home() / "f.txt").write_bytes(b"hello over proxy\n")
        header = format_v2(("10.1.2.3", 40000), ("198.51.100.1", 21))

        def client() -> dict[str, Any]:
            c = Control(server.explicit_port, header)
            seen: dict[str, Any] = {"greeting": c.reply()}
            seen["user"] = c.command("USER alice")  # in clear: only the proxied class allows it
            seen["pass"] = c.command(f"PASS {PASSWORD}")
            # a data connection whose header names another client is refused
            port = pasv_port(c.command("PASV"))
            stranger = socket.create_connection(("127.0.0.1", port), timeout=10)
            stranger.sendall(format_v1(("10.1.2.99", 5), ("198.51.100.1", port)))
            seen["stranger_closed"] = stranger.recv(1) == b""
            stranger.close()
            port = pasv_port(c.command("PASV"))
            data = socket.create_connection(("127.0.0.1", port), timeout=10)
            data.sendall(format_v1(("10.1.2.3", 40001), ("198.51.100.1", port)))
            seen["retr"] = c.command("RETR f.txt")
            chunks = []
            while chunk := data.recv(65536):
                chunks.append(chunk)
            data.close()
            seen["payload"] = b"".join(chunks)
            seen["done"] = c.reply()
            c.command("QUIT")
            c.close()
            return seen

        def check(seen: dict[str, Any]) -> None:
            self.assertTrue(seen["greeting"].startswith("220"), seen)
            self.assertTrue(seen["user"].startswith("331"), seen)
            self.assertTrue(seen["pass"].startswith("230"), seen)
            self.assertTrue(seen["stranger_closed"], seen)
            self.assertTrue(seen["retr"].startswith("150"), seen)
            self.assertEqual(seen["payload"], b"hello over proxy\n")
            self.assertTrue(seen["done"].startswith("226"), seen)
            starts = [e for e in server.audit_events() if e.get("event") == "session-start"]
            self.assertEqual([e["client"] for e in starts], ["10.1.2.3"])

        return in_thread(client).addCallback(check)

    def test_untrusted_sender_is_not_believed(self) -> Any:
        server = self.serve('[proxy]\nfrom = ["127.0.0.9/32"]\n')

        def client() -> tuple[str, str, str]:
            c = Control(server.explicit_port, format_v1(("10.1.2.3", 1), ("127.0.0.1", 21)))
            greeting = c.reply()
            proxy_line = c.reply()  # the header was read as a command
            user = c.command("USER alice")
            c.close()
            return greeting, proxy_line, user

        def check(replies: tuple[str, str, str]) -> None:
            greeting, proxy_line, user = replies
            self.assertTrue(greeting.startswith("220"), replies)
            self.assertRegex(proxy_line, r"^5\d\d ")
            # class "everyone" (TLS mandatory), not "proxied": 10.1.2.3 was not believed
            self.assertTrue(user.startswith("530"), replies)
            starts = [e for e in server.audit_events() if e.get("event") == "session-start"]
            self.assertEqual([e["client"] for e in starts], ["127.0.0.1"])

        return in_thread(client).addCallback(check)

    def test_required_refuses_other_senders(self) -> Any:
        server = self.serve('[proxy]\nfrom = ["127.0.0.9/32"]\nrequired = true\n')

        def client() -> bool:
            try:
                c = Control(server.explicit_port)
            except ConnectionResetError:  # aborted before connect() returned
                return True
            closed = c.closed()
            c.close()
            return closed

        return in_thread(client).addCallback(self.assertTrue)

    def test_trusted_sender_without_header_is_closed_after_3_seconds(self) -> Any:
        server = self.serve('[proxy]\nfrom = ["127.0.0.0/8"]\n')

        def client() -> tuple[bool, float]:
            c = Control(server.explicit_port)
            started = time.monotonic()
            closed = c.closed()
            c.close()
            return closed, time.monotonic() - started

        def check(result: tuple[bool, float]) -> None:
            closed, elapsed = result
            self.assertTrue(closed)
            self.assertGreater(elapsed, 2.5)
            self.assertLess(elapsed, 6)

        return in_thread(client).addCallback(check)

    def test_bans_and_limits_apply_to_the_real_address(self) -> Any:
        server = self.serve(
            '[proxy]\nfrom = ["127.0.0.0/8"]\n',
            extra_server="max_login_failures = 2\nmax_sessions_per_address = 2",
        )

        def header(client: str) -> bytes:
            return format_v1((client, 1000), ("127.0.0.1", 21))

        def client() -> dict[str, Any]:
            seen: dict[str, Any] = {}
            c = Control(server.explicit_port, header("10.1.2.3"))
            c.reply()
            for attempt in range(2):
                c.command("USER alice")
                seen[f"fail{attempt}"] = c.command("PASS wrong")
            c.close()
            banned = Control(server.explicit_port, header("10.1.2.3"))
            seen["banned"] = banned.reply()
            banned.close()
            other = Control(server.explicit_port, header("10.1.2.4"))
            seen["other"] = other.reply()
            second = Control(server.explicit_port, header("10.1.2.4"))
            seen["second"] = second.reply()
            third = Control(server.explicit_port, header("10.1.2.4"))
            seen["third"] = third.reply()  # max_sessions_per_address = 2 for 10.1.2.4
            for c in (other, second, third):
                c.close()
            return seen

        def check(seen: dict[str, Any]) -> None:
            self.assertTrue(seen["fail0"].startswith("530"), seen)
            self.assertTrue(seen["banned"].startswith("421"), seen)
            self.assertTrue(seen["other"].startswith("220"), seen)
            self.assertTrue(seen["second"].startswith("220"), seen)
            self.assertTrue(seen["third"].startswith("421"), seen)

        return in_thread(client).addCallback(check)

    def test_explicit_tls_after_a_header(self) -> Any:
        server = self.serve('[proxy]\nfrom = ["127.0.0.0/8"]\n')
        import ssl

        def client() -> tuple[str, str, str, str]:
            c = Control(server.explicit_port, format_v2(("10.5.5.5", 7), ("127.0.0.1", 21)))
            c.reply()
            auth = c.command("AUTH TLS")
            context = ssl.create_default_context(cafile=str(server.pki / "ca.crt"))
            context.check_hostname = False
            c.reader.close()
            c.sock = context.wrap_socket(c.sock)
            c.reader = c.sock.makefile("rb")
            user = c.command("USER alice")  # class "everyone": TLS mandatory, now satisfied
            password = c.command(f"PASS {PASSWORD}")
            pwd = c.command("PWD")
            c.close()
            return auth, user, password, pwd

        def check(replies: tuple[str, str, str, str]) -> None:
            auth, user, password, pwd = replies
            self.assertTrue(auth.startswith("234"), replies)
            self.assertTrue(user.startswith("331"), replies)
            self.assertTrue(password.startswith("230"), replies)
            self.assertTrue(pwd.startswith("257"), replies)
            tls = [e for e in server.audit_events() if e.get("event") == "tls"]
            self.assertEqual(len(tls), 1)
            starts = [e for e in server.audit_events() if e.get("event") == "session-start"]
            self.assertEqual([e["client"] for e in starts], ["10.5.5.5"])

        return in_thread(client).addCallback(check)

    def test_implicit_tls_port_reads_the_header_before_the_handshake(self) -> Any:
        server = self.serve('[proxy]\nfrom = ["127.0.0.0/8"]\n')
        import ssl

        def client() -> tuple[str, str]:
            sock = socket.create_connection(("127.0.0.1", server.implicit_port), timeout=10)
            sock.sendall(format_v2(("10.6.6.6", 9), ("127.0.0.1", 990)))
            context = ssl.create_default_context(cafile=str(server.pki / "ca.crt"))
            context.check_hostname = False
            tls = context.wrap_socket(sock)
            reader = tls.makefile("rb")
            greeting = reader.readline().decode().strip()
            tls.sendall(b"USER alice\r\n")
            user = reader.readline().decode().strip()
            reader.close()
            tls.close()
            return greeting, user

        def check(replies: tuple[str, str]) -> None:
            greeting, user = replies
            self.assertTrue(greeting.startswith("220"), replies)
            self.assertTrue(user.startswith("331"), replies)
            starts = [e for e in server.audit_events() if e.get("event") == "session-start"]
            self.assertEqual([(e["client"], e["implicit"]) for e in starts], [("10.6.6.6", True)])

        return in_thread(client).addCallback(check)
