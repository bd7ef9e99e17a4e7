"""A live server in the test's reactor, with real certificates and accounts, and real clients.

The server runs in trial's reactor; blocking clients (ftplib) run in a thread and
external clients (curl, lftp) run as processes, so every byte crosses loopback sockets.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, threads
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from hardening.server import DEFAULT_CLASSES, PASSWORD
from securetransport.config import load_config
from securetransport.passwords import hash_password
from securetransport.pki import init_pki
from securetransport.service import SecureTransportService
from securetransport.stores import open_user_store
from securetransport.userstore import Account


def require_tool(name: str) -> str:
    """The path of an external client; fail loudly (never skip) when it is missing."""
    path = shutil.which(name)
    if path is None:
        raise AssertionError(f"{name} is not installed: run .ci/run (apt-get install -y {name})")
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def random_file(path: Path, size: int) -> str:
    """Write `size` random bytes to `path`; return their SHA-256."""
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        left = size
        while left:
            block = os.urandom(min(left, 1 << 20))
            handle.write(block)
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


class LiveServer:
    """Builds a config, a PKI and accounts under a temporary folder and serves them."""

    def __init__(
        self,
        case: TestCase,
        *,
        classes: str = DEFAULT_CLASSES,
        users: tuple[str, ...] = ("alice", "bob"),
        upload_mode: str = "atomic",
        tls: bool = True,
        extra_server: str = "",
        certificate_user: str = "common-name",
        min_version: str = "TLSv1.2",
        listen_address: str = "127.0.0.1",
        crl: tuple[str, ...] = (),
    ) -> None:
        """`crl`: paths for `tls.crl`, relative to `root` (write the files before `start()`)."""
        self.case = case
        self.root = Path(case.mktemp()).absolute()
        self.root.mkdir(parents=True)
        self.pki = self.root / "pki"
        init_pki(self.pki, list(users))
        self.home_root = self.root / "home"
        first = random.randrange(61000, 64900)
        crl_list = ", ".join(f'"{path}"' for path in crl)
        tls_section = (
            f"""
[tls]
certificate = "pki/server.crt"
private_key = "pki/server.key"
client_ca = "pki/ca.crt"
certificate_user = "{certificate_user}"
min_version = "{min_version}"
crl = [{crl_list}]
"""
            if tls
            else ""
        )
        implicit = (
            f"""
[[listen]]
address = "{listen_address}"
port = 0
tls = "implicit"
"""
            if tls
            else ""
        )
        text = f"""
[server]
home_root = "home"
users = "sqlite:users.sqlite3"
upload_mode = "{upload_mode}"
audit_log = "log/audit.jsonl"
xferlog = "log/xferlog"
{extra_server}

[[listen]]
address = "{listen_address}"
port = 0
tls = "explicit"
{implicit}
[passive]
ports = "{first}-{first + 99}"
{tls_section}
{classes}
"""
        self.config_path = self.root / "securetransport.toml"
        self.config_path.write_text(text)
        self.config = load_config(self.config_path)
        store = open_user_store(self.config.server.users)
        hashed = hash_password(PASSWORD)
        for name in users:
            store.add(Account(name=name, password_hash=hashed))
            (self.home_root / name).mkdir(parents=True, exist_ok=True)
        store.close()
        self.service = SecureTransportService(self.config, reactor)

    def start(self) -> LiveServer:
        self.service.startService()
        self.case.addCleanup(self.service.stopService)
        return self

    @property
    def runtime(self) -> Any:
        return self.service.runtime

    def port(self, index: int = 0) -> int:
        return int(self.service.ports[index].getHost().port)

    @property
    def explicit_port(self) -> int:
        return self.port(0)

    @property
    def implicit_port(self) -> int:
        return self.port(1)

    def home(self, user: str = "alice") -> Path:
        return self.home_root / user

    def store(self) -> Any:
        store = open_user_store(self.config.server.users)
        self.case.addCleanup(store.close)
        return store

    def audit_events(self) -> list[dict[str, Any]]:
        return audit_events_in(self.root / "log" / "audit.jsonl")


def audit_events_in(path: Path) -> list[dict[str, Any]]:
    """The events of an audit log (none when it does not exist yet)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def in_thread(fn: Any, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
    """Run a blocking client (ftplib) off the reactor thread."""
    return threads.deferToThread(fn, *args, **kwargs)


def run_tool(
    tool: str, args: list[str], *, path: Path | None = None, env: dict[str, str] | None = None
) -> defer.Deferred[tuple[bytes, bytes, int]]:
    """Run curl or lftp without blocking the reactor; fires with (stdout, stderr, exit code)."""
    executable = require_tool(tool)
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(path or "/tmp"),
        "LC_ALL": "C",
    }
    environment.update(env or {})
    return getProcessOutputAndValue(
        executable, args, env=environment, path=str(path) if path else None
    )


