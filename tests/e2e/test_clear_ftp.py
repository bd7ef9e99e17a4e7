"""End to end over clear FTP on loopback: ftplib, curl and lftp against a live server."""

from __future__ import annotations

import ftplib
import io
import socket
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.e2e.harness import (
    MIRROR_FILES,
    PASSWORD,
    LiveServer,
    in_thread,
    lftp_mirror_both_ways,
    random_file,
    run_tool,
    sha256_file,
)

SIZE = 20 * 1024 * 1024


def ftp_login(server: LiveServer, user: str = "alice") -> ftplib.FTP:
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", server.explicit_port, timeout=30)
    ftp.login(user, PASSWORD)
    return ftp


class FtplibTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.server = LiveServer(self).start()
        self.work = Path(self.mktemp()).absolute()
        self.work.mkdir()

    @defer.inlineCallbacks
    def test_upload_download_20_mib_sha256(self) -> Any:
        source = self.work / "big.bin"
        digest = random_file(source, SIZE)

        def session() -> tuple[str, str, int]:
            ftp = ftp_login(self.server)
            with open(source, "rb") as handle:
                stored = ftp.storbinary("STOR big.bin", handle, blocksize=1 << 16)
            back = hashlib_of_retr(ftp, "RETR big.bin")
            size = ftp.size("big.bin")
            ftp.quit()
            return stored, back, size

        stored, back, size = yield in_thread(session)
        self.assertTrue(stored.startswith("226"), stored)
        self.assertEqual(back, digest)
        self.assertEqual(size, SIZE)
        self.assertEqual(sha256_file(self.server.home() / "big.bin"), digest)

    @defer.inlineCallbacks
    def test_folders_rename_delete_and_mlsd(self) -> Any:
        def session() -> dict[str, Any]:
            ftp = ftp_login(self.server)
            out: dict[str, Any] = {}
            out["mkd"] = ftp.mkd("docs")
            ftp.cwd("docs")
            out["pwd"] = ftp.pwd()
            ftp.storbinary("STOR report.txt", io.BytesIO(b"quarterly\n"))
            ftp.rename("report.txt", "final.txt")
            out["mlsd"] = dict(ftp.mlsd())
            out["nlst"] = ftp.nlst()
            lines: list[str] = []
            ftp.retrlines("LIST", lines.append)
            out["list"] = lines
            ftp.cwd("..")
            out["mdtm"] = ftp.sendcmd("MDTM docs/final.txt")
            out["hash"] = ftp.sendcmd("HASH docs/final.txt")
            ftp.delete("docs/final.txt")
            out["rmd"] = ftp.rmd("docs")
            out["after"] = ftp.nlst()
            ftp.quit()
            return out

        out = yield in_thread(session)
        self.assertEqual(out["mkd"], "/docs")
        self.assertEqual(out["pwd"], "/docs")
        facts = out["mlsd"]["final.txt"]
        self.assertEqual(facts["type"], "file")
        self.assertEqual(facts["size"], "10")
        self.assertEqual(len(facts["modify"]), 14)
        self.assertEqual(out["nlst"], ["final.txt"])
        self.assertEqual(len(out["list"]), 1)
        self.assertTrue(out["list"][0].startswith("-rw"), out["list"])
        self.assertTrue(out["list"][0].endswith(" final.txt"), out["list"])
        self.assertTrue(out["mdtm"].startswith("213 "))
        import hashlib

        self.assertIn(hashlib.sha256(b"quarterly\n").hexdigest(), out["hash"])
        self.assertEqual(out["after"], [])
        self.assertFalse((self.server.home() / "docs").exists())

    @defer.inlineCallbacks
    def test_resume_download_and_upload(self) -> Any:
        payload = bytes(range(256)) * 4096  # 1 MiB
        (self.server.home() / "data.bin").write_bytes(payload)

        def session() -> tuple[bytes, bytes]:
            ftp = ftp_login(self.server)
            tail = io.BytesIO()
            ftp.retrbinary("RETR data.bin", tail.write, rest=1000)
            ftp.storbinary("STOR up.bin", io.BytesIO(payload[:5000]))
            ftp.storbinary("STOR up.bin", io.BytesIO(payload[5000:]), rest=5000)
            ftp.storbinary("APPE up.bin", io.BytesIO(b"tail"))
            whole = io.BytesIO()
            ftp.retrbinary("RETR up.bin", whole.write)
            ftp.quit()
            return tail.getvalue(), whole.getvalue()

        tail, whole = yield in_thread(session)
        self.assertEqual(tail, payload[1000:])
        self.assertEqual(whole, payload + b"tail")

    @defer.inlineCallbacks
    def test_path_escapes_fail(self) -> Any:
        outside = self.server.root / "secret.txt"
        outside.write_text("top secret")
        (self.server.home() / "link").symlink_to(self.server.root)

        def session() -> list[str]:
            ftp = ftp_login(self.server)
            replies = []
            for path in (
                "../secret.txt",
                "/../../secret.txt",
                "link/secret.txt",
                "..%2fsecret.txt",
            ):
                try:
                    ftp.retrbinary(f"RETR {path}", lambda data: replies.append("LEAK"))
                    replies.append("226")
                except ftplib.error_perm as error:
                    replies.append(str(error)[:3])
            ftp.cwd("../../..")
            replies.append(ftp.pwd())
            ftp.quit()
            return replies

        replies = yield in_thread(session)
        self.assertEqual(replies, ["550", "550", "550", "550", "/"])

    @defer.inlineCallbacks
    def test_port_to_another_address_is_refused(self) -> Any:
        def session() -> tuple[str, str]:
            ftp = ftp_login(self.server)
            try:
                ftp.sendcmd("PORT 127,0,0,2,200,10")
                other = "accepted"
            except ftplib.error_perm as error:
                other = str(error)[:3]
            try:
                ftp.sendcmd("PORT 127,0,0,1,0,21")
                low = "accepted"
            except ftplib.error_perm as error:
                low = str(error)[:3]
            ftp.quit()
            return other, low

        self.assertEqual((yield in_thread(session)), ("504", "504"))

    @defer.inlineCallbacks
    def test_active_mode_listing(self) -> Any:
        (self.server.home() / "a.txt").write_text("a")

        def session() -> list[str]:
            ftp = ftp_login(self.server)
            ftp.set_pasv(False)
            names = ftp.nlst()
            ftp.quit()
            return names

        self.assertEqual((yield in_thread(session)), ["a.txt"])

    @defer.inlineCallbacks
    def test_aborted_upload_leaves_previous_file_intact(self) -> Any:
        target = self.server.home() / "keep.bin"
        target.write_bytes(b"previous version")

        def session() -> str:
            ftp = ftp_login(self.server)
            conn = ftp.transfercmd("STOR keep.bin")
            conn.sendall(b"x" * 100000)
            conn.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            conn.close()  # RST: the upload did not end cleanly
            try:
                reply = ftp.voidresp()
            except ftplib.error_temp as error:
                reply = str(error)
            ftp.quit()
            return reply

        reply = yield in_thread(session)
        self.assertTrue(reply.startswith("426"), reply)
        self.assertEqual(target.read_bytes(), b"previous version")
        self.assertEqual([p.name for p in self.server.home().iterdir()], ["keep.bin"])

    @defer.inlineCallbacks
    def test_abor_during_download(self) -> Any:
        random_file(self.server.home() / "big.bin", 64 * 1024 * 1024)

        def session() -> tuple[str, str]:
            ftp = ftp_login(self.server)
            conn = ftp.transfercmd("RETR big.bin")
            conn.recv(65536)
            ftp.putcmd("ABOR")
            conn.close()
            first = ftp.getline()
            second = ftp.getline()
            noop = ftp.sendcmd("NOOP")
            ftp.quit()
            return first[:3] + second[:3], noop

        replies, noop = yield in_thread(session)
        # RFC 959: 426 for the aborted transfer then 226 for ABOR; or, when the client's
        # close reached the server before ABOR, 426 for the transfer and 225 for ABOR
        # (no transfer left); or the transfer finished first (226, then 225).
        self.assertIn(replies, ("426226", "426225", "226225"))
        self.assertTrue(noop.startswith("200"))


