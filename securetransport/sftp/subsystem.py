"""The `sftp` subsystem on the confined filesystem (SPEC sections 6 and 9).

- `SFTPSessionChannel`: a `session` channel that serves only the `sftp` subsystem
  (shell, exec, pty, env, agent and X11 requests are refused) and reopens its window
  only as the SFTP layer finishes requests (real back-pressure on uploads).
- `SFTPServerProtocol`: conch's `FileTransferServer` (SFTP v3) with our own framing:
  packets over `MAX_PACKET` are refused (FX_BAD_MESSAGE) and skipped without being
  buffered, more than `MAX_OUTSTANDING` requests without a reply are refused
  (FX_FAILURE), a malformed request gets FX_BAD_MESSAGE instead of an assertion in
  the log, a lost connection aborts uploads (never publishes them), and conch's
  per-packet info logging is filtered out. Extensions: posix-rename, statvfs, fsync,
  limits (@openssh.com).
- `ConfinedSFTPServer`: `ISFTPServer` over `IFilesystem`. Every path goes through
  `IFilesystem.resolve` and every disk operation through the filesystem's thread
  pool. A handle opened for writing with truncation (or for a new file) is an
  `IUpload` from offset 0: atomic mode writes a temporary published on close. One
  opened without truncation on an existing file starts at its first write's offset
  (the REST n + STOR of FTP: resume). Writes must come in order; a gap is buffered
  (bounded) until filled.
"""

from __future__ import annotations

import os
import struct
import time
from collections import deque
from collections.abc import Iterator
from typing import Any, Final

from twisted.conch.interfaces import ISFTPFile, ISFTPServer
from twisted.conch.ssh import filetransfer
from twisted.conch.ssh.channel import SSHChannel
from twisted.conch.ssh.common import getNS
from twisted.conch.ssh.filetransfer import SFTPError
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.threads import deferToThread
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from securetransport.ftp.listing import format_list_line
from securetransport.vfs import (
    FileStat,
    FilesystemError,
    InvalidName,
    NotFound,
    PermissionDenied,
    ReservedName,
)

log = Logger(namespace="securetransport.sftp.subsystem")

MAX_PACKET: Final = 256 * 1024  # largest SFTP packet accepted (length field)
MAX_READ: Final = MAX_PACKET - 1024  # largest READ answered / WRITE announced in limits
MAX_OUTSTANDING: Final = 64  # requests without a reply, per session
MAX_OPEN_HANDLES: Final = 256
MAX_GAP_BYTES: Final = 8 * 1024 * 1024  # out-of-order write data held per handle
CHANNEL_WINDOW: Final = 4 * 1024 * 1024
CHANNEL_MAX_PACKET: Final = 32 * 1024

_REPLY_KINDS: Final = frozenset(
    {
        filetransfer.FXP_STATUS,
        filetransfer.FXP_HANDLE,
        filetransfer.FXP_DATA,
        filetransfer.FXP_NAME,
        filetransfer.FXP_ATTRS,
        filetransfer.FXP_EXTENDED_REPLY,
    }
)
# Extensions answered with a STATUS rather than an EXTENDED_REPLY.
_STATUS_EXTENSIONS: Final = frozenset({b"posix-rename@openssh.com", b"fsync@openssh.com"})
EXTENSIONS: Final = {
    b"posix-rename@openssh.com": b"1",
    b"statvfs@openssh.com": b"2",
    b"fsync@openssh.com": b"1",
    b"limits@openssh.com": b"1",
}

# conch logs every SFTP packet at info: keep its warnings and errors only.
_quiet = FilteringLogObserver(
    globalLogPublisher, [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)]
)


