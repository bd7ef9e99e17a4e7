"""`python -m securetransport.worker`: one worker process, started by `workers.WorkerSupervisor`.

Not for operators: the supervisor passes the listening sockets as inherited fds, the
worker's index, the shared limits file and the passive slice as arguments, and the parsed
config and `[tls]` material on stdin (see securetransport.workers). The worker serves until
SIGTERM (or its supervisor's death) and logs to stdout, which the supervisor relays.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import pickle
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from twisted.logger import ILogObserver, eventAsText, globalLogBeginner
from zope.interface import provider

from securetransport.service import SecureTransportService
from securetransport.tls.material import tls_runtime
from securetransport.workers import WorkerBoot, WorkerRole

PR_SET_PDEATHSIG = 1


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m securetransport.worker")
    parser.add_argument("--config", required=True, help="the config file (for the log)")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--limits", type=Path, required=True)
    parser.add_argument("--listen-fds", required=True, help="comma-separated fds, or -")
    parser.add_argument("--passive", required=True, help="FIRST-LAST")
    parser.add_argument("--supervisor", type=int, required=True, help="the supervisor's pid")
    return parser.parse_args(argv)


def die_with_parent(supervisor: int) -> None:
    """Ask Linux for SIGTERM when the supervisor dies; exit now if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != supervisor:
        raise SystemExit(1)


def text_observer(stream: IO[str]) -> Any:
    """Log lines without time stamps: the supervisor's log adds its own."""

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        text = eventAsText(event, includeTimestamp=False)
        stream.write(text + "\n")
        stream.flush()

    return observe


def main(argv: Sequence[str] | None = None) -> int:
    # A SIGHUP forwarded before the service installs its handler must not kill us.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    die_with_parent(args.supervisor)

    boot = pickle.load(sys.stdin.buffer)  # from our supervisor, over a private pipe
    sys.stdin.close()
    if not isinstance(boot, WorkerBoot):
        print(f"worker {args.index}: bad boot data on stdin", file=sys.stderr)
        return 1
    globalLogBeginner.beginLoggingTo([text_observer(sys.stdout)], redirectStandardIO=False)

    from twisted.internet import reactor

    first, last = (int(part) for part in args.passive.split("-", 1))
    fds = [] if args.listen_fds == "-" else [int(fd) for fd in args.listen_fds.split(",")]
    role = WorkerRole(args.index, fds, args.limits, (first, last))
    service = SecureTransportService(boot.config, reactor, tls=tls_runtime(boot.tls), worker=role)
    try:
        service.startService()
    except Exception as error:  # noqa: BLE001 - one line, then the supervisor retries
        print(f"worker {args.index}: cannot start: {error}", file=sys.stderr)
        return 1
    for fd in fds:  # the ports hold their own copies now
        os.close(fd)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
