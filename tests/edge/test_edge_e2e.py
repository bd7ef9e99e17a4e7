"""Clients through an edge (SPEC section 8): real TLS, real sockets, loopback only."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import socket
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.threads import blockingCallFromThread
from twisted.trial.unittest import TestCase

from hardening.server import PASSWORD
from securetransport.config import MetricsConfig
from securetransport.edge.server_side import POOL_SIZE
from securetransport.edge.settings import settings_digest
from tests.e2e.harness import in_thread, random_file, run_tool, sha256_file
from tests.edge.harness import EDGE_HOST, EdgeSetup, read_reply


class EdgeControlTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        self.setup = EdgeSetup(self)
        yield self.setup.start()

    def test_settings_applied_with_the_servers_digest(self) -> None:
        """The edge applied the server's settings: same digest as `check` computes."""
        self.assertEqual(self.setup.edge.digest, settings_digest(self.setup.server.config))

    def test_new_client_cas_applied_with_the_same_digest(self) -> None:
        """A reloaded CA set changes no digest, yet the edge's contexts follow it."""
        from cryptography import x509

        from securetransport.edge.settings import settings_message

        edge = self.setup.edge
        before = edge.contexts
        assert before is not None
        ca = x509.load_pem_x509_certificate((self.setup.pki / "ca.crt").read_bytes())
        message = settings_message(self.setup.server.config, (ca,))
        edge.apply(message, "test")
        self.assertIs(edge.contexts, before)  # what the server sends already: no change
        edge.apply(settings_message(self.setup.server.config, ()), "test")
        self.assertIsNot(edge.contexts, before)
        assert edge.contexts is not None
        self.assertEqual(edge.contexts.credentials.client_cas, ())
        self.assertEqual(edge.digest, settings_digest(self.setup.server.config))

    @defer.inlineCallbacks
    def test_explicit_password_login_and_transfers(self) -> Any:
        payload = os.urandom(3 * 1024 * 1024 + 17)

        def run() -> tuple[str | None, str, str, str]:
            ftp = self.setup.ftps()
            welcome = ftp.welcome
            stored = ftp.storbinary("STOR big.bin", io.BytesIO(payload))
            digest = hashlib.sha256()
            retrieved = ftp.retrbinary("RETR big.bin", digest.update)
            ftp.quit()
            return welcome, stored, retrieved, digest.hexdigest()

        welcome, stored, retrieved, digest = yield in_thread(run)
        self.assertTrue(welcome and welcome.startswith("220"), welcome)
        self.assertTrue(stored.startswith("226"), stored)
        self.assertTrue(retrieved.startswith("226"), retrieved)
        self.assertEqual(digest, hashlib.sha256(payload).hexdigest())
        on_disk = (self.setup.server.home() / "big.bin").read_bytes()
        self.assertEqual(hashlib.sha256(on_disk).hexdigest(), hashlib.sha256(payload).hexdigest())
        # The edge's working folder holds no uploaded bytes.
        for path in self.setup.root.rglob("*"):
            if path.is_file():
                self.assertNotIn(payload[:4096], path.read_bytes())

    @defer.inlineCallbacks
    def test_certificate_login_232_implicit(self) -> Any:
        def run() -> list[str]:
            ftp = self.setup.ftps(implicit=True, certificate="alice", password=None)
            listing: list[str] = []
            ftp.retrlines("NLST", listing.append)
            pwd = ftp.pwd()
            ftp.quit()
            return [pwd, *listing]

        result = yield in_thread(run)
        self.assertEqual(result[0], "/")

    @defer.inlineCallbacks
    def test_audit_names_the_edge_and_the_real_address(self) -> Any:
        yield in_thread(lambda: self.setup.ftps().quit())
        starts = [e for e in self.setup.server.audit_events() if e.get("event") == "session-start"]
        self.assertTrue(starts)
        self.assertEqual(starts[-1]["via"], "edge:dmz1")
        self.assertEqual(starts[-1]["client"], "127.0.0.1")

    @defer.inlineCallbacks
    def test_pipelined_after_auth_is_dropped(self) -> Any:
        """USER pipelined after AUTH TLS in the same packet is never executed."""

        def run() -> tuple[str, str]:
            import ssl

            sock = socket.create_connection((EDGE_HOST, self.setup.explicit_port), timeout=10)
            read_reply(sock)
            sock.sendall(b"AUTH TLS\r\nUSER alice\r\n")
            auth = read_reply(sock)
            context = self.setup.client_context()
            tls = context.wrap_socket(sock, server_hostname=EDGE_HOST)
            tls.sendall(b"PWD\r\n")
            reply = read_reply(tls)  # type: ignore[arg-type]
            tls.close()
            del ssl
            return auth, reply

        auth, reply = yield in_thread(run)
        self.assertTrue(auth.startswith("234"), auth)
        self.assertTrue(reply.startswith("530"), reply)  # not logged in, no pending USER

    @defer.inlineCallbacks
    def test_no_link_421_explicit_closed_implicit(self) -> Any:
        for dialer in self.setup.server.service.edge_dialers:
            dialer.stop()
        yield self.setup.wait_for(lambda: not self.setup.edge.idle)

        def run() -> tuple[str, bytes]:
            sock = socket.create_connection((EDGE_HOST, self.setup.explicit_port), timeout=10)
            reply = read_reply(sock)
            sock.close()
            try:  # closed (FIN or reset) with no byte sent: no ServerHello
                with socket.create_connection(
                    (EDGE_HOST, self.setup.implicit_port), timeout=10
                ) as implicit:
                    implicit.sendall(ssl_hello())
                    seen = implicit.recv(100)
            except (ConnectionResetError, BrokenPipeError):
                seen = b""
            return reply, seen

        reply, seen = yield in_thread(run)
        self.assertTrue(reply.startswith("421"), reply)
        self.assertEqual(seen, b"")


