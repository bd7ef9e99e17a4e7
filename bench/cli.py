"""`python -m bench`: argument parsing and the run loop (servers alternated run by run)."""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from bench import cgroup, loads, report, servers
from bench.ftpclient import Target
from bench.loads import METRICS, LoadContext, MeasureError
from bench.report import Measurement
from bench.servers import BenchEnv, ServerSpec, StartError, Unavailable

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent

MODES = {
    #        size MiB, repetitions, seconds per session loop, idle sessions
    "quick": (256, 3, 3.0, 200),
    "full": (1024, 5, 10.0, 1000),
}


@dataclass(frozen=True)
class Settings:
    mode: str
    size_mib: int
    repetitions: int
    duration: float
    idle_sessions: int
    servers: tuple[str, ...]
    metrics: tuple[str, ...]
    results: Path
    cache: Path
    keep: bool
    local_crypt: str
    cold_accounts: int = 500

    @property
    def scale_sessions(self) -> int:
        """The most idle sessions any chosen scaled memory metric opens (0: none chosen)."""
        chosen = self.metrics
        counts = [count for count, _ in loads.SCALE_METRICS if f"idle_memory_{count}" in chosen]
        return max(counts, default=0)


def parse(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark securetransport against peer FTP servers on loopback.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        dest="mode",
        action="store_const",
        const="quick",
        help="256 MiB, 3 repetitions, 3 s loops, 200 idle sessions (default)",
    )
    mode.add_argument(
        "--full",
        dest="mode",
        action="store_const",
        const="full",
        help="1 GiB, 5 repetitions, 10 s loops, 1000 idle sessions",
    )
    parser.add_argument(
        "--only", metavar="NAME[,NAME]", help="servers to run: " + ", ".join(servers.ALL_SERVERS)
    )
    parser.add_argument("--metrics", metavar="A,B", help="metrics to run: " + ", ".join(METRICS))
    parser.add_argument("--size-mib", type=int, help="size of the transferred file")
    parser.add_argument("--repetitions", "--reps", type=int, help="interleaved repetitions")
    parser.add_argument("--duration", type=float, help="seconds of each session loop")
    parser.add_argument("--sessions", type=int, help="idle sessions for the memory metric")
    parser.add_argument(
        "--cold-accounts",
        type=int,
        default=500,
        help="accounts made for our server's cold-login metric (default 500; the loop ends "
        "early if they run out)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=BENCH / "results",
        help="folder for the JSON results (default bench/results)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folder (configs, logs, files)"
    )
    parser.add_argument(
        "--local-crypt",
        default="SHA512",
        choices=["SHA512", "YESCRYPT"],
        help="hash of the system user's password for vsftpd and pure-ftpd (default SHA512; "
        "YESCRYPT is Debian 12's default and adds its KDF to every peer login)",
    )
    args = parser.parse_args(argv)
    size, reps, duration, sessions = MODES[args.mode or "quick"]
    chosen_servers = _names(parser, args.only, list(servers.ALL_SERVERS), "server")
    chosen_metrics = _names(parser, args.metrics, list(METRICS), "metric")
    settings = Settings(
        mode=args.mode or "quick",
        size_mib=size if args.size_mib is None else args.size_mib,
        repetitions=reps if args.repetitions is None else args.repetitions,
        duration=duration if args.duration is None else args.duration,
        idle_sessions=sessions if args.sessions is None else args.sessions,
        servers=tuple(chosen_servers),
        metrics=tuple(chosen_metrics),
        results=args.results,
        cache=BENCH / ".cache",
        keep=args.keep,
        local_crypt=args.local_crypt,
        cold_accounts=args.cold_accounts,
    )
    for name, number in (
        ("--size-mib", settings.size_mib),
        ("--repetitions", settings.repetitions),
        ("--duration", settings.duration),
        ("--sessions", settings.idle_sessions),
        ("--cold-accounts", settings.cold_accounts),
    ):
        if number <= 0:
            parser.error(f"{name} must be positive")
    return settings


def _names(
    parser: argparse.ArgumentParser, text: str | None, known: list[str], kind: str
) -> list[str]:
    if not text:
        return known
    names = [name.strip() for name in text.split(",") if name.strip()]
    for name in names:
        if name not in known:
            parser.error(f"unknown {kind} {name!r}; known: {', '.join(known)}")
    return [name for name in known if name in names]  # canonical order, no duplicates