def _sftp_error(failure: Failure) -> Failure:
    """A FilesystemError as the SFTPError the client should see."""
    error = failure.value
    if isinstance(error, SFTPError | NotImplementedError | EOFError):
        return failure
    if isinstance(error, NotFound | ReservedName):
        return Failure(SFTPError(filetransfer.FX_NO_SUCH_FILE, "No such file"))
    if isinstance(error, PermissionDenied):
        return Failure(SFTPError(filetransfer.FX_PERMISSION_DENIED, error.message))
    if isinstance(error, InvalidName):
        return Failure(SFTPError(filetransfer.FX_PERMISSION_DENIED, error.message))
    if isinstance(error, FilesystemError):
        return Failure(SFTPError(filetransfer.FX_FAILURE, error.message))
    log.failure("SFTP request failed", failure)
    return Failure(SFTPError(filetransfer.FX_FAILURE, "Request failed"))


def _attrs(entry: FileStat) -> dict[str, int]:
    mtime = max(0, min(int(entry.mtime), 0xFFFFFFFF))
    return {
        "size": entry.size,
        "permissions": entry.mode,
        "atime": mtime,
        "mtime": mtime,
    }


class _Directory:
    """An open directory: its entries as conch wants them."""

    def __init__(self, entries: list[FileStat], now: float) -> None:
        self._entries = entries
        self._now = now

    def __iter__(self) -> Iterator[tuple[bytes, bytes, dict[str, int]]]:
        for entry in self._entries:
            line = format_list_line(entry, self._now, "user", "user")
            yield entry.name.encode("utf-8"), line.encode("utf-8"), _attrs(entry)

    def close(self) -> None:
        """Nothing to release: the listing was read whole."""


@implementer(ISFTPFile)
class _ReadFile:
    """A handle opened for reading."""

    def __init__(self, server: ConfinedSFTPServer, path: str, handle: Any) -> None:
        self._server = server
        self.path = path
        self._handle = handle
        self._started = time.monotonic()
        self.bytes = 0
        self._closed = False

    def readChunk(self, offset: int, length: int) -> Deferred[bytes]:  # noqa: N802
        d = self._handle.read(offset, min(length, MAX_READ))

        def count(data: bytes) -> bytes:
            self.bytes += len(data)
            return data

        return d.addCallback(count).addErrback(_sftp_error)

    def writeChunk(self, offset: int, data: bytes) -> Deferred[None]:  # noqa: N802
        return fail(SFTPError(filetransfer.FX_PERMISSION_DENIED, "handle opened for reading"))

    def getAttrs(self) -> Deferred[dict[str, int]]:  # noqa: N802
        return self._server.getAttrs(self.path.encode("utf-8"), True)

    def setAttrs(self, attrs: dict[str, Any]) -> Deferred[None]:  # noqa: N802
        return fail(SFTPError(filetransfer.FX_PERMISSION_DENIED, "handle opened for reading"))

    def close(self) -> None:
        self._finish(True)

    def abort(self) -> None:
        self._finish(False)

    def _finish(self, ok: bool) -> None:
        if self._closed:
            return
        self._closed = True
        self._handle.close()
        self._server.record("download", self.path, self.bytes, self._started, ok)