def lftp_script(
    server: LiveServer,
    commands: str,
    *,
    user: str = "alice",
    password: str = PASSWORD,
    implicit: bool = False,
    tls: bool = True,
    extra: str = "",
) -> list[str]:
    """Arguments for lftp running `commands` against the server, with a bounded retry policy."""
    scheme = "ftps" if implicit else "ftp"
    port = server.implicit_port if implicit else server.explicit_port
    settings = [
        "set net:max-retries 1",
        "set net:reconnect-interval-base 1",
        "set net:timeout 20",
        "set cmd:fail-exit yes",
        f"set ssl:ca-file {server.pki / 'ca.crt'}",
        "set ssl:check-hostname no",
        f"set ftp:ssl-allow {'yes' if tls else 'no'}",
        "set ftp:ssl-protect-data yes",
        "set ftp:passive-mode yes",
        "set xfer:clobber yes",
    ]
    if extra:
        settings.append(extra)
    script = (
        "; ".join(settings)
        + f"; open -u {user},{password} {scheme}://127.0.0.1:{port}; {commands}; bye"
    )
    return ["-c", script]


MIRROR_FILES = {"one.txt": 1000, "sub/two.bin": 300_000, "sub/deeper/three.bin": 5}


@defer.inlineCallbacks
def lftp_mirror_both_ways(
    case: TestCase, server: LiveServer, work: Path, files: dict[str, int], **script: Any
) -> Any:
    """Make `files` (name: size) under work/tree, `lftp mirror -R` them to /tree, mirror
    /tree back to work/back, and check every SHA-256 both ways; fires with the digests.
    `script` goes to `lftp_script`."""
    tree = work / "tree"
    digests = {}
    for name, size in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        digests[name] = random_file(tree / name, size)
    out, err, code = yield run_tool(
        "lftp", lftp_script(server, f"mirror -R {tree} /tree", **script), path=work
    )
    case.assertEqual(code, 0, err)
    for name, digest in digests.items():
        case.assertEqual(sha256_file(server.home() / "tree" / name), digest)
    back = work / "back"
    out, err, code = yield run_tool(
        "lftp", lftp_script(server, f"mirror /tree {back}", **script), path=work
    )
    case.assertEqual(code, 0, err)
    for name, digest in digests.items():
        case.assertEqual(sha256_file(back / name), digest)
    return digests


def curl_base(server: LiveServer, *, implicit: bool = False) -> list[str]:
    return [
        "--silent",
        "--show-error",
        "--max-time",
        "60",
        "--cacert",
        str(server.pki / "ca.crt"),
    ] + ([] if implicit else ["--ssl-reqd"])


def curl_url(server: LiveServer, path: str = "/", *, implicit: bool = False) -> str:
    if implicit:
        return f"ftps://127.0.0.1:{server.implicit_port}{path}"
    return f"ftp://127.0.0.1:{server.explicit_port}{path}"


def check_output(args: list[str]) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout
