"""HAProxy in front of two nodes (tests/e2e/balancer.py): what SPEC section 10 promises."""

from __future__ import annotations

import ftplib
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from hardening.server import PASSWORD
from securetransport.proxy import format_v1
from tests.e2e.balancer import BALANCER, CLIENT, Cluster, Node, reachable_root
from tests.e2e.harness import random_file, require_tool, sha256_file
from tests.pg import shared_postgres


class BalancedCluster(SynchronousTestCase):
    def setUp(self) -> None:
        root = reachable_root(self)
        self.cluster = Cluster(root, shared_postgres().create_database())
        self.addCleanup(self.cluster.stop)
        self.cluster.start()
        self.work = root / "client"
        self.work.mkdir()

    def curl(self, *args: str, timeout: float = 60) -> subprocess.Popen[bytes]:
        """curl over explicit FTPS through the balancer, from CLIENT (control and data)."""
        command = [
            require_tool("curl"), "--silent", "--show-error", "--ssl-reqd", "--max-time", "60",
            "--cacert", str(self.cluster.pki / "ca.crt"), "--interface", CLIENT,
            "-u", f"alice:{PASSWORD}", *args,
        ]  # fmt: skip
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def url(self, path: str) -> str:
        return f"ftp://{BALANCER}:{self.cluster.port}/{path}"

    def run_curl(self, *args: str) -> None:
        process = self.curl(*args)
        out, err = process.communicate(timeout=90)
        self.assertEqual(process.returncode, 0, err.decode())

    def sessions(self, node: Node) -> int:
        return sum(1 for e in self.cluster.audit(node) if e.get("event") == "session-start")

    def serving(self, before: list[int], timeout: float = 10) -> Node:
        """The node that took the one new session since `before`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node, count in zip(self.cluster.nodes, before, strict=True):
                if self.sessions(node) > count:
                    return node
            time.sleep(0.05)
        raise AssertionError("no node took the session")

    def put(self, name: str, size: int) -> str:
        path = self.cluster.home / "alice" / name
        digest = random_file(path, size)
        self.cluster.give(path)
        return digest


class SpreadAndReuse(BalancedCluster):
    def test_sessions_spread_over_both_nodes_with_equal_sha256_and_tls_reuse(self) -> None:
        digest = self.put("shared.bin", 3 << 20)
        before = [self.sessions(n) for n in self.cluster.nodes]
        for index in range(6):
            target = self.work / f"down-{index}.bin"
            self.run_curl(self.url("shared.bin"), "-o", str(target))
            self.assertEqual(sha256_file(target), digest)
        upload = self.work / "up.bin"
        up_digest = random_file(upload, 1 << 20)
        for index in range(2):
            self.run_curl("-T", str(upload), self.url(f"up-{index}.bin"))
            # the shared tree: whichever node took it, the file is published for both
            self.assertEqual(
                sha256_file(self.cluster.home / "alice" / f"up-{index}.bin"), up_digest
            )
        new = [
            self.sessions(n) - count for n, count in zip(self.cluster.nodes, before, strict=True)
        ]
        self.assertEqual(sum(new), 8)
        self.assertGreater(min(new), 0, new)  # both nodes served
        for node in self.cluster.nodes:
            events = self.cluster.audit(node)
            starts = [e for e in events if e.get("event") == "session-start"]
            # the real client address came through PROXY v2, control and data alike
            self.assertEqual({e["client"] for e in starts}, {CLIENT})
            data_tls = [e for e in events if e.get("event") == "tls" and e.get("channel") == "data"]
            self.assertTrue(data_tls)
            self.assertTrue(all(e["resumed"] and e["accepted"] for e in data_tls), data_tls)

    def test_an_untrusted_proxy_sender_is_not_believed(self) -> None:
        node = self.cluster.nodes[0]
        earlier = self.sessions(node)
        with socket.create_connection(
            (node.address, node.port), timeout=10, source_address=(CLIENT, 0)
        ) as sock:
            sock.sendall(format_v1(("10.9.9.9", 1234), (node.address, node.port)))
            reader = sock.makefile("rb")
            greeting = reader.readline()
            answer = reader.readline()  # the header, read as a command
            sock.sendall(b"QUIT\r\n")
        self.assertTrue(greeting.startswith(b"220"), greeting)
        self.assertRegex(answer, rb"^5\d\d ")
        starts = [e for e in self.cluster.audit(node) if e.get("event") == "session-start"]
        self.assertEqual([e["client"] for e in starts[earlier:]], [CLIENT])  # not 10.9.9.9


class SFTPThroughTheBalancer(BalancedCluster):
    def test_sftp_sessions_spread_over_both_nodes_on_shared_accounts(self) -> None:
        """paramiko from CLIENT through HAProxy's SFTP frontend: the password account in
        PostgreSQL logs in on both nodes, files written through one node are read through
        the other (SHA-256), and each node sees the client's real address (PROXY v2)."""
        import paramiko

        payload = random_file(self.work / "sftp-up.bin", 2 << 20)
        before = [self.sessions(n) for n in self.cluster.nodes]
        for index in range(4):
            sock = socket.create_connection(
                (BALANCER, self.cluster.sftp_port), timeout=20, source_address=(CLIENT, 0)
            )
            transport = paramiko.Transport(sock)
            try:
                transport.connect(username="alice", password=PASSWORD)
                sftp = paramiko.SFTPClient.from_transport(transport)
                assert sftp is not None
                if index == 0:
                    sftp.put(str(self.work / "sftp-up.bin"), "sftp-up.bin")
                target = self.work / f"sftp-down-{index}.bin"
                sftp.get("sftp-up.bin", str(target))
                self.assertEqual(sha256_file(target), payload)
                sftp.close()
            finally:
                transport.close()
        self.assertEqual(sha256_file(self.cluster.home / "alice" / "sftp-up.bin"), payload)
        after = [self.sessions(n) for n in self.cluster.nodes]
        new = [n - b for n, b in zip(after, before, strict=True)]
        self.assertEqual(sum(new), 4)
        self.assertGreater(min(new), 0, new)  # round robin: both nodes served SFTP
        for node in self.cluster.nodes:
            events = self.cluster.audit(node)
            logins = [e for e in events if e.get("event") == "login"]
            self.assertTrue(logins, node.name)
            self.assertTrue(all(e.get("protocol") == "sftp" for e in logins), logins)
            starts = [e for e in events if e.get("event") == "session-start"]
            self.assertEqual({e["client"] for e in starts}, {CLIENT})


