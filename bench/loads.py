"""The loads and how each metric is computed from them.

Every function takes a `LoadContext` for one running server and returns the metric's
values (plus raw figures kept in the JSON), or raises MeasureError.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO

from bench import procfs
from bench.ftpclient import Target, close_quietly, list_session, login

MB = 1_000_000
GIB = 1 << 30
LIST_FOLDER = "list20"
LIST_ENTRIES = 20
BIG_FILE = "big.bin"
CURL_FORMAT = "%{size_download} %{size_upload} %{time_pretransfer} %{time_total}"


class MeasureError(Exception):
    """A measurement that could not be made; the message says why."""


@dataclass(frozen=True)
class LoadContext:
    """One running server and the load parameters."""

    server: str
    pid: int  # the server's main process; memory includes its descendants
    cpu_seconds: Callable[[], float]  # the server's CPU so far, descendants included
    target: Target
    home: Path
    size: int  # bytes of the big file
    duration: float  # seconds for each session loop
    idle_sessions: int
    cold_users: tuple[str, ...] = ()  # accounts no session has used in this server process
    cold_password: str = ""  # the password of every cold account
    repo: Path = Path(".")  # the repository root (for `python -m bench.idle_clients`)


Values = dict[str, float]


@dataclass(frozen=True)
class Value:
    """One figure a metric reports: key in the JSON, label, unit, which way is better."""

    key: str
    label: str
    higher_is_better: bool
    digits: int = 1


@dataclass(frozen=True)
class Metric:
    name: str
    title: str
    run: Callable[[LoadContext], Values]
    values: tuple[Value, ...]
    fresh: bool = False  # needs a freshly started server process
    servers: tuple[str, ...] | None = None  # the servers it applies to; None: all

    def applies_to(self, server: str) -> bool:
        return self.servers is None or server in self.servers


class ServerCPU:
    """CPU seconds used by the server (and what it forked) between start and stop."""

    def __init__(self, ctx: LoadContext) -> None:
        self.ctx = ctx
        self.base = len(procfs.process_tree(ctx.pid))
        self.before = ctx.cpu_seconds()

    def stop(self) -> float:
        """Wait (bounded) for forked sessions to end, then the CPU used since start."""
        procfs.settle_tree(self.ctx.pid, self.base)
        return self.ctx.cpu_seconds() - self.before


# --- curl transfers ------------------------------------------------------------------


STALL_SECONDS = 15  # curl gives up when a transfer moves no byte for this long
LOGIN_PROBES = 4  # login-only sessions whose server CPU is subtracted from a transfer's


def _curl(ctx: LoadContext, tls: bool, args: list[str], timeout: float) -> list[str]:
    """Run curl against the server; its -w fields, or MeasureError with curl's message."""
    argv = ["curl", "-sS", "--max-time", f"{timeout:.0f}", "--connect-timeout", "10"]
    argv += ["--speed-limit", "1", "--speed-time", str(STALL_SECONDS)]
    argv += ["-u", f"{ctx.target.user}:{ctx.target.password}"]
    if tls:
        argv += ["--ssl-reqd", "--cacert", ctx.target.cafile]
    argv += ["-w", CURL_FORMAT, *args]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout + 10, check=False
        )
    except subprocess.TimeoutExpired:
        raise MeasureError(f"curl did not finish within {timeout + 10:.0f} s") from None
    if done.returncode != 0:
        message = done.stderr.strip().splitlines()
        raise MeasureError(
            f"curl exit {done.returncode}: {message[-1] if message else 'no message'}"
        )
    return done.stdout.split()


def _transfer_timeout(size: int) -> float:
    return 60 + size / (5 * MB)  # generous: 5 MB/s at worst


def _url(ctx: LoadContext, path: str) -> str:
    return f"ftp://{ctx.target.host}:{ctx.target.port}/{path}"


def login_cpu(ctx: LoadContext, tls: bool, path: str) -> float:
    """Server CPU seconds of one curl session that logs in as a transfer does, moving no data.

    `curl -I` on FTP logs in and asks SIZE and MDTM of `path`; the mean of
    LOGIN_PROBES such sessions is what a transfer's session costs besides the data.
    """
    cpu = ServerCPU(ctx)
    for _ in range(LOGIN_PROBES):
        _curl(ctx, tls, ["-I", "-o", "/dev/null", _url(ctx, path)], 30)
    return cpu.stop() / LOGIN_PROBES


