"""Edge and server configs for SPEC section 8: roles, [[edge]], [link], check, the digest."""

from __future__ import annotations

import io
import shutil
import stat
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from securetransport.cli import main
from securetransport.config import Config, ConfigError, config_from_dict, load_config
from securetransport.edge.settings import canonical_bytes, canonical_settings, settings_digest

EDGE_ONLY = "set on the server; an edge applies the server's"

EDGE = """
[server]
role = "edge"

[[listen]]
address = "127.0.0.2"
port = 2121

[passive]
ports = "61000-61099"

[link]
address = "127.0.0.3"
port = 7000
certificate = "link-edge.crt"
private_key = "link-edge.key"
ca = "link-ca.crt"
"""

SERVER = """
[server]
banner = "hello"

[[listen]]
address = "127.0.0.1"
port = 2121

[[class]]
name = "everyone"
ssl = "optional"

[[edge]]
name = "dmz1"
address = "127.0.0.3"
port = 7000
certificate = "link-server.crt"
private_key = "link-server.key"
ca = "link-ca.crt"
"""


def problems(text: str) -> list[str]:
    import tomllib

    try:
        config_from_dict(tomllib.loads(text), Path("/base"))
    except ConfigError as error:
        return error.problems
    return []


class EdgeConfigTests(SynchronousTestCase):
    def test_edge_config_loads(self) -> None:
        import tomllib

        config = config_from_dict(tomllib.loads(EDGE), Path("/base"))
        self.assertEqual(config.server.role, "edge")
        assert config.link is not None
        self.assertEqual((config.link.address, config.link.port), ("127.0.0.3", 7000))
        self.assertEqual(config.link.ca, Path("/base/link-ca.crt"))
        self.assertNotIn("warning: class: ", "".join(config.warnings))  # no classes is right here

    def test_server_only_keys_name_the_key(self) -> None:
        text = EDGE.replace('role = "edge"', 'role = "edge"\nbanner = "x"\nlogin_timeout = 5')
        text += '\n[tls]\ncertificate = "e.crt"\nprivate_key = "e.key"\nclient_ca = "ca.crt"\n'
        text += '\n[[class]]\nname = "c"\n\n[proxy]\nfrom = ["10.0.0.1/32"]\n'
        found = problems(text)
        for key in ("server.banner", "server.login_timeout", "tls.client_ca", "class", "proxy"):
            self.assertIn(f"{key}: {EDGE_ONLY}", found)
        self.assertEqual(len(found), 5, found)

    def test_edge_needs_link_and_server_has_none(self) -> None:
        edge_without_link = EDGE[: EDGE.index("[link]")]
        self.assertEqual(
            problems(edge_without_link),
            ["link: required on an edge (where the server dials it)"],
        )
        server_with_link = SERVER + EDGE[EDGE.index("[link]") :]
        self.assertEqual(
            problems(server_with_link), ['link: only an edge has a [link] (server.role = "edge")']
        )

    def test_edge_tables_checked(self) -> None:
        text = SERVER.replace('name = "dmz1"\n', "").replace("port = 7000", "port = 0x10000")
        found = problems(text)
        self.assertIn("edge[1].name: required", found)
        self.assertTrue(any(line.startswith("edge[1].port: ") for line in found), found)
        twice = SERVER + SERVER[SERVER.index("[[edge]]") :]
        self.assertIn('edge[2].name: "dmz1" is already used by edge[1]', problems(twice))
        self.assertIn("link.ca: required", problems(EDGE.replace('ca = "link-ca.crt"', "")))


class DigestTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="st-edge-")).resolve()
        self.addCleanup(shutil.rmtree, self.folder, True)

    def test_digest_ignores_where_the_files_are(self) -> None:
        one = load_config_text(self, SERVER, self.folder / "a")
        two = load_config_text(self, SERVER, self.folder / "b" / "c")
        self.assertEqual(settings_digest(one), settings_digest(two))

    def test_digest_follows_session_shaping_settings(self) -> None:
        base = settings_digest(load_config_text(self, SERVER, self.folder / "a"))
        for before, after in (
            ('ssl = "optional"', 'ssl = "mandatory"'),
            ('banner = "hello"', 'banner = "hi"'),
            ("[server]", "[server]\nmax_login_failures = 3"),
        ):
            changed = load_config_text(self, SERVER.replace(before, after), self.folder / "x")
            self.assertNotEqual(settings_digest(changed), base, after)
        # ... and not the listeners, which are the node's own.
        moved = SERVER.replace("port = 2121", "port = 2200")
        self.assertEqual(settings_digest(load_config_text(self, moved, self.folder / "y")), base)

    def test_digest_is_sha256_of_the_canonical_form(self) -> None:
        import hashlib

        config = load_config_text(self, SERVER, self.folder / "a")
        canonical = canonical_bytes(canonical_settings(config))
        self.assertEqual(settings_digest(config), hashlib.sha256(canonical).hexdigest())
        self.assertIn(b'"banner":"hello"', canonical)


def load_config_text(case: SynchronousTestCase, text: str, folder: Path) -> Config:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "st.toml").write_text(text)
    return load_config(folder / "st.toml", ephemeral_range_file=None)


class CommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="st-edge-")).resolve()
        self.addCleanup(shutil.rmtree, self.folder, True)

    def run_cli(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        code = main(list(argv))
        self.assertNotIn("Traceback", err.getvalue())
        return code, out.getvalue(), err.getvalue()

    def test_pki_init_link(self) -> None:
        code, out, err = self.run_cli("pki", "init", str(self.folder / "pki"), "--link")
        self.assertEqual(code, 0, err)
        for stem in ("link-ca", "link-server", "link-edge"):
            key = self.folder / "pki" / f"{stem}.key"
            self.assertEqual(stat.S_IMODE(key.stat().st_mode), 0o600)
            self.assertIn(str(key), out)
        from cryptography import x509

        ca = x509.load_pem_x509_certificate((self.folder / "pki/link-ca.crt").read_bytes())
        for stem in ("link-server", "link-edge"):
            cert = x509.load_pem_x509_certificate((self.folder / f"pki/{stem}.crt").read_bytes())
            cert.verify_directly_issued_by(ca)
        client_ca = x509.load_pem_x509_certificate((self.folder / "pki/ca.crt").read_bytes())
        self.assertNotEqual(ca.subject, client_ca.subject)  # a CA for the link only

    def test_check_edge_config_fails_naming_the_key(self) -> None:
        path = self.folder / "edge.toml"
        path.write_text(EDGE + '\n[[class]]\nname = "c"\n')
        self.assertEqual(
            self.run_cli("check", "--config", str(path)), (1, "", f"class: {EDGE_ONLY}\n")
        )

    def test_check_edge_config_ok_has_no_digest(self) -> None:
        path = self.folder / "edge.toml"
        path.write_text(EDGE.replace('"61000-61099"', '"1024-1030"'))
        code, out, err = self.run_cli("check", "--config", str(path))
        self.assertEqual((code, out), (0, "OK\n"), err)

    def test_check_warns_when_the_link_ca_is_the_client_ca(self) -> None:
        self.run_cli("pki", "init", str(self.folder / "pki"), "--link")
        text = SERVER.replace('"link-server.', '"pki/link-server.').replace(
            'ca = "link-ca.crt"', 'ca = "pki/ca.crt"'
        )
        text += '\n[tls]\ncertificate = "pki/server.crt"\nprivate_key = "pki/server.key"\n'
        text += 'client_ca = "pki/ca.crt"\n'
        path = self.folder / "server.toml"
        path.write_text(text.replace("[server]", "[server]\n", 1))
        code, out, err = self.run_cli("check", "--config", str(path))
        self.assertEqual(code, 0, err)
        self.assertIn(
            "warning: edge[1].ca: is also tls.client_ca; use a CA for the link and nothing else",
            err,
        )
        self.assertRegex(out, r"\AOK\nssl-access digest [0-9a-f]{64}\n\Z")