def _terminate(signum: int, frame: FrameType | None) -> None:
    print(f"\nbench: stopped by signal {signum}; stopping the servers", file=sys.stderr)
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    settings = parse(argv)
    if not sys.platform.startswith("linux"):
        print("bench: needs Linux (/proc)", file=sys.stderr)
        return 2
    if shutil.which("curl") is None:
        print("bench: curl not found", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    # The servers inherit it: the scaled memory metric holds 10,000 sessions in ours.
    _raise_file_limit(max(settings.idle_sessions, settings.scale_sessions) * 2 + 256)
    cgroup.remove_stale(servers.CGROUP_PREFIX)  # left by a bench that was killed
    work = Path(tempfile.mkdtemp(prefix="securetransport-bench-"))
    try:
        return _run(settings, work)
    except KeyboardInterrupt:
        print("\nbench: interrupted", file=sys.stderr)
        return 130
    finally:
        servers.stop_all()
        if settings.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def _raise_file_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _run(settings: Settings, work: Path) -> int:
    started = time.time()
    work.chmod(0o755)  # peers that drop to a system user must reach the shared home
    env = BenchEnv(
        repo=REPO,
        work=work,
        home=work / "homes" / servers.SecureTransport.user,
        pki=work / "pki",
        cache=settings.cache,
        logs=work / "logs",
        idle_sessions=settings.idle_sessions,
        scale_sessions=settings.scale_sessions,
        cold_accounts=settings.cold_accounts if "sessions_ftplib_cold" in settings.metrics else 0,
        local_crypt=settings.local_crypt,
    )
    env.logs.mkdir()
    size = settings.size_mib << 20
    _log(
        f"bench: {settings.mode} mode, {settings.size_mib} MiB, "
        f"{settings.repetitions} repetitions, work folder {work}"
    )
    loads.make_files(env.home, size)
    make_pki(env)

    specs: list[ServerSpec] = [servers.ALL_SERVERS[name]() for name in settings.servers]
    unavailable: dict[str, str] = {}
    for spec in specs:
        try:
            spec.prepare(env)
        except Unavailable as error:
            unavailable[spec.name] = str(error)
            _log(f"bench: {spec.name}: not available: {error}")
    runnable = [spec for spec in specs if spec.name not in unavailable]

    measurements: list[Measurement] = []
    given_up: dict[tuple[str, str], str] = {}  # (server, metric) that failed: not retried
    for repetition in range(settings.repetitions):
        shift = repetition % max(1, len(runnable))
        order = runnable[shift:] + runnable[:shift]
        for spec in order:
            loads.warm_page_cache(env.home / loads.BIG_FILE)
            done = run_server(spec, env, settings, repetition, given_up)
            for m in done:
                if not m.ok:
                    given_up.setdefault((m.server, m.metric), m.error)
            measurements += done

    text, summary = report.table(
        measurements, settings.servers, servers.OURS, settings.metrics, unavailable
    )
    problems = report.failures(measurements)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    path = settings.results / f"{stamp}-{settings.mode}.json"
    document: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": {**asdict(settings), "size_bytes": size},
        "host": _host(),
        "servers": {
            spec.name: {
                "status": "not available" if spec.name in unavailable else "ok",
                "reason": unavailable.get(spec.name, ""),
                "version": spec.version,
                "cpu_accounting": spec.cpu_accounting,
            }
            for spec in specs
        },
        "notes": env.notes,
        "measurements": [asdict(m) for m in measurements],
        "summary": summary,
        "table": text,
    }
    report.write_json(path, document)
    print()
    print(
        f"securetransport bench, {settings.mode} mode: {settings.size_mib} MiB file, "
        f"{settings.repetitions} interleaved repetitions, medians (min-max)"
    )
    print(text)
    print("servers: " + ", ".join(f"{spec.name} {spec.version}" for spec in specs))
    for name, reason in unavailable.items():
        print(f"not available: {name}: {reason}")
    for line in problems:
        print(f"failed: {line}")
    for note in env.notes:
        print(f"note: {note}")
    print(f"results: {path}")
    return 0


