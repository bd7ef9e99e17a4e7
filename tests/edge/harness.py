"""A server and an edge on loopback, with the link PKI, for the edge's end-to-end tests.

The edge's public listeners are on 127.0.0.2, its link listener on 127.0.0.3; the
server (tests.e2e.harness.LiveServer) listens on 127.0.0.1 and dials the edge.
"""

from __future__ import annotations

import ftplib
import random
import socket
import ssl
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from hardening.server import DEFAULT_CLASSES, PASSWORD, free_port
from securetransport.config import load_config
from securetransport.edge.link import init_link_pki
from securetransport.edge.relay import EdgeService
from securetransport.pki import SERVER_AUTH, issue_certificate, write_pem
from securetransport.tls.material import load_tls
from tests.e2e.harness import LiveServer

EDGE_HOST = "127.0.0.2"
LINK_HOST = "127.0.0.3"


def read_reply(sock: socket.socket) -> str:
    """One reply line from a raw control socket (or an ssl wrapper of it)."""
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data.decode()


def edge_certificate(pki: Path) -> None:
    """edge.crt/edge.key: the edge's public certificate (127.0.0.2), from the test CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    cert, cert_key = issue_certificate(
        ca,
        key,
        cn="edge",
        eku=(SERVER_AUTH,),
        san_ip=(EDGE_HOST,),  # type: ignore[arg-type]
    )
    write_pem(pki / "edge.crt", cert)
    write_pem(pki / "edge.key", cert_key)


class EdgeSetup:
    """A LiveServer with one [[edge]], and that edge, in the test's reactor."""

    def __init__(
        self,
        case: TestCase,
        *,
        classes: str = DEFAULT_CLASSES,
        edge_ca: str = "link-ca.crt",
        **server: Any,
    ) -> None:
        self.case = case
        self.link_port = free_port(LINK_HOST)
        edge_table = f"""
[[edge]]
name = "dmz1"
address = "{LINK_HOST}"
port = {self.link_port}
certificate = "pki/link-server.crt"
private_key = "pki/link-server.key"
ca = "pki/{edge_ca}"
"""
        # The [[edge]] table goes in before the server's config is written and loaded.
        self._edge_table = edge_table
        self.server = LiveServer(case, classes=classes + edge_table, **server)
        self.pki = self.server.pki
        init_link_pki(self.pki)
        edge_certificate(self.pki)
        self.root = self.server.root / "edge"
        self.root.mkdir()
        first = random.randrange(55000, 56900)
        self.edge_config_path = self.root / "edge.toml"
        self.edge_config_path.write_text(
            f"""
[server]
role = "edge"

[[listen]]
address = "{EDGE_HOST}"
port = 0
tls = "explicit"

[[listen]]
address = "{EDGE_HOST}"
port = 0
tls = "implicit"

[passive]
ports = "{first}-{first + 99}"

[tls]
certificate = "../pki/edge.crt"
private_key = "../pki/edge.key"

[link]
address = "{LINK_HOST}"
port = {self.link_port}
certificate = "../pki/link-edge.crt"
private_key = "../pki/link-edge.key"
ca = "../pki/link-ca.crt"
"""
        )
        self.edge_config = load_config(self.edge_config_path)
        tls = load_tls(self.edge_config)
        assert tls is not None
        self.edge = EdgeService(self.edge_config, tls.contexts.credentials, reactor)

    def start_edge(self) -> None:
        self.edge.privilegedStartService()
        self.edge.startService()
        self.case.addCleanup(self.edge.stopService)

    @defer.inlineCallbacks
    def start(self) -> Any:
        """Start the edge, then the server; fires once the edge has a link with settings."""
        self.start_edge()
        self.server.start()
        yield self.wait_for(lambda: bool(self.edge.idle) and self.edge.contexts is not None)

    @defer.inlineCallbacks
    def wait_for(self, condition: Any, timeout: float = 10.0) -> Any:
        waited = 0.0
        while not condition():
            if waited > timeout:
                raise AssertionError("timed out waiting for the edge")
            yield task.deferLater(reactor, 0.05, lambda: None)
            waited += 0.05

    @property
    def explicit_port(self) -> int:
        return int(self.edge.ports[1].getHost().port)  # type: ignore[attr-defined]

    @property
    def implicit_port(self) -> int:
        return int(self.edge.ports[2].getHost().port)  # type: ignore[attr-defined]

    def client_context(self, certificate: str | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        if certificate is not None:
            context.load_cert_chain(
                self.pki / f"{certificate}.crt", self.pki / f"{certificate}.key"
            )
        return context

    def ftps(
        self,
        *,
        implicit: bool = False,
        certificate: str | None = None,
        user: str = "alice",
        password: str | None = PASSWORD,
        version: str | None = None,
    ) -> ftplib.FTP_TLS:
        """A logged-in ftplib FTPS session through the edge, PROT P, resuming the control
        session on data connections; `version` "1.2" or "1.3": that TLS version only."""
        from hardening.clients import ImplicitFTP_TLS, ResumingFTP_TLS

        context = self.client_context(certificate)
        if version is not None:
            pinned = ssl.TLSVersion.TLSv1_2 if version == "1.2" else ssl.TLSVersion.TLSv1_3
            context.minimum_version = context.maximum_version = pinned
        ftp: ftplib.FTP_TLS
        if implicit:
            ftp = ImplicitFTP_TLS(context=context, timeout=30)
            ftp.connect(EDGE_HOST, self.implicit_port)
        else:
            ftp = ResumingFTP_TLS(context=context, timeout=30)
            ftp.connect(EDGE_HOST, self.explicit_port)
            ftp.auth()
        if password is None:
            reply = ftp.sendcmd(f"USER {user}")
            self.case.assertTrue(reply.startswith("232"), reply)
        else:
            ftp.login(user, password)
        ftp.prot_p()
        return ftp