class NodeFailures(BalancedCluster):
    def test_sigterm_node_finishes_its_transfer_and_takes_no_new_one(self) -> None:
        digest = self.put("big.bin", 12 << 20)
        before = [self.sessions(n) for n in self.cluster.nodes]
        target = self.work / "big.bin"
        download = self.curl("--limit-rate", "3M", self.url("big.bin"), "-o", str(target))
        node = self.serving(before)
        other = next(n for n in self.cluster.nodes if n is not node)
        time.sleep(1.0)
        node.signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while node.health() != 503 and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(node.health(), 503)
        drained_count = self.sessions(node)
        for index in range(4):  # new sessions all go to the other node
            self.run_curl(
                self.url("big.bin"), "-o", str(self.work / f"new-{index}.bin"), "-r", "0-99"
            )
        self.assertEqual(self.sessions(node), drained_count)
        _, err = download.communicate(timeout=90)
        self.assertEqual(download.returncode, 0, err.decode())
        self.assertEqual(sha256_file(target), digest)
        self.assertIn(node.wait(30), (0, -signal.SIGTERM))
        self.assertEqual(other.health(), 200)

    def test_kill_9_publishes_no_partial_file_and_new_sessions_move(self) -> None:
        upload = self.work / "up.bin"
        random_file(upload, 16 << 20)
        before = [self.sessions(n) for n in self.cluster.nodes]
        process = self.curl("--limit-rate", "2M", "-T", str(upload), self.url("up.bin"))
        node = self.serving(before)
        other = next(n for n in self.cluster.nodes if n is not node)
        time.sleep(1.5)
        node.signal(signal.SIGKILL)
        node.wait(10)
        process.communicate(timeout=90)
        self.assertNotEqual(process.returncode, 0)
        home = self.cluster.home / "alice"
        self.assertFalse((home / "up.bin").exists())  # nothing published
        # the balancer's health check moves new sessions to the survivor
        moved_after = time.monotonic()
        before_other = self.sessions(other)
        for index in range(4):
            self.run_curl(self.url(""), "-o", str(self.work / f"list-{index}.txt"))
        self.assertEqual(self.sessions(other), before_other + 4)
        self.assertLess(time.monotonic() - moved_after, 30)
        self.assertIsNone(node.health())


class ChangesReachEveryNode(BalancedCluster):
    def connect(self) -> ftplib.FTP:
        ftp = ftplib.FTP(timeout=15, source_address=(CLIENT, 0))
        ftp.connect(BALANCER, self.cluster.port)
        return ftp

    def test_failures_through_the_balancer_ban_on_every_node(self) -> None:
        before = [self.sessions(n) for n in self.cluster.nodes]
        for index in range(5):  # max_login_failures, spread by round robin, one name each
            ftp = self.connect()
            with self.assertRaises(ftplib.error_perm):
                ftp.login(f"nobody{index}", "wrong")
            ftp.close()
        spread = [self.sessions(n) - c for n, c in zip(self.cluster.nodes, before, strict=True)]
        self.assertGreater(min(spread), 0, spread)
        banned_at = time.monotonic()
        for node in self.cluster.nodes:  # directly on each node, from the banned client
            while True:
                with socket.create_connection(
                    (node.address, node.port), timeout=10, source_address=(CLIENT, 0)
                ) as sock:
                    greeting = sock.makefile("rb").readline()
                if greeting.startswith(b"421"):
                    break
                self.assertLess(time.monotonic() - banned_at, 2.0, (node.name, greeting))
                time.sleep(0.1)

    def test_disable_by_the_command_ends_sessions_on_every_node_within_2_s(self) -> None:
        before = [self.sessions(n) for n in self.cluster.nodes]
        sessions = [self.connect() for _ in range(2)]  # round robin: one on each node
        for ftp in sessions:
            ftp.login("alice", PASSWORD)
        spread = [self.sessions(n) - c for n, c in zip(self.cluster.nodes, before, strict=True)]
        self.assertEqual(spread, [1, 1])
        result = subprocess.run(
            [str(Path(sys.executable).parent / "securetransport"), "--config",
             str(self.cluster.nodes[0].config_path), "users", "disable", "alice"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        # The change is committed when the command has returned: from there, at most 2 s
        # (the command's own start-up, a second or two on a loaded machine, is not ours).
        committed = time.monotonic()
        self.assertEqual(result.returncode, 0, result.stderr)
        for ftp in sessions:
            line = ftp.getline()
            self.assertTrue(line.startswith("421"), line)
            ftp.close()
        self.assertLess(time.monotonic() - committed, 2.0)
