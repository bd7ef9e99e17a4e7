"""End to end with more real clients: OpenSSH sftp (two factors, resume), curl sftp://
(libssh2) and lftp sftp:// (over OpenSSH ssh), files checked by SHA-256."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from hardening.server import PASSWORD
from tests.e2e.harness import random_file, run_tool, sha256_file
from tests.sftp.harness import SFTPServer, openssh_sftp


def host_key_sha256(server: SFTPServer) -> str:
    """The host key's SHA-256 in base64, as curl's --hostpubsha256 wants it."""
    blob = base64.b64decode(server.public_keys["ssh_host_ed25519_key"].split()[1])
    return base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


class Clients(TestCase):
    timeout = 180

    def setUp(self) -> None:
        self.server = SFTPServer(self).start()
        self.work = Path(self.mktemp()).absolute()
        self.work.mkdir()

    @defer.inlineCallbacks
    def test_openssh_two_factor(self) -> Any:
        """carol: key (partial success), then the password through sshpass."""
        digest = random_file(self.work / "c.bin", 200_000)
        out, err, code = yield openssh_sftp(
            self.server,
            "put c.bin",
            user="carol",
            key=self.server.key("carol"),
            password=PASSWORD,
            work=self.work,
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(sha256_file(self.server.home("carol") / "c.bin"), digest)
        logins = [
            (e["method"], e["result"])
            for e in self.server.audit_events()
            if e["event"] == "login" and e["user"] == "carol"
        ]
        self.assertEqual(logins, [("publickey", "partial"), ("publickey+password", "success")])

    @defer.inlineCallbacks
    def test_openssh_key_alone_is_not_enough_for_two_factor_class(self) -> Any:
        out, err, code = yield openssh_sftp(
            self.server, "ls", user="carol", key=self.server.key("carol"), work=self.work
        )
        self.assertNotEqual(code, 0)
        self.assertIn(b"Permission denied", err)

    @defer.inlineCallbacks
    def test_openssh_resume_upload_and_download(self) -> Any:
        """reput continues a partial remote file; reget a partial local one."""
        digest = random_file(self.work / "big.bin", 1_500_000)
        data = (self.work / "big.bin").read_bytes()
        (self.server.home("alice") / "big.bin").write_bytes(data[:600_000])
        (self.work / "again.bin").write_bytes(data[:400_000])
        out, err, code = yield openssh_sftp(
            self.server,
            "reput big.bin /big.bin\nreget /big.bin again.bin",
            key=self.server.key("alice"),
            work=self.work,
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(sha256_file(self.server.home("alice") / "big.bin"), digest)
        self.assertEqual(sha256_file(self.work / "again.bin"), digest)
        upload = [
            e
            for e in self.server.audit_events()
            if e["event"] == "transfer" and e["direction"] == "upload"
        ]
        self.assertEqual([e["bytes"] for e in upload], [900_000])

    @defer.inlineCallbacks
    def test_curl_sftp_key_round_trip(self) -> Any:
        digest = random_file(self.work / "k.bin", 1_000_000)
        base = [
            "--silent",
            "--show-error",
            "--max-time",
            "60",
            "-u",
            "alice:",
            "--key",
            str(self.server.key("alice")),
            "--pubkey",
            f"{self.server.key('alice')}.pub",
            "--hostpubsha256",
            host_key_sha256(self.server),
        ]
        url = f"sftp://127.0.0.1:{self.server.port}"
        out, err, code = yield run_tool(
            "curl", [*base, "-T", str(self.work / "k.bin"), f"{url}/~/k.bin"], path=self.work
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(sha256_file(self.server.home("alice") / "k.bin"), digest)
        out, err, code = yield run_tool(
            "curl", [*base, "-o", str(self.work / "back.bin"), f"{url}/k.bin"], path=self.work
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(sha256_file(self.work / "back.bin"), digest)

    @defer.inlineCallbacks
    def test_curl_sftp_password(self) -> Any:
        digest = random_file(self.work / "p.bin", 300_000)
        out, err, code = yield run_tool(
            "curl",
            [
                "--silent",
                "--show-error",
                "--max-time",
                "60",
                "-u",
                f"bob:{PASSWORD}",
                "--hostpubsha256",
                host_key_sha256(self.server),
                "-T",
                str(self.work / "p.bin"),
                f"sftp://127.0.0.1:{self.server.port}/p.bin",
            ],
            path=self.work,
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(sha256_file(self.server.home("bob") / "p.bin"), digest)

    @defer.inlineCallbacks
    def test_lftp_sftp_key_mirror(self) -> Any:
        tree = self.work / "tree"
        digests = {}
        for name, size in {"one.txt": 1000, "sub/two.bin": 400_000}.items():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            digests[name] = random_file(tree / name, size)
        ssh = (
            f"ssh -a -x -o UserKnownHostsFile={self.server.known_hosts} "
            "-o StrictHostKeyChecking=yes -o GlobalKnownHostsFile=/dev/null "
            f"-o BatchMode=yes -o IdentitiesOnly=yes -i {self.server.key('alice')}"
        )
        script = (
            f'set sftp:connect-program "{ssh}"; set net:max-retries 1; set net:timeout 20; '
            "set cmd:fail-exit yes; "
            f"open -u alice, sftp://127.0.0.1:{self.server.port}; "
            f"mirror -R {tree} /tree; mirror /tree {self.work / 'back'}; bye"
        )
        out, err, code = yield run_tool("lftp", ["-c", script], path=self.work)
        self.assertEqual(code, 0, err)
        for name, digest in digests.items():
            self.assertEqual(sha256_file(self.server.home("alice") / "tree" / name), digest)
            self.assertEqual(sha256_file(self.work / "back" / name), digest)
