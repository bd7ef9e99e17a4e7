"""The functional FTP suite, written once against ftplib and run over three channels.

As pyftpdlib re-runs its functional tests over FTPS by mixing a TLS base into every test
class, `FunctionalTests` holds the tests and a mixin provides the connection:

- `ClearMixin`: plain FTP on the explicit port (the default class makes TLS optional);
- `ExplicitTLSMixin`: AUTH TLS, PBSZ/PROT P, data connections resuming the control
  connection's TLS session (`ResumingFTP_TLS`: stock ftplib never resumes, and the
  default class has `session_reuse = "required"`);
- `ImplicitTLSMixin`: TLS from the first byte on the implicit port, data protected;
- `CertificateLoginMixin`: explicit TLS in a class where TLS is mandatory and a verified
  client certificate is the only way in (USER answered 232, no password).

Every session ends with the mixin's `check_channel`: the control connection was (or was
not) TLS, and every data connection it opened was protected and resumed (or clear).
The server is a `LiveServer` in trial's reactor; ftplib runs in a thread. Files are
checked on disk and by SHA-256.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from hardening.clients import HOST, ImplicitFTP_TLS, ResumingFTP_TLS
from tests.e2e.ftps_clients import client_context
from tests.e2e.harness import PASSWORD, LiveServer, in_thread, random_file, sha256_file

MTIME = 1_000_000_000  # 2001-09-09 01:46:40 UTC
MDTM = "20010909014640"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def code(call: Callable[..., Any], *args: Any) -> str:
    """The reply code of an ftplib call: its reply, or the error it raised."""
    try:
        result = call(*args)
    except ftplib.all_errors as error:
        return str(error)[:3]
    return str(result)[:3]


def retr(ftp: ftplib.FTP, command: str, rest: int | None = None) -> bytes:
    out = io.BytesIO()
    ftp.retrbinary(command, out.write, blocksize=1 << 16, rest=rest)
    return out.getvalue()


def retr_code(ftp: ftplib.FTP, command: str) -> str:
    """The final reply code of a download that is expected to fail ("LEAK" if data came)."""
    received: list[bytes] = []
    try:
        ftp.retrbinary(command, received.append)
    except ftplib.Error as error:
        return "LEAK" if received else str(error)[:3]
    except OSError:  # the data connection was cut after 150: the final reply follows
        try:
            ftp.voidresp()
        except ftplib.Error as error:
            return "LEAK" if received else str(error)[:3]
    return "LEAK"


class _Counting:
    """Counts the data connections an ftplib client opens."""

    data_connections = 0

    def ntransfercmd(self, cmd: str, rest: int | str | None = None) -> tuple[socket.socket, Any]:
        opened = super().ntransfercmd(cmd, rest)  # type: ignore[misc]
        self.data_connections += 1  # only once the server answered 150
        return opened


class CountingFTP(_Counting, ftplib.FTP):
    pass


class CountingExplicitFTP(_Counting, ResumingFTP_TLS):
    pass


class CountingImplicitFTP(_Counting, ImplicitFTP_TLS):
    pass


# ================================================================================== channels


class ClearMixin:
    """Plain FTP: nothing is encrypted, data connections are clear."""

    server: LiveServer
    assertEqual: Callable[..., None]  # noqa: N815

    def connect(self, user: str = "alice") -> ftplib.FTP:
        ftp = CountingFTP(timeout=30)
        ftp.connect(HOST, self.server.explicit_port)
        ftp.login(user, PASSWORD)
        return ftp

    def check_channel(self, facts: dict[str, Any]) -> None:
        self.assertEqual((facts["tls"], facts["resumed"]), (False, []), facts)


class _TLSChannel:
    assertEqual: Callable[..., None]  # noqa: N815
    assertIn: Callable[..., None]  # noqa: N815

    def check_channel(self, facts: dict[str, Any]) -> None:
        self.assertEqual(facts["tls"], True, facts)
        self.assertIn(facts["version"], ("TLSv1.2", "TLSv1.3"), facts)
        # every data connection was protected, and resumed the control connection's session
        self.assertEqual(facts["resumed"], [True] * facts["data"], facts)


class ExplicitTLSMixin(_TLSChannel):
    """AUTH TLS on the FTP port, then PBSZ 0 / PROT P."""

    server: LiveServer

    def connect(self, user: str = "alice") -> ftplib.FTP:
        ftp = CountingExplicitFTP(context=client_context(self.server), timeout=30)
        ftp.connect(HOST, self.server.explicit_port)
        ftp.login(user, PASSWORD)  # AUTH TLS first
        assert ftp.prot_p().startswith("200"), "PROT P refused"
        return ftp


class ImplicitTLSMixin(_TLSChannel):
    """TLS from the first byte on the implicit port; data protected without PROT."""

    server: LiveServer

    def connect(self, user: str = "alice") -> ftplib.FTP:
        ftp = CountingImplicitFTP(context=client_context(self.server), timeout=30)
        ftp.connect(HOST, self.server.implicit_port)
        ftp.login(user, PASSWORD)
        return ftp


MANDATORY_CERTIFICATE = """
[[class]]
name = "certificate-only"
ssl = "mandatory"
client_certificate = "verify"
login = ["certificate"]
session_reuse = "required"
"""


class CertificateLoginMixin(_TLSChannel):
    """A class with TLS mandatory and certificate login only: AUTH TLS with alice's client
    certificate, USER alice answered 232 (no PASS), then PROT P."""

    server: LiveServer
    server_options = {"classes": MANDATORY_CERTIFICATE}

    def connect(self, user: str = "alice") -> ftplib.FTP:
        context = client_context(self.server, certificate=user)
        ftp = CountingExplicitFTP(context=context, timeout=30)
        ftp.connect(HOST, self.server.explicit_port)
        ftp.auth()
        reply = ftp.sendcmd(f"USER {user}")
        self.assertEqual(reply[:3], "232", reply)
        self.assertEqual(ftp.prot_p()[:3], "200")
        return ftp


# ================================================================================= the suite


class FunctionalTests:
    """The FTP commands a client relies on; `connect` and `check_channel` come from a mixin."""

    timeout = 60
    connect: Callable[..., ftplib.FTP]
    check_channel: Callable[[dict[str, Any]], None]
    mktemp: Callable[[], str]
    assertEqual: Callable[..., None]  # noqa: N815
    assertIn: Callable[..., None]  # noqa: N815
    assertTrue: Callable[..., None]  # noqa: N815
    assertFalse: Callable[..., None]  # noqa: N815

    server_options: dict[str, Any] = {}  # LiveServer keywords (a mixin may set the classes)

    def setUp(self) -> None:
        self.server = LiveServer(self, **self.server_options).start()  # type: ignore[arg-type]
        self.home = self.server.home()

    @defer.inlineCallbacks
    def session(self, work: Callable[[ftplib.FTP], Any], data: int, user: str = "alice") -> Any:
        """Log in over the mixin's channel, run `work(ftp)` in a thread, QUIT; its result.

        `data`: how many data connections the session opens (150 received), on any channel.
        """

        def blocking() -> tuple[Any, dict[str, Any]]:
            ftp = self.connect(user)
            try:
                result = work(ftp)
                control = ftp.sock
                facts = {
                    "tls": isinstance(control, ssl.SSLSocket),
                    "version": control.version() if isinstance(control, ssl.SSLSocket) else None,
                    "data": getattr(ftp, "data_connections", 0),
                    "resumed": list(getattr(ftp, "data_resumed", [])),
                }
                self.assertEqual(ftp.quit()[:3], "221")
                return result, facts
            finally:
                ftp.close()

        result, facts = yield in_thread(blocking)
        self.assertEqual(facts["data"], data, facts)
        self.check_channel(facts)
        return result

    def names(self, folder: Path | None = None) -> list[str]:
        return sorted(os.listdir(folder or self.home))

    # -- folders ----------------------------------------------------------------------
    @defer.inlineCallbacks
    def test_folders(self) -> Any:
        def work(ftp: ftplib.FTP) -> list[str]:
            return [
                ftp.pwd(),
                ftp.mkd("docs"),
                ftp.sendcmd("CWD docs"),
                ftp.pwd(),
                ftp.mkd("sub"),  # relative to /docs
                ftp.sendcmd("XMKD /docs/sub2"),
                ftp.sendcmd("CWD sub"),
                ftp.sendcmd("XPWD"),
                ftp.sendcmd("CDUP"),
                ftp.sendcmd("XCUP"),
                ftp.pwd(),
                code(ftp.mkd, "docs"),  # exists
                code(ftp.rmd, "docs"),  # not empty
                code(ftp.cwd, "nowhere"),
                code(ftp.mkd, "no/such/parent"),
                ftp.sendcmd("RMD docs/sub"),
                ftp.sendcmd("XRMD /docs/sub2"),
                code(ftp.rmd, "docs/sub"),  # gone
                ftp.sendcmd("RMD docs"),
                code(ftp.rmd, "/"),
            ]

        replies = yield self.session(work, data=0)
        self.assertEqual(replies[0], "/")
        self.assertEqual(replies[1], "/docs")
        self.assertEqual(replies[2], "250 Folder changed to /docs")
        self.assertEqual(replies[3], "/docs")
        self.assertEqual(replies[4], "/docs/sub")
        self.assertEqual(replies[5], '257 "/docs/sub2" created')
        self.assertEqual(replies[6], "250 Folder changed to /docs/sub")
        self.assertEqual(replies[7], '257 "/docs/sub" is the current folder')
        self.assertEqual(replies[8], "250 Folder changed to /docs")
        self.assertEqual(replies[9], "250 Folder changed to /")
        self.assertEqual(replies[10], "/")
        self.assertEqual(replies[11:15], ["550", "550", "550", "550"])
        self.assertEqual(replies[15:17], ["250 Folder removed", "250 Folder removed"])
        self.assertEqual(replies[17:], ["550", "250 Folder removed", "550"])
        self.assertEqual(self.names(), [])

    @defer.inlineCallbacks
    def test_rename_and_delete(self) -> Any:
        (self.home / "a.txt").write_bytes(b"alpha")
        (self.home / "b.txt").write_bytes(b"bravo")
        (self.home / "dir").mkdir()

        def work(ftp: ftplib.FTP) -> list[str]:
            return [
                ftp.sendcmd("RNFR a.txt"),
                ftp.sendcmd("RNTO dir/moved.txt"),
                code(ftp.sendcmd, "RNTO again.txt"),  # RNFR first
                code(ftp.sendcmd, "RNFR missing.txt"),
                code(ftp.sendcmd, "RNTO x.txt"),  # a failed RNFR leaves nothing pending
                ftp.rename("b.txt", "dir/moved.txt"),  # replaces
                ftp.rename("dir", "folder"),
                code(ftp.rename, "folder/moved.txt", "nowhere/x.txt"),
                code(ftp.delete, "folder"),  # a folder
                ftp.delete("folder/moved.txt"),
                code(ftp.delete, "folder/moved.txt"),
            ]

        replies = yield self.session(work, data=0)
        self.assertEqual(replies[0], "350 Ready for RNTO")
        self.assertEqual(replies[1], "250 Renamed")
        self.assertEqual(replies[2:5], ["503", "550", "503"])
        self.assertEqual(replies[5:7], ["250 Renamed", "250 Renamed"])
        self.assertEqual(replies[7:9], ["550", "550"])
        self.assertEqual(replies[9], "250 File deleted")
        self.assertEqual(replies[10], "550")
        self.assertEqual(self.names(), ["folder"])
        self.assertEqual(self.names(self.home / "folder"), [])

    @defer.inlineCallbacks
    def test_size_mdtm_mfmt(self) -> Any:
        (self.home / "f.bin").write_bytes(b"x" * 1234)
        os.utime(self.home / "f.bin", (MTIME, MTIME))
        (self.home / "d").mkdir()

        def work(ftp: ftplib.FTP) -> list[Any]:
            ftp.voidcmd("TYPE I")
            return [
                ftp.size("f.bin"),
                ftp.sendcmd("MDTM f.bin"),
                ftp.sendcmd("MFMT 20200102030405 f.bin"),
                ftp.sendcmd("MDTM /f.bin"),
                code(ftp.sendcmd, "SIZE d"),
                code(ftp.sendcmd, "SIZE nope"),
                code(ftp.sendcmd, "MDTM nope"),
                code(ftp.sendcmd, "MFMT 2020 f.bin"),
                code(ftp.sendcmd, "MFMT 20200102030405 nope"),
            ]

        replies = yield self.session(work, data=0)
        self.assertEqual(replies[0], 1234)
        self.assertEqual(replies[1], f"213 {MDTM}")
        self.assertEqual(replies[2], "213 Modify=20200102030405; f.bin")
        self.assertEqual(replies[3], "213 20200102030405")
        self.assertEqual(replies[4:], ["550", "550", "550", "501", "550"])
        self.assertEqual(os.stat(self.home / "f.bin").st_mtime, 1577934245)

    # -- transfers --------------------------------------------------------------------
    @defer.inlineCallbacks
    def test_download_resumed_with_rest(self) -> Any:
        source = self.home / "data.bin"
        digest = random_file(source, 3 * 1024 * 1024 + 17)
        payload = source.read_bytes()

        def work(ftp: ftplib.FTP) -> list[Any]:
            head = io.BytesIO()
            connection = ftp.transfercmd("RETR data.bin")  # a download cut short
            while head.tell() < 100_000:
                head.write(connection.recv(65536))
            connection.close()
            interrupted = code(ftp.voidresp)
            offset = head.tell()
            tail = retr(ftp, "RETR data.bin", rest=offset)
            return [
                interrupted,
                offset,
                sha256(head.getvalue() + tail),
                retr(ftp, "RETR data.bin", rest=len(payload)),
                sha256(retr(ftp, "RETR data.bin")),
                ftp.sendcmd(f"REST {len(payload) + 1}"),
                retr_code(ftp, "RETR data.bin"),
                code(ftp.sendcmd, "REST -1"),
            ]

        replies = yield self.session(work, data=5)
        self.assertIn(replies[0], ("426", "226"))
        self.assertTrue(replies[1] >= 100_000)
        self.assertEqual(replies[2], digest)
        self.assertEqual(replies[3], b"")  # REST at the end: nothing left
        self.assertEqual(replies[4], digest)  # the whole file again
        self.assertEqual(
            replies[5], f"350 Restarting at {len(payload) + 1}; send RETR, STOR or APPE"
        )
        self.assertEqual(replies[6], "554")
        self.assertEqual(replies[7], "501")

    @defer.inlineCallbacks
    def test_upload_resumed_with_rest_and_appe(self) -> Any:
        payload = os.urandom(2 * 1024 * 1024 + 3)
        cut = 700_001

        def work(ftp: ftplib.FTP) -> list[Any]:
            first = ftp.storbinary("STOR up.bin", io.BytesIO(payload[:cut]))
            sizes = [ftp.size("up.bin")]
            rest = ftp.storbinary("STOR up.bin", io.BytesIO(payload[cut:-1000]), rest=cut)
            sizes.append(ftp.size("up.bin"))
            appended = ftp.storbinary("APPE up.bin", io.BytesIO(payload[-1000:]))
            back = retr(ftp, "RETR up.bin")
            hashed = ftp.sendcmd("HASH up.bin")
            fresh = ftp.storbinary("APPE new.bin", io.BytesIO(b"created by APPE"))
            beyond = code(ftp.storbinary, "STOR up.bin", io.BytesIO(b"x"), 8192, None, 99_999_999)
            missing = code(ftp.storbinary, "STOR none.bin", io.BytesIO(b"x"), 8192, None, 5)
            return [first, rest, appended, sizes, sha256(back), hashed, fresh, beyond, missing]

        replies = yield self.session(work, data=5)
        self.assertEqual(replies[:3], ["226 Transfer complete"] * 3)
        self.assertEqual(replies[3], [cut, len(payload) - 1000])
        self.assertEqual(replies[4], sha256(payload))
        self.assertEqual(replies[5], f"213 SHA-256 0-{len(payload)} {sha256(payload)} up.bin")
        self.assertEqual(replies[6], "226 Transfer complete")
        self.assertEqual(replies[7:], ["554", "554"])
        self.assertEqual(sha256_file(self.home / "up.bin"), sha256(payload))
        self.assertEqual((self.home / "new.bin").read_bytes(), b"created by APPE")
        self.assertEqual(self.names(), ["new.bin", "up.bin"])  # no temporaries left

    @defer.inlineCallbacks
    def test_interrupted_upload_keeps_the_previous_version(self) -> Any:
        (self.home / "keep.bin").write_bytes(b"previous version")

        def work(ftp: ftplib.FTP) -> str:
            connection = ftp.transfercmd("STOR keep.bin")
            connection.sendall(b"x" * 100_000)
            linger = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # on, 0 s: close() resets
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            connection.close()  # RST, and no TLS close_notify: the upload did not end cleanly
            return code(ftp.voidresp)

        self.assertEqual((yield self.session(work, data=1)), "426")
        self.assertEqual((self.home / "keep.bin").read_bytes(), b"previous version")
        self.assertEqual(self.names(), ["keep.bin"])

    @defer.inlineCallbacks
    def test_abor_during_a_download(self) -> Any:
        with open(self.home / "big.bin", "wb") as handle:
            handle.truncate(512 * 1024 * 1024)  # sparse: far more than the socket buffers hold
        (self.home / "small.txt").write_bytes(b"after ABOR")

        def work(ftp: ftplib.FTP) -> list[Any]:
            connection = ftp.transfercmd("RETR big.bin")
            connection.recv(65536)
            ftp.putcmd("ABOR")
            connection.close()
            first, second = ftp.getline(), ftp.getline()
            return [first[:3] + second[:3], ftp.sendcmd("NOOP"), retr(ftp, "RETR small.txt")]

        replies = yield self.session(work, data=2)
        # RFC 959: 426 for the aborted transfer, then 226 for ABOR; or 225 when the
        # client's close reached the server first (no transfer left to abort).
        self.assertIn(replies[0], ("426226", "426225"))
        self.assertEqual(replies[1][:3], "200")
        self.assertEqual(replies[2], b"after ABOR")

    @defer.inlineCallbacks
    def test_stou(self) -> Any:
        (self.home / "file").write_bytes(b"taken")

        def work(ftp: ftplib.FTP) -> list[str]:
            return [
                ftp.storbinary("STOU", io.BytesIO(b"one")),
                ftp.storbinary("STOU", io.BytesIO(b"two")),
                ftp.storbinary("STOU report.txt", io.BytesIO(b"three")),
            ]

        replies = yield self.session(work, data=3)
        self.assertEqual(
            replies,
            [
                "226 Transfer complete; stored as /file.1",
                "226 Transfer complete; stored as /file.2",
                "226 Transfer complete; stored as /report.txt",
            ],
        )
        self.assertEqual((self.home / "file").read_bytes(), b"taken")
        self.assertEqual((self.home / "file.1").read_bytes(), b"one")
        self.assertEqual((self.home / "file.2").read_bytes(), b"two")
        self.assertEqual(self.names(), ["file", "file.1", "file.2", "report.txt"])

    # -- listings ---------------------------------------------------------------------
    @defer.inlineCallbacks
    def test_listings(self) -> Any:
        (self.home / "a.txt").write_bytes(b"abc")
        (self.home / "sub").mkdir()
        (self.home / "sub" / "inner.bin").write_bytes(b"12345")
        (self.home / ".st-upload-0123abcd").write_bytes(b"a partial upload")
        (self.home / "bad\nname").write_bytes(b"unlistable")
        for path in (self.home / "a.txt", self.home / "sub"):
            os.utime(path, (MTIME, MTIME))

        def work(ftp: ftplib.FTP) -> dict[str, Any]:
            out: dict[str, Any] = {}
            lines: list[str] = []
            ftp.retrlines("LIST", lines.append)
            out["list"] = lines
            lines = []
            ftp.retrlines("LIST -la sub", lines.append)
            out["list sub"] = lines
            lines = []
            ftp.retrlines("LIST a.txt", lines.append)
            out["list file"] = lines
            out["nlst"] = ftp.nlst()
            out["nlst sub"] = ftp.nlst("sub")
            out["mlsd"] = list(ftp.mlsd())
            out["mlst"] = ftp.sendcmd("MLST a.txt")
            out["mlst dir"] = ftp.sendcmd("MLST /sub")
            out["mlsd file"] = code(lambda: list(ftp.mlsd("a.txt")))
            out["missing"] = code(ftp.nlst, "nope")
            return out

        out = yield self.session(work, data=6)
        self.assertEqual(len(out["list"]), 2, out["list"])
        self.assertTrue(out["list"][0].startswith("-rw"), out["list"])
        self.assertTrue(out["list"][0].endswith(" 3 Sep  9  2001 a.txt"), out["list"])
        self.assertTrue(out["list"][1].startswith("drwx"), out["list"])
        self.assertTrue(out["list"][1].endswith(" Sep  9  2001 sub"), out["list"])
        self.assertEqual(len(out["list sub"]), 1, out["list sub"])
        self.assertTrue(out["list sub"][0].startswith("-rw"), out["list sub"])
        self.assertTrue(out["list sub"][0].endswith(" inner.bin"), out["list sub"])
        self.assertIn(" 5 ", out["list sub"][0])
        self.assertEqual(out["list file"], out["list"][:1])
        self.assertEqual(out["nlst"], ["a.txt", "sub"])
        self.assertEqual(out["nlst sub"], ["inner.bin"])
        facts = dict(out["mlsd"])
        self.assertEqual(sorted(facts), ["a.txt", "sub"])
        self.assertEqual(facts["a.txt"]["type"], "file")
        self.assertEqual(facts["a.txt"]["size"], "3")
        self.assertEqual(facts["a.txt"]["modify"], MDTM)
        self.assertEqual(facts["sub"]["type"], "dir")
        self.assertEqual(facts["sub"]["modify"], MDTM)
        mlst = out["mlst"].splitlines()
        self.assertEqual(mlst[0], "250-Listing /a.txt")
        self.assertIn(f"modify={MDTM};", mlst[1])
        self.assertIn("size=3;", mlst[1])
        self.assertIn("type=file;", mlst[1])
        self.assertTrue(mlst[1].startswith(" ") and mlst[1].endswith("; /a.txt"), mlst)
        self.assertEqual(mlst[2], "250 End")
        self.assertIn("type=dir;", out["mlst dir"])
        self.assertEqual(out["mlsd file"], "550")
        self.assertEqual(out["missing"], "550")

    # -- confinement ------------------------------------------------------------------
    @defer.inlineCallbacks
    def test_path_escapes_stay_confined(self) -> Any:
        outside = self.server.root / "secret.txt"
        outside.write_text("top secret")
        (self.home / "link").symlink_to(self.server.root)  # absolute, leads out
        (self.home / "rel").symlink_to("../../secret.txt")  # relative, leads out
        (self.home / "inner").mkdir()
        (self.home / "inner" / "ok.txt").write_bytes(b"inside")
        (self.home / "alias").symlink_to("inner")  # stays inside: followed

        def work(ftp: ftplib.FTP) -> dict[str, Any]:
            out: dict[str, Any] = {}
            out["retr"] = [
                retr_code(ftp, f"RETR {path}")
                for path in (
                    "../secret.txt",
                    "/../../secret.txt",
                    "../../../../../../../../etc/passwd",
                    "link/secret.txt",
                    "rel",
                    "..%2fsecret.txt",
                    "%2e%2e/%2e%2e/secret.txt",
                    "inner/../../secret.txt",
                )
            ]
            out["cwd"] = [code(ftp.cwd, "link"), code(ftp.cwd, "/link/"), ftp.sendcmd("CWD ../..")]
            out["pwd"] = ftp.pwd()
            out["other"] = [
                code(ftp.size, "link/secret.txt"),
                code(ftp.sendcmd, "MDTM rel"),
                code(ftp.sendcmd, "RNFR link/secret.txt"),
                code(ftp.delete, "link/secret.txt"),
                code(ftp.sendcmd, "HASH rel"),
                code(ftp.nlst, "link"),
                code(ftp.sendcmd, "MLST link"),
                code(ftp.sendcmd, "MKD link/made-outside"),
            ]
            out["stor"] = ftp.storbinary("STOR ../../escaped.txt", io.BytesIO(b"landed inside"))
            out["mkd"] = ftp.mkd("../../made")
            out["alias"] = retr(ftp, "RETR alias/ok.txt")
            out["nlst"] = ftp.nlst()
            return out

        out = yield self.session(work, data=3)
        self.assertEqual(out["retr"], ["550"] * 8)
        self.assertEqual(out["cwd"][:2], ["550", "550"])
        self.assertEqual(out["cwd"][2], "250 Folder changed to /")
        self.assertEqual(out["pwd"], "/")
        self.assertEqual(out["other"], ["550"] * 8)
        self.assertEqual(out["stor"], "226 Transfer complete")
        self.assertEqual(out["mkd"], "/made")
        self.assertEqual(out["alias"], b"inside")
        self.assertEqual(out["nlst"], ["alias", "escaped.txt", "inner", "made"])  # no link, rel
        self.assertEqual((self.home / "escaped.txt").read_bytes(), b"landed inside")
        self.assertTrue((self.home / "made").is_dir())
        self.assertEqual(outside.read_text(), "top secret")
        self.assertEqual(self.names(self.server.home_root), ["alice", "bob"])
        for name in ("escaped.txt", "made", "made-outside"):
            self.assertFalse((self.server.root / name).exists(), name)


class ClearFunctionalTests(ClearMixin, FunctionalTests, TestCase):
    pass


class ExplicitTLSFunctionalTests(ExplicitTLSMixin, FunctionalTests, TestCase):
    pass


class ImplicitTLSFunctionalTests(ImplicitTLSMixin, FunctionalTests, TestCase):
    pass


class CertificateLoginFunctionalTests(CertificateLoginMixin, FunctionalTests, TestCase):
    pass
