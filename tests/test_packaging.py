"""The twistd plugin is packaged: a wheel from the repo installs in a fresh venv and serves."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from twisted.trial.unittest import TestCase

from hardening.server import free_port

REPO = Path(__file__).resolve().parent.parent


class WheelTests(TestCase):
    timeout = 240

    def setUp(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="st-wheel-"))
        self.addCleanup(shutil.rmtree, self.work, True)

    def run_checked(self, args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(args, capture_output=True, text=True, timeout=180, **kwargs)  # type: ignore[call-overload]
        self.assertEqual(result.returncode, 0, f"{args}: {result.stderr[-2000:]}")
        return result  # type: ignore[no-any-return]

    def test_wheel_installs_and_twistd_serves(self) -> None:
        wheels = self.work / "wheels"
        source = self.work / "src"
        # Build from a copy so the build leaves nothing in the checkout.
        listed = subprocess.run(
            ["git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        for name in listed:
            origin = REPO / name
            if origin.is_file():
                (source / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, source / name)
        self.run_checked(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--no-build-isolation",
                "-q",
                "-w",
                str(wheels),
                str(source),
            ]
        )
        [wheel] = list(wheels.glob("securetransport-*.whl"))
        venv = self.work / "venv"
        self.run_checked([sys.executable, "-m", "venv", str(venv)])
        python = venv / "bin" / "python"
        # The dependencies come from the test environment; the wheel itself is installed fresh.
        site = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        self.run_checked([str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel)])
        installed = Path(site, "twisted", "plugins", "securetransport_plugin.py")
        self.assertTrue(installed.exists())
        self.assertFalse(Path(site, "twisted", "__init__.py").exists())

        config = self.work / "st.toml"
        port = free_port()
        config.write_text(
            f'[server]\nhome_root = "home"\nusers = "sqlite:users.sqlite3"\nallow_root = true\n\n'
            f'[[listen]]\naddress = "127.0.0.1"\nport = {port}\ntls = "explicit"\n\n'
            f'[[class]]\nname = "everyone"\nssl = "optional"\nlogin = ["password"]\n'
            f'client_certificate = "off"\n'
        )
        check = self.run_checked(
            [str(venv / "bin" / "securetransport"), "check", "--config", str(config)]
        )
        self.assertRegex(check.stdout, r"\AOK\nssl-access digest [0-9a-f]{64}\n\Z")
        server = subprocess.Popen(
            [
                str(python),
                "-c",
                "from twisted.scripts.twistd import run; run()",
                "-n",
                "--pidfile=",
                "securetransport",
                "--config",
                str(config),
            ],
            cwd=self.work,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        try:
            greeting = b""
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not greeting:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                        greeting = sock.recv(200)
                except OSError:
                    if server.poll() is not None:
                        break
                    time.sleep(0.2)
            self.assertTrue(greeting.startswith(b"220 "), greeting)
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                output, _ = server.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                output, _ = server.communicate()
        # twistd ends a clean SIGTERM shutdown by re-raising the signal on itself.
        self.assertIn(server.returncode, (0, -signal.SIGTERM), output[-2000:])
        self.assertIn("Server Shut Down.", output)
        self.assertNotIn("Traceback", output)
