"""What a login costs on the PostgreSQL user store against SQLite (issue #13).

`python -m bench.login_cost` starts a throwaway PostgreSQL (tests/pg.py: initdb in a
temporary folder, Unix socket only), then the same twistd server twice on 127.0.0.1,
once per store, and times logins from one ftplib client in clear FTP (no TLS, so the
store and the password check are what is measured):

- warm: the same account again and again (the verified-credential cache skips the KDF;
  what is left is reading the account once at USER and the realm's home folder);
- cold: a different account each time (each first login runs argon2id).

It prints the median and p90 login time (USER to 230) and the server's CPU per login
(from /proc), medians of `--repetitions` interleaved runs. Loopback only.
"""

from __future__ import annotations

import argparse
import ftplib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hardening.server import free_port
from securetransport.passwords import hash_password
from securetransport.pgstore import upgrade
from securetransport.stores import open_user_store
from securetransport.userstore import Account
from tests.pg import PostgresServer

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "login-cost-1"
CONFIG = """
[server]
home_root = "{home}"
users = "{url}"
allow_root = true
max_login_failures = 100000

[[listen]]
address = "127.0.0.1"
port = {port}

[passive]
ports = "{first}-{last}"

[[class]]
name = "everyone"
ssl = "optional"
login = ["password"]
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def add_accounts(url: str, names: list[str], home: Path) -> None:
    store = open_user_store(url)
    hashed = hash_password(PASSWORD)
    for name in names:
        store.add(Account(name=name, password_hash=hashed))
        (home / name).mkdir(parents=True, exist_ok=True)
    store.close()


def serve(folder: Path, url: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = folder / "config.toml"
    config.write_text(
        CONFIG.format(home=folder / "home", url=url, port=port, first=62000, last=62010)
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "twistd"), "-n", "--pidfile=", "securetransport",
         "--config", str(config)],
        cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            ftplib.FTP().connect("127.0.0.1", port, timeout=1).startswith("220")
            return process, port
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"the server on {url.split(':')[0]} did not start")


def logins(port: int, names: list[str]) -> list[float]:
    times = []
    for name in names:
        ftp = ftplib.FTP()
        ftp.connect("127.0.0.1", port, timeout=30)
        started = time.monotonic()
        ftp.login(name, PASSWORD)
        times.append(time.monotonic() - started)
        ftp.close()
    return times


def measure(url: str, count: int, label: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="st-login-cost-") as tmp:
        folder = Path(tmp)
        cold = [f"cold{i:05d}" for i in range(count)]
        add_accounts(url, ["warm", *cold], folder / "home")
        process, port = serve(folder, url)
        try:
            logins(port, ["warm"] * 5)  # fill the cache and the pools
            before = cpu_seconds(process.pid)
            warm = logins(port, ["warm"] * count)
            middle = cpu_seconds(process.pid)
            coldt = logins(port, cold)
            after = cpu_seconds(process.pid)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    return {
        "warm_ms": statistics.median(warm) * 1000,
        "warm_p90_ms": statistics.quantiles(warm, n=10)[-1] * 1000,
        "warm_cpu_ms": (middle - before) / count * 1000,
        "cold_ms": statistics.median(coldt) * 1000,
        "cold_cpu_ms": (after - middle) / count * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=200)
    parser.add_argument("--repetitions", type=int, default=3)
    args = parser.parse_args()
    postgres = PostgresServer().start()
    try:
        runs: dict[str, list[dict[str, float]]] = {"sqlite": [], "postgresql": []}
        for _ in range(args.repetitions):
            for kind in runs:
                with tempfile.TemporaryDirectory(prefix="st-login-db-") as db:
                    if kind == "sqlite":
                        url = f"sqlite:{db}/users.sqlite3"
                    else:
                        url = postgres.create_database()
                        upgrade(url)
                    runs[kind].append(measure(url, args.logins, kind))
        keys = ["warm_ms", "warm_p90_ms", "warm_cpu_ms", "cold_ms", "cold_cpu_ms"]
        print(f"{'store':<12}" + "".join(f"{k:>14}" for k in keys))
        for kind, results in runs.items():
            row = [statistics.median(r[k] for r in results) for k in keys]
            print(f"{kind:<12}" + "".join(f"{v:>14.2f}" for v in row))
    finally:
        postgres.stop()


if __name__ == "__main__":
    main()
