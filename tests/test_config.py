"""Tests for securetransport.config: load_config, config_from_dict, warnings."""

from __future__ import annotations

import copy
import datetime
import ipaddress
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from securetransport.config import (
    ClassConfig,
    Config,
    ConfigError,
    ListenConfig,
    PassiveConfig,
    ServerConfig,
    TLSConfig,
    config_from_dict,
    load_config,
    read_port_range,
)

REPOSITORY = Path(__file__).resolve().parent.parent
BASE = Path("/srv/st/etc")

FULL = """
[server]
banner = "hello there"
home_root = "../var/home"
users = "sqlite:../var/users.sqlite3"
upload_mode = "resumable"
umask = "022"
login_timeout = 10
idle_timeout = 600.5
data_timeout = 60
max_sessions = 10
max_sessions_per_address = 2
max_login_failures = 3
ban_time = 900
audit_log = "/var/log/st/audit.jsonl"
xferlog = "../var/log/xferlog"

[[listen]]
address = "0.0.0.0"
port = 21
tls = "explicit"

[[listen]]
address = "::"
port = 990
tls = "implicit"

[passive]
ports = "50000-50999"
address = "203.0.113.7"

[tls]
certificate = "pki/server.crt"
private_key = "pki/server.key"
client_ca = "pki/ca.crt"
crl = ["pki/a.crl", "/etc/st/b.crl"]
min_version = "TLSv1.3"
ciphers = "ECDHE+AESGCM"
certificate_user = "email"

[[class]]
name = "partners"
users = ["partner-*", "acme"]
groups = ["partners"]
addresses = ["192.0.2.0/24", "2001:db8::/32", "::ffff:198.51.100.0/120"]
ssl = "mandatory"
client_certificate = "verify"
login = ["certificate+password"]
session_reuse = "off"

[[class]]
name = "everyone"
ssl = "optional"
client_certificate = "off"
login = ["password"]
"""


def temp_folder(test: SynchronousTestCase) -> Path:
    """A new empty folder, removed after the test (trial's mktemp is cwd-relative)."""
    folder = Path(tempfile.mkdtemp(prefix="st-test-")).resolve()
    test.addCleanup(shutil.rmtree, folder, True)
    return folder


