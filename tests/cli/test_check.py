"""Tests for `securetransport check`, run through securetransport.cli.main."""

from __future__ import annotations

import datetime
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.trial.unittest import SynchronousTestCase

from hardening.unprivileged import readable_folder, runtime
from securetransport.cli import main
from securetransport.cli.check import check

REPOSITORY = Path(__file__).resolve().parent.parent.parent
NOW = datetime.datetime.now(datetime.UTC)


def temp_folder(test: SynchronousTestCase) -> Path:
    """A new empty folder, removed after the test (trial's mktemp is cwd-relative)."""
    folder = Path(tempfile.mkdtemp(prefix="st-test-")).resolve()
    test.addCleanup(shutil.rmtree, folder, True)
    return folder


def make_certificate(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    not_before: datetime.datetime = NOW - datetime.timedelta(days=1),
    not_after: datetime.datetime = NOW + datetime.timedelta(days=30),
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )


def pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def key_pem(
    key: ec.EllipticCurvePrivateKey,
    encryption: serialization.KeySerializationEncryption | None = None,
) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        encryption or serialization.NoEncryption(),
    )


def make_crl(key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate) -> bytes:
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(NOW - datetime.timedelta(hours=1))
        .next_update(NOW + datetime.timedelta(days=7))
        .sign(key, hashes.SHA256())
    )
    return crl.public_bytes(serialization.Encoding.PEM)


CONFIG = """
[server]
home_root = "home"
users = "sqlite:users.sqlite3"

[[listen]]
address = "127.0.0.1"
port = 0
tls = "implicit"

[passive]
ports = "{ports}"

[tls]
certificate = "pki/server.crt"
private_key = "pki/server.key"
client_ca = "pki/ca.crt"
crl = ["pki/ca.crl"]

[[class]]
name = "everyone"
ssl = "mandatory"
"""


class CheckCommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = temp_folder(self)
        self.pki = self.folder / "pki"
        self.pki.mkdir(parents=True)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca = make_certificate("test CA", self.ca_key)
        self.server_key = ec.generate_private_key(ec.SECP256R1())
        (self.pki / "ca.crt").write_bytes(pem(self.ca))
        (self.pki / "ca.crl").write_bytes(make_crl(self.ca_key, self.ca))
        (self.pki / "server.crt").write_bytes(pem(make_certificate("localhost", self.server_key)))
        (self.pki / "server.key").write_bytes(key_pem(self.server_key))
        self.config = self.write_config()

    def write_config(self, ports: str = "61000-61999", text: str = CONFIG) -> Path:
        path = self.folder / "securetransport.toml"
        path.write_text(text.replace("{ports}", ports), encoding="utf-8")
        return path

    def run_check(self, *argv: str) -> tuple[int, str, str]:
        """Run `securetransport ARGV...`: exit code, stdout, stderr."""
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        code = main(list(argv))
        self.assertNotIn("Traceback", err.getvalue())
        return code, out.getvalue(), err.getvalue()

    def avoid_ephemeral_warning(self) -> None:
        """Pick passive ports outside this machine's ephemeral range."""
        from securetransport.config import EPHEMERAL_RANGE_FILE, read_port_range

        low, high = read_port_range(EPHEMERAL_RANGE_FILE) or (32768, 60999)
        first = high + 1 if high < 65000 else 1024
        last = first + 10 if first + 10 < low or first > high else first
        self.config = self.write_config(f"{first}-{last}")

    def ok(self, path: Path) -> str:
        """What `check` prints for a good server config: OK, then the settings' digest."""
        from securetransport.config import load_config
        from securetransport.edge.settings import settings_digest

        digest = settings_digest(load_config(path))
        self.assertRegex(digest, "^[0-9a-f]{64}$")
        return f"OK\nssl-access digest {digest}\n"

    def test_ok(self) -> None:
        self.avoid_ephemeral_warning()
        self.assertEqual(
            self.run_check("check", "--config", str(self.config)), (0, self.ok(self.config), "")
        )

    def test_config_before_the_command(self) -> None:
        self.avoid_ephemeral_warning()
        self.assertEqual(
            self.run_check("-c", str(self.config), "check"), (0, self.ok(self.config), "")
        )

    def test_default_config_path(self) -> None:
        """Without --config, etc/securetransport.toml below the working directory is read."""
        self.avoid_ephemeral_warning()
        (self.folder / "etc").mkdir()
        self.config.rename(self.folder / "etc/securetransport.toml")
        text = (self.folder / "etc/securetransport.toml").read_text()
        (self.folder / "etc/securetransport.toml").write_text(text.replace('"pki/', '"../pki/'))
        cwd = os.getcwd()
        os.chdir(self.folder)
        self.addCleanup(os.chdir, cwd)
        self.assertEqual(
            self.run_check("check"), (0, self.ok(self.folder / "etc/securetransport.toml"), "")
        )
        os.chdir(self.pki)
        self.assertEqual(
            self.run_check("check"),
            (1, "", "etc/securetransport.toml: cannot read: No such file or directory\n"),
        )

    def test_warnings_keep_exit_zero(self) -> None:
        self.config = self.write_config("4000-4000")
        self.config.write_text(
            self.config.read_text().replace("port = 0", "port = 4000"), encoding="utf-8"
        )
        code, out, err = self.run_check("check", "--config", str(self.config))
        self.assertEqual((code, out), (0, self.ok(self.config)))
        self.assertIn(
            "warning: passive.ports: 4000-4000 includes the port of listen[1] (4000)\n", err
        )
        for line in err.splitlines():
            self.assertTrue(line.startswith("warning: "), line)

    def test_problems(self) -> None:
        self.config.write_text(
            CONFIG.replace("{ports}", "80-90").replace("port = 0", "port = 70000")
            + 'ssl_mode = "x"\n',
            encoding="utf-8",
        )
        code, out, err = self.run_check("check", "--config", str(self.config))
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(
            err.splitlines(),
            [
                "listen[1].port: must be 1-65535, got 70000",
                'passive.ports: must be "FIRST-LAST" with 1024 <= FIRST <= LAST <= 65535, '
                'got "80-90"',
                "class[1].ssl_mode: unknown key",
            ],
        )

    def test_problems_come_with_warnings(self) -> None:
        self.config.write_text('[server]\numask = "8"\n', encoding="utf-8")
        code, out, err = self.run_check("check", "--config", str(self.config))
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(
            err.splitlines(),
            [
                'server.umask: must be an octal string such as "027", got "8"',
                "warning: class: no [[class]] is configured: every login is refused (530)",
            ],
        )

    def test_missing_config(self) -> None:
        path = self.folder / "missing.toml"
        self.assertEqual(
            self.run_check("check", "--config", str(path)),
            (1, "", f"{path}: cannot read: No such file or directory\n"),
        )

    def test_syntax_error(self) -> None:
        self.config.write_text("[server\n", encoding="utf-8")
        code, out, err = self.run_check("check", "--config", str(self.config))
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(len(err.splitlines()), 1)
        self.assertTrue(err.startswith(f"{self.config}: line 1, column "), err)

    def test_missing_tls_files(self) -> None:
        for name in ("server.crt", "server.key", "ca.crt", "ca.crl"):
            (self.pki / name).unlink()
        code, out, err = self.run_check("check", "--config", str(self.config))
        self.assertEqual((code, out), (1, ""))
        problems = [line for line in err.splitlines() if not line.startswith("warning: ")]
        self.assertEqual(
            problems,
            [
                f"tls.certificate: cannot read {self.pki}/server.crt: No such file or directory",
                f"tls.private_key: cannot read {self.pki}/server.key: No such file or directory",
                f"tls.client_ca: cannot read {self.pki}/ca.crt: No such file or directory",
                f"tls.crl[1]: cannot read {self.pki}/ca.crl: No such file or directory",
            ],
        )

    def test_unreadable_tls_file(self) -> None:
        if os.geteuid() != 0:
            (self.pki / "server.key").chmod(0)
            problems, _ = check(self.config)
            self.assertEqual(
                problems,
                [f"tls.private_key: cannot read {self.pki}/server.key: Permission denied"],
            )
            return
        # Root reads every file: run `check` as nobody, on a copy nobody can read but
        # for the key, from an interpreter and package copy nobody can run.
        folder = readable_folder("st-check-")
        self.addCleanup(shutil.rmtree, folder, True)
        shutil.copytree(self.folder, folder / "site", dirs_exist_ok=True)
        for path in (folder / "site").rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        (folder / "site").chmod(0o755)
        key = folder / "site" / "pki" / "server.key"
        key.chmod(0)
        unprivileged = runtime()
        config = folder / "site" / "securetransport.toml"
        done = subprocess.run(
            ["runuser", "-u", "nobody", "--", unprivileged.python, "-m", "securetransport",
             "check", "--config", str(config)],
            env=unprivileged.env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        problems = [line for line in done.stderr.splitlines() if not line.startswith("warning: ")]
        self.assertEqual(done.returncode, 1, done.stderr)
        self.assertEqual(
            problems, [f"tls.private_key: cannot read {key}: Permission denied"], done.stderr
        )

    def test_folder_as_tls_file(self) -> None:
        (self.pki / "ca.crt").unlink()
        (self.pki / "ca.crt").mkdir()
        problems, _ = check(self.config)
        self.assertEqual(len(problems), 1)
        self.assertTrue(problems[0].startswith(f"tls.client_ca: cannot read {self.pki}/ca.crt: "))

    def test_bad_tls_contents(self) -> None:
        (self.pki / "server.crt").write_bytes(key_pem(self.server_key))
        (self.pki / "server.key").write_bytes(pem(self.ca))
        (self.pki / "ca.crt").write_bytes(b"hello\n")
        (self.pki / "ca.crl").write_bytes(pem(self.ca))
        problems, _ = check(self.config)
        self.assertEqual(len(problems), 4, problems)
        self.assertEqual(
            problems[0], f"tls.certificate: {self.pki}/server.crt: not a valid PEM certificate file"
        )
        self.assertTrue(
            problems[1].startswith(f"tls.private_key: {self.pki}/server.key: not a PEM private key")
        )
        self.assertEqual(
            problems[2], f"tls.client_ca: {self.pki}/ca.crt: not a valid PEM certificate file"
        )
        self.assertEqual(
            problems[3], f"tls.crl[1]: {self.pki}/ca.crl: not a PEM certificate revocation list"
        )
        for line in problems:
            self.assertNotIn("\n", line)

    def test_key_does_not_match_certificate(self) -> None:
        (self.pki / "server.key").write_bytes(key_pem(self.ca_key))
        problems, _ = check(self.config)
        self.assertEqual(
            problems,
            [
                f"tls.private_key: {self.pki}/server.key does not match the certificate "
                "in tls.certificate"
            ],
        )

    def test_encrypted_key(self) -> None:
        (self.pki / "server.key").write_bytes(
            key_pem(self.server_key, serialization.BestAvailableEncryption(b"secret"))
        )
        problems, _ = check(self.config)
        self.assertEqual(
            problems, [f"tls.private_key: {self.pki}/server.key: encrypted keys are not supported"]
        )

    def test_chain_after_leaf(self) -> None:
        """The certificate file may carry the chain after the leaf; the key matches the leaf."""
        with (self.pki / "server.crt").open("ab") as stream:
            stream.write(pem(self.ca))
        problems, _ = check(self.config)
        self.assertEqual(problems, [])

    def test_expired_certificate_is_a_warning(self) -> None:
        expired = make_certificate(
            "localhost",
            self.server_key,
            not_before=NOW - datetime.timedelta(days=10),
            not_after=NOW - datetime.timedelta(days=1),
        )
        (self.pki / "server.crt").write_bytes(pem(expired))
        problems, warnings = check(self.config)
        self.assertEqual(problems, [])
        expected = (
            f"warning: tls.certificate: {self.pki}/server.crt expired on "
            f"{expired.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
        )
        self.assertIn(expected, warnings)

    def test_not_yet_valid_certificate_is_a_warning(self) -> None:
        future = make_certificate(
            "localhost",
            self.server_key,
            not_before=NOW + datetime.timedelta(days=1),
            not_after=NOW + datetime.timedelta(days=10),
        )
        (self.pki / "server.crt").write_bytes(pem(future))
        problems, warnings = check(self.config)
        self.assertEqual(problems, [])
        self.assertTrue(
            any(
                w.startswith("warning: tls.certificate: ") and "not valid before" in w
                for w in warnings
            )
        )

    def test_shipped_example_names_its_tls_files(self) -> None:
        """The shipped config loads; check reports only TLS files absent from this tree."""
        problems, _ = check(REPOSITORY / "etc/securetransport.toml")
        for line in problems:
            self.assertRegex(line, r"^tls\.(certificate|private_key|client_ca): ")
