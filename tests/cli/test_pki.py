"""Tests for `securetransport pki init`, run through securetransport.cli.main."""

from __future__ import annotations

import io
import shutil
import stat
import sys
import tempfile
from pathlib import Path

from cryptography import x509
from twisted.trial.unittest import SynchronousTestCase

from securetransport.cli import main


class PKIInitCommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="st-pki-")).resolve()
        self.addCleanup(shutil.rmtree, self.base, True)
        self.folder = self.base / "pki"

    def run_cli(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        try:
            code = main(["pki", *argv])
        except SystemExit as exit:
            code = int(exit.code or 0)
        self.assertNotIn("Traceback", err.getvalue())
        return code, out.getvalue(), err.getvalue()

    def test_init(self) -> None:
        code, out, err = self.run_cli("init", str(self.folder), "--user", "alice", "--user", "bob")
        self.assertEqual((code, err), (0, ""))
        expected = [
            f"{self.folder}/{stem}.{ext}"
            for stem in ("ca", "server", "alice", "bob")
            for ext in ("crt", "key")
        ]
        ssh = [
            f"{self.folder}/{stem}{ext}"
            for stem in ("ssh_host_ed25519_key", "alice_ed25519", "bob_ed25519")
            for ext in ("", ".pub")
        ]
        self.assertEqual(out.splitlines(), expected + ssh)
        for line in ssh:
            wanted = 0o644 if line.endswith(".pub") else 0o600
            self.assertEqual(stat.S_IMODE(Path(line).stat().st_mode), wanted, line)
        alice = (self.folder / "alice_ed25519.pub").read_text().split()
        self.assertEqual((alice[0], alice[2]), ("ssh-ed25519", "alice"))
        for line in expected:
            path = Path(line)
            wanted = 0o600 if line.endswith(".key") else 0o644
            self.assertEqual(stat.S_IMODE(path.stat().st_mode), wanted, line)
        ca = x509.load_pem_x509_certificate((self.folder / "ca.crt").read_bytes())
        bob = x509.load_pem_x509_certificate((self.folder / "bob.crt").read_bytes())
        bob.verify_directly_issued_by(ca)

    def test_no_overwrite_without_force(self) -> None:
        self.assertEqual(self.run_cli("init", str(self.folder))[0], 0)
        before = (self.folder / "ca.key").read_bytes()
        code, out, err = self.run_cli("init", str(self.folder))
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(len(err.splitlines()), 1)
        self.assertIn("--force", err)
        self.assertEqual((self.folder / "ca.key").read_bytes(), before)
        code, _, err = self.run_cli("init", str(self.folder), "--force", "--days", "30")
        self.assertEqual((code, err), (0, ""))
        self.assertNotEqual((self.folder / "ca.key").read_bytes(), before)

    def test_errors(self) -> None:
        for argv in [
            ("init", str(self.folder), "--user", "../evil"),
            ("init", str(self.folder), "--user", "ca"),
            ("init", str(self.folder), "--days", "0"),
        ]:
            code, out, err = self.run_cli(*argv)
            self.assertEqual((code, out), (1, ""), argv)
            self.assertTrue(err.startswith("securetransport: "), err)
            self.assertEqual(len(err.splitlines()), 1)
        self.assertFalse(self.folder.exists())
        self.assertEqual(self.run_cli("init")[0], 2)
        self.assertEqual(self.run_cli()[0], 2)
        self.assertEqual(self.run_cli("init", str(self.folder), "--days", "x")[0], 2)

    def test_needs_no_config(self) -> None:
        missing = self.base / "no-such-config.toml"
        code, _, err = self.run_cli("init", str(self.folder), "--config", str(missing))
        self.assertEqual((code, err), (0, ""))
        self.assertTrue((self.folder / "server.crt").is_file())
