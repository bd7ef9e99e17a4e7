"""Tests for `securetransport policy explain`, run through securetransport.cli.main."""

from __future__ import annotations

import datetime
import io
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from twisted.trial.unittest import SynchronousTestCase

from securetransport.cli import main
from securetransport.pki import init_pki, new_key
from securetransport.stores import open_user_store
from securetransport.userstore import Account, certificate_fingerprint

CONFIG = """
[server]
home_root = "home"
users = "sqlite:users.sqlite3"

[tls]
certificate = "pki/server.crt"
private_key = "pki/server.key"
client_ca = "pki/ca.crt"
certificate_user = "common-name"

[[class]]
name = "partners"
users = ["partner-*"]
ssl = "mandatory"
login = ["certificate", "password"]
session_reuse = "account"

[[class]]
name = "lan"
addresses = ["10.0.0.0/8"]
ssl = "optional"
login = ["password"]

[[class]]
name = "staff"
addresses = ["127.0.0.0/8", "::1/128"]
ssl = "mandatory"
login = ["certificate", "password"]
"""


def self_signed(cn: str) -> x509.Certificate:
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )


class ExplainTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="st-policy-")).resolve()
        self.addCleanup(shutil.rmtree, self.folder, True)
        init_pki(self.folder / "pki", ["alice", "partner-a", "dave"])
        self.config = self.folder / "st.toml"
        self.config.write_text(CONFIG)
        carol = self_signed("carol")
        self.carol_pem = self.folder / "carol.crt"
        self.carol_pem.write_bytes(carol.public_bytes(Encoding.PEM))
        store: Any = open_user_store(f"sqlite:{self.folder / 'users.sqlite3'}")
        try:
            store.add(Account("alice", groups=("staff",)))
            store.add(Account("partner-a"))
            store.add(Account("dave", enabled=False))
            store.add(Account("carol", certificates=(certificate_fingerprint(carol),)))
        finally:
            store.close()

    def explain(self, *args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        code = main(["policy", "explain", "--config", str(self.config), *args])
        return code, out.getvalue(), err.getvalue()

    def cert(self, name: str) -> str:
        return str(self.folder / "pki" / f"{name}.crt")

    def test_certificate_login(self) -> None:
        code, out, err = self.explain("alice", "--certificate", self.cert("alice"))
        self.assertEqual((code, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(len(lines), 4, out)
        self.assertEqual(lines[0], "class: staff (matched: addresses 127.0.0.0/8)")
        self.assertEqual(lines[1], "session_reuse: required")
        self.assertTrue(
            lines[2].startswith("certificate: 232 User alice logged in with certificate"), out
        )
        self.assertEqual(lines[3], "password: 331 Password required for alice")

    def test_certificate_of_another_user(self) -> None:
        code, out, _ = self.explain("alice", "--certificate", self.cert("dave"))
        self.assertEqual(code, 0)
        self.assertIn("certificate: 331 Password required for alice\n", out)

    def test_no_certificate_given(self) -> None:
        code, out, _ = self.explain("alice")
        self.assertEqual(code, 0)
        self.assertEqual(
            out.splitlines()[1:],
            [
                "session_reuse: required",
                "certificate: none given",
                "password: 331 Password required for alice",
            ],
        )

    def test_json(self) -> None:
        code, out, _ = self.explain("partner-a", "--json", "--certificate", self.cert("partner-a"))
        self.assertEqual(code, 0)
        data = json.loads(out)
        self.assertEqual(
            set(data), {"class", "matched", "session_reuse", "certificate", "password"}
        )
        self.assertEqual(data["class"], "partners")
        self.assertEqual(data["session_reuse"], "account")
        self.assertEqual(data["matched"], 'users "partner-*"')
        self.assertEqual(set(data["certificate"]), {"reply", "text"})
        self.assertEqual(data["certificate"]["reply"], 232)
        self.assertEqual(
            data["password"], {"reply": 331, "text": "Password required for partner-a"}
        )

    def test_json_without_certificate_or_class(self) -> None:
        code, out, _ = self.explain("alice", "--json", "--address", "192.0.2.1")
        self.assertEqual(code, 0)
        self.assertEqual(
            json.loads(out),
            {
                "class": None,
                "matched": None,
                "session_reuse": None,
                "certificate": None,
                "password": {"reply": 530, "text": "No access class for this login"},
            },
        )

    def test_no_class(self) -> None:
        code, out, _ = self.explain("alice", "--address", "192.0.2.1")
        self.assertEqual(code, 0)
        self.assertEqual(out.splitlines()[0], "class: none")
        self.assertNotIn("session_reuse", out)

    def test_clear_channel(self) -> None:
        code, out, _ = self.explain(
            "partner-a", "--no-tls", "--certificate", self.cert("partner-a")
        )
        self.assertEqual(code, 0)
        tls_required = "530 TLS required for this account: use AUTH TLS"
        self.assertEqual(
            out.splitlines()[1:],
            ["session_reuse: account", f"certificate: {tls_required}", f"password: {tls_required}"],
        )
        code, out, _ = self.explain("alice", "--no-tls", "--address", "10.1.2.3")
        self.assertIn("password: 331 Password required for alice", out)

    def test_ipv4_mapped_address(self) -> None:
        code, out, _ = self.explain("alice", "--address", "::ffff:10.1.2.3")
        self.assertEqual(code, 0)
        self.assertEqual(out.splitlines()[0], "class: lan (matched: addresses 10.0.0.0/8)")

    def test_disabled_is_explained_like_unknown(self) -> None:
        args = ("--certificate", self.cert("dave"), "--json")
        _, disabled, _ = self.explain("dave", *args)
        store: Any = open_user_store(f"sqlite:{self.folder / 'users.sqlite3'}")
        try:
            store.remove("dave")
        finally:
            store.close()
        _, unknown, _ = self.explain("dave", *args)  # the same name, now unknown
        self.assertEqual(disabled, unknown)
        self.assertEqual(json.loads(unknown)["certificate"]["reply"], 331)

    def test_pinned_certificate(self) -> None:
        code, out, _ = self.explain("carol", "--certificate", str(self.carol_pem))
        self.assertEqual(code, 0)
        self.assertIn("certificate: 232 User carol logged in", out)
        # "Good" is per account: carol's self-signed pin is untrusted for alice.
        _, out, _ = self.explain("alice", "--certificate", str(self.carol_pem))
        self.assertIn("certificate: 530 client certificate rejected: untrusted", out)

    def test_untrusted_certificate_in_mandatory_class(self) -> None:
        stranger = self.folder / "stranger.crt"
        stranger.write_bytes(self_signed("alice").public_bytes(Encoding.PEM))
        _, out, _ = self.explain("alice", "--certificate", str(stranger))
        self.assertIn("certificate: 530 client certificate rejected: untrusted", out)

    def assertOneLineError(self, *args: str, config: Path | None = None) -> str:
        if config is not None:
            self.config = config
        code, out, err = self.explain(*args)
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertNotIn("Traceback", err)
        return err

    def test_errors(self) -> None:
        self.assertIn("--address", self.assertOneLineError("alice", "--address", "1.2.3"))
        self.assertIn(
            "--certificate", self.assertOneLineError("alice", "--certificate", "/nonexistent")
        )
        key = str(self.folder / "pki" / "alice.key")
        self.assertIn("no PEM certificate", self.assertOneLineError("alice", "--certificate", key))
        self.assertIn("not a valid account name", self.assertOneLineError("a b"))

    def test_config_errors(self) -> None:
        missing = self.folder / "missing.toml"
        self.assertIn(str(missing), self.assertOneLineError("alice", config=missing))
        bad = self.folder / "bad.toml"
        bad.write_text('[server]\nbannr = 1\numask = "9"\n')
        # One line per problem, no summary (SPEC 2, issue #9.11).
        self.config = bad
        code, out, err = self.explain("alice")
        self.assertEqual((code, out), (1, ""))
        self.assertNotIn("Traceback", err)
        lines = err.splitlines()
        self.assertEqual(len(lines), 2, err)
        self.assertIn("server.bannr: unknown key", lines[0])
        self.assertIn("server.umask: ", lines[1])

    def test_bad_client_ca(self) -> None:
        (self.folder / "pki" / "ca.crt").write_text("garbage")
        err = self.assertOneLineError("alice")
        self.assertIn("ca.crt", err)
