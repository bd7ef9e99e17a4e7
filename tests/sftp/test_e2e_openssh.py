"""End to end: OpenSSH `sftp` (batch mode) against the live server over loopback."""

from __future__ import annotations

from pathlib import Path

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from hardening.server import PASSWORD
from tests.e2e.harness import random_file, sha256_file
from tests.sftp.harness import SFTPServer, openssh_sftp


class OpenSSHKeyLogin(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.server = SFTPServer(self).start()
        self.work = Path(self.mktemp()).absolute()
        self.work.mkdir()

    @defer.inlineCallbacks
    def test_round_trip_by_key(self) -> defer.Generator[defer.Deferred[object], object, None]:
        """put and get by key: SHA-256 equal; the file lands in the home; audit says sftp."""
        digest = random_file(self.work / "up.bin", 3 * 1024 * 1024 + 17)
        out, err, code = yield openssh_sftp(
            self.server,
            "put up.bin /up.bin\nmkdir /sub\nrename /up.bin /sub/moved.bin\n"
            "get /sub/moved.bin down.bin\nls -l /sub",
            key=self.server.key("alice"),
            work=self.work,
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(sha256_file(self.server.home("alice") / "sub" / "moved.bin"), digest)
        self.assertEqual(sha256_file(self.work / "down.bin"), digest)
        self.assertIn(b"moved.bin", out)
        events = self.server.audit_events()
        logins = [e for e in events if e["event"] == "login" and e.get("result") == "success"]
        self.assertEqual(
            [(e["user"], e["method"], e["protocol"]) for e in logins],
            [("alice", "publickey", "sftp")],
        )
        transfers = [e for e in events if e["event"] == "transfer"]
        self.assertEqual(
            sorted((e["direction"], e["result"], e["protocol"]) for e in transfers),
            [("download", "ok", "sftp"), ("upload", "ok", "sftp")],
        )
        self.assertIn("sub/moved.bin", (self.server.root / "log" / "xferlog").read_text())

    @defer.inlineCallbacks
    def test_confined_to_home(self) -> defer.Generator[defer.Deferred[object], object, None]:
        """`/`, `..` and absolute paths all stay in the home folder."""
        (self.server.home_root / "secret.txt").write_text("outside")
        out, err, code = yield openssh_sftp(
            self.server,
            "cd /\ncd ..\npwd\n-get ../secret.txt s1\n-get /../secret.txt s2\nls -a",
            key=self.server.key("alice"),
            work=self.work,
        )
        self.assertEqual(code, 0, err)
        self.assertIn(b"Remote working directory: /", out)
        self.assertFalse((self.work / "s1").exists())
        self.assertFalse((self.work / "s2").exists())

    @defer.inlineCallbacks
    def test_class_without_publickey_refuses_key(
        self,
    ) -> defer.Generator[defer.Deferred[object], object, None]:
        """bob's class allows only passwords: his (registered) key is refused."""
        out, err, code = yield openssh_sftp(
            self.server, "ls", user="bob", key=self.server.key("bob"), work=self.work
        )
        self.assertNotEqual(code, 0)
        self.assertIn(b"Permission denied", err)

    @defer.inlineCallbacks
    def test_password_login(self) -> defer.Generator[defer.Deferred[object], object, None]:
        digest = random_file(self.work / "p.bin", 100_000)
        out, err, code = yield openssh_sftp(
            self.server, "put p.bin", user="bob", password=PASSWORD, work=self.work
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(sha256_file(self.server.home("bob") / "p.bin"), digest)


class OpenSSHAlgorithms(TestCase):
    """Each AEAD and CTR cipher moves a file intact; strict kex is used; refused
    algorithms are refused."""

    timeout = 180

    def setUp(self) -> None:
        self.server = SFTPServer(self).start()
        self.work = Path(self.mktemp()).absolute()
        self.work.mkdir()

    @defer.inlineCallbacks
    def test_ciphers_round_trip_with_strict_kex(
        self,
    ) -> defer.Generator[defer.Deferred[object], object, None]:
        for cipher, mac in (
            ("chacha20-poly1305@openssh.com", "hmac-sha2-256"),
            ("aes256-gcm@openssh.com", "hmac-sha2-256"),
            ("aes128-gcm@openssh.com", "hmac-sha2-256"),
            ("aes256-ctr", "hmac-sha2-256"),
            ("aes128-ctr", "hmac-sha2-256-etm@openssh.com"),
            ("aes256-ctr", "hmac-sha2-512-etm@openssh.com"),
        ):
            name = cipher.split("@")[0] + "-" + mac.split("@")[0]
            digest = random_file(self.work / f"{name}.bin", 1_000_003)
            out, err, code = yield openssh_sftp(
                self.server,
                f"put {name}.bin\nget {name}.bin {name}.back",
                key=self.server.key("alice"),
                work=self.work,
                extra=("-vvv", "-c", cipher, "-o", f"MACs={mac}"),
            )
            self.assertEqual(code, 0, err[-2000:])
            self.assertIn(f"cipher: {cipher}".encode(), err)
            if "ctr" in cipher:
                self.assertIn(f"cipher: {cipher} MAC: {mac}".encode(), err)
            self.assertIn(b"will use strict KEX ordering", err)
            self.assertEqual(sha256_file(self.server.home("alice") / f"{name}.bin"), digest)
            self.assertEqual(sha256_file(self.work / f"{name}.back"), digest)

    @defer.inlineCallbacks
    def test_refused_algorithms(self) -> defer.Generator[defer.Deferred[object], object, None]:
        for option in (
            "Ciphers=aes128-cbc,3des-cbc",
            "MACs=hmac-sha1,hmac-md5",
            "KexAlgorithms=diffie-hellman-group14-sha1,diffie-hellman-group-exchange-sha1",
            "HostKeyAlgorithms=ssh-rsa,ssh-dss",
        ):
            extra = ("-o", option)
            if option.startswith("MACs"):
                extra += ("-c", "aes128-ctr")
            out, err, code = yield openssh_sftp(
                self.server, "ls", key=self.server.key("alice"), work=self.work, extra=extra
            )
            self.assertNotEqual(code, 0, option)
            self.assertIn(b"no matching", err, option)


class OpenSSHRekey(TestCase):
    """Key re-exchange in the middle of transfers (RekeyLimit=1M), for each kind of
    cipher: strict kex resets sequence numbers at every NEWKEYS, and the AEAD and ETM
    codecs switch keys cleanly."""

    timeout = 180

    def setUp(self) -> None:
        self.server = SFTPServer(self).start()
        self.work = Path(self.mktemp()).absolute()
        self.work.mkdir()

    @defer.inlineCallbacks
    def test_rekey_during_transfers(self) -> defer.Generator[defer.Deferred[object], object, None]:
        digest = random_file(self.work / "r.bin", 6_000_000)
        for cipher, mac in (
            ("chacha20-poly1305@openssh.com", "hmac-sha2-256"),
            ("aes128-gcm@openssh.com", "hmac-sha2-256"),
            ("aes128-ctr", "hmac-sha2-256-etm@openssh.com"),
            ("aes256-ctr", "hmac-sha2-512"),
        ):
            out, err, code = yield openssh_sftp(
                self.server,
                "put r.bin /r.bin\nget /r.bin r.back",
                key=self.server.key("alice"),
                work=self.work,
                extra=("-v", "-c", cipher, "-o", f"MACs={mac}", "-o", "RekeyLimit=1M"),
            )
            self.assertEqual(code, 0, err[-2000:])
            self.assertGreaterEqual(err.count(b"SSH2_MSG_NEWKEYS received"), 3, cipher)
            self.assertEqual(sha256_file(self.server.home("alice") / "r.bin"), digest)
            self.assertEqual(sha256_file(self.work / "r.back"), digest)
