"""A cgroup per server, to count the CPU of everything the server forks.

Summing /proc/PID/stat over a process tree misses processes that leave the tree: vsftpd's
session process exits without reaping its transfer child, which is reparented to init
with its CPU time (measured: a whole TLS upload's CPU lost). A cgroup counts every
process that started in it, wherever it is reparented, to the microsecond. cgroup v2's
`cpu.stat` is used when the unified hierarchy is writable, else cgroup v1's `cpuacct`;
when neither can be used (not root, read-only), callers fall back to /proc.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path


def _mounts() -> list[tuple[str, str, list[str]]]:
    """(mount point, type, options) of every cgroup mount."""
    found = []
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        if len(fields) >= 4 and fields[2] in ("cgroup", "cgroup2"):
            found.append((fields[1], fields[2], fields[3].split(",")))
    return found


def _own_paths() -> dict[str, str]:
    """This process's cgroup path per hierarchy: '' for v2, each controller for v1."""
    paths: dict[str, str] = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return paths
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            paths[""] = parts[2]
        for controller in parts[1].split(","):
            if controller:
                paths[controller] = parts[2]
    return paths


def _parents() -> list[tuple[Path, str]]:
    """Folders below which this process may make cgroups: (folder, "v2" | "v1"), v2 first."""
    own = _own_paths()
    found: list[tuple[Path, str]] = []
    for mount, kind, options in _mounts():
        if kind == "cgroup2" and "" in own:
            found.append((Path(mount + own[""]), "v2"))
        elif kind == "cgroup" and "cpuacct" in options and "cpuacct" in own:
            found.append((Path(mount + own["cpuacct"]), "v1"))
    found.sort(key=lambda item: item[1] != "v2")
    return found


def remove_stale(prefix: str) -> None:
    """Remove empty cgroups `PREFIX-PID-*` left by a bench process that no longer runs."""
    for parent, _kind in _parents():
        for path in parent.glob(f"{prefix}-*"):
            pid = path.name[len(prefix) + 1 :].split("-", 1)[0]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                try:
                    path.rmdir()
                except OSError:
                    pass


class CpuCgroup:
    """A fresh cgroup that a server is started in; `seconds()` is its CPU so far."""

    def __init__(self, path: Path, kind: str) -> None:
        self.path = path
        self.kind = kind  # "v2" or "v1"

    @classmethod
    def create(cls, name: str) -> CpuCgroup | None:
        """Make the cgroup below this process's own, or None when that is not possible."""
        for parent, kind in _parents():
            path = parent / name
            try:
                path.mkdir()
            except FileExistsError:
                pass
            except OSError:
                continue
            group = cls(path, kind)
            try:
                group.seconds()
                (path / "cgroup.procs").stat()
            except (OSError, ValueError):
                group.remove()
                continue
            return group
        return None

    def preexec(self) -> Callable[[], None]:
        """For Popen(preexec_fn=...): the child joins the cgroup before exec."""
        procs = str(self.path / "cgroup.procs")

        def join() -> None:
            with open(procs, "w") as stream:
                stream.write(str(os.getpid()))

        return join

    def seconds(self) -> float:
        """CPU seconds used by every process that has run in the cgroup."""
        if self.kind == "v2":
            for line in (self.path / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) / 1e6
            raise ValueError("no usage_usec in cpu.stat")
        return int((self.path / "cpuacct.usage").read_text()) / 1e9

    def pids(self) -> list[int]:
        try:
            text = (self.path / "cgroup.procs").read_text()
        except OSError:
            return []
        return [int(word) for word in text.split()]

    def kill_all(self) -> None:
        """SIGKILL every process still in the cgroup (all of them started by the bench)."""
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def remove(self) -> None:
        """Kill what is left and remove the cgroup (bounded retries)."""
        for _ in range(50):
            self.kill_all()
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)
