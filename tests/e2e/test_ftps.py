"""End to end over FTPS on loopback: real clients, session binding, attacks and bad input.

Every test runs the real service in trial's reactor (`harness.LiveServer`) and talks to
it over 127.0.0.1 sockets: curl and lftp as processes, ftplib and raw sockets in a thread.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import re
import socket
import ssl
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet import defer
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from tests.e2e.ftps_clients import (
    HOST,
    VERSION_NAMES,
    ImplicitFTP_TLS,
    RawControl,
    ReusingFTP_TLS,
    client_context,
    client_hello,
    ftps_login,
    legacy_context,
    pasv_port,
    read_until_closed,
    store_and_close_at_once,
    upload_download,
)
from tests.e2e.harness import (
    MIRROR_FILES,
    PASSWORD,
    LiveServer,
    curl_base,
    curl_url,
    in_thread,
    lftp_mirror_both_ways,
    lftp_script,
    random_file,
    run_tool,
    sha256_file,
)

BIG = 20 * 1024 * 1024
SMALL = 1024 * 1024 + 7  # not a multiple of any record or chunk size

CURL_VERSION = {"1.2": ["--tlsv1.2", "--tls-max", "1.2"], "1.3": ["--tlsv1.3"]}
REUSE_OFF_CLASSES = """
[[class]]
name = "everyone"
ssl = "optional"
session_reuse = "off"
"""


def lftp_tls(version: str | None = None) -> str:
    """lftp (GnuTLS) settings: TLS required, and only `version` offered."""
    settings = "set ftp:ssl-force yes"
    if version is not None:
        settings += f'; set ssl:priority "NORMAL:-VERS-ALL:+VERS-TLS{version}"'
    return settings


def events(server: LiveServer, kind: str, **match: Any) -> list[dict[str, Any]]:
    """Audit events of one kind whose fields equal `match`."""
    return [
        event
        for event in server.audit_events()
        if event.get("event") == kind and all(event.get(k) == v for k, v in match.items())
    ]


def transfer_replies(ftp: ftplib.FTP, command: str) -> list[str]:
    """Send a transfer command; its replies up to the first one that is not 1xx."""
    ftp.putcmd(command)
    replies: list[str] = []
    while True:
        try:
            line = ftp.getresp()
        except ftplib.Error as error:
            replies.append(str(error))
            return replies
        replies.append(line)
        if not line.startswith("1"):
            return replies


def retr_outcome(ftp: ftplib.FTP, command: str) -> tuple[bytes, str]:
    """(bytes received, final reply) of a RETR, whatever happens to the data connection."""
    received = bytearray()
    try:
        reply = ftp.retrbinary(command, received.extend)
    except ftplib.Error as error:
        reply = str(error)
    except (ssl.SSLError, OSError):
        try:
            reply = ftp.getresp()
        except ftplib.Error as error:
            reply = str(error)
    return bytes(received), reply


class TLSAssertions(TestCase):
    """Checks on the audit log shared by the test classes below."""

    server: LiveServer

    def assert_protected(self, version: str, data_connections: int) -> None:
        """Every control handshake in `version`; every data connection resumed and accepted;
        every transfer protected and successful."""
        control = events(self.server, "tls", channel="control")
        data = events(self.server, "tls", channel="data")
        self.assertTrue(control, "no TLS control connection in the audit log")
        self.assertEqual({e["version"] for e in control}, {VERSION_NAMES[version]}, control)
        self.assertGreaterEqual(len(data), data_connections, data)
        self.assertEqual({e["version"] for e in data}, {VERSION_NAMES[version]}, data)
        self.assertTrue(all(e["resumed"] and e["accepted"] for e in data), data)
        transfers = events(self.server, "transfer")
        self.assertGreaterEqual(len(transfers), 1)
        self.assertTrue(all(e["protected"] and e["result"] == "ok" for e in transfers), transfers)


# ----------------------------------------------------------------------------------- 1


class RealClientTests(TLSAssertions):
    """lftp, curl and ftplib, explicit and implicit, TLS 1.2 and 1.3, SHA-256 both ways."""

    timeout = 180

    def setUp(self) -> None:
        self.server = LiveServer(self).start()
        self.work = Path(self.mktemp()).absolute()
        self.work.mkdir()

    @defer.inlineCallbacks
    def round_trip(self, client: str, version: str, implicit: bool, size: int) -> Any:
        source = self.work / "source.bin"
        digest = random_file(source, size)
        name = f"{client}-{version}-{'implicit' if implicit else 'explicit'}.bin"
        back = self.work / "back.bin"
        if client == "ftplib":

            def session() -> tuple[str, str, list[bool]]:
                ftp = ftps_login(self.server, version, implicit=implicit)
                stored, got = upload_download(ftp, source, name)
                resumed = list(ftp.data_resumed)  # type: ignore[attr-defined]
                ftp.quit()
                return stored, got, resumed

            stored, got, resumed = yield in_thread(session)
            self.assertTrue(stored.startswith("226"), stored)
            self.assertEqual(resumed, [True, True])
        elif client == "curl":
            base = (
                curl_base(self.server, implicit=implicit)
                + CURL_VERSION[version]
                + ["-u", f"alice:{PASSWORD}"]
            )
            url = curl_url(self.server, "/" + name, implicit=implicit)
            out, err, code = yield run_tool("curl", base + ["-T", str(source), url])
            self.assertEqual(code, 0, err)
            out, err, code = yield run_tool("curl", base + ["-o", str(back), url])
            self.assertEqual(code, 0, err)
            got = sha256_file(back)
        else:
            script = lftp_script(
                self.server,
                f"put {source} -o /{name}; get /{name} -o {back}",
                implicit=implicit,
                extra=lftp_tls(version),
            )
            out, err, code = yield run_tool("lftp", script, path=self.work)
            self.assertEqual(code, 0, err)
            got = sha256_file(back)
        self.assertEqual(sha256_file(self.server.home() / name), digest)
        self.assertEqual(got, digest)
        self.assert_protected(version, data_connections=2)
        starts = events(self.server, "session-start")
        self.assertTrue(starts and all(e["implicit"] is implicit for e in starts), starts)

    @defer.inlineCallbacks
    def test_lftp_mirror_both_ways_explicit(self) -> Any:
        # lftp closes a TLS 1.3 upload without reading the session tickets: see
        # UploadCloseTests.test_close_at_once_after_close_notify_tls13 and data.TicketGate.
        yield self.mirror(implicit=False, version="1.3")

    @defer.inlineCallbacks
    def test_lftp_mirror_both_ways_implicit(self) -> Any:
        yield self.mirror(implicit=True, version="1.2")

    @defer.inlineCallbacks
    def mirror(self, implicit: bool, version: str) -> Any:
        files = {**MIRROR_FILES, "sub/empty.bin": 0}
        digests = yield lftp_mirror_both_ways(
            self, self.server, self.work, files, implicit=implicit, extra=lftp_tls(version)
        )
        # mirror lists folders: every listing and file went over a resumed TLS data connection
        self.assert_protected(version, data_connections=2 * len(digests) + 3)


# 20 MiB for one client per (version x port), every client at 20 MiB at least once;
# every client x version x port runs.
# lftp TLS 1.3 uploads depend on data.TicketGate (see
# UploadCloseTests.test_close_at_once_after_close_notify_tls13).
_BIG_ONES = {
    ("lftp", "1.2", False),
    ("curl", "1.2", True),
    ("ftplib", "1.3", False),
    ("lftp", "1.3", True),
}


def _matrix_test(client: str, version: str, implicit: bool) -> Any:
    size = BIG if (client, version, implicit) in _BIG_ONES else SMALL

    def test(self: RealClientTests) -> Any:
        return self.round_trip(client, version, implicit, size)

    port = "implicit" if implicit else "explicit"
    test.__name__ = f"test_{client}_tls{version.replace('.', '')}_{port}_{size // 2**20}mib"
    test.__doc__ = f"{client}, TLS {version}, {port} port: {size} bytes up and down, SHA-256 equal"
    return test


for _client in ("ftplib", "curl", "lftp"):
    for _version in ("1.2", "1.3"):
        for _implicit in (False, True):
            _test = _matrix_test(_client, _version, _implicit)
            setattr(RealClientTests, _test.__name__, _test)


# ----------------------------------------------------------------------------------- 2


class SessionReuseTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def stock_ftplib(self, server: LiveServer, version: str) -> Any:
        payload = os.urandom(200_000)
        (server.home() / "f.bin").write_bytes(payload)

        def session() -> tuple[bytes, str, str, bytes]:
            ftp = ftps_login(server, version, reuse=False)
            self.assertNotIsInstance(ftp, ReusingFTP_TLS)
            received, reply = retr_outcome(ftp, "RETR f.bin")
            noop = ftp.sendcmd("NOOP")
            again, _ = retr_outcome(ftp, "RETR f.bin")
            ftp.quit()
            return received, reply, noop, again

        return (yield in_thread(session)), payload

    @defer.inlineCallbacks
    def test_a_client_retrying_522_in_a_loop_is_closed(self) -> Any:
        # lftp answers 522 by retrying at once, forever: the session ends after 20.
        server = LiveServer(self).start()
        (server.home() / "f.bin").write_bytes(b"x" * 1000)

        def session() -> list[str]:
            ftp = ftps_login(server, "1.3", reuse=False)
            replies = []
            for _ in range(25):
                try:
                    _, reply = retr_outcome(ftp, "RETR f.bin")
                except (EOFError, OSError) as error:
                    reply = f"closed: {error!r}"
                replies.append(reply)
                if not reply.startswith("522"):
                    break
            ftp.close()
            return replies

        replies = yield in_thread(session)
        self.assertEqual(len(replies), 21, replies)
        self.assertTrue(all(r.startswith("522 ") for r in replies[:20]), replies)
        self.assertTrue(replies[20].startswith(("421", "closed")), replies[20])

    @defer.inlineCallbacks
    def test_stock_ftplib_gets_522_where_reuse_is_required(self) -> Any:
        server = LiveServer(self).start()
        for version in ("1.2", "1.3"):
            (received, reply, noop, _), _ = yield self.stock_ftplib(server, version)
            self.assertEqual(received, b"", version)
            self.assertTrue(reply.startswith("522 "), (version, reply))
            self.assertIn("not resumed", reply)
            self.assertTrue(noop.startswith("200"), noop)
        refused = events(server, "tls", channel="data", accepted=False)
        self.assertEqual({e["version"] for e in refused}, {"TLSv1.2", "TLSv1.3"})
        self.assertFalse(any(e["resumed"] for e in refused), refused)

    @defer.inlineCallbacks
    def test_stock_ftplib_works_where_reuse_is_off(self) -> Any:
        server = LiveServer(self, classes=REUSE_OFF_CLASSES).start()
        for version in ("1.2", "1.3"):
            (received, reply, _, again), payload = yield self.stock_ftplib(server, version)
            self.assertTrue(reply.startswith("226"), (version, reply))
            self.assertEqual(received, payload)
            self.assertEqual(again, payload)
        data = events(server, "tls", channel="data")
        self.assertEqual(len(data), 4)
        self.assertTrue(all(e["accepted"] and not e["resumed"] for e in data), data)

    @defer.inlineCallbacks
    def test_stock_ftplib_uploads_where_reuse_is_off(self) -> Any:
        """A full TLS 1.2 handshake on an upload's data connection ends with the server's
        last flight (ticket, Finished): none of it may be held back."""
        server = LiveServer(self, classes=REUSE_OFF_CLASSES).start()
        for version in ("1.2", "1.3"):
            payload = os.urandom(300_001)

            def session(version: str = version, payload: bytes = payload) -> tuple[str, bytes]:
                ftp = ftps_login(server, version, reuse=False)
                ftp.sock.settimeout(15)
                reply = ftp.storbinary(f"STOR up-{version}.bin", io.BytesIO(payload))
                received, _ = retr_outcome(ftp, f"RETR up-{version}.bin")
                ftp.quit()
                return reply, received

            reply, received = yield in_thread(session)
            self.assertTrue(reply.startswith("226"), (version, reply))
            stored = (server.home() / f"up-{version}.bin").read_bytes()
            self.assertEqual(
                hashlib.sha256(stored).hexdigest(), hashlib.sha256(payload).hexdigest()
            )
            self.assertEqual(received, payload)
        uploads = events(server, "transfer", direction="upload")
        self.assertEqual([(e["result"], e["protected"]) for e in uploads], [("ok", True)] * 2)


# ----------------------------------------------------------------------------------- 3


class HijackTests(TestCase):
    """An attacker who only did AUTH TLS races a logged-in victim to its passive port."""

    timeout = 60

    def setUp(self) -> None:
        self.server = LiveServer(self).start()
        self.secret = b"VICTIM-SECRET-" + os.urandom(256 * 1024)
        (self.server.home() / "secret.bin").write_bytes(self.secret)

    def race(self, version: str, verb: str) -> dict[str, Any]:
        context = client_context(self.server, version)
        attacker = RawControl(self.server.explicit_port)
        out: dict[str, Any] = {"auth": attacker.command("AUTH TLS")}
        attacker.start_tls(context)
        out["attacker_noop"] = attacker.command("NOOP")  # TLS 1.3: the tickets arrive
        session = attacker.tls_session
        victim = ftps_login(self.server, version)
        out["stolen"], out["victim"], out["attacker_resumed"] = b"", [], []
        try:
            for _ in range(2):  # second time with whatever session the first race gave
                port = pasv_port(victim.sendcmd(verb))
                raw = socket.create_connection((HOST, port), timeout=10)
                try:
                    data = context.wrap_socket(raw, server_hostname=HOST, session=session)
                except (ssl.SSLError, OSError) as error:
                    out["attacker_resumed"].append(f"handshake failed: {error!r}")
                    raw.close()
                else:
                    out["attacker_resumed"].append(data.session_reused)
                    stolen, _ = read_until_closed(data, 5)
                    out["stolen"] += stolen
                    session = data.session or session
                    data.close()
                try:  # the victim's own connection comes second
                    late = socket.create_connection((HOST, port), timeout=5)
                    late.close()
                except OSError:
                    pass
                out["victim"].append(transfer_replies(victim, "RETR secret.bin"))
                out.setdefault("victim_noop", []).append(victim.sendcmd("NOOP"))
            received = bytearray()
            out["victim_retry"] = victim.retrbinary("RETR secret.bin", received.extend)
            out["victim_received"] = bytes(received)
            out["attacker_still"] = attacker.command("NOOP")
            victim.quit()
        finally:
            attacker.close()
        return out

    def check(self, out: dict[str, Any]) -> None:
        self.assertTrue(out["auth"].startswith("234"))
        self.assertTrue(out["attacker_noop"].startswith("200"))
        self.assertEqual(out["stolen"], b"", "the attacker received the victim's data")
        for replies in out["victim"]:
            self.assertTrue(replies[-1][:3] in ("425", "522"), out["victim"])
            self.assertNotIn("226", [reply[:3] for reply in replies])
        self.assertEqual([r[:3] for r in out["victim_noop"]], ["200", "200"])
        self.assertTrue(out["victim_retry"].startswith("226"))
        self.assertEqual(out["victim_received"], self.secret)
        self.assertTrue(out["attacker_still"].startswith("200"))
        refused = events(self.server, "tls", channel="data", accepted=False)
        self.assertEqual(len(refused), 2, out)
        downloads = events(self.server, "transfer", command="RETR", result="ok")
        self.assertEqual([e["bytes"] for e in downloads], [len(self.secret)])

    @defer.inlineCallbacks
    def test_hijack_tls12_pasv(self) -> Any:
        self.check((yield in_thread(self.race, "1.2", "PASV")))

    @defer.inlineCallbacks
    def test_hijack_tls13_pasv(self) -> Any:
        self.check((yield in_thread(self.race, "1.3", "PASV")))

    @defer.inlineCallbacks
    def test_hijack_tls12_epsv(self) -> Any:
        self.check((yield in_thread(self.race, "1.2", "EPSV")))

    @defer.inlineCallbacks
    def test_hijack_tls13_epsv(self) -> Any:
        self.check((yield in_thread(self.race, "1.3", "EPSV")))

    @defer.inlineCallbacks
    def test_clear_data_connection_from_another_address_is_refused(self) -> Any:
        def session() -> tuple[bytes, str, bytes, str]:
            victim = ftplib.FTP()
            victim.connect(HOST, self.server.explicit_port, timeout=30)
            victim.login("alice", PASSWORD)
            port = pasv_port(victim.sendcmd("PASV"))
            intruder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            intruder.bind(("127.0.0.2", 0))
            intruder.connect((HOST, port))
            stolen, how = read_until_closed(intruder, 5)
            intruder.close()
            own = socket.create_connection((HOST, port), timeout=10)
            first = victim.sendcmd("RETR secret.bin")
            received, _ = read_until_closed(own, 10)
            own.close()
            final = victim.voidresp()
            victim.quit()
            return stolen, how, received, first[:3] + final[:3]

        stolen, how, received, replies = yield in_thread(session)
        self.assertEqual(stolen, b"")
        self.assertNotEqual(how, "timeout")
        self.assertEqual(received, self.secret)
        self.assertEqual(replies, "150226")


# ----------------------------------------------------------------------------------- 4


class InjectionTests(TestCase):
    """Commands pipelined in clear after AUTH are discarded, never run over TLS."""

    timeout = 30

    def inject(self, server: LiveServer, packet: bytes, version: str) -> list[str]:
        control = RawControl(server.explicit_port)
        control.send(packet)
        replies = [control.read_reply()]
        control.start_tls(client_context(server, version))
        replies.append(control.command("NOOP"))
        replies.append(control.command(f"PASS {PASSWORD}"))
        replies.append(control.command("PWD"))
        control.close()
        return replies

    @defer.inlineCallbacks
    def test_user_after_auth_tls_in_one_packet_is_dropped(self) -> Any:
        server = LiveServer(self).start()
        for version in ("1.2", "1.3"):
            replies = yield in_thread(self.inject, server, b"AUTH TLS\r\nUSER alice\r\n", version)
            self.assertEqual([r[:3] for r in replies], ["234", "200", "503", "530"], replies)
        self.assertEqual(events(server, "user"), [])
        self.assertEqual(events(server, "login"), [])

    @defer.inlineCallbacks
    def test_user_and_pass_after_auth_ssl_in_one_packet_are_dropped(self) -> Any:
        server = LiveServer(self).start()
        packet = f"AUTH SSL\r\nUSER alice\r\nPASS {PASSWORD}\r\n".encode()
        replies = yield in_thread(self.inject, server, packet, "1.3")
        self.assertEqual([r[:3] for r in replies], ["234", "200", "503", "530"], replies)
        self.assertEqual(events(server, "login"), [])


# ----------------------------------------------------------------------------------- 5


class TruncatedUploadTests(TestCase):
    """A protected upload that ends with a bare FIN (no close_notify) fails with 426."""

    timeout = 60

    def truncate(self, server: LiveServer, version: str) -> dict[str, str]:
        ftp = ftps_login(server, version)
        out: dict[str, str] = {}
        for name in ("keep.bin", "fresh.bin"):
            conn = ftp.transfercmd(f"STOR {name}")
            conn.sendall(b"x" * 300_000)
            # The opposite of conn.unwrap(): FIN on the TCP socket under the TLS layer.
            socket.socket.shutdown(conn, socket.SHUT_WR)
            try:
                out[name] = ftp.voidresp()
            except ftplib.Error as error:
                out[name] = str(error)
            conn.close()
        out["noop"] = ftp.sendcmd("NOOP")
        out["clean"] = ftp.storbinary("STOR clean.bin", io.BytesIO(b"y" * 300_000))
        ftp.quit()
        return out

    @defer.inlineCallbacks
    def check(self, version: str) -> Any:
        server = LiveServer(self).start()
        home = server.home()
        (home / "keep.bin").write_bytes(b"previous version")
        out = yield in_thread(self.truncate, server, version)
        self.assertTrue(out["keep.bin"].startswith("426"), out)
        self.assertTrue(out["fresh.bin"].startswith("426"), out)
        self.assertIn("close_notify", out["keep.bin"])
        self.assertTrue(out["noop"].startswith("200"))
        self.assertTrue(out["clean"].startswith("226"), out)
        self.assertEqual((home / "keep.bin").read_bytes(), b"previous version")
        self.assertEqual((home / "clean.bin").read_bytes(), b"y" * 300_000)
        self.assertEqual(sorted(p.name for p in home.iterdir()), ["clean.bin", "keep.bin"])
        failed = events(server, "transfer", result="failed")
        self.assertEqual(
            [(e["path"], e["reply"], e["bytes"]) for e in failed],
            [("/keep.bin", 426, 300_000), ("/fresh.bin", 426, 300_000)],  # every byte came
        )

    def test_truncated_upload_tls12(self) -> Any:
        return self.check("1.2")

    def test_truncated_upload_tls13(self) -> Any:
        return self.check("1.3")


class UploadCloseTests(TestCase):
    """A complete upload ended with close_notify and an immediate close is stored (226),
    even when the client never read what the server sent after the handshake."""

    timeout = 60

    @defer.inlineCallbacks
    def check(self, version: str) -> Any:
        server = LiveServer(self).start()
        payload = os.urandom(4 * 1024 * 1024)

        def session() -> tuple[bool, str]:
            ftp = ftps_login(server, version)
            assert isinstance(ftp, ReusingFTP_TLS)
            outcome = store_and_close_at_once(ftp, "whole.bin", payload)
            ftp.quit()
            return outcome

        resumed, reply = yield in_thread(session)
        self.assertTrue(resumed)
        self.assertTrue(reply.startswith("226"), reply)
        self.assertEqual(
            sha256_file(server.home() / "whole.bin"), hashlib.sha256(payload).hexdigest()
        )

    def test_close_at_once_after_close_notify_tls12(self) -> Any:
        return self.check("1.2")

    def test_close_at_once_after_close_notify_tls13(self) -> Any:
        # The client never reads the TLS 1.3 NewSessionTickets of the data connection; were
        # they sent, its close() would send RST and destroy the upload's tail (curl#6149,
        # lftp#666). data.TicketGate holds them back during uploads: 226, file stored.
        return self.check("1.3")


# ----------------------------------------------------------------------------------- 6


class LegacyVersionTests(TestCase):
    """TLS 1.0 and 1.1 ClientHellos are refused on both ports; TLS 1.2 from the same
    client set-up works (so the refusals are the server's)."""

    timeout = 60

    def handshake(self, server: LiveServer, maximum: ssl.TLSVersion, implicit: bool) -> str:
        context = legacy_context(maximum)
        if implicit:
            raw = socket.create_connection((HOST, server.implicit_port), timeout=10)
        else:
            control = RawControl(server.explicit_port)
            self.assertTrue(control.command("AUTH TLS").startswith("234"))
            raw = control.sock
        try:
            tls = context.wrap_socket(raw, server_hostname=HOST)
        except ssl.SSLError as error:
            raw.close()
            return f"refused: {error.reason}"
        except OSError as error:
            raw.close()
            return f"refused: {error!r}"
        version = tls.version() or "?"
        tls.close()
        return f"accepted {version}"

    @defer.inlineCallbacks
    def test_tls10_and_tls11_are_refused(self) -> Any:
        server = LiveServer(self).start()
        outcomes = {}
        for implicit in (False, True):
            for maximum in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1_2):
                outcome = yield in_thread(self.handshake, server, maximum, implicit)
                outcomes[(implicit, maximum.name)] = outcome
        for implicit in (False, True):
            for name in ("TLSv1", "TLSv1_1"):
                outcome = outcomes[(implicit, name)]
                # The server's alert, not a local refusal to offer the version
                self.assertEqual(outcome, "refused: TLSV1_ALERT_PROTOCOL_VERSION", outcomes)
            self.assertEqual(outcomes[(implicit, "TLSv1_2")], "accepted TLSv1.2", outcomes)
        versions = {e["version"] for e in events(server, "tls", channel="control")}
        self.assertEqual(versions, {"TLSv1.2"})

    @defer.inlineCallbacks
    def test_openssl_s_client_tls10_and_tls11_are_refused(self) -> Any:
        server = LiveServer(self).start()
        for flag in ("-tls1", "-tls1_1"):
            for implicit in (False, True):
                args = [
                    "s_client",
                    "-connect",
                    f"{HOST}:{server.implicit_port if implicit else server.explicit_port}",
                    flag,
                    "-cipher",
                    "DEFAULT:@SECLEVEL=0",
                ] + ([] if implicit else ["-starttls", "ftp"])
                out, err, code = yield run_tool("openssl", args, env={"OPENSSL_CONF": "/dev/null"})
                self.assertNotEqual(code, 0, (flag, implicit, out))
                self.assertIn(b"alert protocol version", err, (flag, implicit, err))


