"""twistd as root binds ports 21 and 990 and reads the key, then serves as an unprivileged user."""

from __future__ import annotations

import ftplib
import io
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from hardening.unprivileged import readable_folder, runtime
from securetransport.passwords import hash_password
from securetransport.pki import init_pki
from securetransport.stores import open_user_store
from securetransport.userstore import Account

PASSWORD = "drop-privileges-1"


def wait_for_greeting(port: int, process: subprocess.Popen[str], seconds: float = 30) -> bytes:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                return sock.recv(200)
        except OSError:
            if process.poll() is not None:
                return b""
            time.sleep(0.2)
    return b""


class PrivilegeDropTests(SynchronousTestCase):
    def test_binds_as_root_then_serves_as_nobody(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest("binding ports 21 and 990 needs root (CI runs as root)")
        nobody = pwd.getpwnam("nobody")
        # Outside the checkout, which may lie where "nobody" cannot go (issue #9.12).
        folder = readable_folder("st-priv-")
        self.addCleanup(shutil.rmtree, folder, True)
        init_pki(folder / "pki", [])  # keys 0600, owned by root: read before the drop
        data = folder / "data"
        (data / "home" / "alice").mkdir(parents=True)
        store = open_user_store(f"sqlite:{data / 'users.sqlite3'}")
        store.add(Account(name="alice", password_hash=hash_password(PASSWORD)))
        store.close()
        for path in [data, *data.rglob("*")]:
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        config = folder / "st.toml"
        config.write_text(
            '[server]\nhome_root = "data/home"\nusers = "sqlite:data/users.sqlite3"\n'
            'audit_log = "data/audit.jsonl"\n'
            '[[listen]]\naddress = "127.0.0.1"\nport = 21\ntls = "explicit"\n'
            '[[listen]]\naddress = "127.0.0.1"\nport = 990\ntls = "implicit"\n'
            '[passive]\nports = "62900-62999"\n'
            '[tls]\ncertificate = "pki/server.crt"\nprivate_key = "pki/server.key"\n'
            '[[class]]\nname = "all"\nssl = "mandatory"\nlogin = ["password"]\n'
            'client_certificate = "off"\nsession_reuse = "off"\n'
        )
        python = runtime()  # the interpreter and packages, where "nobody" can read them
        server = subprocess.Popen(
            [*python.twistd_command(), "-n",
             "--pidfile=", f"--uid={nobody.pw_uid}", f"--gid={nobody.pw_gid}",
             "securetransport", "--config", str(config)],
            cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=python.env(),
        )  # fmt: skip
        try:
            greeting = wait_for_greeting(21, server)
            self.assertTrue(greeting.startswith(b"220 "), greeting)
            status = Path(f"/proc/{server.pid}/status").read_text()
            uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
            self.assertEqual(set(uid_line.split()[1:]), {str(nobody.pw_uid)}, uid_line)

            context = ssl.create_default_context(cafile=str(folder / "pki" / "ca.crt"))
            ftp = ftplib.FTP_TLS(context=context, timeout=20)
            ftp.connect("127.0.0.1", 21)
            ftp.login("alice", PASSWORD)
            ftp.prot_p()
            ftp.storbinary("STOR note.txt", io.BytesIO(b"written by nobody\n"))
            ftp.quit()
            stored = data / "home" / "alice" / "note.txt"
            self.assertEqual(stored.read_bytes(), b"written by nobody\n")
            self.assertEqual(stored.stat().st_uid, nobody.pw_uid)
            # The implicit port on 990 was bound as root too and speaks TLS from the start.
            with socket.create_connection(("127.0.0.1", 990), timeout=10) as raw:
                with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    self.assertTrue(tls.recv(100).startswith(b"220 "))
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                output, _ = server.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                output, _ = server.communicate()
        self.assertNotIn("Traceback", output)


class UnprivilegedRuntimeTests(SynchronousTestCase):
    """Issue #9.12: what the server run as "nobody" needs lies where "nobody" can read it,
    wherever the checkout (and its .venv) lies."""

    def test_nobody_imports_the_server_from_the_runtime(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest("running a process as nobody needs root (CI runs as root)")
        nobody = pwd.getpwnam("nobody")
        python = runtime()
        code = (
            "import securetransport, securetransport.service, securetransport.worker, "
            "twisted.plugins.securetransport_plugin as plugin; "
            "print(securetransport.__file__); print(plugin.__file__)"
        )
        result = subprocess.run(
            [python.python, "-c", code],
            user=nobody.pw_uid, group=nobody.pw_gid, cwd="/", env=python.env(),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        self.assertEqual(result.returncode, 0, result.stderr)
        for line in result.stdout.splitlines():
            self.assertTrue(Path(line).is_relative_to(python.folder), line)

    def test_readable_folder(self) -> None:
        folder = readable_folder("st-readable-")
        self.addCleanup(shutil.rmtree, folder, True)
        for path in (folder, *folder.parents):
            self.assertTrue(path.stat().st_mode & 0o001, path)
