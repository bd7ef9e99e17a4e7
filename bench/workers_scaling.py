"""`python -m bench.workers_scaling`: `server.workers` 1 against 2, N concurrent FTPS downloads.

Not part of `make bench` (no peers): issue 5 item 5 asks to show what a second worker
buys. Both servers run at once on their own ports (idle between runs), runs alternate,
each run starts N curl processes (explicit FTPS, `--ssl-reqd`, data sessions resumed)
downloading the same file from the page cache to /dev/null. Reported per configuration:
total MB/s (10^6 bytes/s, all bytes over the wall time from the first start to the last
end), median (min-max) of the repetitions, the server's CPU seconds per GiB (supervisor
and workers), and how the control connections were spread over the workers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MB = 1_000_000
GIB = 1 << 30
PASSWORD = "bench-workers-9"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tree(pid: int) -> list[int]:
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found.extend(tree(int(child)))
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process tree (clock ticks to seconds)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for member in tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def setup(root: Path, size_mib: int) -> None:
    sys.path.insert(0, str(REPO))
    from securetransport.passwords import hash_password
    from securetransport.pki import init_pki
    from securetransport.stores import open_user_store
    from securetransport.userstore import Account

    init_pki(root / "pki", [])
    home = root / "home" / "bench"
    home.mkdir(parents=True)
    store = open_user_store(f"sqlite:{root / 'users.sqlite3'}")
    store.add(Account(name="bench", password_hash=hash_password(PASSWORD)))
    store.close()
    block = os.urandom(1 << 20)
    with open(home / "big.bin", "wb") as handle:
        for _ in range(size_mib):
            handle.write(block)
    with open(home / "big.bin", "rb") as handle:  # into the page cache
        while handle.read(1 << 22):
            pass


def start(root: Path, workers: int, passive: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = root / f"workers{workers}.toml"
    allow_root = "allow_root = true\n" if os.geteuid() == 0 else ""
    config.write_text(
        f'[server]\nhome_root = "home"\nusers = "sqlite:users.sqlite3"\n'
        f'audit_log = "log/audit{workers}.jsonl"\nworkers = {workers}\n{allow_root}\n'
        f'[[listen]]\naddress = "127.0.0.1"\nport = {port}\ntls = "explicit"\n'
        f'[passive]\nports = "{passive}-{passive + 99}"\n'
        f'[tls]\ncertificate = "pki/server.crt"\nprivate_key = "pki/server.key"\n'
        f'[[class]]\nname = "bench"\nssl = "mandatory"\nlogin = ["password"]\n'
        f'client_certificate = "off"\nsession_reuse = "required"\n'
    )
    log = open(root / f"twistd{workers}.log", "wb")  # noqa: SIM115 - lives with the process
    process = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
         "-n", "--pidfile=", "securetransport", "--config", str(config)],
        cwd=root, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready = len(tree(process.pid)) == 1 + (workers if workers > 1 else 0)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                if sock.recv(4).startswith(b"220") and ready:
                    time.sleep(1.0)  # every worker has adopted the socket
                    return process, port
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"workers = {workers}: the server did not start; see {log.name}")


def download(root: Path, port: int, streams: int) -> tuple[float, int]:
    """(seconds from the first start to the last end, bytes received)."""
    argv = [
        "curl", "-sS", "--ssl-reqd", "--cacert", str(root / "pki" / "ca.crt"),
        "-u", f"bench:{PASSWORD}", "-o", "/dev/null", "-w", "%{size_download}",
        "--max-time", "600", f"ftp://127.0.0.1:{port}/big.bin",
    ]  # fmt: skip
    began = time.monotonic()
    running = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(streams)]
    received = 0
    for curl in running:
        output, _ = curl.communicate()
        if curl.returncode != 0:
            raise SystemExit(f"curl failed with exit code {curl.returncode}")
        received += int(output)
    return time.monotonic() - began, received


def spread(root: Path, workers: int, last: int) -> str:
    path = root / "log" / f"audit{workers}.jsonl"
    starts = [
        json.loads(line) for line in path.read_text().splitlines() if "session-start" in line
    ][-last:]
    counts = Counter(event.get("worker", 0) for event in starts)
    return "+".join(str(counts[index]) for index in range(max(1, workers)))


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workers_scaling")
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--workers", default="1,2", help="configurations to compare")
    parser.add_argument("--keep", action="store_true", help="keep the folder (logs, configs)")
    args = parser.parse_args()
    configurations = [int(value) for value in args.workers.split(",")]
    root = Path(tempfile.mkdtemp(prefix="st-workers-bench-"))
    setup(root, args.size_mib)
    servers = {
        workers: start(root, workers, 63000 + 100 * index)
        for index, workers in enumerate(configurations)
    }
    results: dict[int, list[tuple[float, float, str]]] = {n: [] for n in configurations}
    try:
        for _, port in servers.values():
            download(root, port, 1)  # warm-up: imports, first contexts
        for repetition in range(args.repetitions):
            for workers in configurations:
                process, port = servers[workers]
                cpu = cpu_seconds(process.pid)
                seconds, received = download(root, port, args.streams)
                cpu = cpu_seconds(process.pid) - cpu
                rate = received / seconds / MB
                per_gib = cpu / (received / GIB)
                where = spread(root, workers, args.streams)
                results[workers].append((rate, per_gib, where))
                print(
                    f"run {repetition + 1} workers={workers}: {rate:7.1f} MB/s, "
                    f"server CPU {per_gib:.2f} s/GiB, sessions per worker {where}",
                    flush=True,
                )
    finally:
        for process, _ in servers.values():
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    print(f"\n{args.streams} concurrent FTPS downloads of {args.size_mib} MiB (curl, loopback)")
    print("workers | total MB/s, median (min-max) | server CPU s/GiB, median")
    for workers, rows in results.items():
        rates = [row[0] for row in rows]
        cpu = statistics.median(row[1] for row in rows)
        print(
            f"{workers:7d} | {statistics.median(rates):7.1f} ({min(rates):.1f}-{max(rates):.1f})"
            f" | {cpu:.2f}"
        )
    if args.keep:
        print(f"(files in {root})")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