def run_server(
    spec: ServerSpec,
    env: BenchEnv,
    settings: Settings,
    repetition: int,
    given_up: dict[tuple[str, str], str],
) -> list[Measurement]:
    """All selected metrics on one server for one repetition (fresh processes as needed).

    A metric that failed on this server in an earlier repetition is not run again
    (a stalled server would cost its timeouts every time).
    """
    results: list[Measurement] = []
    chosen = []
    for name in settings.metrics:
        if not METRICS[name].applies_to(spec.name):
            continue  # shown as "n/a" in the table
        if (spec.name, name) in given_up:
            error = f"skipped, failed before: {given_up[(spec.name, name)]}"
            results.append(Measurement(spec.name, name, repetition, False, error=error))
        else:
            chosen.append(METRICS[name])
    groups = [[m for m in chosen if not m.fresh]] + [[m] for m in chosen if m.fresh]
    for group in groups:
        if not group:
            continue
        try:
            running = servers.start(spec, env)
        except StartError as error:
            _log(f"bench: {spec.name}: did not start: {error}")
            results += [
                Measurement(spec.name, m.name, repetition, False, error=f"did not start: {error}")
                for m in group
            ]
            continue
        try:
            for metric in group:
                results.append(measure(spec, running, env, settings, metric.name, repetition))
        finally:
            running.stop()
    return results


def measure(
    spec: ServerSpec,
    running: servers.Running,
    env: BenchEnv,
    settings: Settings,
    name: str,
    repetition: int,
) -> Measurement:
    """One metric on a running server; a failure is recorded, never raised."""
    ctx = LoadContext(
        server=spec.name,
        pid=running.pid,
        cpu_seconds=running.cpu_seconds,
        target=Target("127.0.0.1", running.port, spec.user, spec.password, str(env.pki / "ca.crt")),
        home=env.home,
        size=settings.size_mib << 20,
        duration=settings.duration,
        idle_sessions=settings.idle_sessions,
        cold_users=spec.cold_users,
        cold_password=spec.cold_password,
        repo=env.repo,
    )
    started = time.monotonic()
    if not running.alive():
        result = Measurement(
            spec.name, name, repetition, False, error=f"server exited: {running.log_tail()}"
        )
    else:
        try:
            values = METRICS[name].run(ctx)
            result = Measurement(spec.name, name, repetition, True, values)
        except MeasureError as error:
            result = Measurement(spec.name, name, repetition, False, error=str(error))
        except Exception as error:  # noqa: BLE001 - a harness bug must not lose the run
            result = Measurement(
                spec.name, name, repetition, False, error=f"{type(error).__name__}: {error}"
            )
        if not result.ok and not running.alive():
            result.error += f" (server exited: {running.log_tail()})"
    result.seconds = time.monotonic() - started
    shown = ", ".join(
        f"{v.label} {result.values[v.key]:.{v.digits}f}"
        for v in METRICS[name].values
        if v.key in result.values
    )
    _log(
        f"  [{repetition + 1}] {spec.name:16} {name:18} "
        + (shown if result.ok else f"FAILED: {result.error}")
    )
    return result


def make_pki(env: BenchEnv) -> None:
    """CA, server certificate (127.0.0.1) and key: by `securetransport pki init`."""
    argv = [
        str(env.venv_bin / "securetransport"),
        "pki",
        "init",
        str(env.pki),
        "--user",
        servers.SecureTransport.user,
    ]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, check=False, cwd=env.repo
        )
        failure = "" if done.returncode == 0 else (done.stderr.strip() or f"exit {done.returncode}")
    except (OSError, subprocess.TimeoutExpired) as error:
        failure = str(error)
    if failure or not (env.pki / "server.crt").exists():
        env.notes.append(f"securetransport pki init failed ({failure}); made the PKI in the bench")
        _fallback_pki(env.pki)
    for name in ("server.crt", "ca.crt"):
        (env.pki / name).chmod(0o644)


def _fallback_pki(folder: Path) -> None:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "securetransport bench CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (folder / "ca.crt").write_bytes(ca.public_bytes(pem))
    (folder / "server.crt").write_bytes(leaf.public_bytes(pem))
    key_path = folder / "server.key"
    key_path.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)


def _host() -> dict[str, Any]:
    curl = subprocess.run(["curl", "--version"], capture_output=True, text=True, check=False)
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "curl": curl.stdout.splitlines()[0] if curl.stdout else "?",
        "load_average": os.getloadavg(),
    }
