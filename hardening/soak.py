"""`python -m hardening soak`: many concurrent clients for a while; nothing may be lost.

Each client owns a folder in one of the accounts' homes and records the SHA-256 of every
upload the server confirmed (226). Clients mix clear, explicit and implicit FTPS (the TLS
ones resume the control session on data connections), uploads, overwrites, downloads
checked by SHA-256, listings checked against the record, aborted uploads (the previous
version must stay) and aborted downloads. At the end every file on disk is checked against
the record, and no upload temporary may be left. The server's RSS is sampled from /proc.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import random
import socket
import struct
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from hardening.clients import open_session
from hardening.server import ServerProcess
from hardening.stats import Sampler, finish_report, summary_ms

ACCOUNTS = 20
POOL_SIZE = 16 * 1024 * 1024
MODES = ("clear", "explicit", "implicit")


def soak_server(clients: int) -> str:
    return f"""
login_timeout = 120
idle_timeout = 600
data_timeout = 60
max_sessions = {max(1000, clients * 4)}
max_sessions_per_address = {max(500, clients * 4)}
max_login_failures = 1000000
"""


@dataclass
class SoakOptions:
    minutes: float = 10.0
    clients: int = 200
    seed: int = 0
    max_file: int = 2 * 1024 * 1024
    keep: bool = False
    json_path: Path | None = None


@dataclass
class Totals:
    operations: dict[str, int] = field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0
    sessions: int = 0
    busy_retries: int = 0
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    mismatches: list[str] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def done(self, operation: str, seconds: float, up: int = 0, down: int = 0) -> None:
        with self.lock:
            self.operations[operation] = self.operations.get(operation, 0) + 1
            self.latencies.setdefault(operation, []).append(seconds)
            self.bytes_up += up
            self.bytes_down += down

    def error(self, text: str) -> None:
        with self.lock:
            self.error_count += 1
            if len(self.errors) < 50:
                self.errors.append(text)

    def mismatch(self, text: str) -> None:
        with self.lock:
            self.mismatches.append(text)


class Payloads:
    """Random bytes to slice uploads from (slices differ, so their SHA-256 differ)."""

    def __init__(self, rng: random.Random) -> None:
        self.data = rng.randbytes(POOL_SIZE)

    def take(self, rng: random.Random, size: int) -> bytes:
        start = rng.randrange(0, POOL_SIZE - size)
        return self.data[start : start + size]


class Client:
    """One simulated user: sessions of random operations on its own folder."""

    def __init__(
        self,
        index: int,
        server: ServerProcess,
        options: SoakOptions,
        payloads: Payloads,
        totals: Totals,
    ) -> None:
        self.index = index
        self.server = server
        self.options = options
        self.payloads = payloads
        self.totals = totals
        self.rng = random.Random(options.seed * 100_003 + index)
        self.account = f"soak{index % ACCOUNTS:02d}"
        self.folder = f"c{index:03d}"
        self.mode = MODES[index % len(MODES)]
        self.files: dict[str, str] = {}  # name -> SHA-256 of the confirmed content
        self.sizes: dict[str, int] = {}
        self.counter = 0

    # ----------------------------------------------------------------------------- sessions
    def connect(self) -> ftplib.FTP:
        port = self.server.implicit_port if self.mode == "implicit" else self.server.explicit_port
        for attempt in range(20):  # 421 when the password pool is full: back off and retry
            try:
                return open_session(
                    port,
                    self.account,
                    self.server.password,
                    mode=self.mode,
                    pki=self.server.pki,
                    timeout=120,
                )
            except ftplib.error_temp as error:
                if not str(error).startswith("421"):
                    raise
                self.totals.busy_retries += 1
                time.sleep(0.2 * (attempt + 1) + self.rng.random())
        raise RuntimeError("server busy for 20 attempts")

    def run(self, deadline: float) -> None:
        time.sleep(self.rng.random() * 3)  # do not all start in the same millisecond
        first = True
        for _ in range(1_000_000):  # sessions; bounded by the deadline
            if time.monotonic() > deadline:
                return
            try:
                ftp = self.connect()
                self.totals.sessions += 1
                if first:
                    try:
                        ftp.mkd(self.folder)
                    except ftplib.error_perm:
                        pass
                    first = False
                ftp.cwd(self.folder)
                for _ in range(self.rng.randint(3, 15)):
                    if time.monotonic() > deadline:
                        break
                    self.operation(ftp)
                ftp.quit()
            except Exception as error:  # noqa: BLE001 - recorded; the client goes on
                self.totals.error(f"client {self.index} ({self.mode}): {error!r}")
                time.sleep(0.5)

    # ----------------------------------------------------------------------------- operations
    def operation(self, ftp: ftplib.FTP) -> None:
        roll = self.rng.random()
        if not self.files or roll < 0.30:
            self.upload(ftp)
        elif roll < 0.55:
            self.download(ftp)
        elif roll < 0.70:
            self.listing(ftp)
        elif roll < 0.78:
            self.aborted_upload(ftp)
        elif roll < 0.86:
            self.aborted_download(ftp)
        elif roll < 0.93:
            self.upload(ftp, overwrite=True)
        else:
            self.delete(ftp)

    def size(self) -> int:
        # Mostly small files, some up to max_file.
        return min(self.options.max_file, int(self.rng.paretovariate(1.2) * 4096))

    def upload(self, ftp: ftplib.FTP, overwrite: bool = False) -> None:
        if overwrite and self.files:
            name = self.rng.choice(sorted(self.files))
        else:
            self.counter += 1
            name = f"f{self.counter:05d}.bin"
        data = self.payloads.take(self.rng, self.size())
        started = time.perf_counter()
        reply = ftp.storbinary(f"STOR {name}", io.BytesIO(data), blocksize=65536)
        if reply.startswith("226"):
            self.files[name] = hashlib.sha256(data).hexdigest()
            self.sizes[name] = len(data)
        self.totals.done(
            "overwrite" if overwrite else "upload", time.perf_counter() - started, up=len(data)
        )

    def download(self, ftp: ftplib.FTP) -> None:
        name = self.rng.choice(sorted(self.files))
        digest = hashlib.sha256()
        started = time.perf_counter()
        ftp.retrbinary(f"RETR {name}", digest.update, blocksize=65536)
        if digest.hexdigest() != self.files[name]:
            self.totals.mismatch(f"{self.account}/{self.folder}/{name}: download differs")
        self.totals.done("download", time.perf_counter() - started, down=self.sizes[name])

    def listing(self, ftp: ftplib.FTP) -> None:
        started = time.perf_counter()
        if self.rng.random() < 0.5:
            names = {name for name, facts in ftp.mlsd() if facts.get("type") == "file"}
        else:
            names = set(ftp.nlst())
        if names != set(self.files):
            self.totals.mismatch(
                f"{self.account}/{self.folder}: listing {sorted(names ^ set(self.files))[:5]}"
            )
        self.totals.done("listing", time.perf_counter() - started)

    def aborted_upload(self, ftp: ftplib.FTP) -> None:
        """Start overwriting a file, then abort (ABOR, or a reset); the old version stays."""
        name = self.rng.choice(sorted(self.files))
        started = time.perf_counter()
        conn = ftp.transfercmd(f"STOR {name}")
        conn.sendall(self.payloads.take(self.rng, 100_000))
        if self.rng.random() < 0.5:
            # A reset, without TLS close_notify: the upload did not end cleanly.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            replies = self.replies(ftp, 1)
            expected: set[tuple[str, ...]] = {("426",)}
        else:
            ftp.putcmd("ABOR")
            replies = self.replies(ftp, 2)
            conn.close()
            expected = {("426", "226"), ("426", "225")}
        if tuple(reply[:3] for reply in replies) not in expected:
            self.totals.error(f"aborted upload replies: {replies}")
        self.totals.done("aborted upload", time.perf_counter() - started)

    def aborted_download(self, ftp: ftplib.FTP) -> None:
        name = self.rng.choice(sorted(self.files))
        started = time.perf_counter()
        conn = ftp.transfercmd(f"RETR {name}")
        conn.recv(1024)
        ftp.putcmd("ABOR")
        conn.close()
        replies = self.replies(ftp, 2)
        # RFC 959: 426 then 226; or 426 (our close came first) then 225; or the transfer
        # had finished (226) and ABOR found nothing to abort (225).
        if tuple(reply[:3] for reply in replies) not in {
            ("426", "226"),
            ("426", "225"),
            ("226", "225"),
        }:
            self.totals.error(f"aborted download replies: {replies}")
        self.totals.done("aborted download", time.perf_counter() - started)

    @staticmethod
    def replies(ftp: ftplib.FTP, count: int) -> list[str]:
        """The next `count` single-line replies, read without raising on their codes."""
        out: list[str] = []
        for _ in range(count):
            try:
                out.append(ftp.getline())
            except (OSError, EOFError) as error:
                out.append(f"error {error!r}")
                break
        return out

    def delete(self, ftp: ftplib.FTP) -> None:
        name = self.rng.choice(sorted(self.files))
        started = time.perf_counter()
        ftp.delete(name)
        del self.files[name]
        del self.sizes[name]
        self.totals.done("delete", time.perf_counter() - started)

    # ----------------------------------------------------------------------------- the end
    def verify_disk(self) -> list[str]:
        """Compare this client's folder on disk with its record."""
        folder = self.server.home(self.account) / self.folder
        problems = []
        on_disk = {p.name for p in folder.iterdir()} if folder.exists() else set()
        for name in sorted(on_disk | set(self.files)):
            if name not in self.files:
                problems.append(f"{folder / name}: on disk, not recorded")
            elif name not in on_disk:
                problems.append(f"{folder / name}: lost")
            else:
                actual = hashlib.sha256((folder / name).read_bytes()).hexdigest()
                if actual != self.files[name]:
                    problems.append(f"{folder / name}: content differs")
        return problems


def run(options: SoakOptions) -> int:
    """Run the soak; print and return the exit status (0: nothing lost, no crash)."""
    root = Path(tempfile.mkdtemp(prefix="st-soak-"))
    root.chmod(0o755)
    accounts = tuple(f"soak{i:02d}" for i in range(ACCOUNTS))
    server = ServerProcess(
        root / "server", users=accounts, extra_server=soak_server(options.clients)
    ).start()
    print(
        f"soak: server pid {server.pid}; {options.clients} clients for {options.minutes} min "
        f"(modes {', '.join(MODES)}), {ACCOUNTS} accounts",
        flush=True,
    )
    rng = random.Random(options.seed)
    payloads = Payloads(rng)
    totals = Totals()
    rss = Sampler(lambda: server.rss_kib(), 2.0).start()
    started = time.monotonic()
    deadline = started + options.minutes * 60
    clients = [Client(i, server, options, payloads, totals) for i in range(options.clients)]
    threads = [
        threading.Thread(target=c.run, args=(deadline,), name=f"client-{c.index}", daemon=True)
        for c in clients
    ]
    for thread in threads:
        thread.start()
    last = time.monotonic()
    while any(thread.is_alive() for thread in threads):
        if time.monotonic() > deadline + 600:
            totals.error("clients still running 10 minutes after the deadline")
            break
        time.sleep(1.0)
        if time.monotonic() - last > 30:
            last = time.monotonic()
            print(
                f"  {time.monotonic() - started:.0f} s: {sum(totals.operations.values())} "
                f"operations, {totals.error_count} errors, rss {server.rss_kib()} KiB",
                flush=True,
            )
    elapsed = time.monotonic() - started
    rss.stop()
    lost = [problem for client in clients for problem in client.verify_disk()]
    temporaries = [str(p) for p in server.home_root.rglob(".st-upload-*")]
    alive = server.alive()
    problems = server.log_problems()
    rss_values = rss.values
    minute = [v for t, v in rss.samples if t <= 60]
    report = {
        "clients": options.clients,
        "minutes": round(elapsed / 60, 2),
        "sessions": totals.sessions,
        "operations": dict(sorted(totals.operations.items())),
        "operations_per_second": round(sum(totals.operations.values()) / elapsed, 1),
        "mib_up": round(totals.bytes_up / 2**20, 1),
        "mib_down": round(totals.bytes_down / 2**20, 1),
        "latency": {op: summary_ms(v) for op, v in sorted(totals.latencies.items())},
        "files_checked": sum(len(c.files) for c in clients),
        "lost_or_wrong": lost[:20],
        "download_or_listing_mismatches": totals.mismatches[:20],
        "temporaries_left": temporaries[:20],
        "client_errors": totals.error_count,
        "client_error_samples": totals.errors[:10],
        "busy_retries_421": totals.busy_retries,
        "server_rss_kib": {
            "first": int(rss_values[0]) if rss_values else None,
            "after_first_minute": int(max(minute)) if minute else None,
            "max": int(max(rss_values)) if rss_values else None,
            "last": int(rss_values[-1]) if rss_values else None,
            "samples": len(rss_values),
        },
        "server_alive": alive,
        "log_problems": problems[:20],
    }
    server.stop()
    ok = alive and not problems and not lost and not totals.mismatches and not temporaries
    return finish_report(
        "soak", report, ok, json_path=options.json_path, root=root, keep=options.keep
    )