# ----------------------------------------------------------------------------------- 7


@implementer(ILogObserver)
class LogCapture:
    """Twisted log events as text, while a test runs."""

    def __init__(self, case: TestCase) -> None:
        self.lines: list[str] = []
        globalLogPublisher.addObserver(self)
        case.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: dict[str, Any]) -> None:
        self.lines.append(formatEvent(event) or "")

    def matching(self, pattern: str) -> list[str]:
        return [line for line in self.lines if re.search(pattern, line, re.IGNORECASE)]


class BadInputTests(TestCase):
    """A bad or stalled TLS start ends that connection only; another session goes on."""

    timeout = 60

    def setUp(self) -> None:
        self.log = LogCapture(self)
        self.server = LiveServer(self, extra_server="login_timeout = 2").start()

    def bad_connection(
        self, port: int, payload: bytes | None, *, greet: bool = False, auth: bool = False
    ) -> tuple[bytes, str, float, str]:
        """While a logged-in bystander waits, open a bad connection; (what it got back, how
        it ended, seconds it lived, the bystander's NOOP reply)."""
        bystander = ftps_login(self.server, "1.3")
        bad = RawControl(port, greet=greet)
        if auth:
            self.assertTrue(bad.command("AUTH TLS").startswith("234"))
        started = time.monotonic()
        if payload is not None:
            bad.send(payload)
        received, how = read_until_closed(bad.sock, 10)
        lived = time.monotonic() - started
        bad.close()
        noop = bystander.sendcmd("NOOP")
        bystander.retrlines("LIST", lambda line: None)
        bystander.quit()
        return received, how, lived, noop

    def assert_ended(self, outcome: tuple[bytes, str, float, str], within: float) -> bytes:
        received, how, lived, noop = outcome
        self.assertNotEqual(how, "timeout", outcome)
        self.assertLess(lived, within, outcome)
        self.assertTrue(noop.startswith("200"), outcome)
        return received

    @defer.inlineCallbacks
    def test_garbage_instead_of_client_hello_on_implicit_port(self) -> Any:
        garbage = b"\x00\xffGARBAGE" + bytes(range(256)) * 4
        outcome = yield in_thread(self.bad_connection, self.server.implicit_port, garbage)
        received = self.assert_ended(outcome, within=1.5)
        self.assertNotIn(b"220", received)

    @defer.inlineCallbacks
    def test_plain_ftp_on_implicit_port(self) -> Any:
        outcome = yield in_thread(self.bad_connection, self.server.implicit_port, b"USER x\r\n")
        received = self.assert_ended(outcome, within=1.5)
        for code in (b"220", b"331", b"530"):
            self.assertNotIn(code, received)

    @defer.inlineCallbacks
    def test_plain_ftp_and_garbage_on_implicit_port_are_logged(self) -> Any:
        for payload in (b"USER x\r\n", b"\x00\xffGARBAGE"):
            mark = len(self.log.lines)
            outcome = yield in_thread(self.bad_connection, self.server.implicit_port, payload)
            self.assert_ended(outcome, within=1.5)
            port = str(self.server.implicit_port)
            said = [
                line
                for line in self.log.lines[mark:]
                if re.search("implicit", line, re.I) and port in line
            ]
            self.assertTrue(said, (payload, self.log.lines[mark:]))

    @defer.inlineCallbacks
    def test_client_hello_on_explicit_port(self) -> Any:
        outcome = yield in_thread(
            self.bad_connection, self.server.explicit_port, client_hello(), greet=True
        )
        received = self.assert_ended(outcome, within=1.5)
        self.assertEqual(received, b"")
        self.assertTrue(self.log.matching(r"ClientHello on an explicit FTPS port"), self.log.lines)

    @defer.inlineCallbacks
    def test_stalled_handshake_on_implicit_port_ends_by_login_timeout(self) -> Any:
        outcome = yield in_thread(self.bad_connection, self.server.implicit_port, None)
        self.assert_ended(outcome, within=5)
        self.assertGreater(outcome[2], 1.5, outcome)

    @defer.inlineCallbacks
    def test_stalled_handshake_after_auth_ends_by_login_timeout(self) -> Any:
        outcome = yield in_thread(
            self.bad_connection, self.server.explicit_port, None, greet=True, auth=True
        )
        self.assert_ended(outcome, within=5)
        self.assertGreater(outcome[2], 1.5, outcome)

    @defer.inlineCallbacks
    def test_handshake_stalled_midway_ends_by_login_timeout(self) -> Any:
        outcome = yield in_thread(self.bad_connection, self.server.implicit_port, client_hello())
        received = self.assert_ended(outcome, within=5)
        self.assertGreater(outcome[2], 1.5, outcome)
        self.assertTrue(received.startswith(b"\x16\x03"), received[:16])  # the ServerHello

    @defer.inlineCallbacks
    def test_handshake_broken_midway(self) -> Any:
        payload = client_hello("1.2") + b"\x16\x03\x03\x00\x05" + b"\xffjunk"
        outcome = yield in_thread(self.bad_connection, self.server.implicit_port, payload)
        self.assert_ended(outcome, within=1.5)