def write(folder: Path, text: str, name: str = "securetransport.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(data: dict[str, Any]) -> list[str]:
    """The problems config_from_dict reports for `data` (fails if it accepts it)."""
    try:
        config_from_dict(data, BASE)
    except ConfigError as error:
        return error.problems
    raise AssertionError(f"accepted: {data!r}")


def valid_tls() -> dict[str, Any]:
    return {"certificate": "s.crt", "private_key": "s.key"}


class LoadValidTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = temp_folder(self)

    def test_full(self) -> None:
        """Every key of a full configuration lands in the dataclasses."""
        path = write(self.folder / "etc", FULL)
        config = load_config(path, ephemeral_range_file=None)
        root = self.folder.resolve()
        self.assertEqual(config.path, path.absolute())
        self.assertEqual(
            config.server,
            ServerConfig(
                banner="hello there",
                home_root=root / "var/home",
                users=f"sqlite:{root / 'var/users.sqlite3'}",
                upload_mode="resumable",
                umask=0o022,
                login_timeout=10.0,
                idle_timeout=600.5,
                data_timeout=60.0,
                max_sessions=10,
                max_sessions_per_address=2,
                max_login_failures=3,
                ban_time=900.0,
                audit_log=Path("/var/log/st/audit.jsonl"),
                xferlog=root / "var/log/xferlog",
            ),
        )
        self.assertEqual(
            config.listen,
            (ListenConfig("0.0.0.0", 21, "explicit"), ListenConfig("::", 990, "implicit")),
        )
        self.assertEqual(config.passive, PassiveConfig((50000, 50999), "203.0.113.7"))
        self.assertEqual(
            config.tls,
            TLSConfig(
                certificate=root / "etc/pki/server.crt",
                private_key=root / "etc/pki/server.key",
                client_ca=root / "etc/pki/ca.crt",
                crl=(root / "etc/pki/a.crl", Path("/etc/st/b.crl")),
                min_version="TLSv1.3",
                ciphers="ECDHE+AESGCM",
                certificate_user="email",
            ),
        )
        self.assertEqual(
            config.classes,
            (
                ClassConfig(
                    name="partners",
                    users=("partner-*", "acme"),
                    groups=("partners",),
                    addresses=(
                        ipaddress.ip_network("192.0.2.0/24"),
                        ipaddress.ip_network("2001:db8::/32"),
                        ipaddress.ip_network("198.51.100.0/24"),  # mapped to IPv4
                    ),
                    ssl="mandatory",
                    client_certificate="verify",
                    login=("certificate+password",),
                    session_reuse="off",
                ),
                ClassConfig(
                    name="everyone",
                    ssl="optional",
                    client_certificate="off",
                    login=("password",),
                ),
            ),
        )
        self.assertTrue(config.tls.enabled)
        for value in (config.server.home_root, config.server.xferlog, *config.tls.crl):
            self.assertTrue(value is not None and value.is_absolute(), value)

    def test_defaults(self) -> None:
        """An empty file gives SPEC's defaults, paths resolved against the file's folder."""
        path = write(self.folder, "")
        config = load_config(path, ephemeral_range_file=None)
        root = self.folder.resolve()
        self.assertEqual(
            config.server,
            ServerConfig(home_root=root / "var/home", users=f"sqlite:{root / 'var/users.sqlite3'}"),
        )
        server = config.server
        self.assertEqual(server.banner, "securetransport ready")
        self.assertEqual(server.upload_mode, "atomic")
        self.assertEqual(server.umask, 0o027)
        self.assertEqual(
            (server.login_timeout, server.idle_timeout, server.data_timeout, server.ban_time),
            (30, 300, 120, 300),
        )
        self.assertEqual(
            (server.max_sessions, server.max_sessions_per_address, server.max_login_failures),
            (1000, 50, 5),
        )
        self.assertIsNone(server.audit_log)
        self.assertIsNone(server.xferlog)
        self.assertEqual(config.listen, (ListenConfig("127.0.0.1", 2121, "explicit"),))
        self.assertEqual(config.passive, PassiveConfig((61000, 61999), ""))
        self.assertEqual(config.tls, TLSConfig())
        self.assertEqual(config.tls.certificate_user, "none")
        self.assertFalse(config.tls.enabled)
        self.assertEqual(config.classes, ())

    def test_class_defaults(self) -> None:
        """A class with only a name gets SPEC's per-class defaults and no criteria."""
        config = config_from_dict({"class": [{"name": "c"}], "tls": valid_tls()}, BASE)
        (entry,) = config.classes
        self.assertEqual(entry, ClassConfig(name="c"))
        self.assertEqual(
            (entry.ssl, entry.client_certificate, entry.login, entry.session_reuse),
            ("mandatory", "verify", ("certificate", "password"), "required"),
        )
        self.assertIsNone(entry.users)
        self.assertIsNone(entry.groups)
        self.assertIsNone(entry.addresses)
        self.assertFalse(entry.has_criteria)

    def test_listen_table_defaults(self) -> None:
        """Keys left out of a [[listen]] table take ListenConfig's defaults."""
        config = config_from_dict({"listen": [{"port": 0}, {"address": "::1"}]}, BASE)
        self.assertEqual(config.listen, (ListenConfig("127.0.0.1", 0), ListenConfig("::1", 2121)))

    def test_shipped_example(self) -> None:
        """etc/securetransport.toml loads without problems or warnings."""
        ranges = write(self.folder, "32768\t60999\n", "ip_local_port_range")
        config = load_config(REPOSITORY / "etc/securetransport.toml", ephemeral_range_file=ranges)
        self.assertEqual(config.warnings, ())
        self.assertEqual(
            config.listen,
            (
                ListenConfig("127.0.0.1", 2121, "explicit"),
                ListenConfig("127.0.0.1", 2990, "implicit"),
            ),
        )
        self.assertEqual(config.passive.ports, (61000, 61999))
        self.assertEqual(config.server.home_root, REPOSITORY / "var/home")
        self.assertEqual(config.server.users, f"sqlite:{REPOSITORY / 'var/users.sqlite3'}")
        self.assertEqual(config.server.audit_log, REPOSITORY / "var/log/audit.jsonl")
        self.assertEqual(config.server.xferlog, REPOSITORY / "var/log/xferlog")
        self.assertEqual(config.tls.certificate, REPOSITORY / "var/pki/server.crt")
        self.assertEqual(config.tls.private_key, REPOSITORY / "var/pki/server.key")
        self.assertEqual(config.tls.client_ca, REPOSITORY / "var/pki/ca.crt")
        self.assertEqual(config.tls.certificate_user, "common-name")
        partners, everyone = config.classes
        self.assertEqual(
            partners,
            ClassConfig(
                name="partners",
                users=("partner-*",),
                ssl="mandatory",
                client_certificate="verify",
                login=("certificate", "password"),
            ),
        )
        self.assertEqual(
            everyone,
            ClassConfig(
                name="everyone",
                ssl="optional",
                client_certificate="verify",
                login=("certificate", "password"),
                session_reuse="required",
            ),
        )


class PathTests(SynchronousTestCase):
    def test_relative_and_absolute(self) -> None:
        """Relative paths are joined to the base folder and normalized; absolute ones kept."""
        config = config_from_dict(
            {
                "server": {
                    "home_root": "../home",
                    "users": "sqlite:db/users.sqlite3",
                    "audit_log": "/var/log/audit.jsonl",
                    "xferlog": "./x/../xferlog",
                },
                "tls": {"certificate": "c.pem", "private_key": "/k.pem", "crl": ["../r.crl"]},
            },
            BASE,
        )
        self.assertEqual(config.server.home_root, Path("/srv/st/home"))
        self.assertEqual(config.server.users, "sqlite:/srv/st/etc/db/users.sqlite3")
        self.assertEqual(config.server.audit_log, Path("/var/log/audit.jsonl"))
        self.assertEqual(config.server.xferlog, Path("/srv/st/etc/xferlog"))
        self.assertEqual(config.tls.certificate, Path("/srv/st/etc/c.pem"))
        self.assertEqual(config.tls.private_key, Path("/k.pem"))
        self.assertEqual(config.tls.crl, (Path("/srv/st/r.crl"),))

    def test_absolute_users(self) -> None:
        config = config_from_dict({"server": {"users": "sqlite:/data/u.db"}}, BASE)
        self.assertEqual(config.server.users, "sqlite:/data/u.db")

    def test_empty_optional_path_means_unset(self) -> None:
        config = config_from_dict(
            {"server": {"audit_log": "", "xferlog": ""}, "tls": {"client_ca": ""}}, BASE
        )
        self.assertIsNone(config.server.audit_log)
        self.assertIsNone(config.server.xferlog)
        self.assertIsNone(config.tls.client_ca)

    def test_relative_to_the_file_not_the_working_directory(self) -> None:
        folder = temp_folder(self)
        path = write(folder / "conf", '[server]\nhome_root = "homes"\n')
        self.patch(os, "getcwd", lambda: "/elsewhere")
        config = load_config(path, ephemeral_range_file=None)
        self.assertEqual(config.server.home_root, folder.resolve() / "conf/homes")

    def test_symlinked_folder(self) -> None:
        """`..` is taken from the real folder of the file, as the kernel would."""
        folder = temp_folder(self)
        real = folder / "real/etc"
        write(real, '[server]\nhome_root = "../home"\n')
        (folder / "link").mkdir(parents=True)
        (folder / "link/etc").symlink_to(real)
        config = load_config(folder / "link/etc/securetransport.toml", ephemeral_range_file=None)
        self.assertEqual(config.server.home_root, folder.resolve() / "real/home")

    def test_bad_paths(self) -> None:
        self.assertEqual(
            problems_of({"server": {"home_root": "", "users": "sqlite:", "xferlog": "a\0b"}}),
            [
                "server.home_root: must not be empty",
                'server.users: must name a file after "sqlite:", got "sqlite:"',
                "server.xferlog: must not contain NUL characters",
            ],
        )

    def test_users_scheme(self) -> None:
        for value in ("postgres://db/st", "users.sqlite3", "SQLITE:x"):
            self.assertEqual(
                problems_of({"server": {"users": value}}),
                [f'server.users: must be "sqlite:PATH", got "{value}"'],
            )


class ValueTests(SynchronousTestCase):
    """One bad value at a time: the exact line that names it."""

    def assertProblem(self, data: dict[str, Any], line: str) -> None:
        self.assertEqual(problems_of(data), [line])

    def test_umask(self) -> None:
        for text, mask in (("027", 0o027), ("0", 0), ("777", 0o777), ("0022", 0o022)):
            config = config_from_dict({"server": {"umask": text}}, BASE)
            self.assertEqual(config.server.umask, mask, text)
        for bad in ('"abc"', '"8"', '"0o27"', '""', "27", '"12345"'):
            value: object = int(bad) if bad.isdigit() else bad.strip('"')
            self.assertProblem(
                {"server": {"umask": value}},
                f'server.umask: must be an octal string such as "027", got {bad}',
            )
        self.assertProblem(
            {"server": {"umask": "1777"}}, 'server.umask: must be at most 777, got "1777"'
        )

    def test_integers(self) -> None:
        self.assertProblem(
            {"server": {"max_sessions": "x"}}, 'server.max_sessions: must be an integer, got "x"'
        )
        self.assertProblem(
            {"server": {"max_login_failures": True}},
            "server.max_login_failures: must be an integer, got true",
        )
        self.assertProblem(
            {"server": {"max_sessions_per_address": 2.0}},
            "server.max_sessions_per_address: must be an integer, got 2.0",
        )
        for value in (0, -3):
            self.assertProblem(
                {"server": {"max_sessions": value}},
                f"server.max_sessions: must be a positive integer, got {value}",
            )

    def test_workers(self) -> None:
        self.assertEqual(config_from_dict({}, BASE).server.workers, 1)
        config = config_from_dict({"server": {"workers": 4}}, BASE)
        self.assertEqual(config.server.workers, 4)
        for value, shown in ((0, "must be a positive integer, got 0"),
                             (-2, "must be a positive integer, got -2"),
                             ("2", 'must be an integer, got "2"'),
                             (2.0, "must be an integer, got 2.0"),
                             (True, "must be an integer, got true")):  # fmt: skip
            self.assertProblem({"server": {"workers": value}}, f"server.workers: {shown}")

    def test_timeouts(self) -> None:
        config = config_from_dict({"server": {"login_timeout": 0.5, "ban_time": 2}}, BASE)
        self.assertEqual((config.server.login_timeout, config.server.ban_time), (0.5, 2.0))
        self.assertIsInstance(config.server.ban_time, float)
        for value, shown in (
            (0, "0"),
            (-1.5, "-1.5"),
            (float("inf"), "inf"),
            (float("nan"), "nan"),
        ):
            self.assertProblem(
                {"server": {"idle_timeout": value}},
                f"server.idle_timeout: must be a positive number of seconds, got {shown}",
            )
        self.assertProblem(
            {"server": {"data_timeout": "10"}},
            'server.data_timeout: must be a number of seconds, got "10"',
        )
        self.assertProblem(
            {"server": {"ban_time": False}},
            "server.ban_time: must be a number of seconds, got false",
        )

    def test_choices(self) -> None:
        self.assertProblem(
            {"server": {"upload_mode": "fast"}},
            'server.upload_mode: must be "atomic" or "resumable", got "fast"',
        )
        self.assertProblem(
            {"tls": {"certificate_user": "cn"}},
            'tls.certificate_user: must be "common-name", "email" or "none", got "cn"',
        )
        self.assertProblem(
            {"tls": {"min_version": 1.2}},
            'tls.min_version: must be "TLSv1.2" or "TLSv1.3", got 1.2',
        )

    def test_banner(self) -> None:
        self.assertProblem(
            {"server": {"banner": "a\r\n230 fake"}},
            "server.banner: must not contain line breaks or control characters, "
            'got "a\\r\\n230 fake"',
        )
        self.assertProblem({"server": {"banner": 5}}, "server.banner: must be a string, got 5")
        self.assertEqual(config_from_dict({"server": {"banner": ""}}, BASE).server.banner, "")

    def test_listen(self) -> None:
        for address, stored in (
            ("0.0.0.0", "0.0.0.0"),
            ("::", "::"),
            ("2001:DB8::1", "2001:db8::1"),
            ("192.0.2.1", "192.0.2.1"),
        ):
            config = config_from_dict({"listen": [{"address": address, "port": 1}]}, BASE)
            self.assertEqual(config.listen[0].address, stored)
        for port in (0, 1, 65535):
            config = config_from_dict({"listen": [{"port": port}]}, BASE)
            self.assertEqual(config.listen[0].port, port)
        self.assertProblem(
            {"listen": [{"port": 21}, {"port": 70000}]},
            "listen[2].port: must be 1-65535, got 70000",
        )
        self.assertProblem({"listen": [{"port": -1}]}, "listen[1].port: must be 1-65535, got -1")
        self.assertProblem(
            {"listen": [{"address": "localhost"}]},
            'listen[1].address: must be an IPv4 or IPv6 address, got "localhost"',
        )
        self.assertProblem(
            {"listen": [{"address": "10.0.0.0/8"}]},
            'listen[1].address: must be an IPv4 or IPv6 address, got "10.0.0.0/8"',
        )
        self.assertProblem(
            {"listen": [{"tls": "ssl"}]},
            'listen[1].tls: must be "explicit" or "implicit", got "ssl"',
        )

    def test_listen_duplicates(self) -> None:
        self.assertProblem(
            {
                "listen": [{"port": 21}, {"port": 22}, {"port": 21, "tls": "implicit"}],
                "tls": valid_tls(),
            },
            "listen[3].port: 21 on 127.0.0.1 is already used by listen[1]",
        )
        # Port 0 asks for any free port: never a duplicate.
        config = config_from_dict({"listen": [{"port": 0}, {"port": 0}]}, BASE)
        self.assertEqual(len(config.listen), 2)

    def test_listen_shapes(self) -> None:
        self.assertProblem({"listen": []}, "listen: must hold at least one [[listen]] table")
        self.assertProblem(
            {"listen": {"port": 21}},
            "listen: must be an array of tables ([[listen]]), got a table",
        )
        self.assertProblem({"listen": [1]}, "listen[1]: must be a table, got 1")

    def test_passive(self) -> None:
        for text, ports in (
            ("1024-65535", (1024, 65535)),
            ("5000-5000", (5000, 5000)),
            (" 6000 - 6010 ", (6000, 6010)),
        ):
            config = config_from_dict({"passive": {"ports": text}}, BASE)
            self.assertEqual(config.passive.ports, ports)
        for text in (
            "80-90",
            "1023-2000",
            "5000-4000",
            "60000-70000",
            "5000",
            "a-b",
            "",
            "1e3-2e3",
        ):
            self.assertProblem(
                {"passive": {"ports": text}},
                'passive.ports: must be "FIRST-LAST" with 1024 <= FIRST <= LAST <= 65535, '
                f'got "{text}"',
            )
        self.assertProblem(
            {"passive": {"ports": [5000, 6000]}}, "passive.ports: must be a string, got an array"
        )
        self.assertEqual(
            config_from_dict({"passive": {"address": "198.51.100.4"}}, BASE).passive.address,
            "198.51.100.4",
        )
        for address in ("2001:db8::1", "ftp.example.com"):
            self.assertProblem(
                {"passive": {"address": address}},
                'passive.address: must be an IPv4 address (PASV announces IPv4) or "", '
                f'got "{address}"',
            )

    def test_tls_values(self) -> None:
        self.assertProblem(
            {"tls": {"ciphers": "NO-SUCH-CIPHER"}},
            'tls.ciphers: OpenSSL matches no TLS 1.2 cipher in "NO-SUCH-CIPHER"',
        )
        self.assertProblem({"tls": {"crl": "a.crl"}}, 'tls.crl: must be an array, got "a.crl"')
        self.assertEqual(
            problems_of({"tls": {"crl": ["a.crl", 3, ""]}}),
            ["tls.crl[2]: must be a string, got 3", "tls.crl[3]: must not be empty"],
        )

    def test_class_values(self) -> None:
        self.assertProblem(
            {"class": [{"name": "a"}, {"name": "b", "ssl": "maybe"}], "tls": valid_tls()},
            'class[2].ssl: must be "mandatory" or "optional", got "maybe"',
        )
        self.assertProblem({"class": [{"ssl": "optional"}]}, "class[1].name: required")
        self.assertProblem({"class": [{"name": ""}]}, "class[1].name: must not be empty")
        self.assertProblem(
            {"class": [{"name": "a"}, {"name": "a"}], "tls": valid_tls()},
            'class[2].name: "a" is already used by class[1]',
        )
        self.assertProblem(
            {"class": [{"name": "a", "users": []}], "tls": valid_tls()},
            "class[1].users: must not be an empty array",
        )
        self.assertProblem(
            {"class": [{"name": "a", "groups": "staff"}], "tls": valid_tls()},
            'class[1].groups: must be an array, got "staff"',
        )
        self.assertProblem(
            {"class": [{"name": "a", "users": ["ok", ""]}], "tls": valid_tls()},
            "class[1].users[2]: must not be empty",
        )
        self.assertProblem(
            {
                "class": [{"name": "a", "addresses": ["10.0.0.0/8", "10.0.0.300"]}],
                "tls": valid_tls(),
            },
            'class[1].addresses[2]: must be an IP network such as "192.0.2.0/24", got "10.0.0.300"',
        )
        self.assertProblem(
            {"class": [{"name": "a", "login": []}], "tls": valid_tls()},
            "class[1].login: must not be an empty array",
        )
        self.assertProblem(
            {"class": [{"name": "a", "login": ["password", "otp"]}], "tls": valid_tls()},
            'class[1].login[2]: must be "certificate", "password", "certificate+password", '
            '"publickey" or "publickey+password", got "otp"',
        )
        self.assertProblem(
            {"class": [{"name": "a", "login": ["password", "password"]}], "tls": valid_tls()},
            'class[1].login[2]: "password" is listed twice',
        )
        self.assertProblem(
            {"class": [{"name": "a", "session_reuse": True}], "tls": valid_tls()},
            'class[1].session_reuse: must be "required", "account" or "off", got true',
        )

    def test_class_addresses(self) -> None:
        """CIDR is parsed leniently (host bits dropped); IPv4-mapped networks become IPv4."""
        config = config_from_dict(
            {
                "class": [
                    {
                        "name": "a",
                        "addresses": [
                            "10.1.2.3/8",
                            "192.0.2.9",
                            "2001:db8::1/64",
                            "::ffff:10.0.0.0/104",
                        ],
                    }
                ],
                "tls": valid_tls(),
            },
            BASE,
        )
        self.assertEqual(
            config.classes[0].addresses,
            (
                ipaddress.ip_network("10.0.0.0/8"),
                ipaddress.ip_network("192.0.2.9/32"),
                ipaddress.ip_network("2001:db8::/64"),
                ipaddress.ip_network("10.0.0.0/8"),
            ),
        )

    def test_certificate_login_with_certificates_off(self) -> None:
        for login in (["certificate"], ["password", "certificate+password"]):
            needs = [m for m in login if m != "password"][0]
            self.assertProblem(
                {
                    "class": [{"name": "a", "client_certificate": "off", "login": login}],
                    "tls": valid_tls(),
                },
                f'class[1].login: "{needs}" needs client_certificate = "verify", and it is "off"',
            )
        self.assertProblem(
            {"class": [{"name": "a", "client_certificate": "off"}], "tls": valid_tls()},
            'class[1].login: the default ["certificate", "password"] needs client_certificate = '
            '"verify", and it is "off"; set login = ["password"]',
        )
        config = config_from_dict(
            {"class": [{"name": "a", "client_certificate": "off", "login": ["password"]}]}, BASE
        )
        self.assertEqual(config.classes[0].login, ("password",))

    def test_tls_pairs(self) -> None:
        self.assertProblem(
            {"tls": {"certificate": "s.crt"}},
            "tls.private_key: required when tls.certificate is set",
        )
        self.assertProblem(
            {"tls": {"private_key": "s.key"}},
            "tls.certificate: required when tls.private_key is set",
        )
        self.assertProblem(
            {"listen": [{"port": 21}, {"port": 990, "tls": "implicit"}]},
            'listen[2].tls: "implicit" needs tls.certificate and tls.private_key',
        )
        config = config_from_dict(
            {"listen": [{"port": 990, "tls": "implicit"}], "tls": valid_tls()}, BASE
        )
        self.assertEqual(config.listen[0].tls, "implicit")


class StructureTests(SynchronousTestCase):
    def test_unknown_keys_everywhere(self) -> None:
        self.assertEqual(
            problems_of(
                {
                    "server": {"bannr": "x", "options": {"a": 1}},
                    "listen": [{"port": 21, "backlog": 5}],
                    "passive": {"range": "1-2"},
                    "tls": {"dhparams": "x"},
                    "class": [{"name": "a", "chroot": True}],
                    "logging": {"level": "debug"},
                    "debug": True,
                    "bad key": 1,
                }
            ),
            [
                'server.bannr: unknown key (did you mean "banner"?)',
                "server.options: unknown key",
                "listen[1].backlog: unknown key",
                "passive.range: unknown key",
                "tls.dhparams: unknown key",
                "class[1].chroot: unknown key",
                "logging: unknown table",
                "debug: unknown key",
                '"bad key": unknown key',
            ],
        )

    def test_section_types(self) -> None:
        self.assertEqual(
            problems_of({"server": 3, "passive": "x", "tls": [], "class": {"name": "a"}}),
            [
                "server: must be a table, got 3",
                'passive: must be a table, got "x"',
                "tls: must be a table, got an array",
                "class: must be an array of tables ([[class]]), got a table",
            ],
        )
        self.assertEqual(
            problems_of({"class": [{"name": "a"}, "b"], "tls": valid_tls()}),
            ['class[2]: must be a table, got "b"'],
        )

    def test_many_problems_at_once(self) -> None:
        """Every problem is reported, in file order, one line each."""
        folder = temp_folder(self)
        path = write(
            folder,
            """
            [server]
            max_sessions = "x"
            umask = "999"
            [[listen]]
            port = 70000
            [[class]]
            name = "a"
            ssl = "maybe"
            [[class]]
            name = "b"
            login = ["certificate", "nope"]
            [tls]
            colour = "blue"
            """,
        )
        with self.assertRaises(ConfigError) as caught:
            load_config(path, ephemeral_range_file=None)
        self.assertEqual(
            caught.exception.problems,
            [
                'server.max_sessions: must be an integer, got "x"',
                'server.umask: must be an octal string such as "027", got "999"',
                "listen[1].port: must be 1-65535, got 70000",
                'class[1].ssl: must be "mandatory" or "optional", got "maybe"',
                'class[2].login[2]: must be "certificate", "password", "certificate+password", '
                '"publickey" or "publickey+password", got "nope"',
                "tls.colour: unknown key",
            ],
        )
        self.assertEqual(str(caught.exception), "\n".join(caught.exception.problems))
        for line in caught.exception.problems:
            self.assertNotIn("\n", line)

    def test_syntax_error(self) -> None:
        folder = temp_folder(self)
        path = write(folder, '[server]\nbanner = "x"\nmax_sessions = = 3\n')
        with self.assertRaises(ConfigError) as caught:
            load_config(path, ephemeral_range_file=None)
        (line,) = caught.exception.problems
        self.assertTrue(line.startswith(f"{path}: line 3, column 16: "), line)

    def test_syntax_error_at_end(self) -> None:
        folder = temp_folder(self)
        path = write(folder, '[server]\nbanner = "x')
        with self.assertRaises(ConfigError) as caught:
            load_config(path, ephemeral_range_file=None)
        self.assertEqual(
            caught.exception.problems, [f"{path}: at end of file: Unterminated string"]
        )

    def test_duplicate_key_is_a_syntax_error(self) -> None:
        folder = temp_folder(self)
        path = write(folder, "[server]\nmax_sessions = 1\nmax_sessions = 2\n")
        with self.assertRaises(ConfigError) as caught:
            load_config(path, ephemeral_range_file=None)
        (line,) = caught.exception.problems
        self.assertTrue(line.startswith(f"{path}: "), line)

    def test_missing_file(self) -> None:
        path = temp_folder(self) / "nope.toml"
        with self.assertRaises(ConfigError) as caught:
            load_config(path)
        self.assertEqual(
            caught.exception.problems, [f"{path}: cannot read: No such file or directory"]
        )

    def test_folder_instead_of_file(self) -> None:
        path = temp_folder(self) / "folder"
        path.mkdir()
        with self.assertRaises(ConfigError) as caught:
            load_config(path)
        self.assertEqual(caught.exception.problems, [f"{path}: cannot read: Is a directory"])

    def test_not_utf8(self) -> None:
        path = temp_folder(self) / "x.toml"
        path.write_bytes(b'[server]\nbanner = "\xff"\n')
        with self.assertRaises(ConfigError) as caught:
            load_config(path)
        self.assertEqual(caught.exception.problems, [f"{path}: not valid UTF-8 (byte 20)"])

    def test_strange_values_are_shown_safely(self) -> None:
        """Values and keys in messages are quoted and escaped: one printable line."""
        problems = problems_of(
            {"server": {"upload_mode": "\x1b[31mred", "a\nb": 1}, "tls": {"min_version": "x" * 500}}
        )
        self.assertEqual(
            problems[0], 'server.upload_mode: must be "atomic" or "resumable", got "\\u001b[31mred"'
        )
        self.assertEqual(problems[1], 'server."a\\nb": unknown key')
        self.assertLess(len(problems[2]), 200)
        for line in problems:
            self.assertTrue(line.isprintable(), line)

    def test_toml_dates_are_shown(self) -> None:
        self.assertEqual(
            problems_of({"server": {"banner": datetime.date(2024, 1, 31)}}),
            ["server.banner: must be a string, got 2024-01-31"],
        )


class WarningTests(SynchronousTestCase):
    def warnings_of(
        self, data: dict[str, Any], ephemeral: tuple[int, int] | None = None
    ) -> tuple[str, ...]:
        data = {"tls": valid_tls(), **data}
        return config_from_dict(data, BASE, ephemeral_ports=ephemeral).warnings

    def test_groups_before_different_ssl_or_login(self) -> None:
        warnings = self.warnings_of(
            {
                "class": [
                    {"name": "staff", "groups": ["staff"], "ssl": "mandatory"},
                    {
                        "name": "same",
                        "users": ["s-*"],
                        "ssl": "mandatory",
                        "login": ["password", "certificate"],
                    },
                    {"name": "clear", "addresses": ["10.0.0.0/8"], "ssl": "optional"},
                    {"name": "pw", "login": ["password"], "ssl": "optional"},
                ]
            }
        )
        self.assertEqual(
            warnings,
            (
                'warning: class[1].groups: "staff" is chosen by groups and precedes a class with '
                'a different ssl or login: class[3] "clear" (ssl), class[4] "pw" (ssl and login); '
                "so its replies to USER tell who is in those groups",
            ),
        )

    def test_groups_before_a_class_that_catches_every_non_member_alike(self) -> None:
        """Issue #9.10: classes after the first that surely matches every non-member (with
        the same ssl, client_certificate and login) are never reached from the groups class,
        however they differ."""
        warnings = self.warnings_of(
            {
                "class": [
                    {"name": "staff", "groups": ["staff"], "ssl": "mandatory"},
                    {"name": "same", "ssl": "mandatory", "login": ["password", "certificate"]},
                    {"name": "clear", "ssl": "optional"},
                    {"name": "pw", "login": ["password"], "ssl": "optional"},
                ]
            }
        )
        self.assertEqual(
            warnings,
            (
                'warning: class[3]: never matches: class[2] "same" has no criteria and matches '
                "every login first",
                'warning: class[4]: never matches: class[2] "same" has no criteria and matches '
                "every login first",
            ),
        )

    def test_issue_example_membership_does_not_show(self) -> None:
        """partners (users g-*, groups) then also-mandatory (users g-*, same ssl and login):
        every name partners matches also matches the next class alike; no warning."""
        for after in ([], [{"name": "everyone", "ssl": "optional", "login": ["password"]}]):
            warnings = self.warnings_of(
                {
                    "class": [
                        {
                            "name": "partners",
                            "users": ["g-*"],
                            "groups": ["partners"],
                            "ssl": "mandatory",
                        },
                        {"name": "also-mandatory", "users": ["g-*"], "ssl": "mandatory"},
                        *after,
                    ]
                }
            )
            self.assertEqual(warnings, (), after)

    def test_groups_class_covered_by_wider_criteria(self) -> None:
        """A later class without groups whose patterns and networks hold every name and
        address of the groups class catches all non-members; "*" holds every name."""
        for later in (
            {"users": ["*"]},
            {"users": ["h-*", "g-*"], "addresses": ["192.0.2.0/23"]},
            {"addresses": ["192.0.2.0/24", "198.51.100.0/24"]},
        ):
            warnings = self.warnings_of(
                {
                    "class": [
                        {
                            "name": "partners",
                            "users": ["g-*"],
                            "groups": ["partners"],
                            "addresses": ["192.0.2.0/25"],
                        },
                        {"name": "wide", **later},
                        {"name": "everyone", "ssl": "optional"},
                    ]
                }
            )
            self.assertEqual(warnings, (), later)

    def test_classes_that_cannot_match_the_same_names_are_passed_over(self) -> None:
        """A class whose patterns share no name with the groups class (different literal
        prefix or suffix), whose networks do not overlap its own, or that needs one of its
        groups is never reached by its non-members."""
        warnings = self.warnings_of(
            {
                "class": [
                    {
                        "name": "partners",
                        "users": ["g-*.partner", "x?.partner"],
                        "groups": ["partners"],
                        "addresses": ["192.0.2.0/24"],
                    },
                    {"name": "others", "users": ["h-*", "*.staff"], "ssl": "optional"},
                    {"name": "lan", "addresses": ["10.0.0.0/8"], "ssl": "optional"},
                    {"name": "exact", "users": ["gh"], "ssl": "optional"},
                    {"name": "members", "groups": ["partners"], "ssl": "optional"},
                    {"name": "rest"},
                ]
            }
        )
        # "members" warns for itself (it precedes "rest", which differs), not for partners
        self.assertEqual([w for w in warnings if w.startswith("warning: class[1].")], [])
        self.assertEqual(len(warnings), 1, warnings)

    def test_a_class_that_may_match_and_differs_warns(self) -> None:
        """Overlapping criteria (a wider pattern not recognised as covering, other groups,
        an overlapping network) may catch some non-members: a difference shows membership,
        client_certificate included."""
        cases = [
            ({"name": "wider", "users": ["g*"], "ssl": "optional"}, "ssl"),
            ({"name": "other-group", "groups": ["staff"], "login": ["password"]}, "login"),
            ({"name": "near", "addresses": ["192.0.2.128/25"], "ssl": "optional"}, "ssl"),
            (
                {"name": "no-cert", "users": ["g-*"], "client_certificate": "off",
                 "login": ["password"]},
                "client_certificate and login",
            ),
        ]  # fmt: skip
        for middle, what in cases:
            warnings = self.warnings_of(
                {
                    "class": [
                        {
                            "name": "partners",
                            "users": ["g-*"],
                            "groups": ["partners"],
                            "addresses": ["192.0.2.0/24"],
                        },
                        middle,
                        {"name": "also", "users": ["g-*"]},
                    ]
                }
            )
            kinds = "ssl, client_certificate or login" if "client" in what else "ssl or login"
            self.assertEqual(
                tuple(w for w in warnings if w.startswith("warning: class[1].")),
                (
                    'warning: class[1].groups: "partners" is chosen by groups and precedes a '
                    f"class with a different {kinds}: class[2] {json.dumps(middle['name'])} "
                    f"({what}); so its replies to USER tell who is in those groups",
                ),
                middle,
            )

    def test_groups_with_criteria_and_nothing_that_covers_them(self) -> None:
        warnings = self.warnings_of(
            {
                "class": [
                    {"name": "partners", "users": ["g-*"], "groups": ["partners"]},
                    {"name": "some", "users": ["g-a*"]},
                ]
            }
        )
        self.assertEqual(
            warnings,
            (
                'warning: class[1].groups: "partners" is chosen by groups and no class after '
                "it matches every name and address it does, so other names may match no class "
                "(530); so its replies to USER tell who is in those groups",
            ),
        )

    def test_groups_before_same_policy(self) -> None:
        warnings = self.warnings_of(
            {
                "class": [
                    {"name": "staff", "groups": ["staff"], "session_reuse": "off"},
                    {"name": "everyone", "client_certificate": "verify"},
                ]
            }
        )
        self.assertEqual(warnings, ())

    def test_groups_with_no_catch_all_after(self) -> None:
        warnings = self.warnings_of({"class": [{"name": "staff", "groups": ["staff"]}]})
        self.assertEqual(
            warnings,
            (
                'warning: class[1].groups: "staff" is chosen by groups and no class after it '
                "matches everyone, so other names may match no class (530); so its replies to "
                "USER tell who is in those groups",
            ),
        )

    def test_classes_without_groups(self) -> None:
        warnings = self.warnings_of(
            {
                "class": [
                    {"name": "partners", "users": ["p-*"], "ssl": "mandatory"},
                    {"name": "lan", "addresses": ["10.0.0.0/8"], "ssl": "optional"},
                ]
            }
        )
        self.assertEqual(warnings, ())

    def test_no_classes(self) -> None:
        self.assertEqual(
            self.warnings_of({}),
            ("warning: class: no [[class]] is configured: every login is refused (530)",),
        )

    def test_mandatory_without_tls(self) -> None:
        config = config_from_dict(
            {"class": [{"name": "a", "users": ["x"]}, {"name": "b", "ssl": "optional"}]}, BASE
        )
        self.assertEqual(
            config.warnings,
            (
                "warning: tls: no certificate and private_key, so AUTH TLS is refused and nobody "
                'can log in through a class with ssl = "mandatory": class[1] "a"',
            ),
        )

    def test_ephemeral_overlap(self) -> None:
        data = {"passive": {"ports": "60000-61999"}, "class": [{"name": "a"}]}
        self.assertEqual(
            self.warnings_of(data, (32768, 60999)),
            (
                "warning: passive.ports: 60000-61999 overlaps the kernel's ephemeral port range "
                "32768-60999 (net.ipv4.ip_local_port_range): outgoing connections may take "
                "these ports",
            ),
        )
        self.assertEqual(self.warnings_of(data, (32768, 59999)), ())
        self.assertEqual(self.warnings_of(data, (62000, 65000)), ())
        self.assertEqual(self.warnings_of(data, None), ())

    def test_ephemeral_range_from_file(self) -> None:
        folder = temp_folder(self)
        ranges = write(folder, "1024\t65535\n", "range")
        path = write(folder, '[[class]]\nname = "a"\n[tls]\ncertificate = "c"\nprivate_key = "k"\n')
        config = load_config(path, ephemeral_range_file=ranges)
        self.assertEqual(len(config.warnings), 1)
        self.assertTrue(
            config.warnings[0].startswith("warning: passive.ports: 61000-61999 overlaps")
        )
        config = load_config(path, ephemeral_range_file=folder / "missing")
        self.assertEqual(config.warnings, ())

    def test_passive_includes_listener(self) -> None:
        self.assertEqual(
            self.warnings_of(
                {
                    "listen": [{"port": 2121}, {"port": 5000}],
                    "passive": {"ports": "4000-5999"},
                    "class": [{"name": "a"}],
                }
            ),
            ("warning: passive.ports: 4000-5999 includes the port of listen[2] (5000)",),
        )

    def test_warnings_travel_with_errors(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            config_from_dict({"server": {"umask": 1}}, BASE)
        self.assertEqual(
            caught.exception.warnings,
            ("warning: class: no [[class]] is configured: every login is refused (530)",),
        )

    def test_no_warning_from_a_bad_class(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            config_from_dict(
                {"class": [{"name": "s", "groups": ["g"], "ssl": "bad"}], "tls": valid_tls()}, BASE
            )
        self.assertEqual(caught.exception.warnings, ())


class ReadPortRangeTests(SynchronousTestCase):
    def test_parse(self) -> None:
        folder = temp_folder(self)
        for text, expected in (
            ("32768\t60999\n", (32768, 60999)),
            ("1024 65535", (1024, 65535)),
            ("junk", None),
            ("5", None),
            ("9 2", None),
            ("", None),
        ):
            self.assertEqual(read_port_range(write(folder, text, "r")), expected, text)
        self.assertIsNone(read_port_range(folder / "missing"))


# Robustness: whatever TOML gives, load_config answers a Config or a ConfigError.

TOML_SCALARS = (
    st.text(max_size=12)
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats()
    | st.booleans()
    | st.sampled_from(
        ["", "027", "1024-2048", "::", "127.0.0.1", "10.0.0.0/8", "sqlite:x", "password", "off"]
    )
)
TOML_VALUES = st.recursive(
    TOML_SCALARS,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)


def _tables(document: dict[str, Any]) -> list[dict[str, Any]]:
    found = [document]
    for value in document.values():
        if isinstance(value, dict):
            found.extend(_tables(value))
        elif isinstance(value, list):
            found.extend(t for item in value if isinstance(item, dict) for t in _tables(item))
    return found


class RobustnessTests(SynchronousTestCase):
    def setUp(self) -> None:
        import tomllib

        self.document = tomllib.loads(FULL)

    @settings(max_examples=300, deadline=None, database=None)
    @given(data=st.data())
    def test_mutations(self, data: st.DataObject) -> None:
        document = copy.deepcopy(self.document)
        for _ in range(data.draw(st.integers(1, 3))):
            table = data.draw(st.sampled_from(_tables(document)))
            keys = sorted(table) + ["new"]
            key = data.draw(st.sampled_from(keys))
            table[key] = data.draw(TOML_VALUES)
        try:
            config = config_from_dict(document, BASE)
        except ConfigError as error:
            self.assertTrue(error.problems)
            for line in error.problems:
                self.assertIsInstance(line, str)
                self.assertNotIn("\n", line)
                self.assertRegex(line, r"^[\w\"\[]")
        else:
            self.assertIsInstance(config, Config)
