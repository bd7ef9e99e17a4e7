"""Reading server CPU time, memory and listening ports from /proc (Linux only)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name, or None if the process is gone."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may itself contain spaces and ')'.
    return raw[raw.rindex(")") + 2 :].split()


def children_map() -> dict[int, list[int]]:
    """Parent pid -> child pids, for every process now visible in /proc."""
    result: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is None:
            continue
        result.setdefault(int(fields[1]), []).append(int(entry.name))
    return result


def process_tree(pid: int) -> list[int]:
    """`pid` and all its live (or zombie) descendants."""
    tree = children_map()
    found: list[int] = []
    stack = [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(tree.get(current, []))
    return found


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime + cutime + cstime of each process, summed, in seconds.

    Summed over a process tree this stays consistent when children exit: a reaped
    child's time moves into its parent's cutime/cstime.
    """
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is None:
            continue
        # Fields 14-17 of stat(5), counted from the pid; here they start at index 11.
        ticks += sum(int(value) for value in fields[11:15])
    return ticks / CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of the server process `pid` and everything it forked."""
    return cpu_seconds(process_tree(pid))


def settle_tree(pid: int, count: int, timeout: float = 3.0) -> None:
    """Wait (bounded) until the tree under `pid` is back to `count` processes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(process_tree(pid)) > count:
        time.sleep(0.05)


def pss_kib(pid: int) -> int:
    """Proportional set size of one process in KiB (0 if it is gone)."""
    try:
        text = (PROC / str(pid) / "smaps_rollup").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def tree_pss_kib(pid: int) -> int:
    """PSS of `pid` and all its descendants, in KiB."""
    return sum(pss_kib(each) for each in process_tree(pid))


def listening_ports() -> set[int]:
    """Local TCP ports in LISTEN state (IPv4 and IPv6)."""
    ports: set[int] = set()
    for name in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A":
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def port_is_free(port: int, address: str = "127.0.0.1") -> bool:
    """True when nothing listens on `port` and a server could bind it."""
    if port in listening_ports():
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


def range_is_free(low: int, high: int) -> bool:
    """True when no port in [low, high] is listening."""
    busy = listening_ports()
    return not any(low <= port <= high for port in busy)