# ----------------------------------------------------------------------------------- 8


class TLSCommandTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.server = LiveServer(self).start()

    @defer.inlineCallbacks
    def test_replies_before_and_after_auth_tls(self) -> Any:
        clear = [
            ("PBSZ 0", "503"),
            ("PROT P", "503"),
            ("CCC", "533"),
            ("FEAT", "211"),
            ("AUTH KERBEROS_V4", "504"),
            ("AUTH TLS", "234"),
        ]
        protected = [
            ("PROT P", "200"),  # without a prior PBSZ
            ("PBSZ 0", "200"),
            ("PBSZ 1024", "200"),
            ("PROT C", "200"),
            ("PROT S", "536"),
            ("PROT E", "536"),
            ("PROT X", "504"),
            ("PROT P", "200"),
            ("CCC", "534"),
            ("AUTH TLS", "503"),
            ("AUTH SSL", "503"),
            ("FEAT", "211"),
            ("STAT", "211"),
        ]

        def session() -> list[tuple[str, str]]:
            control = RawControl(self.server.explicit_port)
            out = [(command, control.command(command)) for command, _ in clear]
            control.start_tls(client_context(self.server, "1.3"))
            out += [(command, control.command(command)) for command, _ in protected]
            control.close()
            return out

        out = yield in_thread(session)
        self.assertEqual([(command, reply[:3]) for command, reply in out], clear + protected)
        replies = dict(out[len(clear) :])
        self.assertEqual(replies["PBSZ 0"], "200 PBSZ=0")
        self.assertEqual(replies["PBSZ 1024"], "200 PBSZ=0")
        for feat in (out[3][1], replies["FEAT"]):
            lines = {line.strip() for line in feat.splitlines()[1:-1]}
            self.assertLessEqual({"AUTH TLS", "AUTH SSL", "PBSZ", "PROT"}, lines, feat)
        self.assertIn("Data protection: Private", replies["STAT"])
        self.assertIn("Control channel: TLS TLSv1.3", replies["STAT"])

    @defer.inlineCallbacks
    def test_auth_after_login_is_refused(self) -> Any:
        def session() -> str:
            ftp = ftplib.FTP()
            ftp.connect(HOST, self.server.explicit_port, timeout=30)
            ftp.login("alice", PASSWORD)
            try:
                reply = ftp.sendcmd("AUTH TLS")
            except ftplib.Error as error:
                reply = str(error)
            ftp.quit()
            return reply

        self.assertTrue((yield in_thread(session)).startswith("503"))

    @defer.inlineCallbacks
    def test_auth_ssl_implies_prot_p(self) -> Any:
        payload = os.urandom(100_000)
        (self.server.home() / "p.bin").write_bytes(payload)

        def session(mechanism: str) -> tuple[str, bytes, list[bool]]:
            ftp = ReusingFTP_TLS(context=client_context(self.server, "1.2"), timeout=30)
            ftp.connect(HOST, self.server.explicit_port)
            ftp.voidcmd(f"AUTH {mechanism}")
            assert ftp.sock is not None
            ftp.sock = ftp.context.wrap_socket(ftp.sock, server_hostname=HOST)
            ftp.file = ftp.sock.makefile("r", encoding=ftp.encoding)
            status = ftp.sendcmd("STAT")
            ftp.login("alice", PASSWORD)
            # expect TLS on data connections, but never send PROT
            ftp._prot_p = True  # type: ignore[attr-defined]
            received = bytearray()
            ftp.retrbinary("RETR p.bin", received.extend)
            resumed = ftp.data_resumed
            ftp.quit()
            return status, bytes(received), resumed

        for mechanism in ("SSL", "TLS-P"):
            status, received, resumed = yield in_thread(session, mechanism)
            self.assertIn("Data protection: Private", status)
            self.assertEqual(received, payload)
            self.assertEqual(resumed, [True])
        transfers = events(self.server, "transfer")
        self.assertEqual([e["protected"] for e in transfers], [True, True])

        def clear_by_default() -> str:
            control = RawControl(self.server.explicit_port)
            control.command("AUTH TLS")
            control.start_tls(client_context(self.server))
            status = control.command("STAT")
            control.close()
            return status

        self.assertIn("Data protection: Clear", (yield in_thread(clear_by_default)))

    @defer.inlineCallbacks
    def test_implicit_port_protects_data_by_default(self) -> Any:
        (self.server.home() / "a.txt").write_text("a")

        def session() -> tuple[str, str, list[str], list[bool]]:
            ftp = ImplicitFTP_TLS(context=client_context(self.server), timeout=30)
            ftp.connect(HOST, self.server.implicit_port)
            status = ftp.sendcmd("STAT")
            try:
                again = ftp.sendcmd("AUTH TLS")
            except ftplib.Error as error:
                again = str(error)
            ftp.login("alice", PASSWORD)
            names = ftp.nlst()  # PROT never sent: the client expects TLS on the data connection
            resumed = ftp.data_resumed
            ftp.quit()
            return status, again, names, resumed

        status, again, names, resumed = yield in_thread(session)
        self.assertIn("Data protection: Private", status)
        self.assertTrue(again.startswith("503"), again)
        self.assertEqual(names, ["a.txt"])
        self.assertEqual(resumed, [True])


