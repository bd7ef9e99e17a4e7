"""Tests for `securetransport users`, run through securetransport.cli.main."""

from __future__ import annotations

import io
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from securetransport.cli import main
from securetransport.passwords import verify_password
from securetransport.pki import SERVER_AUTH, issue_certificate, make_ca, write_pem
from securetransport.userstore import Account, SQLiteUserStore, certificate_fingerprint

CONFIG = """\
[server]
home_root = "home"
users = "sqlite:var/users.sqlite3"

[[class]]
name = "everyone"
"""


class UsersCommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="st-users-")).resolve()
        self.addCleanup(shutil.rmtree, self.folder, True)
        self.config = self.folder / "etc" / "securetransport.toml"
        self.config.parent.mkdir()
        self.config.write_text(CONFIG.replace('"home"', '"../home"').replace("var/", "../var/"))
        self.home_root = self.folder / "home"
        self.db = self.folder / "var" / "users.sqlite3"
        ca, ca_key = make_ca("Users Test CA")
        cert, _ = issue_certificate(ca, ca_key, cn="alice")
        self.pem = write_pem(self.folder / "alice.crt", cert)
        self.fingerprint = certificate_fingerprint(cert)
        server, _ = issue_certificate(ca, ca_key, cn="localhost", eku=(SERVER_AUTH,))
        self.server_pem = write_pem(self.folder / "server.crt", server)

    def run_cli(self, *argv: str, stdin: str | io.TextIOBase = "") -> tuple[int, str, str]:
        """`securetransport users ARGV... --config FILE`: exit code, stdout, stderr."""
        out, err = io.StringIO(), io.StringIO()
        if isinstance(stdin, str):
            stdin = io.TextIOWrapper(io.BytesIO(stdin.encode("utf-8")), encoding="utf-8")
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        self.patch(sys, "stdin", stdin)
        try:
            code = main(["users", *argv, "--config", str(self.config)])
        except SystemExit as exit:
            code = int(exit.code or 0)
        self.assertNotIn("Traceback", err.getvalue())
        return code, out.getvalue(), err.getvalue()

    def ok(self, *argv: str, stdin: str = "") -> str:
        code, out, err = self.run_cli(*argv, stdin=stdin)
        self.assertEqual((code, err), (0, ""), argv)
        return out

    def fails(self, *argv: str, stdin: str = "") -> str:
        """Run a command that must fail with one short line on stderr; return it."""
        code, out, err = self.run_cli(*argv, stdin=stdin)
        self.assertEqual(code, 1, argv)
        self.assertEqual(out, "")
        lines = err.splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertTrue(lines[0].startswith("securetransport: "), lines[0])
        return lines[0]

    def account(self, name: str) -> Account | None:
        store = SQLiteUserStore(self.db)
        try:
            return store.get(name)
        finally:
            store.close()

    def test_add_with_password(self) -> None:
        out = self.ok("add", "alice", "--password-stdin", stdin="pa ss wörd \n")
        self.assertIn("alice", out)
        alice = self.account("alice")
        assert alice is not None
        self.assertTrue(verify_password(alice.password_hash, "pa ss wörd "))
        self.assertFalse(verify_password(alice.password_hash, "pa ss wörd"))
        self.assertEqual(alice.home, "")
        home = self.home_root / "alice"
        self.assertTrue(home.is_dir())
        self.assertEqual(stat.S_IMODE(home.stat().st_mode), 0o750)
        self.assertEqual(stat.S_IMODE(self.db.stat().st_mode), 0o600)

    def test_crlf_and_no_line_ending(self) -> None:
        self.ok("add", "a", "--password-stdin", stdin="secret\r\nignored\n")
        self.ok("add", "b", "--password-stdin", stdin="secret")
        for name in ("a", "b"):
            account = self.account(name)
            assert account is not None
            self.assertTrue(verify_password(account.password_hash, "secret"))

    def test_plain_text_stdin(self) -> None:
        code, _, err = self.run_cli("add", "c", "--password-stdin", stdin=io.StringIO("pw\n"))
        self.assertEqual((code, err), (0, ""))
        account = self.account("c")
        assert account is not None
        self.assertTrue(verify_password(account.password_hash, "pw"))

    def test_add_everything(self) -> None:
        self.ok(
            "add",
            "bob@example.com",
            "--group",
            "staff",
            "--group",
            "ops",
            "--group",
            "staff",
            "--home",
            "team/./bob/",
            "--certificate",
            str(self.pem),
            "--read-only",
        )
        self.assertEqual(
            self.account("bob@example.com"),
            Account(
                name="bob@example.com",
                password_hash=None,
                groups=("staff", "ops"),
                home="team/bob",
                certificates=(self.fingerprint,),
                read_only=True,
            ),
        )
        self.assertTrue((self.home_root / "team" / "bob").is_dir())

    def test_add_existing_home_folder_kept(self) -> None:
        home = self.home_root / "shared"
        home.mkdir(parents=True)
        (home / "file").write_text("data")
        self.ok("add", "carol", "--home", "shared")
        self.assertEqual((home / "file").read_text(), "data")

    def test_add_refusals(self) -> None:
        self.ok("add", "alice")
        self.assertIn("exists", self.fails("add", "alice"))
        self.fails("add", ".hidden")
        self.fails("add", "a/b")
        self.fails("add", "x" * 65)
        self.fails("add", "bad", "--group", "no spaces")
        self.assertIn("empty", self.fails("add", "bad", "--password-stdin", stdin="\n"))
        self.fails("add", "bad", "--password-stdin", stdin="")
        self.fails("add", "bad", "--certificate", str(self.folder / "missing.crt"))
        (self.folder / "junk.pem").write_text("junk")
        self.fails("add", "bad", "--certificate", str(self.folder / "junk.pem"))
        self.assertIsNone(self.account("bad"))
        self.assertFalse((self.home_root / "bad").exists())

    def test_home_must_stay_below_home_root(self) -> None:
        self.home_root.mkdir()
        outside = self.folder / "outside"
        outside.mkdir()
        (self.home_root / "link").symlink_to(outside)
        for home in ["../x", "/etc", ".", "a/../..", "..", "link", "link/sub"]:
            self.fails("add", "eve", "--home", home)
        self.assertIsNone(self.account("eve"))
        self.assertEqual(os.listdir(outside), [])
        self.ok("add", "eve", "--home", "a/../eve-home")
        eve = self.account("eve")
        assert eve is not None
        self.assertEqual(eve.home, "eve-home")

    def test_list_and_show(self) -> None:
        self.assertEqual(self.ok("list"), "")
        self.ok("add", "bob", "--password-stdin", "--group", "g1", stdin="pw\n")
        self.ok("add", "alice", "--certificate", str(self.pem), "--read-only")
        self.ok("disable", "bob")
        listing = self.ok("list")
        lines = listing.splitlines()
        self.assertEqual(len(lines), 3)
        self.assertTrue(lines[0].startswith("NAME"))
        self.assertTrue(lines[1].startswith("alice "))
        self.assertIn(self.fingerprint, lines[1])
        self.assertTrue(lines[2].startswith("bob "))
        self.assertIn("g1", lines[2])
        self.assertNotIn("argon2", listing)
        shown = self.ok("show", "alice").splitlines()
        self.assertIn("name: alice", shown)
        self.assertIn("read-only: yes", shown)
        self.assertIn("enabled: yes", shown)
        self.assertIn(f"certificate: {self.fingerprint}", shown)
        self.assertIn("password: none (certificate login only)", shown)
        bob = self.ok("show", "bob")
        self.assertIn("enabled: no", bob)
        self.assertIn("password: set", bob)
        self.assertIn("groups: g1", bob)
        self.assertNotIn("argon2", bob)
        self.assertIn("no such account", self.fails("show", "nobody"))

    def test_passwd(self) -> None:
        self.ok("add", "alice", "--password-stdin", stdin="old\n")
        self.ok("passwd", "alice", "--password-stdin", stdin="new\n")
        alice = self.account("alice")
        assert alice is not None
        self.assertTrue(verify_password(alice.password_hash, "new"))
        self.assertFalse(verify_password(alice.password_hash, "old"))
        self.fails("passwd", "alice", stdin="other\n")
        self.fails("passwd", "alice", "--password-stdin", stdin="\n")
        self.fails("passwd", "nobody", "--password-stdin", stdin="x\n")
        alice = self.account("alice")
        assert alice is not None
        self.assertTrue(verify_password(alice.password_hash, "new"))

    def test_disable_enable(self) -> None:
        self.ok("add", "alice")
        self.ok("disable", "alice")
        alice = self.account("alice")
        assert alice is not None
        self.assertFalse(alice.enabled)
        self.assertIn("already", self.ok("disable", "alice"))
        self.ok("enable", "alice")
        alice = self.account("alice")
        assert alice is not None
        self.assertTrue(alice.enabled)
        self.fails("enable", "nobody")

    def test_remove_keeps_home(self) -> None:
        self.ok("add", "alice")
        out = self.ok("remove", "alice")
        self.assertIn("kept", out)
        self.assertIsNone(self.account("alice"))
        self.assertTrue((self.home_root / "alice").is_dir())
        self.fails("remove", "alice")

    def test_certificates(self) -> None:
        self.ok("add", "alice")
        self.assertIn(self.fingerprint, self.ok("certificate", "add", "alice", str(self.pem)))
        self.assertIn("already", self.ok("certificate", "add", "alice", str(self.pem)))
        code, out, err = self.run_cli("certificate", "add", "alice", str(self.server_pem))
        self.assertEqual(code, 0)
        self.assertIn("warning:", err)
        self.assertIn("clientAuth", err)
        alice = self.account("alice")
        assert alice is not None
        self.assertEqual(len(alice.certificates), 2)
        self.assertEqual(alice.certificates[0], self.fingerprint)

        colons = ":".join(self.fingerprint[i : i + 2] for i in range(0, 64, 2)).upper()
        self.ok("certificate", "remove", "alice", colons)
        alice = self.account("alice")
        assert alice is not None
        self.assertNotIn(self.fingerprint, alice.certificates)
        self.assertIn("not pinned", self.fails("certificate", "remove", "alice", self.fingerprint))
        self.fails("certificate", "remove", "alice", "abc")
        self.fails("certificate", "add", "nobody", str(self.pem))
        self.fails("certificate", "add", "alice", str(self.folder / "missing.pem"))

    def test_expired_certificate_warns(self) -> None:
        import datetime

        now = datetime.datetime.now(datetime.UTC)
        ca, ca_key = make_ca("Old CA")
        old, _ = issue_certificate(
            ca,
            ca_key,
            cn="alice",
            not_before=now - datetime.timedelta(days=10),
            not_after=now - datetime.timedelta(days=1),
        )
        path = write_pem(self.folder / "old.crt", old)
        code, _, err = self.run_cli("add", "alice", "--certificate", str(path))
        self.assertEqual(code, 0)
        self.assertIn("expired", err)

    def test_bad_config(self) -> None:
        self.config.write_text('[server]\nusers = "mysql://x"\nbogus = 1\n')
        code, out, err = self.run_cli("list")
        self.assertEqual(code, 1)
        self.assertEqual(out, "")
        self.assertIn("bogus", err)
        self.config.unlink()
        code, _, err = self.run_cli("list")
        self.assertEqual(code, 1)
        self.assertIn(str(self.config), err)

    def test_usage_errors(self) -> None:
        code, _, err = self.run_cli()
        self.assertEqual(code, 2)
        self.assertIn("usage:", err)
        code, _, err = self.run_cli("add")
        self.assertEqual(code, 2)
        code, _, err = self.run_cli("certificate", "add", "alice")
        self.assertEqual(code, 2)

    def test_config_before_subcommand(self) -> None:
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        self.assertEqual(main(["--config", str(self.config), "users", "add", "zed"]), 0)
        self.assertEqual(main(["-c", str(self.config), "users", "list"]), 0)
        self.assertIn("zed", out.getvalue())

    def test_store_error_is_one_line(self) -> None:
        db: Any = self.db
        db.parent.mkdir(parents=True)
        db.write_bytes(b"not a database" * 200)
        self.assertIn("user store", self.fails("list"))
