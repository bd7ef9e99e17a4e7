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
            '[server]\nhome_root = "home"\nusers = "sqlite:users.sqlite3"\n'
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
