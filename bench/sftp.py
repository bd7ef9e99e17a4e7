"""`python -m bench.sftp`: SFTP get and put MB/s, server CPU per GiB and logins/s.

Three servers, the same client (OpenSSH `sftp -b`), the same file, the same run, the
servers alternated repetition by repetition:

- securetransport (twistd, its `protocol = "sftp"` listener, a key login),
- OpenSSH's sshd with its sftp-server (a config of our own on a high loopback port),
- asyncssh's SFTP server (bench/peer_asyncssh_sftp.py).

Server CPU is read from a cgroup per server when one can be made (it counts sshd's
session processes too), else from the server's process tree. Each get is checked by
SHA-256. Results go to bench/results/sftp-STAMP.json and a table to stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import cgroup, procfs

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
START_TIMEOUT = 30.0
RUN_TIMEOUT = 600.0
# One key exchange for every server: OpenSSH 9.x would otherwise pick sntrup761x25519
# with sshd (several times the CPU of a login) and curve25519 with the others.
KEX = "curve25519-sha256"


class Unavailable(Exception):
    """A server that cannot run here; the message says why."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise Unavailable(f"exited with {process.returncode}: {log.read_text()[-300:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise Unavailable(f"not listening on {port} after {START_TIMEOUT:.0f} s")


def ed25519_pair(path: Path) -> None:
    from securetransport.sftp.keys import write_ed25519_pair

    write_ed25519_pair(path, path.name)


@dataclass
class Server:
    """One server under test: started in its own cgroup when possible."""

    name: str
    work: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    group: cgroup.CpuCgroup | None = None
    version: str = ""

    def argv(self) -> list[str]:
        raise NotImplementedError

    def prepare(self, client_key: Path) -> None:
        """Write configs and keys; Unavailable when the server is missing."""

    def remote(self, name: str) -> str:
        """The path the client names for file `name`."""
        return name

    def local(self, name: str) -> Path:
        """Where file `name` lands on disk."""
        raise NotImplementedError

    def start(self, client_key: Path) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.prepare(client_key)
        self.group = cgroup.CpuCgroup.create(f"st-bench-sftp-{self.name}-{os.getpid()}")
        log = self.work / "server.log"
        with log.open("wb") as sink:
            self.process = subprocess.Popen(
                self.argv(),
                cwd=self.work,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                preexec_fn=self.group.preexec() if self.group else None,
                start_new_session=True,
                env=self.environ(),
            )
        wait_for_port(self.port, self.process, log)

    def environ(self) -> dict[str, str]:
        keep = ("PATH", "LANG", "LC_ALL", "HOME")
        return {k: os.environ[k] for k in keep if k in os.environ} | {"PYTHONPATH": str(REPO)}

    def cpu_seconds(self) -> float:
        if self.group is not None:
            return self.group.seconds()
        assert self.process is not None
        return procfs.tree_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, 15)
                self.process.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.process.pid, 9)
        if self.group is not None:
            self.group.remove()


class Ours(Server):
    def prepare(self, client_key: Path) -> None:
        from securetransport.userstore import Account, SQLiteUserStore

        ed25519_pair(self.work / "host")
        root_line = "allow_root = true" if os.geteuid() == 0 else ""
        (self.work / "st.toml").write_text(
            f"""
[server]
home_root = "home"
users = "sqlite:users.sqlite3"
max_sessions_per_address = 1000
{root_line}

[[listen]]
address = "127.0.0.1"
port = {self.port}
protocol = "sftp"

[ssh]
host_keys = ["host"]

[[class]]
name = "bench"
login = ["publickey"]
"""
        )
        store = SQLiteUserStore(self.work / "users.sqlite3")
        key = Path(f"{client_key}.pub").read_text().strip()
        if store.get("bench") is None:
            store.add(Account(name="bench", ssh_keys=(key,)))
        store.close()
        (self.work / "home" / "bench").mkdir(parents=True, exist_ok=True)
        from importlib.metadata import version

        self.version = version("securetransport")

    def argv(self) -> list[str]:
        return [str(BIN / "twistd"), "-n", "--pidfile=", "securetransport", "--config", "st.toml"]

    def local(self, name: str) -> Path:
        return self.work / "home" / "bench" / name


class OpenSSH(Server):
    SSHD = Path("/usr/sbin/sshd")
    SFTP_SERVER = Path("/usr/lib/openssh/sftp-server")

    def prepare(self, client_key: Path) -> None:
        if not self.SSHD.exists() or not self.SFTP_SERVER.exists():
            raise Unavailable("openssh-server is not installed (apt-get install openssh-server)")
        Path("/run/sshd").mkdir(exist_ok=True)
        ed25519_pair(self.work / "host")
        (self.work / "files").mkdir(exist_ok=True)
        authorized = self.work / "authorized_keys"
        authorized.write_text(Path(f"{client_key}.pub").read_text())
        authorized.chmod(0o600)
        (self.work / "sshd_config").write_text(
            f"""
Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.work / "host"}
PidFile none
AuthorizedKeysFile {authorized}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxStartups 100:30:200
LogLevel ERROR
Subsystem sftp {self.SFTP_SERVER}
"""
        )
        done = subprocess.run([str(self.SSHD), "-V"], capture_output=True, text=True, check=False)
        self.version = (done.stderr or done.stdout).strip().split(",")[0]

    def argv(self) -> list[str]:
        return [str(self.SSHD), "-D", "-e", "-f", str(self.work / "sshd_config")]

    def remote(self, name: str) -> str:
        return str(self.work / "files" / name)

    def local(self, name: str) -> Path:
        return self.work / "files" / name


class AsyncSSH(Server):
    def prepare(self, client_key: Path) -> None:
        try:
            from importlib.metadata import version

            self.version = "asyncssh " + version("asyncssh")
        except Exception as error:  # noqa: BLE001 - not installed
            raise Unavailable(f"asyncssh is not installed: {error}") from None
        ed25519_pair(self.work / "host")
        (self.work / "root").mkdir(exist_ok=True)
        (self.work / "authorized_keys").write_text(Path(f"{client_key}.pub").read_text())

    def argv(self) -> list[str]:
        return [
            sys.executable,
            str(BENCH / "peer_asyncssh_sftp.py"),
            str(self.port),
            str(self.work / "host"),
            str(self.work / "authorized_keys"),
            str(self.work / "root"),
        ]

    def remote(self, name: str) -> str:
        return "/" + name

    def local(self, name: str) -> Path:
        return self.work / "root" / name


SERVERS = {"securetransport": Ours, "openssh": OpenSSH, "asyncssh": AsyncSSH}


@dataclass
class Figures:
    put_mbs: list[float] = field(default_factory=list)
    get_mbs: list[float] = field(default_factory=list)
    put_cpu_per_gib: list[float] = field(default_factory=list)
    get_cpu_per_gib: list[float] = field(default_factory=list)
    logins_per_s: list[float] = field(default_factory=list)
    login_cpu_ms: list[float] = field(default_factory=list)

    def medians(self) -> dict[str, float]:
        return {
            key: round(statistics.median(values), 2)
            for key, values in self.__dict__.items()
            if values
        }


