"""The servers under test: how to prepare, start, find and stop each one."""

from __future__ import annotations

import ctypes
import os
import pwd
import secrets
import signal
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import debian, procfs
from bench.cgroup import CpuCgroup

CONTROL_PORTS = range(2200, 2300)
PASSIVE_BASE = 62000
PASSIVE_SLOT = 500  # passive ports per server: 62000-62499, 62500-62999, ...
PASSIVE_WINDOWS = 6  # 62000-64999 in all
LOCAL_USER = "stbench"  # system account for the peers that only know system users
START_TIMEOUT = 30.0
PR_SET_PDEATHSIG = 1
CGROUP_PREFIX = "securetransport-bench"
STOP_TIMEOUT = 10.0
COLD_PREFIX = "cold"  # cold-login accounts: cold00001, cold00002, ...
PEER_COLD_ACCOUNTS = 10_000


def cold_names(count: int) -> tuple[str, ...]:
    """The names of `count` cold-login accounts (the same for every server)."""
    return tuple(f"{COLD_PREFIX}{index:05d}" for index in range(1, count + 1))


class Unavailable(Exception):
    """A server that cannot be run on this machine; the message says why."""


class StartError(Exception):
    """A server that did not start serving; the message says why."""


@dataclass
class BenchEnv:
    """Paths and shared facts of one bench run."""

    repo: Path
    work: Path  # temporary folder of this run
    home: Path  # the folder every server serves (big file, listing folder, uploads)
    pki: Path  # ca.crt, server.crt, server.key
    cache: Path  # bench/.cache: unpacked Debian packages
    logs: Path
    idle_sessions: int  # the most sessions a server must accept at once
    scale_sessions: int = 0  # the most idle sessions of the scaled memory metrics (ours only)
    cold_accounts: int = 0  # accounts made for the cold-login metric (0: not run)
    local_crypt: str = "SHA512"  # chpasswd --crypt-method for LOCAL_USER's password
    local_password: str | None = None  # of LOCAL_USER, once set up
    notes: list[str] = field(default_factory=list)

    @property
    def venv_bin(self) -> Path:
        return Path(sys.executable).parent

    @property
    def max_sessions(self) -> int:
        return self.idle_sessions + 64

    @property
    def max_sessions_scaled(self) -> int:
        """The session limit for the servers the scaled memory metrics run on."""
        return max(self.idle_sessions, self.scale_sessions) + 64


@dataclass(frozen=True)
class Launch:
    """A server command line, its environment and working folder."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path


class ServerSpec(ABC):
    """One kind of server under test."""

    name: str
    slot: int  # picks the preferred control port and passive port range
    user: str = ""
    password: str = ""
    version: str = "?"
    cpu_accounting: str = ""  # how its CPU was counted: "cgroup v2", "cgroup v1", "/proc tree"
    cold_users: tuple[str, ...] = ()  # accounts for the cold-login metric, in the order used
    cold_password: str = ""

    passive: tuple[int, int] = (0, 0)  # inclusive range in use, set by start()

    @abstractmethod
    def prepare(self, env: BenchEnv) -> None:
        """One-time set-up for the run (accounts, packages); raise Unavailable."""

    @abstractmethod
    def launch(self, env: BenchEnv, port: int) -> Launch:
        """The command that serves on 127.0.0.1:`port` in the foreground."""


class Running:
    """A started server process; `stop()` ends it and everything it forked."""

    def __init__(
        self,
        spec: ServerSpec,
        process: subprocess.Popen[bytes],
        port: int,
        log: Path,
        cgroup: CpuCgroup | None,
    ):
        self.spec = spec
        self.process = process
        self.port = port
        self.log = log
        self.cgroup = cgroup

    def cpu_seconds(self) -> float:
        """CPU seconds of the server and everything it forked, since it started."""
        if self.cgroup is not None:
            return self.cgroup.seconds()
        return procfs.tree_cpu_seconds(self.pid)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text[-lines:])

    def stop(self) -> None:
        """SIGTERM the server and its descendants, then SIGKILL what is left."""
        tree = procfs.process_tree(self.pid) if self.alive() else []
        _signal_all(tree, signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        if self.alive():
            _signal_all(procfs.process_tree(self.pid), signal.SIGKILL)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        if self.cgroup is not None:
            # Kills whatever the server left behind, reparented or not: the members of
            # its cgroup are exactly the processes it started (a pid list could be stale).
            self.cgroup.remove()
        _running.discard(self)


_running: set[Running] = set()


def stop_all() -> None:
    """Stop every server this process started and has not stopped yet."""
    for running in list(_running):
        running.stop()


def _signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def pick_port(preferred: int) -> int:
    """`preferred` if free, else the first free port of CONTROL_PORTS."""
    for port in [preferred, *CONTROL_PORTS]:
        if port in CONTROL_PORTS and procfs.port_is_free(port):
            return port
    raise StartError(f"no free control port in {CONTROL_PORTS.start}-{CONTROL_PORTS.stop - 1}")


def pick_passive(slot: int) -> tuple[int, int]:
    """The server's own window of passive ports, or another one where nothing listens."""
    windows = [(slot + shift) % PASSIVE_WINDOWS for shift in range(PASSIVE_WINDOWS)]
    for window in windows:
        low = PASSIVE_BASE + PASSIVE_SLOT * window
        if procfs.range_is_free(low, low + PASSIVE_SLOT - 1):
            return low, low + PASSIVE_SLOT - 1
    last = PASSIVE_BASE + PASSIVE_SLOT * PASSIVE_WINDOWS - 1
    raise StartError(f"no passive range without listeners in {PASSIVE_BASE}-{last}")