# ----------------------------------------------------------------------------------- 9


class AuditTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.server = LiveServer(self).start()
        self.work = Path(self.mktemp()).absolute()
        self.work.mkdir()
        (self.server.home() / "report.txt").write_bytes(b"quarterly figures\n")

    @defer.inlineCallbacks
    def certificate_download(self, version: str, implicit: bool) -> Any:
        pki = self.server.pki
        back = self.work / "report.txt"
        args = (
            curl_base(self.server, implicit=implicit)
            + CURL_VERSION[version]
            + ["--cert", str(pki / "alice.crt"), "--key", str(pki / "alice.key")]
            + [
                "-u",
                "alice:",
                "-o",
                str(back),
                curl_url(self.server, "/report.txt", implicit=implicit),
            ]
        )
        out, err, code = yield run_tool("curl", args)
        self.assertEqual(code, 0, err)
        self.assertEqual(back.read_bytes(), b"quarterly figures\n")
        certificate = x509.load_pem_x509_certificate((pki / "alice.crt").read_bytes())
        fingerprint = hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest()

        logins = events(self.server, "login", method="certificate", result="success")
        self.assertEqual(len(logins), 1, self.server.audit_events())
        session = logins[0]["session"]
        (control,) = events(self.server, "tls", session=session, channel="control")
        self.assertEqual(control["version"], VERSION_NAMES[version])
        self.assertTrue(control["cipher"])
        self.assertIs(control["resumed"], False)
        self.assertIn("CN=alice", control["certificate_subject"])
        self.assertEqual(control["certificate_fingerprint"], fingerprint)
        self.assertIs(control["certificate_good"], True)
        data = events(self.server, "tls", session=session, channel="data")
        self.assertGreaterEqual(len(data), 1)
        for event in data:
            self.assertEqual(event["version"], VERSION_NAMES[version])
            self.assertTrue(event["cipher"])
            self.assertIs(event["resumed"], True)
            self.assertIs(event["accepted"], True)
        if version == "1.2":
            self.assertRegex(control["cipher"], r"^ECDHE-.*(GCM|CHACHA20)")
        (start,) = events(self.server, "session-start", session=session)
        self.assertIs(start["implicit"], implicit)

    def test_audit_certificate_login_tls12_explicit(self) -> Any:
        return self.certificate_download("1.2", implicit=False)

    def test_audit_certificate_login_tls13_implicit(self) -> Any:
        return self.certificate_download("1.3", implicit=True)