def hashlib_of_retr(ftp: ftplib.FTP, command: str) -> str:
    import hashlib

    digest = hashlib.sha256()
    ftp.retrbinary(command, digest.update, blocksize=1 << 16)
    return digest.hexdigest()


class CurlAndLftpClearTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.server = LiveServer(self).start()
        self.work = Path(self.mktemp()).absolute()
        self.work.mkdir()

    def url(self, path: str = "/") -> str:
        return f"ftp://127.0.0.1:{self.server.explicit_port}{path}"

    @defer.inlineCallbacks
    def test_curl_upload_download_list(self) -> Any:
        source = self.work / "c.bin"
        digest = random_file(source, SIZE)
        auth = ["--silent", "--show-error", "--max-time", "60", "-u", f"alice:{PASSWORD}"]
        out, err, code = yield run_tool("curl", auth + ["-T", str(source), self.url("/c.bin")])
        self.assertEqual(code, 0, err)
        back = self.work / "back.bin"
        out, err, code = yield run_tool("curl", auth + ["-o", str(back), self.url("/c.bin")])
        self.assertEqual(code, 0, err)
        self.assertEqual(sha256_file(back), digest)
        out, err, code = yield run_tool("curl", auth + [self.url("/")])
        self.assertEqual(code, 0, err)
        self.assertIn(b" c.bin", out)
        out, err, code = yield run_tool(
            "curl", auth + ["-C", "-", "-o", str(back), self.url("/c.bin")]
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(sha256_file(back), digest)

    @defer.inlineCallbacks
    def test_lftp_mirror_both_ways(self) -> Any:
        yield lftp_mirror_both_ways(self, self.server, self.work, MIRROR_FILES, tls=False)


class AbortBeforeDataConnectionTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.server = LiveServer(self).start()

    @defer.inlineCallbacks
    def test_abor_while_waiting_for_the_data_connection(self) -> Any:
        (self.server.home() / "keep.bin").write_bytes(b"previous")

        def session() -> list[str]:
            ftp = ftp_login(self.server)
            ftp.sendcmd("PASV")  # and never connect to it
            replies = [ftp.sendcmd("STOR keep.bin")]
            ftp.putcmd("ABOR")
            replies += [ftp.getline(), ftp.getline()]
            replies.append(ftp.sendcmd("NOOP"))
            ftp.sendcmd("PASV")
            replies.append(ftp.sendcmd("RETR keep.bin")[:3])  # 150, then no connection:
            ftp.putcmd("ABOR")
            replies += [ftp.getline()[:3], ftp.getline()[:3], ftp.sendcmd("NOOP")[:3]]
            ftp.quit()
            return replies

        replies = yield in_thread(session)
        self.assertTrue(replies[0].startswith("150"), replies)
        self.assertEqual([r[:3] for r in replies[1:4]], ["426", "226", "200"], replies)
        self.assertEqual(replies[4:], ["150", "426", "226", "200"])
        self.assertEqual((self.server.home() / "keep.bin").read_bytes(), b"previous")
        self.assertEqual(sorted(p.name for p in self.server.home().iterdir()), ["keep.bin"])