@implementer(ISFTPFile)
class _WriteFile:
    """A handle opened for writing: an IUpload, created at open or at the first write."""

    def __init__(
        self, server: ConfinedSFTPServer, path: str, *, offset: int | None, append: bool
    ) -> None:
        self._server = server
        self.path = path
        self._append = append
        self._upload: Any = None
        self._opening: Deferred[Any] | None = None
        self._next: int | None = offset  # None: opened at the first write
        self._queue: list[tuple[int, bytes, Deferred[None]]] = []
        self._gap: dict[int, bytes] = {}
        self._gap_bytes = 0
        self._error: Failure | None = None
        self._mtime: int | None = None
        self._started = time.monotonic()
        self.bytes = 0
        self._finished = False

    def start(self, offset: int) -> Deferred[_WriteFile]:
        """Open the upload now (truncating, or appending)."""
        self._next = offset
        return self._open(offset).addCallback(lambda _: self)

    def _open(self, offset: int) -> Deferred[Any]:
        fs = self._server.filesystem
        d = fs.open_upload(self.path, offset=offset, append=self._append)
        self._opening = d

        def opened(upload: Any) -> None:
            self._upload = upload
            self._opening = None
            self._drain()

        def failed(failure: Failure) -> Failure:
            self._opening = None
            self._error = _sftp_error(failure)
            self._drain()
            return self._error

        return d.addCallbacks(opened, failed)

    # ISFTPFile

    def writeChunk(self, offset: int, data: bytes) -> Deferred[None]:  # noqa: N802
        if self._finished:
            return fail(SFTPError(filetransfer.FX_FAILURE, "handle closed"))
        d: Deferred[None] = Deferred()
        self._queue.append((offset, data, d))
        if self._upload is None and self._opening is None and self._error is None:
            self._next = offset
            self._open(offset).addErrback(lambda _: None)
            return d
        self._drain()
        return d

    def _drain(self) -> None:
        if self._upload is None and self._error is None:
            return
        queue, self._queue = self._queue, []
        for offset, data, d in queue:
            if self._error is not None:
                d.errback(self._error)
                continue
            self._write(offset, data).chainDeferred(d)

    def _write(self, offset: int, data: bytes) -> Deferred[None]:
        if self._append:
            self.bytes += len(data)
            return self._upload.write(data).addErrback(self._write_failed)
        assert self._next is not None
        if offset > self._next:
            if self._gap_bytes + len(data) > MAX_GAP_BYTES or offset in self._gap:
                return fail(SFTPError(filetransfer.FX_FAILURE, "writes too far out of order"))
            self._gap[offset] = data
            self._gap_bytes += len(data)
            return succeed(None)
        if offset < self._next:
            return fail(SFTPError(filetransfer.FX_FAILURE, "overlapping writes are not supported"))
        d = self._put(data)
        while self._next in self._gap:
            piece = self._gap.pop(self._next)
            self._gap_bytes -= len(piece)
            self._put(piece).addErrback(lambda _: None)
        return d

    def _put(self, data: bytes) -> Deferred[None]:
        assert self._next is not None
        self._next += len(data)
        self.bytes += len(data)
        return self._upload.write(data).addErrback(self._write_failed)

    def _write_failed(self, failure: Failure) -> Failure:
        self._error = _sftp_error(failure)
        return self._error

    def readChunk(self, offset: int, length: int) -> Deferred[bytes]:  # noqa: N802
        return fail(SFTPError(filetransfer.FX_PERMISSION_DENIED, "handle opened for writing"))

    def getAttrs(self) -> Deferred[dict[str, int]]:  # noqa: N802
        d = self._server.getAttrs(self.path.encode("utf-8"), True)
        return d.addErrback(lambda _: {"size": self._next or 0})

    def setAttrs(self, attrs: dict[str, Any]) -> Deferred[None]:  # noqa: N802
        if "mtime" in attrs:
            self._mtime = int(attrs["mtime"])
        return succeed(None)

    def close(self) -> Deferred[None]:
        if self._finished:
            return succeed(None)
        self._finished = True
        if self._upload is None and self._opening is None and self._error is None:
            return succeed(None)  # opened without truncation and never written: unchanged
        return self._committed()

    def _committed(self) -> Deferred[None]:
        waiting = self._opening if self._opening is not None else succeed(None)
        waiting.addErrback(lambda _: None)

        def commit(_: object) -> Deferred[Any]:
            if self._error is not None or self._gap:
                if self._upload is not None:
                    self._upload.abort()
                self._server.record("upload", self.path, self.bytes, self._started, False)
                if self._gap:
                    return fail(SFTPError(filetransfer.FX_FAILURE, "missing data before close"))
                return fail(self._error)
            return self._upload.commit()

        def done(_: object) -> Deferred[None] | None:
            self._server.record("upload", self.path, self.bytes, self._started, True)
            if self._mtime is not None:
                fs = self._server.filesystem
                return fs.set_mtime(self.path, float(self._mtime)).addErrback(lambda _: None)
            return None

        def failed(failure: Failure) -> Failure:
            if not failure.check(SFTPError):
                self._server.record("upload", self.path, self.bytes, self._started, False)
            return _sftp_error(failure)

        d = waiting.addCallback(commit)
        d.addCallbacks(done, failed)
        return d

    def abort(self) -> None:
        """The connection was lost: the upload is not published (SPEC section 6)."""
        if self._finished:
            return
        self._finished = True
        for _, _, d in self._queue:
            d.errback(SFTPError(filetransfer.FX_CONNECTION_LOST, "connection lost"))
        self._queue = []
        if self._upload is not None:
            self._upload.abort()
        elif self._opening is not None:
            self._opening.addCallback(lambda _: self._upload and self._upload.abort())
            self._opening.addErrback(lambda _: None)
        else:
            return
        self._server.record("upload", self.path, self.bytes, self._started, False)


