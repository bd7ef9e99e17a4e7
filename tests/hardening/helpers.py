"""Shared helpers for the hardening tests: raw sessions with data transfers, waits, snapshots.

Everything here blocks: run it in a thread (`tests.e2e.harness.in_thread`) when the server
runs in the test's reactor.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from hardening.clients import Control, pasv_port, read_until_closed
from tests.e2e.harness import PASSWORD

HOST = "127.0.0.1"


def wait_for(predicate: Callable[[], bool], limit: float = 5, step: float = 0.02) -> bool:
    """Poll `predicate` until it holds or `limit` seconds pass; its last value."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def code(reply: str) -> str:
    return reply[:3]


class Session(Control):
    """A raw control connection with data transfers over EPSV; replies are returned, not raised."""

    def __init__(self, port: int, *, user: str | None = "alice", **kwargs: object) -> None:
        super().__init__(port, **kwargs)  # type: ignore[arg-type]
        if user is not None:
            reply = self.login(user, PASSWORD)
            if not reply.startswith("230"):
                raise AssertionError(f"login failed: {reply}")

    def _data(self) -> socket.socket | str:
        reply = self.command("EPSV")
        if not reply.startswith("229"):
            return reply
        source = self.sock.getsockname()[0]  # the data connection comes from the same address
        return socket.create_connection((HOST, pasv_port(reply)), 10, source_address=(source, 0))

    def retr(self, line: str | bytes) -> tuple[bytes, list[str]]:
        """(data received, replies) of a transfer command that sends data (RETR, LIST...)."""
        data = self._data()
        if isinstance(data, str):
            return b"", [data]
        try:
            first = self.command(line)
            if not first.startswith("1"):
                return b"", [first]
            received, _ = read_until_closed(data, 10)
        finally:
            data.close()
        return received, [first, self.read_reply()]

    def stor(self, line: str | bytes, payload: bytes) -> list[str]:
        """Replies of an upload command sending `payload` and closing cleanly. When the
        server cuts the data connection while we still send (an upload it refuses
        midway), the reply is read all the same, as real clients do."""
        data = self._data()
        if isinstance(data, str):
            return [data]
        try:
            first = self.command(line)
            if not first.startswith("1"):
                return [first]
            try:
                data.sendall(payload)
            except (ConnectionResetError, BrokenPipeError):
                pass
        finally:
            data.close()
        return [first, self.read_reply()]


def tree_snapshot(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, tuple[str, int, str]]:
    """Every entry below `root` (symlinks not followed): kind, size and content SHA-256."""
    out: dict[str, tuple[str, int, str]] = {}
    skipped = [str(path) for path in skip]
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.join(folder, d) not in skipped]
        for name in dirnames + filenames:
            path = os.path.join(folder, name)
            if path in skipped:
                continue
            st = os.lstat(path)
            if os.path.islink(path):
                out[path] = ("link", 0, os.readlink(path))
            elif os.path.isdir(path):
                out[path] = ("dir", 0, "")
            else:
                with open(path, "rb") as handle:
                    digest = hashlib.sha256(handle.read()).hexdigest()
                out[path] = ("file", st.st_size, digest)
    return out


def temporaries(folder: Path) -> list[str]:
    """Upload temporaries (`.st-upload-*`) anywhere below `folder`."""
    found = []
    for _, dirnames, filenames in os.walk(folder):
        found += [n for n in dirnames + filenames if n.startswith(".st-upload-")]
    return found