def retr(ctx: LoadContext, tls: bool) -> Values:
    """curl downloads the big file to /dev/null."""
    login_s = login_cpu(ctx, tls, BIG_FILE)
    args = ["-o", "/dev/null", _url(ctx, BIG_FILE)]
    cpu = ServerCPU(ctx)
    fields = _curl(ctx, tls, args, _transfer_timeout(ctx.size))
    cpu_s = cpu.stop()
    got, pretransfer, total = int(fields[0]), float(fields[2]), float(fields[3])
    if got != ctx.size:
        raise MeasureError(f"downloaded {got} bytes of {ctx.size}")
    return _rates(ctx.size, total - pretransfer, total, cpu_s, login_s)


def stor(ctx: LoadContext, tls: bool) -> Values:
    """curl uploads the big file over the same target again (warm: the target exists)."""
    name = f"upload-{ctx.server}.bin"
    target = ctx.home / name
    source = ctx.home / BIG_FILE
    timeout = _transfer_timeout(ctx.size)
    args = ["-T", str(source), _url(ctx, name)]
    if not _has_size(target, ctx.size):
        _curl(ctx, tls, args, timeout)  # untimed: creates the target
    login_s = login_cpu(ctx, tls, name)
    cpu = ServerCPU(ctx)
    fields = _curl(ctx, tls, args, timeout)
    cpu_s = cpu.stop()
    sent, pretransfer, total = int(fields[1]), float(fields[2]), float(fields[3])
    if sent != ctx.size or not _has_size(target, ctx.size):
        raise MeasureError(f"uploaded {sent} bytes of {ctx.size}; target is not complete")
    return _rates(ctx.size, total - pretransfer, total, cpu_s, login_s)


