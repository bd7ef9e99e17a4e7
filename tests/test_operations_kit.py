"""The operations kit in etc/: the HAProxy example and the systemd unit are valid as shipped."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.balancer import haproxy_binary

ETC = Path(__file__).resolve().parent.parent / "etc"


class OperationsKit(SynchronousTestCase):
    def test_haproxy_example_is_valid(self) -> None:
        result = subprocess.run(
            [haproxy_binary(), "-c", "-f", str(ETC / "haproxy" / "haproxy.cfg")],
            capture_output=True,
            text=True,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        text = (ETC / "haproxy" / "haproxy.cfg").read_text()
        self.assertIn("send-proxy-v2", text)
        self.assertIn("option httpchk GET /health", text)

    def test_systemd_unit_verifies(self) -> None:
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise AssertionError("systemd-analyze is missing: apt-get install -y systemd")
        unit = (ETC / "systemd" / "securetransport.service").read_text()
        venv = Path(__file__).resolve().parent.parent / ".venv"
        copy = Path(self.mktemp())
        copy.mkdir()
        target = copy / "securetransport.service"
        target.write_text(unit.replace("/opt/securetransport/.venv", str(venv)))
        result = subprocess.run([analyze, "verify", str(target)], capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        for needed in ("--nodaemon", "--uid securetransport", "ExecReload=/bin/kill -HUP $MAINPID"):
            self.assertIn(needed, unit)
        # systemd must wait longer than the default drain before SIGKILL
        self.assertIn("TimeoutStopSec=45", unit)

    def test_logrotate_reopens_through_a_reload(self) -> None:
        text = (ETC / "logrotate.d" / "securetransport").read_text()
        self.assertIn("systemctl reload securetransport.service", text)
        self.assertIn("nocreate", text)