def sftp(
    server: Server, key: Path, known_hosts: Path, commands: str, cipher: str | None, work: Path
) -> float:
    """Run `sftp -b` and return its wall time; RuntimeError when it fails."""
    batch = work / "batch.txt"
    batch.write_text(commands + "\n")
    user = "root" if isinstance(server, OpenSSH) and os.geteuid() == 0 else "bench"
    if isinstance(server, OpenSSH) and os.geteuid() != 0:
        user = os.environ.get("USER", "bench")
    argv = [
        "sftp",
        "-q",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-i",
        str(key),
        "-P",
        str(server.port),
        *(["-c", cipher] if cipher else []),
        *(["-o", f"KexAlgorithms={KEX}"] if KEX else []),
        "-b",
        str(batch),
        f"{user}@127.0.0.1",
    ]
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, timeout=RUN_TIMEOUT, check=False, cwd=work)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"{server.name}: sftp exit {done.returncode}: {done.stderr[-300:]!r}")
    return seconds


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def measure(
    server: Server,
    args: argparse.Namespace,
    work: Path,
    source: Path,
    digest: str,
    figures: Figures,
) -> None:
    key, known = work / "client", work / f"known_hosts_{server.name}"
    size = source.stat().st_size
    mib = size / (1 << 20)
    before = server.cpu_seconds()
    seconds = sftp(server, key, known, f"put {source} {server.remote('f.bin')}", args.cipher, work)
    cpu = server.cpu_seconds() - before
    figures.put_mbs.append(mib / seconds)
    figures.put_cpu_per_gib.append(cpu * 1024 / mib)
    if sha256(server.local("f.bin")) != digest:
        raise RuntimeError(f"{server.name}: the uploaded file differs")
    back = work / "back.bin"
    back.unlink(missing_ok=True)
    before = server.cpu_seconds()
    seconds = sftp(server, key, known, f"get {server.remote('f.bin')} {back}", args.cipher, work)
    cpu = server.cpu_seconds() - before
    figures.get_mbs.append(mib / seconds)
    figures.get_cpu_per_gib.append(cpu * 1024 / mib)
    if sha256(back) != digest:
        raise RuntimeError(f"{server.name}: the downloaded file differs")
    server.local("f.bin").unlink()
    before = server.cpu_seconds()
    started = time.monotonic()
    for _ in range(args.logins):
        sftp(server, key, known, "bye", args.cipher, work)
    elapsed = time.monotonic() - started
    figures.logins_per_s.append(args.logins / elapsed)
    figures.login_cpu_ms.append((server.cpu_seconds() - before) * 1000 / args.logins)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sftp", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--size", type=int, default=256, metavar="MIB", help="file size (256)")
    parser.add_argument("--repetitions", type=int, default=3, help="runs per server (3)")
    parser.add_argument("--logins", type=int, default=20, help="logins per run (20)")
    parser.add_argument("--cipher", help="force a cipher (default: what the client picks)")
    parser.add_argument("--only", default=",".join(SERVERS), help="servers: " + ", ".join(SERVERS))
    parser.add_argument("--results", type=Path, default=BENCH / "results")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if shutil.which("sftp") is None:
        print(
            "bench.sftp: OpenSSH's sftp client is missing (apt-get install openssh-client)",
            file=sys.stderr,
        )
        return 2
    work = Path(tempfile.mkdtemp(prefix="st-bench-sftp-"))
    servers: list[Server] = []
    skipped: dict[str, str] = {}
    figures: dict[str, Figures] = {}
    try:
        ed25519_pair(work / "client")
        source = work / "source.bin"
        with source.open("wb") as stream:
            for _ in range(args.size):
                stream.write(os.urandom(1 << 20))
        digest = sha256(source)
        for name in args.only.split(","):
            server = SERVERS[name](name, work / name)
            try:
                server.start(work / "client")
            except Unavailable as error:
                skipped[name] = str(error)
                server.stop()
                continue
            servers.append(server)
            figures[name] = Figures()
        for repetition in range(args.repetitions):
            order = servers[repetition % len(servers) :] + servers[: repetition % len(servers)]
            for server in order:
                measure(server, args, work, source, digest, figures[server.name])
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "size_mib": args.size,
        "repetitions": args.repetitions,
        "cipher": args.cipher or "client default",
        "kex": KEX,
        "cpu_source": "cgroup" if all(s.group for s in servers) else "process tree",
        "servers": {s.name: {"version": s.version, **figures[s.name].medians()} for s in servers},
        "skipped": skipped,
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    ratios: dict[str, dict[str, float]] = {}
    ours = result["servers"].get("securetransport")
    for peer in ("asyncssh", "openssh"):
        theirs = result["servers"].get(peer)
        if ours and theirs:
            ratios[peer] = {
                key: round(ours[key] / theirs[key], 2)
                for key in ("put_mbs", "get_mbs", "logins_per_s")
            } | {
                key: round(theirs[key] / ours[key], 2)  # higher is better for us
                for key in ("put_cpu_per_gib", "get_cpu_per_gib")
                if ours.get(key)
            }
    result["ours_vs"] = ratios
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"sftp-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(render(result))
    print(f"results: {path}")
    return 0


def render(result: dict[str, Any]) -> str:
    columns = (
        "put_mbs",
        "get_mbs",
        "put_cpu_per_gib",
        "get_cpu_per_gib",
        "logins_per_s",
        "login_cpu_ms",
    )
    heads = ("put MB/s", "get MB/s", "put CPU s/GiB", "get CPU s/GiB", "logins/s", "login CPU ms")
    lines = [
        f"SFTP, {result['size_mib']} MiB, median of {result['repetitions']}, "
        f"cipher {result['cipher']}, CPU from {result['cpu_source']}",
        f"{'server':<16}" + "".join(f"{h:>15}" for h in heads),
    ]
    for name, values in result["servers"].items():
        lines.append(
            f"{name:<16}" + "".join(f"{values.get(c, float('nan')):>15.2f}" for c in columns)
        )
    for peer, ratio in result["ours_vs"].items():
        text = ", ".join(f"{k} {v:.2f}x" for k, v in ratio.items())
        lines.append(f"securetransport vs {peer} (>1 is better for us): {text}")
    for name, why in result["skipped"].items():
        lines.append(f"skipped {name}: {why}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