def start(spec: ServerSpec, env: BenchEnv) -> Running:
    """Start `spec` on a free loopback port and wait for its 220 greeting."""
    spec.passive = pick_passive(spec.slot)
    port = pick_port(CONTROL_PORTS.start + 1 + spec.slot)
    launch = spec.launch(env, port)
    log = env.logs / f"{spec.name}.log"
    cgroup = CpuCgroup.create(f"{CGROUP_PREFIX}-{os.getpid()}-{spec.name}")
    spec.cpu_accounting = f"cgroup {cgroup.kind}" if cgroup else "/proc tree"
    with log.open("ab") as sink:
        sink.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(launch.argv)}\n".encode())
        sink.flush()
        try:
            process = subprocess.Popen(
                launch.argv,
                cwd=launch.cwd,
                env=launch.env,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_preexec(cgroup),
            )
        except (OSError, subprocess.SubprocessError) as error:
            if cgroup is not None:
                cgroup.remove()
            raise StartError(f"cannot run {launch.argv[0]}: {error}") from None
    running = Running(spec, process, port, log, cgroup)
    _running.add(running)
    try:
        _wait_for_greeting(running)
    except BaseException:
        running.stop()
        raise
    return running


def _preexec(cgroup: CpuCgroup | None) -> Callable[[], None]:
    """Run in the server's process before exec: join its cgroup; die with the bench."""
    join = cgroup.preexec() if cgroup else None
    libc = ctypes.CDLL(None, use_errno=True)

    def prepare() -> None:
        if join is not None:
            join()
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # a killed bench leaves no server

    return prepare


def _wait_for_greeting(running: Running) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        if not running.alive():
            raise StartError(
                f"exited with status {running.process.returncode}: {running.log_tail()}"
            )
        try:
            with socket.create_connection(("127.0.0.1", running.port), timeout=5) as conn:
                reader = conn.makefile("rb")
                while True:
                    line = reader.readline(4096)
                    if not line:
                        raise ConnectionError("closed before the greeting")
                    if line[:4] == b"220 ":
                        conn.sendall(b"QUIT\r\n")
                        return
                    if not line.startswith(b"220"):
                        raise ConnectionError(f"greeting {line[:60]!r}")
        except OSError as error:
            last = str(error)
        time.sleep(0.2)
    raise StartError(f"no 220 greeting within {START_TIMEOUT:.0f} s ({last}): {running.log_tail()}")


def _base_env() -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR")
    return {key: os.environ[key] for key in keep if key in os.environ}


# --- securetransport ------------------------------------------------------------------


