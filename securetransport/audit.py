"""The audit log (JSON lines) and the xferlog (wu-ftpd format, as vsftpd and ProFTPD write)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from twisted.logger import Logger

log = Logger(namespace="securetransport.audit")

_NAME_KEY = secrets.token_bytes(32)  # per process: groups typed names without keeping them


def login_name_fields(name: str, is_account: bool) -> dict[str, str | None]:
    """Audit fields for a login name as typed: the name itself only when it is an
    account; otherwise `user` is null and `user_key` a keyed hash, so that repeated
    attempts with one name can be grouped without writing what was typed (a password
    typed into the name field, for instance)."""
    if is_account:
        return {"user": name}
    digest = hmac.new(_NAME_KEY, name.encode("utf-8", "surrogatepass"), hashlib.sha256)
    return {"user": None, "user_key": digest.hexdigest()[:16]}


class _ReopenableFile:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self.reopen()

    def reopen(self) -> None:
        """Close and open again (SIGHUP after log rotation)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._file = os.fdopen(fd, "a", buffering=1, encoding="utf-8")

    def write_line(self, line: str) -> None:
        if self._file is None:
            return
        try:
            self._file.write(line + "\n")
        except OSError as error:
            log.error("cannot write {path}: {error}", path=self.path, error=error)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class AuditLog(_ReopenableFile):
    """One JSON object a line: sessions, TLS, logins, transfers."""

    def __init__(self, path: Path | None, clock: Any = time) -> None:
        self.clock = clock
        # Called with (event, fields) for every event, e.g. metrics.Metrics.observe.
        self.observers: list[Callable[[str, dict[str, Any]], None]] = []
        super().__init__(path)

    def event(self, event: str, **fields: Any) -> None:
        record = {"time": _iso(self.clock.time()), "event": event, **fields}
        self.write_line(json.dumps(record, default=str, ensure_ascii=False, sort_keys=False))
        for observer in self.observers:
            try:
                observer(event, fields)
            except Exception:  # noqa: BLE001 - an observer never breaks a session
                log.failure("audit observer failed")


class XferLog(_ReopenableFile):
    """The xferlog line per transfer (`man 5 xferlog`)."""

    def transfer(
        self,
        *,
        seconds: float,
        host: str,
        size: int,
        path: str,
        binary: bool,
        direction: str,  # "o" outgoing (RETR) or "i" incoming (STOR)
        user: str,
        completed: bool,
        now: float | None = None,
    ) -> None:
        stamp = time.strftime(
            "%a %b %d %H:%M:%S %Y", time.gmtime(now if now is not None else time.time())
        )
        name = path.replace(" ", "_")
        self.write_line(
            f"{stamp} {max(1, round(seconds))} {host} {size} {name} {'b' if binary else 'a'} _ "
            f"{direction} r {user} ftp 0 * {'c' if completed else 'i'}"
        )


def _iso(timestamp: float) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp))
        + f".{int(timestamp % 1 * 1000):03d}Z"
    )
