"""Where an idle FTPS session's memory goes in our server: `python -m bench.session_memory`.

For each session count N (default 1000 and 10000) it runs, each in a fresh process:

1. our server in-process (SecureTransportService in the reactor, as tests/e2e/harness.py
   does), N idle logged-in FTPS sessions from bench/idle_clients.py (another process,
   source addresses 127.0.0.2-20): the server's PSS growth per session;
2. the same with tracemalloc started just before the sessions open: the Python objects
   the sessions hold (tracemalloc's own tables are subtracted from the PSS growth), the
   allocation sites that hold most, and the number of objects gc tracks per session;
3. N bare per-session Contexts (`SessionContextFactory.new_session_context()` on the same
   credentials), held at once: what one Context costs, OpenSSL's part and Python's.

Breakdown per session: Python objects (tracemalloc); the Context's C part (3); the rest,
the TLS connection (OpenSSL's SSL object, its BIOs and buffers, the session it caches)
and other C allocations, is the untraced run's PSS growth minus both. Loopback only.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

from bench import procfs
from bench.ftpclient import Target
from bench.idle_clients import raise_file_limit
from bench.loads import MeasureError, idle_clients
from bench.servers import BenchEnv, SecureTransport, pick_passive

REPO = Path(__file__).resolve().parent.parent
KIB = 1024
TOP_SITES = 12


def _setup(work: Path, sessions: int) -> tuple[Any, Target]:
    """Config, PKI and the account under `work`; the loaded Config and the login target."""
    from securetransport.config import load_config
    from securetransport.passwords import hash_password
    from securetransport.pki import init_pki
    from securetransport.stores import open_user_store
    from securetransport.userstore import Account

    spec = SecureTransport()
    env = BenchEnv(
        repo=REPO,
        work=work,
        home=work / "homes" / spec.user,
        pki=work / "pki",
        cache=work / "cache",
        logs=work / "logs",
        idle_sessions=sessions,
        scale_sessions=sessions,
    )
    env.home.mkdir(parents=True)
    init_pki(env.pki, [spec.user])
    spec.passive = pick_passive(spec.slot)
    path = spec.write_config(env, 0)
    config = load_config(path)
    password = "bench-" + os.urandom(6).hex()
    store = open_user_store(config.server.users)
    store.add(Account(name=spec.user, password_hash=hash_password(password)))
    store.close()
    return config, Target("127.0.0.1", 0, spec.user, password, str(env.pki / "ca.crt"))


def serve(sessions: int, trace: bool) -> dict[str, Any]:
    """Our server in this process, `sessions` idle sessions; PSS (and tracemalloc) growth."""
    from twisted.internet import reactor as default_reactor
    from twisted.internet.threads import blockingCallFromThread

    from securetransport.service import SecureTransportService

    reactor: Any = default_reactor
    raise_file_limit(sessions + 256)
    work = Path(tempfile.mkdtemp(prefix="securetransport-memory-"))
    result: dict[str, Any] = {"sessions": sessions, "traced": trace}
    try:
        config, target = _setup(work, sessions)
        service = SecureTransportService(config, reactor)
        service.startService()
        # Its thread pools are not daemons: stop them, or the process never exits.
        reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
        port: int = getattr(service.ports[0].getHost(), "port")  # noqa: B009 - IAddress
        target = Target(target.host, port, target.user, target.password, target.cafile)

        def before() -> dict[str, float]:
            gc.collect()
            if trace:
                tracemalloc.start()
            return {
                "pss_kib": procfs.pss_kib(os.getpid()),
                "objects": len(gc.get_objects()),
                "tracemalloc_kib": tracemalloc.get_tracemalloc_memory() / KIB,
            }

        def after() -> dict[str, Any]:
            gc.collect()
            figures: dict[str, Any] = {
                "pss_kib": procfs.pss_kib(os.getpid()),
                "objects": len(gc.get_objects()),
                "tracemalloc_kib": tracemalloc.get_tracemalloc_memory() / KIB,
            }
            if trace:
                figures["python_kib"] = tracemalloc.get_traced_memory()[0] / KIB
                snapshot = tracemalloc.take_snapshot()
                figures["sites"] = [
                    {
                        "site": f"{_short(stat.traceback[0].filename)}:{stat.traceback[0].lineno}",
                        "kib": stat.size / KIB,
                        "blocks": stat.count,
                    }
                    for stat in snapshot.statistics("lineno")[:TOP_SITES]
                ]
                tracemalloc.stop()
            return figures

        def flow() -> None:
            try:
                with idle_clients(target, 1, REPO):
                    pass  # warm-up: lazy imports, caches, the first login
                time.sleep(0.5)
                result["before"] = blockingCallFromThread(reactor, before)
                with idle_clients(target, sessions, REPO) as ready:
                    result["login_s"] = ready.get("seconds", 0.0)
                    time.sleep(1.0)
                    result["after"] = blockingCallFromThread(reactor, after)
            except MeasureError as error:
                result["error"] = str(error)
            except Exception as error:  # noqa: BLE001 - reported, the reactor must stop
                result["error"] = f"{type(error).__name__}: {error}"
            finally:
                reactor.callFromThread(reactor.stop)

        reactor.callWhenRunning(lambda: threading.Thread(target=flow, daemon=True).start())
        reactor.run()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def contexts(count: int) -> dict[str, Any]:
    """`count` bare per-session Contexts held at once: PSS and Python bytes per Context."""
    from securetransport.tls.context import SessionContextFactory, load_server_credentials

    work = Path(tempfile.mkdtemp(prefix="securetransport-memory-"))
    try:
        config, _ = _setup(work, count)
        factory = SessionContextFactory(load_server_credentials(config.tls))
        for _ in range(20):  # warm-up: lazy imports and first-use allocations
            factory.new_session_context()
        gc.collect()
        before = procfs.pss_kib(os.getpid())
        tracemalloc.start()
        held = [factory.new_session_context() for _ in range(count)]
        python_kib = tracemalloc.get_traced_memory()[0] / KIB
        overhead = tracemalloc.get_tracemalloc_memory() / KIB
        gc.collect()
        after = procfs.pss_kib(os.getpid())
        tracemalloc.stop()
        del held
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "contexts": count,
        "kib_per_context": (after - before - overhead) / count,
        "python_kib_per_context": python_kib / count,
    }


def _short(filename: str) -> str:
    """A shorter file name: below site-packages, the standard library or the repository."""
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1]
    if filename.startswith(str(REPO)):
        return os.path.relpath(filename, REPO)
    parts = Path(filename).parts
    for index, part in enumerate(parts):
        if part.startswith("python3") and index > 0 and parts[index - 1] == "lib":
            return "/".join(parts[index + 1 :])
    return filename


def _child(args: list[str]) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.session_memory", *args]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=1800, check=False, cwd=REPO, env=env
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        return {"error": why}
    answer: dict[str, Any] = json.loads(lines[-1])
    return answer


def breakdown(
    plain: dict[str, Any], traced: dict[str, Any], bare: dict[str, Any]
) -> dict[str, Any]:
    """Per-session KiB: total PSS, Python objects, the Context's C part, the residual."""
    sessions = plain["sessions"]
    total = (plain["after"]["pss_kib"] - plain["before"]["pss_kib"]) / sessions
    grown = traced["after"]["pss_kib"] - traced["before"]["pss_kib"]
    own = traced["after"]["tracemalloc_kib"] - traced["before"]["tracemalloc_kib"]
    traced_total = (grown - own) / sessions
    python = traced["after"]["python_kib"] / sessions
    context_c = bare["kib_per_context"] - bare["python_kib_per_context"]
    return {
        "sessions": sessions,
        "pss_kib_per_session": total,
        "pss_kib_per_session_traced_run": traced_total,
        "python_objects_kib": python,
        "gc_objects_per_session": (traced["after"]["objects"] - traced["before"]["objects"])
        / sessions,
        "context_c_kib": context_c,
        "context_total_kib": bare["kib_per_context"],
        # From the untraced total: tracing itself costs more than tracemalloc reports
        # (malloc overhead of its trace entries), a few KiB per session here.
        "tls_connection_and_other_c_kib": total - python - context_c,
        "login_s": plain.get("login_s"),
        "sites": [
            {**site, "kib_per_session": site["kib"] / sessions}
            for site in traced["after"].get("sites", [])
        ],
    }