class SecureTransport(ServerSpec):
    """Our server, run by twistd with a config written for the bench."""

    name = "securetransport"
    slot = 0
    user = "bench"

    def config_path(self, env: BenchEnv) -> Path:
        return env.work / "securetransport" / "securetransport.toml"

    def write_config(self, env: BenchEnv, port: int) -> Path:
        low, high = self.passive
        path = self.config_path(env)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = f"""\
# Written by the bench harness (bench/servers.py).
[server]
banner = "securetransport bench"
allow_root = true
home_root = {_toml(env.home.parent)}
users = {_toml("sqlite:" + str(path.parent / "users.sqlite3"))}
max_sessions = {env.max_sessions_scaled}
max_sessions_per_address = {env.max_sessions_scaled}
login_timeout = 120
idle_timeout = 900

[[listen]]
address = "127.0.0.1"
port = {port}
tls = "explicit"

[passive]
ports = "{low}-{high}"

[tls]
certificate = {_toml(env.pki / "server.crt")}
private_key = {_toml(env.pki / "server.key")}
client_ca = {_toml(env.pki / "ca.crt")}

[[class]]
name = "bench"
ssl = "optional"
session_reuse = "required"
"""
        path.write_text(text)
        return path

    def _cli(self, env: BenchEnv, *args: str, stdin: str | None = None) -> None:
        argv = [str(env.venv_bin / "securetransport"), "--config", str(self.config_path(env))]
        try:
            done = subprocess.run(
                [*argv, *args],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=120,
                cwd=env.repo,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise Unavailable(f"securetransport {' '.join(args)}: {error}") from None
        if done.returncode != 0:
            why = (done.stderr.strip() or done.stdout.strip()).splitlines()
            raise Unavailable(
                f"securetransport {' '.join(args)}: exit {done.returncode}: "
                + (why[-1] if why else "no message")
            )

    def prepare(self, env: BenchEnv) -> None:
        if env.home.name != self.user:
            raise Unavailable(f"the shared home must be named {self.user!r}")
        self.password = secrets.token_urlsafe(12)
        self.version = _our_version(env)
        low = PASSIVE_BASE + PASSIVE_SLOT * self.slot
        self.passive = (low, low + PASSIVE_SLOT - 1)  # for `check`; start() picks the real one
        self.write_config(env, CONTROL_PORTS.start + 1)
        self._cli(env, "check")
        self._cli(env, "users", "add", self.user, "--password-stdin", stdin=self.password + "\n")
        if env.cold_accounts:
            self.cold_password = secrets.token_urlsafe(12)
            self.cold_users = cold_names(env.cold_accounts)
            self._add_cold_accounts(env)

    def _add_cold_accounts(self, env: BenchEnv) -> None:
        """The cold-login accounts, straight into the user store (one CLI call each is slow).

        They share one argon2id hash (one salt): verifying costs the same whatever the
        salt, and the server's credential cache is keyed by name too, so each first login
        of each account runs the KDF. Their home is the shared folder.
        """
        from securetransport.passwords import hash_password  # noqa: PLC0415
        from securetransport.stores import open_user_store
        from securetransport.userstore import (  # noqa: PLC0415
            Account,
            UserStoreError,
        )

        hashed = hash_password(self.cold_password)
        store = open_user_store("sqlite:" + str(self.config_path(env).parent / "users.sqlite3"))
        try:
            for name in self.cold_users:
                store.add(Account(name=name, password_hash=hashed, home=self.user))
        except UserStoreError as error:
            raise Unavailable(f"cold accounts: {error}") from None
        finally:
            store.close()

    def launch(self, env: BenchEnv, port: int) -> Launch:
        config = self.write_config(env, port)
        environ = _base_env()
        # twistd's sys.path lacks the repo root, where twisted/plugins/ lives in a
        # development checkout; put it there so `twistd securetransport` is found.
        environ["PYTHONPATH"] = str(env.repo)
        argv = [
            str(env.venv_bin / "twistd"),
            "-n",
            "--pidfile=",
            "securetransport",
            "--config",
            str(config),
        ]
        return Launch(argv, environ, env.repo)


def _our_version(env: BenchEnv) -> str:
    """securetransport's version and the working tree's commit, e.g. `0.1.0 (b9c2796+)`."""
    try:
        from securetransport import __version__ as version  # noqa: PLC0415
    except ImportError:
        version = "?"
    try:
        head = subprocess.run(
            ["git", "-C", str(env.repo), "describe", "--always", "--dirty=+"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        head = ""
    return f"{version} ({head})" if head else version


def _toml(value: object) -> str:
    """A TOML basic string."""
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


# --- pyftpdlib --------------------------------------------------------------------------


class Pyftpdlib(ServerSpec):
    """pyftpdlib's TLS_FTPHandler with a DummyAuthorizer user (bench/peer_pyftpdlib.py)."""

    name = "pyftpdlib"
    slot = 1
    user = "bench"

    def prepare(self, env: BenchEnv) -> None:
        try:
            import pyftpdlib  # noqa: PLC0415
        except ImportError:
            raise Unavailable("pyftpdlib is not installed in the venv") from None
        self.version = getattr(pyftpdlib, "__ver__", "?")
        self.password = secrets.token_urlsafe(12)
        if env.cold_accounts:
            # Adding a DummyAuthorizer user costs nothing and pyftpdlib logs in several
            # times faster than we do: give it enough never to run out within a loop.
            self.cold_password = secrets.token_urlsafe(12)
            self.cold_users = cold_names(max(env.cold_accounts, PEER_COLD_ACCOUNTS))

    def launch(self, env: BenchEnv, port: int) -> Launch:
        low, high = self.passive
        environ = _base_env()
        environ["BENCH_PASSWORD"] = self.password
        environ["BENCH_COLD_PASSWORD"] = self.cold_password
        environ["PYTHONPATH"] = str(env.repo)
        argv = [
            sys.executable,
            "-m",
            "bench.peer_pyftpdlib",
            "--port",
            str(port),
            "--passive",
            f"{low}-{high}",
            "--home",
            str(env.home),
            "--user",
            self.user,
            "--certificate",
            str(env.pki / "server.crt"),
            "--key",
            str(env.pki / "server.key"),
            "--max-sessions",
            str(env.max_sessions_scaled),
            "--cold-users",
            str(len(self.cold_users)),
        ]
        return Launch(argv, environ, env.repo)


# --- peers that log in system users -------------------------------------------------------


def ensure_local_user(env: BenchEnv) -> str:
    """Create (or update) the system account LOCAL_USER with the shared home; its password."""
    if env.local_password is not None:
        return env.local_password
    if os.geteuid() != 0:
        raise Unavailable(f"needs root to create the system user {LOCAL_USER!r} it logs in")
    try:
        pwd.getpwnam(LOCAL_USER)
        command = ["usermod", "-d", str(env.home), LOCAL_USER]
    except KeyError:
        command = ["useradd", "-M", "-d", str(env.home), "-s", "/usr/sbin/nologin", LOCAL_USER]
        env.notes.append(f"created the system user {LOCAL_USER!r} (loopback benches only)")
    password = secrets.token_urlsafe(12)
    chpasswd = ["chpasswd", "--crypt-method", env.local_crypt]
    for argv, stdin in ((command, None), (chpasswd, f"{LOCAL_USER}:{password}\n")):
        try:
            done = subprocess.run(
                argv, input=stdin, capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise Unavailable(f"{argv[0]}: {error}") from None
        if done.returncode != 0:
            raise Unavailable(f"{argv[0]}: {done.stderr.strip() or done.returncode}")
    account = pwd.getpwnam(LOCAL_USER)
    for path in [env.home, *env.home.rglob("*")]:
        os.chown(path, account.pw_uid, account.pw_gid, follow_symlinks=False)
    env.local_password = password
    return password


class Vsftpd(ServerSpec):
    """vsftpd from Debian's package, unpacked, listen=YES in the foreground."""

    name = "vsftpd"
    slot = 2
    user = LOCAL_USER
    require_ssl_reuse = True

    def prepare(self, env: BenchEnv) -> None:
        try:
            self.root = debian.unpacked(env.cache, "vsftpd")
            self.libs = debian.unpacked(env.cache, "libwrap0")
        except debian.PackageUnavailable as error:
            raise Unavailable(str(error)) from None
        self.version = debian.version(self.root)
        self.password = ensure_local_user(env)
        self.empty = env.work / "vsftpd-empty"  # its secure_chroot_dir: empty, root-owned
        self.empty.mkdir(mode=0o755, exist_ok=True)

    def launch(self, env: BenchEnv, port: int) -> Launch:
        low, high = self.passive
        config = env.work / "vsftpd.conf"
        settings = {
            "listen": "YES",
            "listen_ipv6": "NO",
            "background": "NO",
            "listen_address": "127.0.0.1",
            "listen_port": port,
            "anonymous_enable": "NO",
            "local_enable": "YES",
            "write_enable": "YES",
            "local_umask": "022",
            "local_root": env.home,
            "pam_service_name": "other",  # no /etc/pam.d/vsftpd: the distribution default
            "secure_chroot_dir": self.empty,
            "seccomp_sandbox": "NO",
            "pasv_enable": "YES",
            "pasv_min_port": low,
            "pasv_max_port": high,
            "ssl_enable": "YES",
            "allow_anon_ssl": "NO",
            "force_local_data_ssl": "NO",
            "force_local_logins_ssl": "NO",
            "ssl_ciphers": "HIGH",
            "require_ssl_reuse": "YES" if self.require_ssl_reuse else "NO",
            "rsa_cert_file": env.pki / "server.crt",
            "rsa_private_key_file": env.pki / "server.key",
            "xferlog_enable": "NO",
            "max_clients": env.max_sessions,
            "max_per_ip": env.max_sessions,
            "idle_session_timeout": 900,
        }
        config.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
        environ = _base_env()
        environ["LD_LIBRARY_PATH"] = ":".join(debian.library_dirs(self.libs))
        return Launch([str(self.root / "usr/sbin/vsftpd"), str(config)], environ, env.work)


class PureFtpd(ServerSpec):
    """pure-ftpd from Debian's package, unpacked, standalone in the foreground."""

    name = "pure-ftpd"
    slot = 3
    user = LOCAL_USER

    def prepare(self, env: BenchEnv) -> None:
        try:
            self.root = debian.unpacked(env.cache, "pure-ftpd")
        except debian.PackageUnavailable as error:
            raise Unavailable(str(error)) from None
        self.version = debian.version(self.root)
        self.password = ensure_local_user(env)

    def launch(self, env: BenchEnv, port: int) -> Launch:
        low, high = self.passive
        argv = [
            str(self.root / "usr/sbin/pure-ftpd"),
            "--bind",
            f"127.0.0.1,{port}",
            "--passiveportrange",
            f"{low}:{high}",
            "--tls",
            "1",  # FTPS accepted, not required: clear transfers are benched too
            "--certfile",
            f"{env.pki / 'server.crt'},{env.pki / 'server.key'}",
            "--login",
            "pam",  # "unix" hangs at PASS here; PAM ("other") works
            "--noanonymous",
            "--dontresolve",
            "--maxclientsnumber",
            str(env.max_sessions),
            "--maxclientsperip",
            str(env.max_sessions),
            "--pidfile",
            str(env.work / "pure-ftpd.pid"),
        ]
        return Launch(argv, _base_env(), env.work)


class ProFtpd(ServerSpec):
    """ProFTPD from Debian's packages (core, mod_tls from mod-crypto), unpacked, `-n`."""

    name = "proftpd"
    slot = 4
    user = LOCAL_USER
    libraries = (
        "libhiredis0.14",
        "libmemcached11",
        "libmemcachedutil2",
        "libhashkit2",
        "libpcre2-posix3",
    )

    def prepare(self, env: BenchEnv) -> None:
        try:
            self.root = debian.unpacked(env.cache, "proftpd-core")
            self.crypto = debian.unpacked(env.cache, "proftpd-mod-crypto")
            self.libs = [debian.unpacked(env.cache, name) for name in self.libraries]
        except debian.PackageUnavailable as error:
            raise Unavailable(str(error)) from None
        self.version = debian.version(self.root)
        self.password = ensure_local_user(env)

    def launch(self, env: BenchEnv, port: int) -> Launch:
        low, high = self.passive
        folder = env.work / "proftpd"
        folder.mkdir(exist_ok=True)
        key = env.pki / "server.key"
        kind = "EC" if _is_ec_key(key) else "RSA"
        text = f"""\
ServerName "proftpd bench"
ServerType standalone
Port {port}
DefaultAddress 127.0.0.1
SocketBindTight on
User nobody
Group nogroup
ScoreboardFile {folder / "scoreboard"}
PidFile {folder / "proftpd.pid"}
WtmpLog off
UseReverseDNS off
PassivePorts {low} {high}
MaxInstances {env.max_sessions}
TransferLog none
SystemLog none
AuthOrder mod_auth_unix.c
RequireValidShell off
DefaultChdir {env.home}
Umask 022
AllowOverwrite on
ModulePath {self.crypto / "usr/lib/proftpd"}
LoadModule mod_tls.c
<IfModule mod_delay.c>
  DelayEngine off
</IfModule>
<IfModule mod_tls.c>
  TLSEngine on
  TLSRequired off
  TLSProtocol TLSv1.2 TLSv1.3
  TLS{kind}CertificateFile {env.pki / "server.crt"}
  TLS{kind}CertificateKeyFile {key}
  TLSVerifyClient off
</IfModule>
"""
        config = folder / "proftpd.conf"
        config.write_text(text)
        environ = _base_env()
        dirs = [d for root in self.libs for d in debian.library_dirs(root)]
        environ["LD_LIBRARY_PATH"] = ":".join(dirs)
        argv = [str(self.root / "usr/sbin/proftpd"), "-n", "-c", str(config)]
        return Launch(argv, environ, env.work)


def _is_ec_key(path: Path) -> bool:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        return isinstance(load_pem_private_key(path.read_bytes(), None), ec.EllipticCurvePrivateKey)
    except (ValueError, TypeError, OSError):
        return False


ALL_SERVERS: dict[str, type[ServerSpec]] = {
    spec.name: spec for spec in (SecureTransport, Pyftpdlib, Vsftpd, PureFtpd, ProFtpd)
}
OURS = SecureTransport.name
