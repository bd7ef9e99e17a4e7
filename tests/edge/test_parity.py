"""SPEC section 8: clients see through an edge what they see at the server itself.

Each dialogue below runs twice, directly against the server and through the edge, and
the replies (code and text) must be equal; only the address in 227 differs by design.
Rows of section 4 (clear/TLS, certificate good, failed, none, names another account)
and rules of section 5 (AUTH, PBSZ, PROT, CCC, 521, 522) are covered.
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from hardening.server import PASSWORD
from securetransport.pki import issue_certificate, make_ca, write_pem
from tests.e2e.harness import in_thread
from tests.edge.harness import EDGE_HOST, EdgeSetup

CLASSES = """
[[class]]
name = "secure"
users = ["alice"]
ssl = "mandatory"
client_certificate = "verify"
login = ["certificate", "password"]
session_reuse = "required"

[[class]]
name = "relaxed"
users = ["bob"]
ssl = "optional"
client_certificate = "off"
login = ["password"]
"""


class Dialogue:
    """One control connection driven by hand; `say` returns the whole reply's last line."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, implicit: bool) -> None:
        self.host = host
        self.context = context
        sock = socket.create_connection((host, port), timeout=15)
        self.sock: socket.socket = (
            context.wrap_socket(sock, server_hostname=host) if implicit else sock
        )
        self.replies: list[str] = [self.read()]

    def read(self) -> str:
        line = b""
        while True:
            line = b""
            while not line.endswith(b"\r\n"):
                byte = self.sock.recv(1)
                if not byte:
                    return f"closed after {line!r}"
                line += byte
            if len(line) >= 4 and line[3:4] == b" ":
                return line[:-2].decode()

    def say(self, command: str) -> str:
        self.sock.sendall(command.encode() + b"\r\n")
        reply = self.read()
        self.replies.append(re.sub(r"^227 .*", "227", reply))
        return reply

    def start_tls(self) -> None:
        self.sock = self.context.wrap_socket(self.sock, server_hostname=self.host)

    def passive_port(self) -> int:
        reply = self.say("EPSV")
        match = re.search(r"\(\|\|\|(\d+)\|\)", reply)
        assert match is not None, reply
        self.replies[-1] = "229"
        return int(match.group(1))

    def close(self) -> None:
        self.sock.close()


class ParityTests(TestCase):
    timeout = 90

    @defer.inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        self.setup = EdgeSetup(self, classes=CLASSES)
        yield self.setup.start()
        pki = self.setup.pki
        # A certificate naming alice from a CA the server does not trust ("failed").
        stranger_ca, stranger_key = make_ca("stranger CA")
        cert, key = issue_certificate(stranger_ca, stranger_key, cn="alice")
        write_pem(pki / "stranger.crt", cert)
        write_pem(pki / "stranger.key", key)

    def context(self, certificate: str | None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.setup.pki / "ca.crt"))
        context.check_hostname = False  # the server's and the edge's names differ
        if certificate is not None:
            pki: Path = self.setup.pki
            context.load_cert_chain(pki / f"{certificate}.crt", pki / f"{certificate}.key")
        return context

    @defer.inlineCallbacks
    def both(self, script: Callable[[Dialogue], None], **how: Any) -> Any:
        """Run `script` directly and through the edge; their replies must be equal."""
        server = self.setup.server
        direct = yield in_thread(
            self.dialogue, "127.0.0.1", server.explicit_port, server.implicit_port, script, **how
        )
        relayed = yield in_thread(
            self.dialogue,
            EDGE_HOST,
            self.setup.explicit_port,
            self.setup.implicit_port,
            script,
            **how,
        )
        self.assertEqual(relayed, direct)
        return direct

    def dialogue(
        self,
        host: str,
        explicit: int,
        implicit: int,
        script: Callable[[Dialogue], None],
        certificate: str | None = None,
        on_implicit: bool = False,
    ) -> list[str]:
        context = self.context(certificate)
        dialogue = Dialogue(host, implicit if on_implicit else explicit, context, on_implicit)
        try:
            script(dialogue)
        finally:
            dialogue.close()
        return dialogue.replies

    @defer.inlineCallbacks
    def test_clear_control_rows(self) -> Any:
        def script(d: Dialogue) -> None:
            d.say("USER alice")  # mandatory class in clear: 530
            d.say("PBSZ 0")
            d.say("PROT P")
            d.say("CCC")
            d.say("USER bob")  # optional class: 331
            d.say(f"PASS {PASSWORD}")
            d.say("PWD")
            d.say("QUIT")

        replies = yield self.both(script)
        self.assertEqual(
            [r[:3] for r in replies],
            ["220", "530", "503", "503", "533", "331", "230", "257", "221"],
        )

    @defer.inlineCallbacks
    def test_tls_rows_certificate_good_none_failed(self) -> Any:
        def script(d: Dialogue) -> None:
            d.say("AUTH TLS")
            d.start_tls()
            d.say("AUTH TLS")  # 503
            d.say("PBSZ 0")
            d.say("PROT P")
            d.say("USER alice")
            d.say("CCC")

        good = yield self.both(script, certificate="alice")
        self.assertEqual([r[:3] for r in good][-2:], ["232", "534"])
        none = yield self.both(script)
        self.assertEqual(none[-2][:3], "331")
        failed = yield self.both(script, certificate="stranger")
        self.assertEqual(failed[-2][:3], "530")  # mandatory class: certificate rejected
        other = yield self.both(
            lambda d: (d.say("AUTH TLS"), d.start_tls(), d.say("USER bob")), certificate="alice"
        )
        self.assertEqual(other[-1][:3], "331")  # names another account: password

    @defer.inlineCallbacks
    def test_implicit_certificate_login_and_521(self) -> Any:
        def script(d: Dialogue) -> None:
            d.say("USER alice")
            d.say("PROT C")
            d.passive_port()
            d.say("LIST")  # 521: clear data in a mandatory class
            d.say("QUIT")

        replies = yield self.both(script, certificate="alice", on_implicit=True)
        self.assertEqual([r[:3] for r in replies], ["220", "232", "200", "229", "521", "221"])

    @defer.inlineCallbacks
    def test_522_when_the_data_connection_does_not_resume(self) -> Any:
        def script(d: Dialogue) -> None:
            d.say("AUTH TLS")
            d.start_tls()
            d.say("USER alice")
            d.say(f"PASS {PASSWORD}")
            d.say("PBSZ 0")
            d.say("PROT P")
            port = d.passive_port()
            raw = socket.create_connection((d.host, port), timeout=15)
            data = d.context.wrap_socket(raw, server_hostname=d.host)  # a new session
            d.say("LIST")
            data.close()
            d.say("NOOP")

        replies = yield self.both(script)
        self.assertEqual(replies[-2][:3], "522")
        self.assertIn("resume", replies[-2].lower())

    @defer.inlineCallbacks
    def test_active_mode_targets_checked_alike(self) -> Any:
        def script(d: Dialogue) -> None:
            d.say("USER bob")
            d.say(f"PASS {PASSWORD}")
            d.say("PORT 10,0,0,1,200,1")  # another address: bounce refused
            d.say("EPRT |1|127.0.0.1|80|")  # a port below 1024
            d.say("EPRT |1|127.0.0.1|1|x")  # malformed
            d.say("EPSV ALL")
            d.say("PORT 127,0,0,1,200,1")  # 503 after EPSV ALL

        replies = yield self.both(script)
        self.assertEqual([r[:3] for r in replies[3:]], ["504", "501", "501", "200", "503"])