@implementer(ISFTPServer)
class ConfinedSFTPServer:
    """ISFTPServer over the avatar's IFilesystem."""

    def __init__(self, avatar: Any) -> None:
        self.avatar = avatar
        self.filesystem = avatar.filesystem
        self.handles = 0

    # helpers

    def _path(self, raw: bytes) -> str:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SFTPError(filetransfer.FX_FAILURE, "path is not valid UTF-8") from None
        try:
            return str(self.filesystem.resolve("/", text or "."))
        except FilesystemError as error:
            raise SFTPError(filetransfer.FX_PERMISSION_DENIED, error.message) from None

    def record(self, direction: str, path: str, size: int, started: float, ok: bool) -> None:
        """Audit and xferlog lines for one transfer."""
        session = getattr(self.avatar, "session", None)
        runtime = getattr(getattr(session, "transport", None), "runtime", None)
        if session is None or runtime is None:
            return
        seconds = time.monotonic() - started
        runtime.audit.event(
            "transfer",
            session=session.session_id,
            user=session.username,
            command="get" if direction == "download" else "put",
            path=path,
            bytes=size,
            seconds=round(seconds, 3),
            direction=direction,
            result="ok" if ok else "failed",
            protocol="sftp",
        )
        runtime.xferlog.transfer(
            seconds=seconds,
            host=session.address,
            size=size,
            path=path,
            binary=True,
            direction="o" if direction == "download" else "i",
            user=session.username or "-",
            completed=ok,
        )

    # ISFTPServer

    def gotVersion(self, otherVersion: int, extData: dict[bytes, bytes]) -> dict[bytes, bytes]:  # noqa: N802
        return dict(EXTENSIONS)

    def openFile(self, filename: bytes, flags: int, attrs: dict[str, Any]) -> Deferred[Any]:  # noqa: N802
        path = self._path(filename)
        if self.handles >= MAX_OPEN_HANDLES:
            return fail(SFTPError(filetransfer.FX_FAILURE, "too many open handles"))
        reading = bool(flags & filetransfer.FXF_READ)
        writing = bool(flags & (filetransfer.FXF_WRITE | filetransfer.FXF_APPEND))
        if reading and writing:
            return fail(NotImplementedError("handles for both reading and writing"))
        if not writing:
            d = self.filesystem.open_read(path)
            return d.addCallbacks(lambda handle: _ReadFile(self, path, handle), _sftp_error)
        d = self.filesystem.stat(path)

        def existing(entry: FileStat) -> FileStat | None:
            return entry

        def missing(failure: Failure) -> None:
            failure.trap(NotFound)
            return None

        def start(entry: FileStat | None) -> Any:
            if entry is not None and entry.is_dir:
                raise SFTPError(filetransfer.FX_FAILURE, "is a folder")
            if entry is not None and flags & filetransfer.FXF_EXCL:
                raise SFTPError(filetransfer.FX_FAILURE, "file exists")
            if entry is None and not flags & filetransfer.FXF_CREAT:
                raise SFTPError(filetransfer.FX_NO_SUCH_FILE, "No such file")
            append = bool(flags & filetransfer.FXF_APPEND)
            handle = _WriteFile(self, path, offset=None, append=append)
            if append or entry is None or flags & filetransfer.FXF_TRUNC:
                return handle.start(0)
            return handle  # resume: the first write's offset decides

        d.addCallbacks(existing, missing)
        d.addCallback(start)
        return d.addErrback(_sftp_error)

    def removeFile(self, filename: bytes) -> Deferred[None]:  # noqa: N802
        return self.filesystem.remove(self._path(filename)).addErrback(_sftp_error)

    def renameFile(self, oldpath: bytes, newpath: bytes) -> Deferred[None]:  # noqa: N802
        """SSH_FXP_RENAME: refused when the target exists (posix-rename replaces)."""
        source, target = self._path(oldpath), self._path(newpath)
        d = self.filesystem.stat(target)

        def exists(_: FileStat) -> None:
            raise SFTPError(filetransfer.FX_FAILURE, "target exists")

        def absent(failure: Failure) -> Deferred[None]:
            failure.trap(NotFound)
            return self.filesystem.rename(source, target)

        return d.addCallbacks(exists, absent).addErrback(_sftp_error)

    def makeDirectory(self, path: bytes, attrs: dict[str, Any]) -> Deferred[None]:  # noqa: N802
        return self.filesystem.mkdir(self._path(path)).addErrback(_sftp_error)

    def removeDirectory(self, path: bytes) -> Deferred[None]:  # noqa: N802
        return self.filesystem.rmdir(self._path(path)).addErrback(_sftp_error)

    def openDirectory(self, path: bytes) -> Deferred[_Directory]:  # noqa: N802
        d = self.filesystem.listdir(self._path(path))
        return d.addCallbacks(lambda entries: _Directory(entries, time.time()), _sftp_error)

    def getAttrs(self, path: bytes, followLinks: bool) -> Deferred[dict[str, int]]:  # noqa: N802, N803
        return self.filesystem.stat(self._path(path)).addCallbacks(_attrs, _sftp_error)

    def setAttrs(self, path: bytes, attrs: dict[str, Any]) -> Deferred[None]:  # noqa: N802
        """Times are applied; permissions and owners follow the umask and are ignored."""
        vpath = self._path(path)
        if "size" in attrs:
            return fail(NotImplementedError("changing a file's size"))
        if "mtime" in attrs:
            d = self.filesystem.set_mtime(vpath, float(attrs["mtime"]))
            return d.addErrback(_sftp_error)
        return self.filesystem.stat(vpath).addCallbacks(lambda _: None, _sftp_error)

    def readLink(self, path: bytes) -> Deferred[bytes]:  # noqa: N802
        return fail(NotImplementedError("symbolic links are not served"))

    def makeLink(self, linkPath: bytes, targetPath: bytes) -> Deferred[None]:  # noqa: N802, N803
        return fail(NotImplementedError("symbolic links are not served"))

    def realPath(self, path: bytes) -> bytes:  # noqa: N802
        return self._path(path).encode("utf-8")

    def extendedRequest(self, extendedName: bytes, extendedData: bytes) -> Deferred[bytes]:  # noqa: N802, N803
        if extendedName == b"statvfs@openssh.com":
            return self._statvfs(getNS(extendedData)[0])
        if extendedName == b"limits@openssh.com":
            return succeed(struct.pack("!4Q", MAX_PACKET, MAX_READ, MAX_READ, MAX_OPEN_HANDLES))
        return fail(NotImplementedError(f"unknown extension {extendedName[:64]!r}"))

    def extendedStatus(self, name: bytes, data: bytes, files: dict[bytes, Any]) -> Deferred[None]:  # noqa: N802
        """The extensions answered with a STATUS."""
        if name == b"posix-rename@openssh.com":
            old, new = getNS(data, 2)[:2]
            source, target = self._path(old), self._path(new)
            return self.filesystem.rename(source, target).addErrback(_sftp_error)
        handle = getNS(data)[0]  # fsync@openssh.com
        if handle not in files:
            return fail(SFTPError(filetransfer.FX_FAILURE, "no such handle"))
        return succeed(None)

    def _statvfs(self, raw: bytes) -> Deferred[bytes]:
        vpath = self._path(raw)
        root = getattr(self.filesystem, "root", None)
        if root is None:
            return fail(NotImplementedError("statvfs"))
        read_only = bool(getattr(self.filesystem, "read_only", False))

        def measure(_: object) -> bytes:
            st = os.statvfs(root)
            flags = (1 if read_only else 0) | 2  # ST_RDONLY, ST_NOSUID
            return struct.pack(
                "!11Q",
                st.f_bsize,
                st.f_frsize,
                st.f_blocks,
                st.f_bfree,
                st.f_bavail,
                st.f_files,
                st.f_ffree,
                st.f_favail,
                0,
                flags,
                st.f_namemax,
            )

        d = self.filesystem.stat(vpath)
        return d.addCallback(lambda _: deferToThread(measure, None)).addErrback(_sftp_error)


