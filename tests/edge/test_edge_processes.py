"""A server and an edge as two twistd processes on loopback (SPEC section 8): the edge's
public listeners on 127.0.0.2, its link listener on 127.0.0.3, the server on 127.0.0.1.
kill -9 of the server during a transfer, then the server back: the edge redials."""

from __future__ import annotations

import ftplib
import hashlib
import os
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from hardening.clients import ResumingFTP_TLS
from hardening.server import DEFAULT_CLASSES, ServerProcess, free_port, twistd_path
from securetransport.edge.link import init_link_pki
from tests.edge.harness import EDGE_HOST, LINK_HOST, edge_certificate, read_reply


class EdgeProcess:
    """twistd running an edge config."""

    def __init__(self, root: Path, pki: Path, link_port: int) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.explicit_port = free_port(EDGE_HOST)
        self.implicit_port = free_port(EDGE_HOST)
        first = 56000 + os.getpid() % 900
        self.config = root / "edge.toml"
        self.config.write_text(
            f"""
[server]
role = "edge"
allow_root = true

[[listen]]
address = "{EDGE_HOST}"
port = {self.explicit_port}
tls = "explicit"

[[listen]]
address = "{EDGE_HOST}"
port = {self.implicit_port}
tls = "implicit"

[passive]
ports = "{first}-{first + 99}"

[tls]
certificate = "{pki / "edge.crt"}"
private_key = "{pki / "edge.key"}"

[link]
address = "{LINK_HOST}"
port = {link_port}
certificate = "{pki / "link-edge.crt"}"
private_key = "{pki / "link-edge.key"}"
ca = "{pki / "link-ca.crt"}"
"""
        )
        self.log_path = root / "edge.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    twistd_path(),
                    "-n",
                    "--pidfile=",
                    "securetransport",
                    "--config",
                    str(self.config),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(self.root),
            )

    def greeting(self) -> str:
        with socket.create_connection((EDGE_HOST, self.explicit_port), timeout=5) as sock:
            return read_reply(sock)

    def wait_greeting(self, prefix: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"edge exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                last = self.greeting()
                if last.startswith(prefix):
                    return last
            except OSError as error:
                last = str(error)
            time.sleep(0.2)
        raise AssertionError(f"no {prefix} from the edge within {timeout} s: {last!r}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


class EdgeProcessTests(SynchronousTestCase):
    def setUp(self) -> None:
        root = Path(tempfile.mkdtemp(prefix="st-edge-", dir="/tmp")).resolve()
        os.chmod(root, 0o755)
        self.addCleanup(subprocess.run, ["rm", "-rf", str(root)], check=False)
        self.link_port = free_port(LINK_HOST)
        edge_table = f"""
[[edge]]
name = "dmz1"
address = "{LINK_HOST}"
port = {self.link_port}
certificate = "pki/link-server.crt"
private_key = "pki/link-server.key"
ca = "pki/link-ca.crt"
"""
        self.server = ServerProcess(root / "server", classes=DEFAULT_CLASSES + edge_table)
        self.server.prepare()
        init_link_pki(self.server.pki)
        edge_certificate(self.server.pki)
        self.edge = EdgeProcess(root / "edge", self.server.pki, self.link_port)
        self.addCleanup(self.edge.stop)
        self.addCleanup(self.server.kill)

    def ftps(self) -> ftplib.FTP_TLS:
        context = ssl.create_default_context(cafile=str(self.server.pki / "ca.crt"))
        context.load_cert_chain(self.server.pki / "alice.crt", self.server.pki / "alice.key")
        ftp = ResumingFTP_TLS(context=context, timeout=20)
        ftp.connect(EDGE_HOST, self.edge.explicit_port)
        ftp.auth()
        reply = ftp.sendcmd("USER alice")
        self.assertTrue(reply.startswith("232"), reply)
        ftp.prot_p()
        return ftp

    def test_kill_9_during_transfers_then_redial(self) -> None:
        self.edge.start()
        self.assertTrue(self.edge.wait_greeting("421").startswith("421"))  # no link yet
        self.server.start()
        self.edge.wait_greeting("220")
        payload = os.urandom(48 * 1024 * 1024)
        big = self.server.home() / "big.bin"
        big.write_bytes(payload)
        self.server.give(big)

        ftp = self.ftps()
        host, port = ftp.makepasv()
        raw = socket.create_connection((EDGE_HOST, port), timeout=20)
        data = ftp.context.wrap_socket(
            raw, server_hostname=EDGE_HOST, session=ftp.sock.session, suppress_ragged_eofs=False
        )
        ftp.putcmd("RETR big.bin")
        self.assertTrue(ftp.getresp().startswith("150"))
        digest = hashlib.sha256(data.recv(65536))
        self.server.kill()  # SIGKILL
        ending = "clean"
        received = 0
        try:
            while chunk := data.recv(1 << 20):
                received += len(chunk)
                digest.update(chunk)
        except ssl.SSLEOFError:
            ending = "truncated"
        except OSError:
            ending = "reset"
        data.close()
        self.assertIn(ending, ("truncated", "reset"))  # never a clean end of a partial file
        self.assertLess(received, len(payload))
        self.assertTrue(ftp.getline().startswith("421"))
        ftp.close()
        # No link: 421 on the explicit port, closed before the handshake on the implicit one.
        self.assertTrue(self.edge.wait_greeting("421").startswith("421"))
        with socket.create_connection((EDGE_HOST, self.edge.implicit_port), timeout=5) as sock:
            try:
                self.assertEqual(sock.recv(10), b"")
            except ConnectionResetError:
                pass
        # The server back (same link port): the edge is dialled again and serves.
        self.server.start()
        self.edge.wait_greeting("220", timeout=45)
        ftp = self.ftps()
        back = hashlib.sha256()
        ftp.retrbinary("RETR big.bin", back.update, blocksize=1 << 20)
        ftp.quit()
        self.assertEqual(back.hexdigest(), hashlib.sha256(payload).hexdigest())
        log = self.edge.log_path.read_text()
        self.assertIn("ssl-access digest", log)
        self.assertNotIn("Traceback", log)
        self.assertEqual(self.server.log_problems(), [])