def _has_size(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False


def _rates(size: int, seconds: float, total: float, cpu_s: float, login_s: float) -> Values:
    if seconds <= 0:
        raise MeasureError(f"transfer time {seconds:.6f} s")
    gib = size / GIB
    return {
        "mbps": size / seconds / MB,
        "cpu_s_per_gib": (cpu_s - login_s) / gib,
        "cpu_s_per_gib_with_login": cpu_s / gib,
        "transfer_s": seconds,
        "curl_total_s": total,
        "server_cpu_s": cpu_s,
        "login_cpu_s": login_s,
    }


# --- FTPS sessions -------------------------------------------------------------------


def _session_loop(target: Target, deadline: float) -> tuple[int, int, str]:
    """Sessions one after the other until `deadline`: (done, resumed, first error or '')."""
    context = target.tls_context()
    done = resumed = 0
    while time.monotonic() < deadline:
        try:
            resumed += list_session(target, context, LIST_FOLDER, LIST_ENTRIES)
        except Exception as error:  # noqa: BLE001 - any failure ends the loop, reported
            return done, resumed, f"{type(error).__name__}: {error}"
        done += 1
    return done, resumed, ""


def cold_sessions(ctx: LoadContext) -> Values:
    """login + CWD + LIST + QUIT with ftplib, each session as an account not used before.

    Every login misses the server's verified-credential cache (ours runs its argon2id
    KDF each time). Ends at the deadline or when the accounts run out, whichever is
    first; `accounts_exhausted` says which.
    """
    if not ctx.cold_users:
        raise MeasureError("no cold accounts were made for this server")
    context = ctx.target.tls_context()
    cpu = ServerCPU(ctx)
    started = time.monotonic()
    deadline = started + ctx.duration
    done = resumed = 0
    error = ""
    for name in ctx.cold_users:
        if time.monotonic() >= deadline:
            break
        target = replace(ctx.target, user=name, password=ctx.cold_password)
        try:
            resumed += list_session(target, context, LIST_FOLDER, LIST_ENTRIES)
        except Exception as failure:  # noqa: BLE001 - any failure ends the loop, reported
            error = f"{name}: {type(failure).__name__}: {failure}"
            break
        done += 1
    elapsed = time.monotonic() - started
    cpu_s = cpu.stop()
    values = _session_values([(done, resumed, error)], elapsed, cpu_s)
    values["accounts_exhausted"] = float(done == len(ctx.cold_users))
    values["accounts"] = float(len(ctx.cold_users))
    return values


def _session_worker(target: Target, deadline: float, pipe: Connection) -> None:
    try:
        pipe.send(_session_loop(target, deadline))
    finally:
        pipe.close()


def ftplib_sessions(ctx: LoadContext, parallel: int) -> Values:
    """login + CWD + LIST + QUIT with ftplib, `parallel` client processes at a time."""
    cpu = ServerCPU(ctx)
    started = time.monotonic()
    deadline = started + ctx.duration
    if parallel == 1:
        results = [_session_loop(ctx.target, deadline)]
    else:
        results = _in_processes(ctx.target, deadline, parallel)
    elapsed = time.monotonic() - started
    cpu_s = cpu.stop()
    return _session_values(results, elapsed, cpu_s)


def _in_processes(target: Target, deadline: float, parallel: int) -> list[tuple[int, int, str]]:
    fork = multiprocessing.get_context("fork")
    workers = []
    for _ in range(parallel):
        receive, send = fork.Pipe(duplex=False)
        process = fork.Process(target=_session_worker, args=(target, deadline, send))
        process.start()
        send.close()
        workers.append((process, receive))
    results: list[tuple[int, int, str]] = []
    grace = deadline + 60  # a session's own socket timeouts end it before this
    try:
        for _process, receive in workers:
            if receive.poll(max(0.0, grace - time.monotonic())):
                try:
                    results.append(receive.recv())
                except EOFError:
                    results.append((0, 0, "client process died"))
            else:
                results.append((0, 0, "client process did not finish"))
    finally:
        for process, receive in workers:
            receive.close()
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
    return results


def _session_values(results: list[tuple[int, int, str]], elapsed: float, cpu_s: float) -> Values:
    done = sum(result[0] for result in results)
    resumed = sum(result[1] for result in results)
    errors = [result[2] for result in results if result[2]]
    if errors:
        raise MeasureError(
            f"{len(errors)} client(s) stopped on an error after {done} sessions; first: {errors[0]}"
        )
    if done == 0:
        raise MeasureError("no session completed")
    return {
        "sessions_per_s": done / elapsed,
        "cpu_ms_per_session": cpu_s * 1000 / done,
        "sessions": done,
        "resumed_data_sessions": resumed,
        "elapsed_s": elapsed,
        "server_cpu_s": cpu_s,
    }


def curl_sessions(ctx: LoadContext) -> Values:
    """One curl process per FTPS session listing the 20-entry folder."""
    cpu = ServerCPU(ctx)
    started = time.monotonic()
    deadline = started + ctx.duration
    done = 0
    url = _url(ctx, LIST_FOLDER + "/")
    while time.monotonic() < deadline:
        try:
            argv = ["curl", "-sS", "--max-time", "20", "--connect-timeout", "10", "--ssl-reqd"]
            argv += ["--cacert", ctx.target.cafile]
            argv += ["-u", f"{ctx.target.user}:{ctx.target.password}", url]
            result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        except subprocess.TimeoutExpired:
            raise MeasureError(f"curl did not finish within 30 s after {done} sessions") from None
        if result.returncode != 0:
            message = result.stderr.strip().splitlines()
            raise MeasureError(
                f"curl exit {result.returncode} after {done} sessions: "
                + (message[-1] if message else "no message")
            )
        entries = result.stdout.count("entry-")
        if entries != LIST_ENTRIES:
            raise MeasureError(f"LIST returned {entries} entries, expected {LIST_ENTRIES}")
        done += 1
    elapsed = time.monotonic() - started
    cpu_s = cpu.stop()
    return {
        "sessions_per_s": done / elapsed,
        "cpu_ms_per_session": cpu_s * 1000 / done,
        "sessions": done,
        "elapsed_s": elapsed,
        "server_cpu_s": cpu_s,
    }


# --- memory --------------------------------------------------------------------------


def idle_memory(ctx: LoadContext) -> Values:
    """PSS growth of the server for N idle, logged-in FTPS sessions (fresh server)."""
    context = ctx.target.tls_context()
    warm = login(ctx.target, context)  # warm-up: lazy imports, caches, the first login
    try:
        warm.pwd()
        warm.quit()
    finally:
        close_quietly(warm)
    time.sleep(0.5)
    base_processes = len(procfs.process_tree(ctx.pid))
    before = procfs.tree_pss_kib(ctx.pid)
    sessions = []
    started = time.monotonic()
    try:
        for index in range(ctx.idle_sessions):
            try:
                sessions.append(login(ctx.target, context, timeout=60))
            except Exception as error:  # noqa: BLE001 - any failure ends the loop, reported
                raise MeasureError(
                    f"session {index + 1} of {ctx.idle_sessions}: {type(error).__name__}: {error}"
                ) from None
        opened = time.monotonic() - started
        time.sleep(1.0)
        after = procfs.tree_pss_kib(ctx.pid)
        processes = len(procfs.process_tree(ctx.pid)) - base_processes
    finally:
        for ftp in sessions:
            close_quietly(ftp)
    return {
        "kib_per_session": (after - before) / ctx.idle_sessions,
        "pss_before_kib": before,
        "pss_after_kib": after,
        "sessions": ctx.idle_sessions,
        "processes_added": processes,
        "login_s": opened,
    }


SCALE_SOURCES = "2-20"  # idle clients bind to 127.0.0.2 .. 127.0.0.20


def idle_memory_scaled(ctx: LoadContext, sessions: int) -> Values:
    """PSS growth of a fresh server for `sessions` idle, logged-in FTPS sessions.

    The sessions come from one asyncio client process (bench/idle_clients.py), spread
    over the source addresses 127.0.0.2-20, each doing AUTH TLS, USER/PASS, PBSZ 0,
    PROT P. The server inherits the bench's RLIMIT_NOFILE.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < sessions + 128:
        raise MeasureError(
            f"RLIMIT_NOFILE is {soft} (hard {hard}); {sessions} sessions need {sessions + 128}"
        )
    with idle_clients(ctx.target, 1, ctx.repo):
        pass  # warm-up: lazy imports, caches, the first login
    time.sleep(0.5)
    base_processes = len(procfs.process_tree(ctx.pid))
    before = procfs.tree_pss_kib(ctx.pid)
    with idle_clients(ctx.target, sessions, ctx.repo) as ready:
        time.sleep(1.0)
        after = procfs.tree_pss_kib(ctx.pid)
        processes = len(procfs.process_tree(ctx.pid)) - base_processes
    return {
        "kib_per_session": (after - before) / sessions,
        "pss_before_kib": before,
        "pss_after_kib": after,
        "sessions": sessions,
        "processes_added": processes,
        "login_s": float(ready.get("seconds", 0.0)),
        "source_addresses": float(ready.get("sources", 0)),
    }


@contextmanager
def idle_clients(target: Target, sessions: int, repo: Path) -> Iterator[dict[str, float]]:
    """`sessions` idle logged-in FTPS clients (bench/idle_clients.py in a process of its
    own), held open inside the `with` block; yields their ready line; MeasureError."""
    argv = [sys.executable, "-m", "bench.idle_clients", "--host", target.host]
    argv += ["--port", str(target.port), "--user", target.user]
    argv += ["--cafile", target.cafile, "--sessions", str(sessions)]
    argv += ["--sources", SCALE_SOURCES]
    env = dict(os.environ, BENCH_PASSWORD=target.password, PYTHONPATH=str(repo))
    timeout = 120 + sessions * 0.05  # 20 sessions/s at worst
    with tempfile.TemporaryFile() as errors:  # a pipe could fill up and stall the clients
        process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            env=env,
            cwd=repo,
        )
        try:
            ready = _ready_line(process, timeout, errors)
            yield ready
        finally:
            _end_clients(process)


def _ready_line(
    process: subprocess.Popen[bytes], timeout: float, errors: IO[bytes]
) -> dict[str, float]:
    assert process.stdout is not None
    readable, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline() if readable else b""
    if not line:
        if readable:
            process.wait(timeout=10)
            errors.seek(0)
            stderr = errors.read().decode(errors="replace")
            last = stderr.strip().splitlines()[-1:] or [f"exit {process.returncode}"]
            raise MeasureError(f"idle clients ended: {last[0]}")
        raise MeasureError(f"idle clients not logged in within {timeout:.0f} s")
    try:
        answer = json.loads(line)
    except ValueError:
        raise MeasureError(f"idle clients said {line[:200]!r}") from None
    if "error" in answer:
        raise MeasureError(f"idle clients: {answer['error']}")
    return dict(answer)


def _end_clients(process: subprocess.Popen[bytes]) -> None:
    try:
        if process.stdin is not None:
            process.stdin.write(b"close\n")
            process.stdin.close()
    except OSError:
        pass
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
    if process.stdout is not None:
        process.stdout.close()


# --- the table -------------------------------------------------------------------------

# Servers whose accounts the bench can make by the hundred (vsftpd, pure-ftpd and ProFTPD
# log in system users only): the cold-login metric runs on these.
COLD_SERVERS = ("securetransport", "pyftpdlib")
# Idle session counts of the scaled memory metrics and the servers each runs on.
SCALE_METRICS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (1000, ("securetransport", "pyftpdlib")),
    (10000, ("securetransport", "pyftpdlib")),
)

_TRANSFER_VALUES = (
    Value("mbps", "MB/s", True, 0),
    Value("cpu_s_per_gib", "server CPU s/GiB", False, 2),
)
_SESSION_VALUES = (
    Value("sessions_per_s", "sessions/s", True, 1),
    Value("cpu_ms_per_session", "server CPU ms/session", False, 1),
)

METRICS: dict[str, Metric] = {
    metric.name: metric
    for metric in (
        Metric("retr_clear", "RETR clear", lambda ctx: retr(ctx, False), _TRANSFER_VALUES),
        Metric("retr_tls", "RETR FTPS", lambda ctx: retr(ctx, True), _TRANSFER_VALUES),
        Metric("stor_clear", "STOR clear (warm)", lambda ctx: stor(ctx, False), _TRANSFER_VALUES),
        Metric("stor_tls", "STOR FTPS (warm)", lambda ctx: stor(ctx, True), _TRANSFER_VALUES),
        Metric(
            "sessions_ftplib",
            "FTPS sessions ftplib, warm login, 1 at a time",
            lambda ctx: ftplib_sessions(ctx, 1),
            _SESSION_VALUES,
        ),
        Metric(
            "sessions_ftplib_cold",
            "FTPS sessions ftplib, cold login, 1 at a time",
            cold_sessions,
            _SESSION_VALUES,
            servers=COLD_SERVERS,
        ),
        Metric(
            "sessions_ftplib_4",
            "FTPS sessions ftplib, 4 at a time",
            lambda ctx: ftplib_sessions(ctx, 4),
            _SESSION_VALUES,
        ),
        Metric("sessions_curl", "FTPS sessions curl", curl_sessions, _SESSION_VALUES),
        Metric(
            "idle_memory",
            "idle FTPS session memory",
            idle_memory,
            (Value("kib_per_session", "PSS KiB/session", False, 0),),
            fresh=True,
        ),
        *(
            Metric(
                f"idle_memory_{count}",
                f"idle FTPS session memory, {count:,} sessions from 127.0.0.2-20",
                lambda ctx, count=count: idle_memory_scaled(ctx, count),  # type: ignore[misc]
                (Value("kib_per_session", "PSS KiB/session", False, 0),),
                fresh=True,
                servers=servers,
            )
            for count, servers in SCALE_METRICS
        ),
    )
}


def make_files(home: Path, size: int) -> None:
    """The big file (random bytes, kept if already of that size) and the 20-entry folder."""
    home.mkdir(parents=True, exist_ok=True)
    big = home / BIG_FILE
    if not _has_size(big, size):
        chunk = os.urandom(1 << 20)
        with big.open("wb") as stream:
            left = size
            while left > 0:
                stream.write(chunk[: min(left, len(chunk))])
                left -= len(chunk)
    folder = home / LIST_FOLDER
    folder.mkdir(exist_ok=True)
    for index in range(LIST_ENTRIES):
        (folder / f"entry-{index:02d}.txt").write_bytes(b"x" * (100 * (index + 1)))


def warm_page_cache(path: Path) -> None:
    """Read `path` once so that transfers start with it in the page cache."""
    with path.open("rb") as stream:
        while stream.read(1 << 22):
            pass