class SFTPServerProtocol(filetransfer.FileTransferServer):
    """conch's SFTP v3 server with bounded framing and requests (see the module doc)."""

    _log = Logger(namespace="twisted.conch.ssh.filetransfer", observer=_quiet)

    def __init__(self, avatar: Any, credit: Any = None) -> None:
        filetransfer.FileTransferBase.__init__(self)
        self.client: ConfinedSFTPServer = ConfinedSFTPServer(avatar)  # type: ignore[assignment]
        self.openFiles: dict[bytes, Any] = {}
        self.openDirs: dict[bytes, Any] = {}
        self._inbox = bytearray()
        self._skip = 0
        self._pending: dict[bytes, list[int]] = {}  # request id -> sizes awaiting a reply
        self.outstanding = 0
        self._credit = credit  # called with the bytes of each finished request
        self.initialized = False

    def _give_credit(self, size: int) -> None:
        if self._credit is not None and size:
            self._credit(size)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self._inbox += data
        while self._inbox:
            if self._skip:
                dropped = min(self._skip, len(self._inbox))
                del self._inbox[:dropped]
                self._skip -= dropped
                self._give_credit(dropped)
                continue
            if len(self._inbox) < 4:
                return
            (length,) = struct.unpack("!L", self._inbox[:4])
            if length < 5 and length != 1:
                if len(self._inbox) < 4 + length:
                    return
                del self._inbox[: 4 + length]  # too short to hold a request id
                self._give_credit(4 + length)
                continue
            if length > MAX_PACKET:
                if len(self._inbox) < 9:
                    return
                request_id = bytes(self._inbox[5:9])
                self._skip = 4 + length
                self._sendStatus(request_id, filetransfer.FX_BAD_MESSAGE, b"packet too long")
                continue
            if len(self._inbox) < 4 + length:
                return
            packet = memoryview(self._inbox[4 : 4 + length])  # the one copy of the data
            del self._inbox[: 4 + length]
            self._dispatch(packet, 4 + length)

    def _dispatch(self, packet: memoryview, size: int) -> None:
        kind = packet[0]
        if kind == filetransfer.FXP_WRITE:
            self._counted_request(packet[1:5].tobytes(), size, self._write_request, packet[1:])
            return
        payload = packet[1:].tobytes()
        if kind == filetransfer.FXP_INIT:
            self._give_credit(size)
            if not self.initialized and len(payload) >= 4:
                self.initialized = True
                self.packet_INIT(payload)
            return
        request_id = payload[:4]
        name = self.packetTypes.get(kind)
        handler = getattr(self, f"packet_{name}", None) if name else None
        self._counted_request(request_id, size, handler, payload)

    def _counted_request(self, request_id: bytes, size: int, handler: Any, payload: Any) -> None:
        """Serve one request that will get exactly one reply (counted as outstanding)."""
        if len(request_id) < 4:
            self._give_credit(size)
            return
        if not self.initialized:
            self._give_credit(size)
            self._sendStatus(request_id, filetransfer.FX_FAILURE, b"INIT first")
            return
        if self.outstanding >= MAX_OUTSTANDING:
            self._give_credit(size)
            self._sendStatus(request_id, filetransfer.FX_FAILURE, b"too many outstanding requests")
            return
        self.outstanding += 1
        self._pending.setdefault(request_id, []).append(size)
        if handler is None:
            self._sendStatus(request_id, filetransfer.FX_OP_UNSUPPORTED, b"unsupported request")
            return
        try:
            handler(payload)
        except Exception:  # noqa: BLE001 - malformed input: answer it, keep serving
            if request_id in self._pending:
                self._sendStatus(request_id, filetransfer.FX_BAD_MESSAGE, b"malformed request")

    def _write_request(self, payload: memoryview) -> None:
        """SSH_FXP_WRITE parsed in place: the data reaches the upload without a copy."""
        request_id = payload[:4].tobytes()
        (handle_length,) = struct.unpack_from("!L", payload, 4)
        handle = payload[8 : 8 + handle_length].tobytes()
        at = 8 + handle_length
        offset, length = struct.unpack_from("!QL", payload, at)
        at += 12
        if at + length != len(payload) or len(handle) != handle_length:
            raise ValueError("malformed WRITE")
        file = self.openFiles.get(handle)
        if file is None:
            self._sendStatus(request_id, filetransfer.FX_FAILURE, b"no such handle")
            return
        d = maybeDeferred(file.writeChunk, offset, payload[at:])
        d.addCallback(self._cbStatus, request_id, b"write succeeded")
        d.addErrback(self._ebStatus, request_id, b"write failed")

    def sendPacket(self, kind: int, data: bytes) -> None:  # noqa: N802
        if self.transport is None or not getattr(self, "connected", True):
            return
        if kind in _REPLY_KINDS:
            sizes = self._pending.get(data[:4])
            if sizes:
                size = sizes.pop(0)
                if not sizes:
                    del self._pending[data[:4]]
                self.outstanding -= 1
                self._give_credit(size)
        super().sendPacket(kind, data)

    def _cbOpenFile(self, fileObj: Any, requestId: bytes) -> None:  # noqa: N802, N803
        self.client.handles += 1
        super()._cbOpenFile(fileObj, requestId)

    def _cbClose(self, result: Any, handle: bytes, requestId: bytes, isDir: int = 0) -> None:  # noqa: N802, N803
        if not isDir:
            self.client.handles -= 1
        super()._cbClose(result, handle, requestId, isDir)

    def _ebRead(self, reason: Failure, requestId: bytes) -> None:  # noqa: N802, N803
        """conch calls this for a READ on an unknown handle but does not define it."""
        self._sendStatus(requestId, filetransfer.FX_FAILURE, b"no such handle")

    _ebWrite = _ebRead  # noqa: N815

    def packet_CLOSE(self, data: bytes) -> None:  # noqa: N802
        request_id, rest = data[:4], data[4:]
        handle, rest = getNS(rest)
        if handle in self.openFiles:
            file = self.openFiles[handle]
            d = maybeDeferred(file.close)

            def failed(failure: Failure) -> None:
                self.openFiles.pop(handle, None)
                self.client.handles -= 1
                self._ebStatus(failure, request_id, b"close failed")

            d.addCallbacks(self._cbClose, failed, callbackArgs=(handle, request_id))
        elif handle in self.openDirs:
            self._cbClose(None, handle, request_id, 1)
        else:
            self._sendStatus(request_id, filetransfer.FX_FAILURE, b"no such handle")

    def packet_EXTENDED(self, data: bytes) -> None:  # noqa: N802
        request_id, rest = data[:4], data[4:]
        name, ext_data = getNS(rest)
        if name in _STATUS_EXTENSIONS:
            d = maybeDeferred(self.client.extendedStatus, name, ext_data, self.openFiles)
            d.addCallback(self._cbStatus, request_id, b"ok")
            d.addErrback(self._ebStatus, request_id, name + b" failed")
            return
        super().packet_EXTENDED(data)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        """Uploads still open are aborted, never published; downloads are closed."""
        filetransfer.FileTransferBase.connectionLost(self, reason)
        files, self.openFiles = self.openFiles, {}
        for file in files.values():
            abort = getattr(file, "abort", None)
            if abort is not None:
                abort()
            else:
                file.close()
        self.openDirs = {}
        self._pending = {}