class EdgeRealClientsTests(TestCase):
    """lftp (GnuTLS) and curl (OpenSSL) through the edge."""

    timeout = 120

    @defer.inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        self.setup = EdgeSetup(self)
        yield self.setup.start()
        self.work = Path(self.mktemp()).absolute()
        self.work.mkdir(parents=True)

    def lftp(self, commands: str, *, certificate: bool) -> list[str]:
        pki = self.setup.pki
        settings = [
            "set net:max-retries 1",
            "set net:timeout 20",
            "set cmd:fail-exit yes",
            f"set ssl:ca-file {pki / 'ca.crt'}",
            "set ftp:ssl-force yes",
            "set ftp:ssl-auth TLS",
            "set ftp:ssl-protect-data yes",
            "set ftp:passive-mode yes",
            "set xfer:clobber yes",
        ]
        login = f"alice,{PASSWORD}"
        if certificate:
            settings += [
                f"set ssl:cert-file {pki / 'alice.crt'}",
                f"set ssl:key-file {pki / 'alice.key'}",
            ]
            login = "alice,"
        url = f"ftp://{EDGE_HOST}:{self.setup.explicit_port}"
        return ["-d", "-c", "; ".join(settings) + f"; open -u {login} {url}; {commands}; bye"]

    @defer.inlineCallbacks
    def test_lftp_certificate_login_mirror_both_ways(self) -> Any:
        tree = self.work / "tree"
        digests = {}
        for name, size in {"one.txt": 1000, "sub/two.bin": 700_000, "sub/three.bin": 5}.items():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            digests[name] = random_file(tree / name, size)
        out, err, code = yield run_tool(
            "lftp", self.lftp(f"mirror -R {tree} /tree", certificate=True), path=self.work
        )
        self.assertEqual(code, 0, err)
        self.assertIn(b"<--- 232 ", out + err)  # logged in by its certificate, no PASS sent
        self.assertNotIn(b"---> PASS", out + err)
        for name, digest in digests.items():
            self.assertEqual(sha256_file(self.setup.server.home() / "tree" / name), digest)
        back = self.work / "back"
        out, err, code = yield run_tool(
            "lftp", self.lftp(f"mirror /tree {back}", certificate=True), path=self.work
        )
        self.assertEqual(code, 0, err)
        for name, digest in digests.items():
            self.assertEqual(sha256_file(back / name), digest)

    def curl(self, url: str, *extra: str) -> list[str]:
        return [
            "--silent",
            "--show-error",
            "--max-time",
            "60",
            "--cacert",
            str(self.setup.pki / "ca.crt"),
            "--user",
            f"alice:{PASSWORD}",
            "--ftp-pasv",
            *extra,
            url,
        ]

    @defer.inlineCallbacks
    def test_curl_explicit_and_implicit_both_ways(self) -> Any:
        source = self.work / "up.bin"
        digest = random_file(source, 2_000_003)
        explicit = f"ftp://{EDGE_HOST}:{self.setup.explicit_port}/"
        implicit = f"ftps://{EDGE_HOST}:{self.setup.implicit_port}/"
        out, err, code = yield run_tool(
            "curl", self.curl(explicit + "up.bin", "--ssl-reqd", "-T", str(source))
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(sha256_file(self.setup.server.home() / "up.bin"), digest)
        back = self.work / "back.bin"
        out, err, code = yield run_tool("curl", self.curl(implicit + "up.bin", "-o", str(back)))
        self.assertEqual(code, 0, err)
        self.assertEqual(sha256_file(back), digest)
        out, err, code = yield run_tool(
            "curl",
            self.curl(
                implicit + "cert.bin",
                "--cert",
                str(self.setup.pki / "alice.crt"),
                "--key",
                str(self.setup.pki / "alice.key"),
                "-T",
                str(source),
            ),
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(sha256_file(self.setup.server.home() / "cert.bin"), digest)


class EdgeFailureTests(TestCase):
    """The server gone mid-transfer, a wrong link certificate."""

    timeout = 60

    def kill_links(self, setup: EdgeSetup) -> None:
        """Cut every link connection at once (as when the server dies): RST, no goodbye."""
        for dialer in setup.server.service.edge_dialers:
            dialer.running = False
            for link in list(dialer.links):
                link.transport.abortConnection()

    def data_socket(self, setup: EdgeSetup, ftp: Any) -> ssl.SSLSocket:
        host, port = ftp.makepasv()
        raw = socket.create_connection((EDGE_HOST, port), timeout=20)
        return ftp.context.wrap_socket(
            raw, server_hostname=EDGE_HOST, session=ftp.sock.session, suppress_ragged_eofs=False
        )

    @defer.inlineCallbacks
    def test_download_cut_without_close_notify_and_421(self) -> Any:
        setup = EdgeSetup(self)
        yield setup.start()
        (setup.server.home() / "big.bin").write_bytes(os.urandom(32 * 1024 * 1024))

        def run() -> tuple[str, int, str]:
            ftp = setup.ftps()
            data = self.data_socket(setup, ftp)
            ftp.putcmd("RETR big.bin")
            preliminary = ftp.getresp()
            received = len(data.recv(65536))
            blockingCallFromThread(reactor, self.kill_links, setup)
            ending = "clean"
            try:
                while True:
                    chunk = data.recv(1 << 20)
                    if not chunk:
                        break
                    received += len(chunk)
            except ssl.SSLEOFError:
                ending = "truncated"
            except OSError:
                ending = "reset"
            data.close()
            try:
                reply = ftp.getline()
            except OSError as error:
                reply = f"error {error}"
            return preliminary, received, f"{ending} {reply}"

        preliminary, received, result = yield in_thread(run)
        self.assertTrue(preliminary.startswith("150"), preliminary)
        self.assertLess(received, 32 * 1024 * 1024)
        ending, reply = result.split(" ", 1)
        self.assertIn(ending, ("truncated", "reset"))
        self.assertTrue(reply.startswith("421"), reply)

    @defer.inlineCallbacks
    def test_upload_never_published(self) -> Any:
        setup = EdgeSetup(self)
        yield setup.start()
        (setup.server.home() / "kept.bin").write_bytes(b"old version")

        def run() -> str:
            ftp = setup.ftps()
            data = self.data_socket(setup, ftp)
            ftp.putcmd("STOR kept.bin")
            preliminary = ftp.getresp()
            data.sendall(os.urandom(2 * 1024 * 1024))
            blockingCallFromThread(reactor, self.kill_links, setup)
            data.close()
            return preliminary

        preliminary = yield in_thread(run)
        self.assertTrue(preliminary.startswith("150"), preliminary)
        yield setup.wait_for(lambda: not setup.server.runtime.open_sessions)
        # The partial is deleted (in the files' thread pool), the old version kept.
        home = setup.server.home()
        yield setup.wait_for(lambda: sorted(p.name for p in home.iterdir()) == ["kept.bin"])
        self.assertEqual((home / "kept.bin").read_bytes(), b"old version")

    @defer.inlineCallbacks
    def test_wrong_link_certificate_refused(self) -> Any:
        """The server's [[edge]].ca is not the link CA: no link, no settings, 421 at the edge."""
        setup = EdgeSetup(self, edge_ca="ca.crt")
        setup.start_edge()
        setup.server.start()
        yield task.deferLater(reactor, 1.5, lambda: None)
        self.assertIsNone(setup.edge.contexts)
        self.assertEqual(setup.edge.idle, [])
        self.assertFalse(any(d.was_up for d in setup.server.service.edge_dialers))

        def run() -> str:
            sock = socket.create_connection((EDGE_HOST, setup.explicit_port), timeout=10)
            reply = read_reply(sock)
            sock.close()
            return reply

        reply = yield in_thread(run)
        self.assertTrue(reply.startswith("421"), reply)


class EdgeActiveModeTests(TestCase):
    """PORT/EPRT through the edge: the edge connects to the client from its own address."""

    timeout = 60

    @defer.inlineCallbacks
    def test_ftplib_active_mode_both_ways(self) -> Any:
        setup = EdgeSetup(self)
        yield setup.start()
        payload = os.urandom(1_500_007)

        def run() -> list[str]:
            ftp = setup.ftps()
            ftp.set_pasv(False)
            replies = [ftp.storbinary("STOR a.bin", io.BytesIO(payload))]
            digest = hashlib.sha256()
            replies.append(ftp.retrbinary("RETR a.bin", digest.update))
            replies.append(digest.hexdigest())
            ftp.quit()
            return replies

        stored, retrieved, digest = yield in_thread(run)
        self.assertTrue(stored.startswith("226"), stored)
        self.assertTrue(retrieved.startswith("226"), retrieved)
        self.assertEqual(digest, hashlib.sha256(payload).hexdigest())
        on_disk = (setup.server.home() / "a.bin").read_bytes()
        self.assertEqual(on_disk, payload)


class EdgeMetricsTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_edge_links_up_gauge(self) -> Any:
        from hardening.server import free_port

        port = free_port()
        setup = EdgeSetup(self)
        setup.server.config = dataclasses.replace(
            setup.server.config, metrics=MetricsConfig("127.0.0.1", port)
        )
        setup.server.service.config = setup.server.config
        yield setup.start()
        body = yield in_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        )
        self.assertIn(b"securetransport_edge_links_up 1.0", body)

    @defer.inlineCallbacks
    def test_edge_health_follows_its_link(self) -> Any:
        from hardening.server import free_port

        port = free_port()
        setup = EdgeSetup(self)
        setup.edge.config = dataclasses.replace(
            setup.edge.config, metrics=MetricsConfig("127.0.0.1", port)
        )

        def health() -> int:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    return int(r.status)
            except urllib.error.HTTPError as error:
                return int(error.code)

        setup.start_edge()
        self.assertEqual((yield in_thread(health)), 503)  # no link yet
        setup.server.start()
        yield setup.wait_for(lambda: setup.edge.serving)
        self.assertEqual((yield in_thread(health)), 200)


class EdgeMemoryTests(TestCase):
    """A client that stops reading holds its own transfer only, within about 1 MiB at the edge."""

    timeout = 60

    def edge_buffered(self, setup: EdgeSetup) -> list[int]:
        """Bytes waiting in the edge's process for each relayed data client."""
        from securetransport.edge.relay import EdgeData
        from securetransport.ftp.data import socket_transport

        sizes = []
        for link in setup.edge.links:
            if isinstance(link.client, EdgeData):
                tcp = socket_transport(link.client.connection.transport)
                sizes.append(len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen)
        return sizes

    def server_sent(self, setup: EdgeSetup) -> list[int]:
        return [
            link.data.bytes_sent
            for dialer in setup.server.service.edge_dialers
            for link in dialer.links
            if link.data is not None
        ]

    @defer.inlineCallbacks
    def test_slow_reader_bounded(self) -> Any:
        setup = EdgeSetup(self)
        yield setup.start()
        size = 64 * 1024 * 1024
        (setup.server.home() / "big.bin").write_bytes(os.urandom(size))

        def run() -> tuple[list[int], list[int], list[int], list[int]]:
            ftp = setup.ftps()
            host, port = ftp.makepasv()
            raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            raw.settimeout(20)
            raw.connect((EDGE_HOST, port))
            data = ftp.context.wrap_socket(raw, server_hostname=EDGE_HOST, session=ftp.sock.session)
            ftp.putcmd("RETR big.bin")
            ftp.getresp()
            data.recv(65536)
            time.sleep(2)  # not reading: back-pressure reaches the server
            first = (
                blockingCallFromThread(reactor, self.edge_buffered, setup),
                blockingCallFromThread(reactor, self.server_sent, setup),
            )
            time.sleep(1)
            second = (
                blockingCallFromThread(reactor, self.edge_buffered, setup),
                blockingCallFromThread(reactor, self.server_sent, setup),
            )
            data.close()
            ftp.close()
            return first[0], first[1], second[0], second[1]

        buffered, sent, buffered_later, sent_later = yield in_thread(run)
        self.assertEqual(len(buffered), 1, buffered)
        self.assertLessEqual(max(buffered + buffered_later), 1024 * 1024 + 128 * 1024)
        self.assertLess(sent[0], size // 4)  # the server was held back ...
        self.assertEqual(sent_later, sent)  # ... and stays held while the client does not read


class EdgeBanTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_banned_address_refused_at_the_edge(self) -> Any:
        """A ban on the server (by the client's real address) is applied at the edge:
        421 on the explicit port, closed before the handshake on the implicit one."""
        setup = EdgeSetup(self)
        yield setup.start()
        runtime = setup.server.runtime
        runtime.guard.impose_ban("127.0.0.1", runtime.reactor.seconds() + 300)

        def run() -> tuple[str, bytes]:
            sock = socket.create_connection((EDGE_HOST, setup.explicit_port), timeout=10)
            reply = read_reply(sock)
            sock.close()
            try:  # closed (FIN or reset) with no byte sent: no ServerHello
                with socket.create_connection(
                    (EDGE_HOST, setup.implicit_port), timeout=10
                ) as implicit:
                    implicit.sendall(ssl_hello())
                    seen = implicit.recv(100)
            except (ConnectionResetError, BrokenPipeError):
                seen = b""
            return reply, seen

        reply, seen = yield in_thread(run)
        self.assertEqual(reply, "421 Too many failed logins; try again later\r\n")
        self.assertEqual(seen, b"")  # no ServerHello: closed before the handshake


def ssl_hello() -> bytes:
    from tests.e2e.ftps_clients import client_hello

    return client_hello()


class EdgePoolTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_more_clients_at_once_than_idle_link_connections(self) -> Any:
        """A burst beyond the pool waits for the next link connections, then is served."""
        setup = EdgeSetup(self)
        yield setup.start()
        count = 3 * POOL_SIZE

        def run() -> list[str]:
            socks = [
                socket.create_connection((EDGE_HOST, setup.explicit_port), timeout=10)
                for _ in range(count)
            ]
            replies = [read_reply(sock) for sock in socks]
            for sock in socks:
                sock.close()
            return replies

        replies = yield in_thread(run)
        self.assertEqual([r[:3] for r in replies], ["220"] * count)

    @defer.inlineCallbacks
    def test_link_connections_go_back_to_the_pool(self) -> Any:
        """Sessions one after the other, each with data connections, reuse the pooled
        link connections: no new link handshake per client connection."""
        setup = EdgeSetup(self)
        yield setup.start()
        (dialer,) = setup.server.service.edge_dialers
        yield setup.wait_for(
            lambda: len(dialer.idle) == POOL_SIZE and len(setup.edge.idle) == POOL_SIZE
        )
        dialled = dialer.dialled
        self.assertEqual(dialer.released, 0)
        payload = os.urandom(256 * 1024 + 3)
        sessions = 6

        def run() -> list[str]:
            digests = []
            for number in range(sessions):
                ftp = setup.ftps()
                ftp.storbinary(f"STOR file{number}.bin", io.BytesIO(payload))
                digest = hashlib.sha256()
                ftp.retrbinary(f"RETR file{number}.bin", digest.update)
                ftp.retrlines("LIST", lambda line: None)
                ftp.quit()
                digests.append(digest.hexdigest())
            return digests

        digests = yield in_thread(run)
        self.assertEqual(digests, [hashlib.sha256(payload).hexdigest()] * sessions)
        # 6 sessions x (1 control + 3 data connections) = 24 client connections, and each
        # ended; their link connections are idle again on both sides.
        yield setup.wait_for(lambda: dialer.released >= 4 * sessions and not setup.edge.clients)
        self.assertLessEqual(dialer.dialled - dialled, POOL_SIZE)
        self.assertLessEqual(len(dialer.links), 2 * POOL_SIZE)
        self.assertEqual(dialer.released, 4 * sessions)
