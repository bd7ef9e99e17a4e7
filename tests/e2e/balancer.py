"""Two twistd nodes (127.0.0.2, 127.0.0.3) on one PostgreSQL and one file tree, behind HAProxy.

HAProxy (the Debian package, in the foreground with `-db -f FILE`) listens on 127.0.0.1:
one frontend for the control port (round robin, `send-proxy-v2`, health checks on each
node's `/health`) and one frontend per node's passive slice (a `server` line without a
port keeps the frontend's port). Clients connect from 127.0.0.5, so the nodes can only
know that address from the PROXY header. Missing HAProxy fails loudly (`.ci/run`
installs it).
"""

from __future__ import annotations

import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from hardening import unprivileged
from hardening.server import DEFAULT_CLASSES, PASSWORD, free_port, twistd_path
from securetransport.passwords import hash_password
from securetransport.pgstore import PostgreSQLUserStore, upgrade
from securetransport.pki import init_pki
from securetransport.sftp.keys import write_ssh_keys
from securetransport.userstore import Account

CLIENT = "127.0.0.5"  # the clients' source address
BALANCER = "127.0.0.1"
SLICE = 20  # passive ports per node


def reachable_root(case: object) -> Path:
    """A new folder under the system temp folder that an unprivileged server can reach
    (the checkout may lie in a 0700 folder), removed after the test."""
    folder = unprivileged.readable_folder("st-nodes-")
    case.addCleanup(shutil.rmtree, folder, True)  # type: ignore[attr-defined]
    return folder / "root"


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )
    if found is None:
        raise AssertionError("haproxy is not installed: run .ci/run (apt-get install -y haproxy)")
    return found


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return None


class Node:
    """One twistd node: its own address, control port, passive slice and metrics port."""

    def __init__(self, cluster: Cluster, name: str, address: str, passive_first: int) -> None:
        self.cluster = cluster
        self.name = name
        self.address = address
        self.port = free_port(address)
        self.sftp_port = free_port(address)
        self.metrics_port = free_port(address)
        self.passive = (passive_first, passive_first + SLICE - 1)
        self.config_path = cluster.root / f"{name}.toml"
        self.log_path = cluster.root / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        self.config_path.write_text(
            f"""
[server]
allow_root = true
home_root = "home"
users = "{self.cluster.url}"
audit_log = "log/{self.name}-audit.jsonl"
xferlog = "log/{self.name}-xferlog"
shutdown_grace = 30

[[listen]]
address = "{self.address}"
port = {self.port}
tls = "explicit"

[[listen]]
address = "{self.address}"
port = {self.sftp_port}
protocol = "sftp"

[ssh]
host_keys = ["pki/ssh_host_ed25519_key"]

[passive]
ports = "{self.passive[0]}-{self.passive[1]}"
address = "{BALANCER}"

[tls]
certificate = "pki/server.crt"
private_key = "pki/server.key"
client_ca = "pki/ca.crt"

[proxy]
from = ["{BALANCER}/32"]

[metrics]
address = "{self.address}"
port = {self.metrics_port}
{DEFAULT_CLASSES}
"""
        )

    def start(self, timeout: float = 30) -> Node:
        self.write_config()
        args = [twistd_path(), "-n", "--pidfile="]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        run_as = self.cluster.run_as
        if run_as is not None:
            # After the drop it still imports: from copies it can read, not the checkout.
            python = unprivileged.runtime()
            args = [*python.twistd_command(), "-n", "--pidfile="]
            args += ["--uid", str(run_as[0]), "--gid", str(run_as[1])]
            env = python.env(env)
        args += ["securetransport", "--config", str(self.config_path)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=str(self.cluster.root), env=env,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"node {self.name} exited:\n{self.log()[-3000:]}")
            if self.health() == 200:
                return self
            time.sleep(0.1)
        raise AssertionError(f"node {self.name} did not start:\n{self.log()[-3000:]}")

    def health(self) -> int | None:
        return http_status(f"http://{self.address}:{self.metrics_port}/health")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def wait(self, timeout: float) -> int | None:
        assert self.process is not None
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        if self.process is None:
            return
        self.signal(signal.SIGKILL)
        self.process.wait(timeout=10)