def report(rows: list[dict[str, Any]]) -> str:
    lines = []
    for row in rows:
        n = row["sessions"]
        lines.append(
            f"{n:,} idle FTPS sessions, our server in-process: "
            f"PSS {row['pss_kib_per_session']:.1f} KiB/session "
            f"({row['pss_kib_per_session_traced_run']:.1f} in the traced run, "
            f"tracemalloc's own tables subtracted); opened in {row['login_s']:.0f} s"
        )
        lines.append(f"  Python objects (tracemalloc)        {row['python_objects_kib']:6.1f} KiB")
        lines.append(
            f"  per-session Context, OpenSSL part   {row['context_c_kib']:6.1f} KiB "
            f"(whole bare Context {row['context_total_kib']:.1f})"
        )
        lines.append(
            f"  TLS connection and other C (rest)   "
            f"{row['tls_connection_and_other_c_kib']:6.1f} KiB"
        )
        lines.append(f"  objects tracked by gc per session   {row['gc_objects_per_session']:6.1f}")
        lines.append("  Python allocation sites holding most, KiB per session:")
        for site in row["sites"][:8]:
            lines.append(f"    {site['kib_per_session']:6.2f}  {site['site']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.session_memory",
        description="Per-session memory of our server's idle FTPS sessions, broken down.",
    )
    parser.add_argument("--sessions", default="1000,10000", help="session counts (1000,10000)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--contexts", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        print(json.dumps(serve(args.serve, args.trace)))
        return 0
    if args.contexts:
        print(json.dumps(contexts(args.contexts)))
        return 0
    try:
        counts = [int(part) for part in args.sessions.split(",") if part.strip()]
    except ValueError:
        parser.error(f"--sessions must be numbers separated by commas, not {args.sessions!r}")
    if not counts or min(counts) <= 0:
        parser.error("--sessions must be positive")
    rows = []
    for count in counts:
        print(f"session_memory: {count} sessions ...", file=sys.stderr, flush=True)
        plain = _child(["--serve", str(count)])
        traced = _child(["--serve", str(count), "--trace"])
        bare = _child(["--contexts", str(count)])
        failed = [part["error"] for part in (plain, traced, bare) if "error" in part]
        if failed:
            print(f"session_memory: {count} sessions failed: {failed[0]}", file=sys.stderr)
            return 1
        rows.append(breakdown(plain, traced, bare))
    print(report(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
