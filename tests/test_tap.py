"""The twistd plugin's options: config and [tls] problems are one line naming the key."""

from __future__ import annotations

import tempfile
from pathlib import Path

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from securetransport.pki import init_pki
from securetransport.tap import Options, makeService


class OptionsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="st-tap-"))
        import shutil

        self.addCleanup(shutil.rmtree, self.folder, True)

    def config(self, tls: str) -> Path:
        path = self.folder / "st.toml"
        path.write_text(
            '[server]\nhome_root = "home"\nusers = "sqlite:users.sqlite3"\nallow_root = true\n'
            '[[listen]]\naddress = "127.0.0.1"\nport = 0\n'
            f"{tls}\n"
            '[[class]]\nname = "all"\nssl = "optional"\n'
        )
        return path

    def problem(self, path: Path) -> str:
        options = Options()
        error = self.assertRaises(usage.UsageError, options.parseOptions, ["--config", str(path)])
        return str(error)

    def test_bad_config_names_the_key(self) -> None:
        path = self.folder / "bad.toml"
        path.write_text('[[listen]]\naddress = "127.0.0.1"\nport = 70000\n')
        self.assertIn("listen[1].port:", self.problem(path))

    def test_missing_certificate_names_the_key(self) -> None:
        path = self.config('[tls]\ncertificate = "nope.crt"\nprivate_key = "nope.key"\n')
        text = self.problem(path)
        self.assertTrue(text.startswith("tls.certificate: "), text)
        self.assertEqual(len(text.splitlines()), 1)

    def test_corrupt_crl_names_the_key(self) -> None:
        init_pki(self.folder / "pki", [])
        (self.folder / "bad.crl").write_text("-----BEGIN X509 CRL-----\nnot base64\n")
        path = self.config(
            '[tls]\ncertificate = "pki/server.crt"\nprivate_key = "pki/server.key"\n'
            'client_ca = "pki/ca.crt"\ncrl = ["bad.crl"]\n'
        )
        text = self.problem(path)
        self.assertTrue(text.startswith("tls.crl[1]: "), text)

    def test_good_config_makes_the_service_with_parsed_tls(self) -> None:
        init_pki(self.folder / "pki", [])
        path = self.config(
            '[tls]\ncertificate = "pki/server.crt"\nprivate_key = "pki/server.key"\n'
        )
        options = Options()
        options.parseOptions(["--config", str(path)])
        service = makeService(options)
        self.assertIs(service._preloaded_tls, options["tls"])  # type: ignore[attr-defined]
        self.assertIsNotNone(options["tls"])


class PrivilegeTests(SynchronousTestCase):
    def setUp(self) -> None:
        import shutil

        self.folder = Path(tempfile.mkdtemp(prefix="st-tap-"))
        self.addCleanup(shutil.rmtree, self.folder, True)
        init_pki(self.folder / "pki", [])

    def write(self, server_extra: str = "") -> Path:
        path = self.folder / "st.toml"
        path.write_text(
            f'[server]\nhome_root = "home"\nusers = "sqlite:users.sqlite3"\n{server_extra}'
            '[[listen]]\naddress = "127.0.0.1"\nport = 0\n'
            '[tls]\ncertificate = "pki/server.crt"\nprivate_key = "pki/server.key"\n'
            '[[class]]\nname = "all"\nssl = "optional"\n'
        )
        return path

    def parse(self, path: Path, uid: str | None = None) -> Options:
        options = Options()
        options.parent = {"uid": uid}  # type: ignore[assignment]  # twistd's ServerOptions
        options.parseOptions(["--config", str(path)])
        return options

    def test_root_without_a_privilege_drop_is_refused(self) -> None:
        import os

        path = self.write()
        if os.geteuid() == 0:
            error = self.assertRaises(usage.UsageError, self.parse, path)
            self.assertIn("refusing to serve as root", str(error))
            self.assertIn("--uid", str(error))
        else:
            self.parse(path)  # an unprivileged user is what we want
        self.parse(path, uid="65534")  # twistd will drop privileges after binding
        self.parse(self.write("allow_root = true\n"))  # said explicitly

    def test_a_key_readable_by_others_is_refused(self) -> None:
        path = self.write("allow_root = true\n")
        (self.folder / "pki" / "server.key").chmod(0o644)
        error = self.assertRaises(usage.UsageError, self.parse, path)
        self.assertTrue(str(error).startswith("tls.private_key: "), str(error))
        self.assertIn("chmod 600", str(error))
        (self.folder / "pki" / "server.key").chmod(0o640)  # group-readable (ssl-cert) is fine
        self.parse(path)