class Cluster:
    """PKI, accounts in PostgreSQL, the shared tree, two nodes and HAProxy."""

    def __init__(self, root: Path, url: str, users: tuple[str, ...] = ("alice",)) -> None:
        self.root = root.absolute()
        self.url = url
        self.root.mkdir(parents=True, exist_ok=True)
        self.pki = self.root / "pki"
        init_pki(self.pki, list(users))
        write_ssh_keys(self.pki, list(users))  # the nodes' SFTP host key
        upgrade(url)
        store = PostgreSQLUserStore(url)
        try:
            for name in users:
                store.add(Account(name=name, password_hash=hash_password(PASSWORD)))
        finally:
            store.close()
        self.home = self.root / "home"
        for name in users:
            (self.home / name).mkdir(parents=True, exist_ok=True)
        (self.root / "log").mkdir(exist_ok=True)
        self.run_as = self._unprivileged()
        first = random.randrange(61000, 64000 - 2 * SLICE)
        self.nodes = [
            Node(self, "a", "127.0.0.2", first),
            Node(self, "b", "127.0.0.3", first + SLICE),
        ]
        self.port = free_port(BALANCER)
        self.sftp_port = free_port(BALANCER)
        self.haproxy_config = self.root / "haproxy.cfg"
        self.haproxy: subprocess.Popen[bytes] | None = None

    def _unprivileged(self) -> tuple[int, int] | None:
        """Serve as "nobody" when root (as a deployment would); the tree becomes its own."""
        if os.geteuid() != 0:
            return None
        entry = pwd.getpwnam("nobody")
        self.root.parent.chmod(0o755)  # mkdtemp's 0700 would keep "nobody" out
        for parent in self.root.parents:
            if not parent.stat().st_mode & 0o001:
                raise AssertionError(f"{parent} is not searchable by nobody: use another root")
        for folder, _dirs, files in os.walk(self.root):
            os.chown(folder, entry.pw_uid, entry.pw_gid)
            for name in files:
                os.chown(os.path.join(folder, name), entry.pw_uid, entry.pw_gid)
        return entry.pw_uid, entry.pw_gid

    def give(self, path: Path) -> None:
        if self.run_as is not None:
            os.chown(path, *self.run_as)

    def write_haproxy_config(self) -> None:
        servers = "\n".join(
            f"    server {n.name} {n.address}:{n.port} check port {n.metrics_port}"
            for n in self.nodes
        )
        sftp_servers = "\n".join(
            f"    server {n.name} {n.address}:{n.sftp_port} check port {n.metrics_port}"
            for n in self.nodes
        )
        passive = "\n".join(
            f"""
frontend passive_{n.name}
    bind {BALANCER}:{n.passive[0]}-{n.passive[1]}
    default_backend passive_{n.name}

backend passive_{n.name}
    server {n.name} {n.address} send-proxy-v2
"""
            for n in self.nodes
        )
        self.haproxy_config.write_text(
            f"""
global
    maxconn 2000

defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    retries 2
    option redispatch

frontend ftp
    bind {BALANCER}:{self.port}
    default_backend nodes

backend nodes
    balance roundrobin
    option httpchk GET /health
    default-server inter 300ms fall 2 rise 2 send-proxy-v2
{servers}

frontend sftp
    bind {BALANCER}:{self.sftp_port}
    default_backend sftp_nodes

backend sftp_nodes
    balance roundrobin
    option httpchk GET /health
    default-server inter 300ms fall 2 rise 2 send-proxy-v2
{sftp_servers}
{passive}
"""
        )

    def start(self) -> Cluster:
        for node in self.nodes:
            node.start()
        self.write_haproxy_config()
        check = subprocess.run(
            [haproxy_binary(), "-c", "-f", str(self.haproxy_config)], capture_output=True
        )
        if check.returncode != 0:
            raise AssertionError(f"haproxy -c: {check.stderr.decode()[-2000:]}")
        self.haproxy = subprocess.Popen(
            [haproxy_binary(), "-db", "-f", str(self.haproxy_config)],
            stdout=open(self.root / "haproxy.log", "wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(
                    (BALANCER, self.port), timeout=2, source_address=(CLIENT, 0)
                ) as probe:
                    probe.settimeout(5)
                    if probe.recv(64).startswith(b"220"):
                        break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError("haproxy does not answer")
        time.sleep(1.0)  # both servers seen up by the health checks (rise 2, inter 300 ms)
        return self

    def stop(self) -> None:
        if self.haproxy is not None and self.haproxy.poll() is None:
            self.haproxy.send_signal(signal.SIGTERM)
            try:
                self.haproxy.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.haproxy.kill()
                self.haproxy.wait()
        for node in self.nodes:
            node.stop()

    def audit(self, node: Node) -> list[dict[str, object]]:
        import json

        path = self.root / "log" / f"{node.name}-audit.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
