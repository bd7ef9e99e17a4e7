"""`server.workers = 2` with an SFTP listener: twistd as a subprocess (a supervisor and two
workers adopting the same socket), OpenSSH sftp round trips checked by SHA-256."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from hardening.server import free_port
from securetransport.sftp.keys import write_ssh_keys
from securetransport.stores import open_user_store
from securetransport.userstore import Account
from tests.e2e.harness import random_file, require_tool, sha256_file

REPO = Path(__file__).resolve().parent.parent.parent


class WorkersSFTPTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="st-sftp-workers-")).resolve()
        self.addCleanup(shutil.rmtree, self.root, True)
        self.keys = write_ssh_keys(self.root / "keys", ["alice"])
        self.port = free_port()
        root_line = "allow_root = true" if os.geteuid() == 0 else ""
        (self.root / "st.toml").write_text(
            f"""
[server]
home_root = "home"
users = "sqlite:users.sqlite3"
audit_log = "audit.jsonl"
workers = 2
{root_line}

[[listen]]
address = "127.0.0.1"
port = {self.port}
protocol = "sftp"

[ssh]
host_keys = ["keys/ssh_host_ed25519_key"]

[[class]]
name = "keys"
login = ["publickey"]
"""
        )
        store = open_user_store(f"sqlite:{self.root / 'users.sqlite3'}")
        store.add(Account(name="alice", ssh_keys=(self.keys["alice_ed25519"],)))
        store.close()
        host = self.keys["ssh_host_ed25519_key"].rsplit(" ", 1)[0]
        (self.root / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {host}\n")
        self.log = self.root / "twistd.log"
        environ = dict(os.environ, PYTHONPATH=str(REPO))
        with self.log.open("wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                 "-n", "--pidfile=", "securetransport", "--config", "st.toml"],
                cwd=self.root, stdout=sink, stderr=subprocess.STDOUT, env=environ,
                start_new_session=True,
            )  # fmt: skip
        self.addCleanup(self.stop)
        deadline = time.monotonic() + 30
        while self.log.read_text().count("serving SFTP") < 2:
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.fail(f"the workers did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def test_round_trips_with_two_workers(self) -> None:
        sftp = require_tool("sftp")
        digest = random_file(self.root / "up.bin", 2_000_000)
        for n in range(6):
            (self.root / "batch").write_text(f"put up.bin /f{n}.bin\nget /f{n}.bin back{n}.bin\n")
            done = subprocess.run(
                [sftp, "-o", f"UserKnownHostsFile={self.root / 'known_hosts'}",
                 "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                 "-o", "IdentitiesOnly=yes", "-i", str(self.root / "keys" / "alice_ed25519"),
                 "-P", str(self.port), "-b", "batch", "alice@127.0.0.1"],
                cwd=self.root, capture_output=True, timeout=60, check=False,
            )  # fmt: skip
            self.assertEqual(done.returncode, 0, done.stderr)
            self.assertEqual(sha256_file(self.root / "home" / "alice" / f"f{n}.bin"), digest)
            self.assertEqual(sha256_file(self.root / f"back{n}.bin"), digest)
        self.assertNotIn("Traceback", self.log.read_text())
