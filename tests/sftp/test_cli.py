"""`securetransport users key ...`, `users add --key`, `users show`, `check` with
ssh.host_keys and `policy explain --protocol sftp`, run through securetransport.cli.main."""

from __future__ import annotations

import io
import json
import shutil
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from securetransport.cli import main
from securetransport.config import load_config
from securetransport.edge.settings import settings_digest
from securetransport.sftp.keys import write_ssh_keys
from securetransport.userstore import ssh_key_fingerprint

CONFIG = """\
[server]
home_root = "home"
users = "sqlite:users.sqlite3"

[[listen]]
address = "127.0.0.1"
port = 2222
protocol = "sftp"

[ssh]
host_keys = ["keys/ssh_host_ed25519_key"]

[[class]]
name = "keys"
users = ["alice"]
ssl = "optional"
login = ["publickey"]

[[class]]
name = "rest"
ssl = "optional"
login = ["password"]
"""


class SSHCommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="st-sshcli-")).resolve()
        self.addCleanup(shutil.rmtree, self.folder, True)
        self.config = self.folder / "st.toml"
        self.config.write_text(CONFIG)
        self.keys = write_ssh_keys(self.folder / "keys", ["alice", "bob"])
        self.alice_pub = self.folder / "keys" / "alice_ed25519.pub"
        self.bob_pub = self.folder / "keys" / "bob_ed25519.pub"

    def run_cli(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        try:
            code = main([*argv, "--config", str(self.config)])
        except SystemExit as exit:
            code = int(exit.code or 0)
        self.assertNotIn("Traceback", err.getvalue())
        return code, out.getvalue(), err.getvalue()

    def test_add_show_remove(self) -> None:
        alice = ssh_key_fingerprint(self.keys["alice_ed25519"])
        bob = ssh_key_fingerprint(self.keys["bob_ed25519"])
        self.assertEqual(self.run_cli("users", "add", "alice", "--key", str(self.alice_pub))[0], 0)
        code, out, _ = self.run_cli("users", "key", "add", "alice", str(self.bob_pub))
        self.assertEqual((code, out), (0, f"alice: added SSH key {bob}\n"))
        code, out, _ = self.run_cli("users", "show", "alice")
        self.assertIn(f"ssh key: {alice} ssh-ed25519 alice\n", out)
        self.assertIn(f"ssh key: {bob} ssh-ed25519 bob\n", out)
        code, out, _ = self.run_cli("users", "key", "remove", "alice", bob[7:])  # prefix optional
        self.assertEqual(code, 0)
        code, out, err = self.run_cli("users", "key", "remove", "alice", bob)
        self.assertEqual((code, out), (1, ""))
        self.assertIn("no SSH key", err)
        code, out, _ = self.run_cli("users", "show", "alice")
        self.assertNotIn(bob, out)

    def test_bad_key_files(self) -> None:
        self.run_cli("users", "add", "alice")
        private = self.folder / "keys" / "alice_ed25519"
        for path, words in (
            (private, "OpenSSH public key"),
            (self.folder / "none.pub", "No such file"),
        ):
            code, out, err = self.run_cli("users", "key", "add", "alice", str(path))
            self.assertEqual((code, out), (1, ""))
            self.assertIn(words, err)
        code, _, err = self.run_cli("users", "key", "remove", "alice", "SHA256:short")
        self.assertEqual(code, 1)
        self.assertIn("fingerprint", err)

    def test_check_loads_host_keys(self) -> None:
        digest = settings_digest(load_config(self.config))
        self.assertRegex(digest, "^[0-9a-f]{64}$")
        self.assertEqual(self.run_cli("check")[:2], (0, f"OK\nssl-access digest {digest}\n"))
        (self.folder / "keys" / "ssh_host_ed25519_key").chmod(0o640)
        code, out, err = self.run_cli("check")
        self.assertEqual(code, 1)
        self.assertTrue(err.startswith("ssh.host_keys[1]: "), err)

    def test_policy_explain_sftp(self) -> None:
        self.run_cli("users", "add", "alice", "--key", str(self.alice_pub))
        code, out, _ = self.run_cli(
            "policy", "explain", "alice", "--protocol", "sftp", "--key", str(self.alice_pub)
        )
        self.assertEqual(
            (code, out),
            (0, 'class: keys (matched: users "alice")\nmethods: publickey\npublickey: accepted\n'),
        )
        code, out, _ = self.run_cli(
            "policy", "explain", "alice", "--protocol", "sftp", "--key", str(self.bob_pub), "--json"
        )
        self.assertEqual(
            json.loads(out),
            {
                "class": "keys",
                "matched": 'users "alice"',
                "methods": ["publickey"],
                "publickey": {"accepted": False, "reason": "key not registered on the account"},
            },
        )
        code, out, _ = self.run_cli(
            "policy", "explain", "zed", "--protocol", "sftp", "--key", str(self.bob_pub)
        )
        self.assertIn(
            "methods: password\npublickey: refused class rest does not allow publickey", out
        )
        code, out, _ = self.run_cli("policy", "explain", "zed", "--protocol", "sftp", "--json")
        self.assertIsNone(json.loads(out)["publickey"])