class _ChannelTransport:
    """What the SFTP protocol writes to: the channel."""

    def __init__(self, channel: SFTPSessionChannel) -> None:
        self.channel = channel

    def write(self, data: bytes) -> None:
        self.channel.write(data)

    def writeSequence(self, data: list[bytes]) -> None:  # noqa: N802
        self.channel.write(b"".join(data))

    def loseConnection(self) -> None:  # noqa: N802
        self.channel.loseConnection()

    def getPeer(self) -> Any:  # noqa: N802
        return self.channel.getPeer()

    def getHost(self) -> Any:  # noqa: N802
        return self.channel.getHost()


class SFTPSessionChannel(SSHChannel):
    """A `session` channel serving only the `sftp` subsystem.

    Its window is reopened by `SFTPConnection` only for bytes the SFTP layer has
    finished with (`credit`), not as soon as they are parsed.
    """

    name = b"session"
    manual_window = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("localWindow", CHANNEL_WINDOW)
        kwargs.setdefault("localMaxPacket", CHANNEL_MAX_PACKET)
        super().__init__(*args, **kwargs)
        self.sftp: SFTPServerProtocol | None = None
        self._returned = 0
        self._pending: deque[memoryview] = deque()  # output beyond the remote window
        self.pending_bytes = 0

    # Output: conch's channel keeps what the window does not allow in one bytes object
    # and appends to it (a copy of the whole buffer per write); a queue of views instead.

    def write(self, data: bytes) -> None:
        if not data:
            return
        self._pending.append(memoryview(data))
        self.pending_bytes += len(data)
        self._flush()

    def addWindowBytes(self, data: int) -> None:  # noqa: N802 - conch's name
        self.remoteWindowLeft += data
        self._flush()

    def _flush(self) -> None:
        conn = self.conn
        if conn is None:
            return
        largest = self.remoteMaxPacket or 32768
        while self._pending and self.remoteWindowLeft > 0:
            head = self._pending[0]
            size = min(len(head), self.remoteWindowLeft, largest)
            conn.sendData(self, head[:size])
            self.remoteWindowLeft -= size
            self.pending_bytes -= size
            if size == len(head):
                self._pending.popleft()
            else:
                self._pending[0] = head[size:]
        if self.closing and not self._pending and not self.localClosed:
            conn.sendClose(self)

    def loseConnection(self) -> None:  # noqa: N802
        self.closing = 1
        if not self._pending and self.conn is not None:
            self.conn.sendClose(self)

    def channelOpen(self, specificData: bytes) -> None:  # noqa: N802
        """Nothing to do until the subsystem request."""

    def request_subsystem(self, data: bytes) -> int:
        name = getNS(data)[0]
        if name != b"sftp" or self.sftp is not None:
            log.info("refused subsystem {name!r}", name=name[:64])
            return 0
        self.sftp = SFTPServerProtocol(self.avatar, credit=self.credit)
        self.sftp.makeConnection(_ChannelTransport(self))  # type: ignore[arg-type]
        session = getattr(self.avatar, "session", None)
        if session is not None:
            session.subsystems.add(self.sftp)
        return 1

    def requestReceived(self, requestType: bytes, data: bytes) -> int:  # noqa: N802, N803
        if requestType == b"subsystem":
            return self.request_subsystem(data)
        log.debug("refused channel request {kind!r}", kind=requestType[:64])
        return 0  # shell, exec, pty-req, env, x11-req, auth-agent-req@openssh.com ...

    def credit(self, size: int) -> None:
        """The SFTP layer is done with `size` bytes: reopen the window when it pays."""
        self._returned += size
        half = self.localWindowSize // 2
        if self._returned >= half // 2 or self.localWindowLeft < half:
            if self.conn is not None and not self.closing:
                amount, self._returned = self._returned, 0
                self.conn.adjustWindow(self, amount)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.sftp is None:
            self.credit(len(data))  # no subsystem yet: nothing consumes it
            return
        self.sftp.dataReceived(data)

    def eofReceived(self) -> None:  # noqa: N802
        self.loseConnection()

    def closed(self) -> None:
        sftp, self.sftp = self.sftp, None
        if sftp is not None:
            session = getattr(self.avatar, "session", None)
            if session is not None:
                session.subsystems.discard(sftp)
            sftp.connectionLost(None)
