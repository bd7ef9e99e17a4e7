"""The virtual filesystem: each user sees their home folder as `/`.

The protocol depends only on `IFilesystem`; `LocalFilesystem` serves a folder
on local disk, doing its disk work in a thread pool (the reactor thread never
touches the disk).

Confinement: every operation walks the virtual path component by component
from an fd on the home folder, opening each folder with `O_NOFOLLOW` relative
to the previous one (`openat`), and resolves symlinks itself. A symlink whose
target leads outside the home (or above it with `..`) is `NotFound`, so a
folder swapped for a symlink during an operation cannot lead out either.

Uploads (SPEC section 6):

- ``atomic``: data goes to ``.st-upload-<hex>`` in the target's folder and is
  renamed over the target by `commit()`; `abort()` deletes it. REST n / APPE
  first copy the existing file's first n bytes (APPE: all of it).
- ``resumable``: an upload to a new name, REST n > 0 on an existing file and
  APPE write in place (REST truncates the file to n first, as vsftpd and
  ProFTPD resume), so an interrupted upload leaves a partial file that a later
  REST+STOR or APPE continues; STOR at offset 0 over an existing file still
  goes through a temporary file and a rename.
- STOU reserves a fresh name (`name`, `name.1`, `name.2`, ...) with `O_EXCL`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import secrets
import stat as stat_module
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import Attribute, Interface, implementer

from securetransport.config import UploadMode

TEMPORARY_PREFIX = ".st-upload-"


class FilesystemError(Exception):
    """A filesystem operation failed; `code` is the FTP reply the protocol should send."""

    code = 550

    def __init__(self, message: str = "Requested action not taken") -> None:
        super().__init__(message)
        self.message = message


class NotFound(FilesystemError):
    code = 550


class PermissionDenied(FilesystemError):
    code = 550


class AlreadyExists(FilesystemError):
    code = 550


class InvalidName(FilesystemError):
    """Bad file name (CR, LF, NUL, reserved temporary prefix...)."""

    code = 553


class InsufficientStorage(FilesystemError):
    code = 452


class QuotaExceeded(FilesystemError):
    code = 552


class ReservedName(InvalidName):
    """A path through an upload temporary (`.st-upload-*`): 550 to every command."""

    code = 550

    def __init__(self, message: str = "No such file or folder") -> None:
        super().__init__(message)


class BadOffset(FilesystemError):
    """A restart offset or byte range beyond the end of the file."""

    code = 554


@dataclass(frozen=True)
class FileStat:
    name: str
    is_dir: bool
    size: int
    mtime: float  # seconds since the epoch, UTC
    mode: int  # st_mode
    nlink: int = 1
    is_file: bool = True


class IReadHandle(Interface):
    size = Attribute("int: file size when opened")

    def fileno() -> int:
        """OS file descriptor (for sendfile)."""

    def read(offset: int, length: int) -> Deferred[bytes]:
        """Read up to `length` bytes at `offset` off the reactor thread; b'' at EOF."""

    def close() -> None:
        """Close the file."""


class IUpload(Interface):
    path = Attribute("str: the virtual path being written")

    def write(data: bytes) -> Deferred[None]:
        """Queue data; the Deferred fires when it is safe to send more (back-pressure)."""

    def commit() -> Deferred[int]:
        """Flush and publish the file (rename into place); fires with the bytes received."""

    def abort() -> Deferred[None]:
        """Interrupted upload: atomic mode deletes the partial; the target stays as it was."""


class IFilesystem(Interface):
    """A user's confined view of their home folder. Paths are virtual and absolute."""

    read_only = Attribute("bool: writes get PermissionDenied")

    def resolve(cwd: str, path: str) -> str:
        """Pure: join `path` onto `cwd`, normalize, return a virtual absolute path.

        Raises InvalidName for names that can never be used (NUL, CR, LF,
        the reserved temporary prefix).
        """

    def stat(path: str) -> Deferred[FileStat]:
        """Stat a path (symlinks leading out of the home are NotFound)."""

    def listdir(path: str) -> Deferred[list[FileStat]]:
        """Entries of a folder, sorted, without unlistable names."""

    def open_read(path: str) -> Deferred[IReadHandle]:
        """Open a regular file for reading."""

    def open_upload(
        path: str, offset: int = 0, append: bool = False, unique: bool = False
    ) -> Deferred[IUpload]:
        """Start an upload per `upload_mode`; `unique` picks a new name (STOU)."""

    def mkdir(path: str) -> Deferred[None]:
        """Create a folder."""

    def rmdir(path: str) -> Deferred[None]:
        """Remove an empty folder."""

    def remove(path: str) -> Deferred[None]:
        """Delete a file."""

    def rename(source: str, target: str) -> Deferred[None]:
        """Rename a file or folder."""

    def set_mtime(path: str, mtime: float) -> Deferred[None]:
        """Set a file's modification time (MFMT)."""

    def digest(path: str, start: int, end: int | None) -> Deferred[str]:
        """SHA-256 hex digest of bytes [start, end) of a file (HASH)."""


# --- pure helpers -------------------------------------------------------------------

_log = Logger(namespace="securetransport.vfs")

_T = TypeVar("_T")

_FORBIDDEN_CHARACTERS = frozenset("\0\r\n\\")
_TEMPORARY_BYTES = TEMPORARY_PREFIX.encode("ascii")
_MAX_SYMLINKS = 40
_PIECE = 1 << 20  # reads for digest() and copies, in bytes
_NOT_FOUND = "No such file or folder"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _check_text(text: str) -> None:
    if any(c in _FORBIDDEN_CHARACTERS for c in text):
        raise InvalidName("File name contains a forbidden character (CR, LF, NUL or backslash)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidName("File name is not valid UTF-8") from None


def resolve_path(cwd: str, path: str) -> str:
    """Pure: `path` joined onto the virtual folder `cwd`, normalized, absolute.

    `.` and empty components vanish, `..` removes the previous component and stays
    at `/`. InvalidName (553) for CR, LF, NUL, backslash or text that is not
    encodable as UTF-8; ReservedName (550) for a component that is an upload
    temporary. `%2e%2e` and the like are ordinary names.
    """
    _check_text(cwd)
    _check_text(path)
    joined = path if path.startswith("/") else cwd + "/" + path
    parts: list[str] = []
    for component in joined.split("/"):
        if component in ("", "."):
            continue
        if component == "..":
            if parts:
                parts.pop()
            continue
        parts.append(component)
    if any(component.startswith(TEMPORARY_PREFIX) for component in parts):
        raise ReservedName()
    return "/" + "/".join(parts)


def _components(vpath: str) -> list[bytes]:
    """The encoded components of a virtual path as the protocol hands it over.

    Revalidated here so a caller that skipped resolve() still cannot escape.
    """
    if not vpath.startswith("/"):
        raise InvalidName("Path is not absolute")
    normalized = resolve_path("/", vpath)
    return [c.encode("utf-8") for c in normalized.split("/") if c]


def listable_name(raw: bytes) -> str | None:
    """The name to show for an on-disk entry, or None to leave it out of listings."""
    if raw.startswith(_TEMPORARY_BYTES) or raw in (b".", b".."):
        return None
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if any(c in _FORBIDDEN_CHARACTERS for c in name):
        return None
    return name


def map_os_error(error: OSError) -> FilesystemError:
    """The FilesystemError for an OSError; the message never names a disk path."""
    code = error.errno
    if code == errno.ENOENT or code == errno.ELOOP:
        return NotFound(_NOT_FOUND)
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDenied("Permission denied")
    if code == errno.EEXIST:
        return AlreadyExists("File or folder already exists")
    if code == errno.ENOSPC:
        return InsufficientStorage("Insufficient storage space")
    if code in (errno.EDQUOT, errno.EFBIG):
        return QuotaExceeded("Quota or file size limit exceeded")
    if code == errno.ENOTDIR:
        return FilesystemError("Not a folder")
    if code == errno.EISDIR:
        return FilesystemError("Is a folder")
    if code == errno.ENOTEMPTY:
        return FilesystemError("Folder not empty")
    if code == errno.ENAMETOOLONG:
        return InvalidName("File name too long")
    if code == errno.EXDEV:
        return FilesystemError("Cannot move across file systems")
    if code == errno.EINVAL:
        return FilesystemError("Invalid argument (a folder cannot move into itself)")
    if code == errno.EBUSY:
        return FilesystemError("File or folder is busy")
    return FilesystemError(os.strerror(code) if code else "Requested action not taken")


def _mapped(function: Callable[..., _T], *args: Any) -> _T:
    try:
        return function(*args)
    except FilesystemError:
        raise
    except OSError as error:
        raise map_os_error(error) from None


def _file_stat(name: str, st: os.stat_result) -> FileStat:
    return FileStat(
        name=name,
        is_dir=stat_module.S_ISDIR(st.st_mode),
        size=st.st_size,
        mtime=st.st_mtime,
        mode=st.st_mode,
        nlink=st.st_nlink,
        is_file=stat_module.S_ISREG(st.st_mode),
    )


def _write_all(fd: int, data: bytes) -> None:
    """Write all of `data` at the fd's position (runs in the pool)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


DROP_BEHIND = 8 << 20  # an upload keeps at most about this much of itself in page cache


def _write_dropping_behind(fd: int, data: bytes) -> None:
    """Write `data` at the fd's position; then start writeback of it and drop from the
    page cache what was written DROP_BEHIND earlier (clean by then; POSIX_FADV_DONTNEED
    leaves dirty pages alone). A streaming upload then recycles a few MiB of pages
    instead of filling the cache with fresh ones: measured here, the kernel's copy into
    fresh pages cost 2 to 4 times as much CPU (first touch in the VM), and the upload no
    longer evicts other files' pages."""
    _write_all(fd, data)
    try:
        end = os.lseek(fd, 0, os.SEEK_CUR)
        os.posix_fadvise(fd, end - len(data), len(data), os.POSIX_FADV_DONTNEED)
        if end > 2 * DROP_BEHIND:
            os.posix_fadvise(fd, end - 2 * DROP_BEHIND, DROP_BEHIND, os.POSIX_FADV_DONTNEED)
    except OSError:  # advice only (a file system without it)
        pass


def _copy_prefix(source: int, target: int, count: int) -> None:
    """Copy the first `count` bytes of `source` to `target`'s position."""
    copied = 0
    try:
        while copied < count:
            done = os.copy_file_range(source, target, min(count - copied, 1 << 30), copied)
            if done == 0:
                raise BadOffset("Restart offset beyond end of file")
            copied += done
        return
    except OSError as error:
        if error.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    while copied < count:
        data = os.pread(source, min(_PIECE, count - copied), copied)
        if not data:
            raise BadOffset("Restart offset beyond end of file")
        _write_all(target, data)
        copied += len(data)


def _close_quietly(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


# --- reading ------------------------------------------------------------------------


@implementer(IReadHandle)
class _ReadHandle:
    """An open regular file. close() waits for reads in flight before closing the fd."""

    def __init__(self, fd: int, size: int, run: Callable[..., Deferred[Any]]) -> None:
        self._fd = fd
        self.size = size
        self._run = run
        self._reads = 0
        self._closing = False
        self._closed = False

    def fileno(self) -> int:
        return self._fd

    def read(self, offset: int, length: int) -> Deferred[bytes]:
        if self._closing:
            return fail(FilesystemError("File is closed"))
        if offset < 0 or length < 0:
            return fail(BadOffset("Invalid read range"))
        self._reads += 1
        d: Deferred[bytes] = self._run(os.pread, self._fd, length, offset)
        d.addBoth(self._read_done)
        return d

    def _read_done(self, result: Any) -> Any:
        self._reads -= 1
        if self._closing and self._reads == 0:
            self._close_now()
        return result

    def close(self) -> None:
        self._closing = True
        if self._reads == 0:
            self._close_now()

    def _close_now(self) -> None:
        if not self._closed:
            self._closed = True
            _close_quietly(self._fd)


# --- uploading ----------------------------------------------------------------------


@dataclass
class _UploadPlan:
    """What `_prepare_upload` opened, handed from the pool to the reactor thread."""

    path: str  # virtual
    fd: int  # the file written: the temporary, or the target in place
    dir_fd: int  # the target's folder
    target: bytes
    temporary: bytes | None  # None: writing in place
    placeholder: tuple[int, int] | None  # (st_dev, st_ino) of a name reserved by STOU


@implementer(IUpload)
class _Upload:
    """An upload in progress. Buffers small writes, writes in order in the pool.

    All state is touched on the reactor thread only; the pool sees one write job at
    a time, so writes happen in order.
    """

    chunk_size = 1 << 20  # hand the buffer to the pool when it reaches this size
    max_in_flight = 4 << 20  # write() Deferreds wait while this much is queued

    def __init__(self, plan: _UploadPlan, run: Callable[..., Deferred[Any]], durable: bool) -> None:
        self.path = plan.path
        self._plan = plan
        self._run = run
        self._durable = durable
        self._buffer = bytearray()
        self._queue: deque[bytes] = deque()
        self._queued = 0  # bytes handed over and not yet written
        self._busy = False
        self._received = 0
        self._error: FilesystemError | None = None
        self._state: Literal["open", "finishing", "done"] = "open"
        self._pressure: list[Deferred[None]] = []
        self._idle: list[Deferred[None]] = []

    # IUpload

    def write(self, data: bytes) -> Deferred[None]:
        if self._error is not None:
            return fail(self._error)
        if self._state != "open":
            return fail(FilesystemError("Upload already finished"))
        self._received += len(data)
        if not self._buffer and len(data) >= self.chunk_size:
            self._queue_chunk(bytes(data))  # one copy, not two (none for bytes)
        else:
            self._buffer += data
            if len(self._buffer) >= self.chunk_size:
                self._hand_over()
        if self._queued >= self.max_in_flight:
            d: Deferred[None] = Deferred()
            self._pressure.append(d)
            return d
        return succeed(None)

    def commit(self) -> Deferred[int]:
        if self._state != "open":
            return fail(FilesystemError("Upload already finished"))
        self._state = "finishing"
        self._hand_over()
        return self._drained().addCallback(lambda _: self._finish_commit())

    def abort(self) -> Deferred[None]:
        if self._state != "open":
            return succeed(None)
        self._state = "finishing"
        if self._plan.temporary is None:
            self._hand_over()  # in place: keep what was received, a later REST resumes it
        else:
            self._queued -= sum(len(chunk) for chunk in self._queue)
            self._queue.clear()
            self._buffer.clear()
        self._fire_pressure(None)  # nothing more to send; release a paused sender
        d = self._drained()
        d.addCallback(lambda _: self._run(self._cleanup_sync))
        d.addBoth(self._done)
        return d

    # the write queue

    def _hand_over(self) -> None:
        if self._buffer and self._error is None:
            chunk = bytes(self._buffer)
            self._buffer.clear()
            self._queue_chunk(chunk)

    def _queue_chunk(self, chunk: bytes) -> None:
        if self._error is None:
            self._queue.append(chunk)
            self._queued += len(chunk)
            self._pump()

    def _pump(self) -> None:
        if self._busy or not self._queue or self._error is not None:
            return
        chunk = self._queue.popleft()
        self._busy = True
        d = self._run(_write_dropping_behind, self._plan.fd, chunk)
        d.addCallbacks(self._written, self._write_failed, callbackArgs=(len(chunk),))

    def _written(self, _: None, size: int) -> None:
        self._busy = False
        self._queued -= size
        if self._queued < self.max_in_flight:
            self._fire_pressure(None)
        self._pump()
        self._fire_idle()

    def _write_failed(self, failure: Failure) -> None:
        self._busy = False
        error = failure.value
        if not isinstance(error, FilesystemError):
            _log.failure("Upload write failed", failure)
            error = FilesystemError("Write failed")
        self._error = error
        self._queue.clear()
        self._queued = 0
        self._buffer.clear()
        self._fire_pressure(error)
        self._fire_idle()

    def _fire_pressure(self, error: FilesystemError | None) -> None:
        waiting, self._pressure = self._pressure, []
        for d in waiting:
            if error is None:
                d.callback(None)
            else:
                d.errback(error)

    def _drained(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        self._fire_idle()
        return d

    def _fire_idle(self) -> None:
        if self._busy or self._queue:
            return
        waiting, self._idle = self._idle, []
        for d in waiting:
            d.callback(None)

    # finishing

    def _finish_commit(self) -> Deferred[int]:
        error = self._error
        if error is not None:
            d = self._run(self._cleanup_sync)
            d.addErrback(lambda f: _log.failure("Cleanup after a failed upload failed", f))
            d.addBoth(self._done)
            return d.addCallback(lambda _: fail(error))
        committed = self._run(self._commit_sync)
        committed.addBoth(self._done)
        return committed

    def _done(self, result: Any) -> Any:
        self._state = "done"
        return result

    def _commit_sync(self) -> int:
        plan = self._plan
        try:
            if self._durable:
                os.fsync(plan.fd)
            if plan.temporary is not None:
                os.replace(
                    plan.temporary, plan.target, src_dir_fd=plan.dir_fd, dst_dir_fd=plan.dir_fd
                )
                plan.temporary = None
                plan.placeholder = None
                if self._durable:
                    os.fsync(plan.dir_fd)
        except BaseException:
            self._cleanup_sync()
            raise
        _close_quietly(plan.fd)
        _close_quietly(plan.dir_fd)
        return self._received

    def _cleanup_sync(self) -> None:
        """Close the fds; delete the temporary and any name STOU reserved (atomic mode)."""
        plan = self._plan
        _close_quietly(plan.fd)
        try:
            if plan.temporary is not None:
                try:
                    os.unlink(plan.temporary, dir_fd=plan.dir_fd)
                except FileNotFoundError:
                    pass
            if plan.placeholder is not None:
                try:
                    st = os.stat(plan.target, dir_fd=plan.dir_fd, follow_symlinks=False)
                except FileNotFoundError:
                    pass
                else:
                    if (st.st_dev, st.st_ino) == plan.placeholder:
                        os.unlink(plan.target, dir_fd=plan.dir_fd)
        finally:
            _close_quietly(plan.dir_fd)


# --- the filesystem -----------------------------------------------------------------


@implementer(IFilesystem)
class LocalFilesystem:
    """IFilesystem on a home folder on local disk; disk work runs in `threadpool`.

    `root` should be the real path `ensure_home` returns. Files are created with
    mode 0o666 & ~umask, folders 0o777 & ~umask (set explicitly: the process
    umask is left alone). `durable` fsyncs uploads and their folder at commit.
    """

    def __init__(
        self,
        root: Path,
        *,
        threadpool: ThreadPool,
        reactor: IReactorFromThreads,
        upload_mode: UploadMode = "atomic",
        umask: int = 0o027,
        read_only: bool = False,
        durable: bool = False,
    ) -> None:
        if upload_mode not in ("atomic", "resumable"):
            raise ValueError(f"upload_mode must be 'atomic' or 'resumable': {upload_mode!r}")
        self.root = root
        self.read_only = read_only
        self.upload_mode = upload_mode
        self._root = os.fsencode(root)
        self._root_parts: list[bytes] | None = None
        self._pool = threadpool
        self._reactor = reactor
        self._file_mode = 0o666 & ~umask
        self._dir_mode = 0o777 & ~umask
        self._durable = durable

    def _run(self, function: Callable[..., _T], *args: Any) -> Deferred[_T]:
        return deferToThreadPool(self._reactor, self._pool, _mapped, function, *args)

    def _writing(self, function: Callable[..., _T], *args: Any) -> Deferred[_T]:
        if self.read_only:
            return fail(PermissionDenied("Permission denied: read-only account"))
        return self._run(function, *args)

    # IFilesystem

    def resolve(self, cwd: str, path: str) -> str:
        return resolve_path(cwd, path)

    def stat(self, path: str) -> Deferred[FileStat]:
        return self._run(self._stat_sync, path)

    def listdir(self, path: str) -> Deferred[list[FileStat]]:
        return self._run(self._listdir_sync, path)

    def open_read(self, path: str) -> Deferred[IReadHandle]:
        return self._run(self._open_read_sync, path)

    def open_upload(
        self, path: str, offset: int = 0, append: bool = False, unique: bool = False
    ) -> Deferred[IUpload]:
        d = self._writing(self._prepare_upload, path, offset, append, unique)
        return d.addCallback(lambda plan: cast(IUpload, _Upload(plan, self._run, self._durable)))

    def mkdir(self, path: str) -> Deferred[None]:
        return self._writing(self._mkdir_sync, path)

    def rmdir(self, path: str) -> Deferred[None]:
        return self._writing(self._rmdir_sync, path)

    def remove(self, path: str) -> Deferred[None]:
        return self._writing(self._remove_sync, path)

    def rename(self, source: str, target: str) -> Deferred[None]:
        return self._writing(self._rename_sync, source, target)

    def set_mtime(self, path: str, mtime: float) -> Deferred[None]:
        return self._writing(self._set_mtime_sync, path, mtime)

    def digest(self, path: str, start: int, end: int | None) -> Deferred[str]:
        return self._run(self._digest_sync, path, start, end)

    # the confined walk (pool threads only)

    def _real_root_parts(self) -> list[bytes]:
        if self._root_parts is None:
            real = os.path.realpath(self._root)
            self._root_parts = [p for p in real.split(b"/") if p]
        return self._root_parts

    def _walk(self, vpath: str, follow_last: bool = True) -> tuple[int, bytes | None]:
        """Open the folder holding `vpath`'s last component, confined to the home.

        Returns (folder fd, name); the caller owns the fd. The name is None when the
        path is a folder reached as a whole (`/`, or a symlink to a folder such as
        `.`). With follow_last, a symlink as the last component is resolved, so the
        name is never a symlink (barring a race); it may not exist. Anything leading
        outside the home is NotFound.
        """
        pending = deque(_components(vpath))
        fds = [os.open(self._root, _DIR_FLAGS)]
        keep: int | None = None
        hops = 0
        try:
            while pending:
                name = pending.popleft()
                if name == b"..":
                    if len(fds) == 1:
                        raise NotFound(_NOT_FOUND)
                    os.close(fds.pop())
                    continue
                if name.startswith(_TEMPORARY_BYTES):
                    raise NotFound(_NOT_FOUND)
                last = not pending
                if last and not follow_last:
                    keep = fds[-1]
                    return keep, name
                if not last:
                    try:
                        fds.append(os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fds[-1]))
                        continue
                    except OSError as error:
                        if error.errno not in (errno.ENOTDIR, errno.ELOOP):
                            raise
                try:
                    st = os.stat(name, dir_fd=fds[-1], follow_symlinks=False)
                except FileNotFoundError:
                    if last:
                        keep = fds[-1]
                        return keep, name
                    raise
                if not stat_module.S_ISLNK(st.st_mode):
                    if last:
                        keep = fds[-1]
                        return keep, name
                    raise NotADirectoryError(errno.ENOTDIR, "Not a directory")
                hops += 1
                if hops > _MAX_SYMLINKS:
                    raise NotFound(_NOT_FOUND)
                target = os.readlink(name, dir_fd=fds[-1])
                tokens = [t for t in target.split(b"/") if t not in (b"", b".")]
                if target.startswith(b"/"):
                    root_parts = self._real_root_parts()
                    if tokens[: len(root_parts)] != root_parts:
                        raise NotFound(_NOT_FOUND)
                    tokens = tokens[len(root_parts) :]
                    while len(fds) > 1:
                        os.close(fds.pop())
                pending.extendleft(reversed(tokens))
            keep = fds[-1]
            return keep, None
        finally:
            for fd in fds:
                if fd != keep:
                    os.close(fd)

    def _lstat_at(self, dir_fd: int, name: bytes | None) -> os.stat_result | None:
        """Stat what _walk found (None if missing); a symlink here lost a race: NotFound."""
        if name is None:
            return os.fstat(dir_fd)
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if stat_module.S_ISLNK(st.st_mode):
            raise NotFound(_NOT_FOUND)
        return st

    def _check_visible(self, vpath: str) -> None:
        """NotFound unless `vpath` (maybe a symlink) resolves inside the home."""
        fd, _ = self._walk(vpath, follow_last=True)
        os.close(fd)

    # operations (pool threads only)

    def _stat_sync(self, vpath: str) -> FileStat:
        dir_fd, name = self._walk(vpath)
        try:
            st = self._lstat_at(dir_fd, name)
        finally:
            os.close(dir_fd)
        if st is None:
            raise NotFound(_NOT_FOUND)
        return _file_stat(posixpath.basename(vpath) or "/", st)

    def _listdir_sync(self, vpath: str) -> list[FileStat]:
        dir_fd, name = self._walk(vpath)
        try:
            if name is None:
                folder = os.dup(dir_fd)
            else:
                folder = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        entries: list[FileStat] = []
        links: list[str] = []
        try:
            for raw in sorted(os.fsencode(n) for n in os.listdir(folder)):
                shown = listable_name(raw)
                if shown is None:
                    continue
                try:
                    st = os.stat(raw, dir_fd=folder, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat_module.S_ISLNK(st.st_mode):
                    links.append(shown)
                else:
                    entries.append(_file_stat(shown, st))
        finally:
            os.close(folder)
        base = vpath.rstrip("/")
        for shown in links:
            try:
                entries.append(self._stat_sync(f"{base}/{shown}"))
            except (FilesystemError, OSError):
                continue  # leads outside the home, dangles or loops: not listed
        entries.sort(key=lambda entry: entry.name)
        return entries

    def _open_regular(self, vpath: str) -> tuple[int, os.stat_result]:
        dir_fd, name = self._walk(vpath)
        try:
            st = self._lstat_at(dir_fd, name)
            if st is None:
                raise NotFound(_NOT_FOUND)
            if name is None or stat_module.S_ISDIR(st.st_mode):
                raise FilesystemError("Is a folder")
            if not stat_module.S_ISREG(st.st_mode):
                raise FilesystemError("Not a regular file")
            fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        st = os.fstat(fd)
        if not stat_module.S_ISREG(st.st_mode):
            os.close(fd)
            if stat_module.S_ISDIR(st.st_mode):
                raise FilesystemError("Is a folder")
            raise FilesystemError("Not a regular file")
        os.set_blocking(fd, True)
        return fd, st

    def _open_read_sync(self, vpath: str) -> IReadHandle:
        fd, st = self._open_regular(vpath)
        return cast(IReadHandle, _ReadHandle(fd, st.st_size, self._run))

    def _digest_sync(self, vpath: str, start: int, end: int | None) -> str:
        fd, st = self._open_regular(vpath)
        try:
            stop = st.st_size if end is None else min(end, st.st_size)
            if start < 0 or start > st.st_size or (end is not None and end < start):
                raise BadOffset("Invalid range for this file")
            sha = hashlib.sha256()
            position = start
            while position < stop:
                data = os.pread(fd, min(_PIECE, stop - position), position)
                if not data:
                    break
                sha.update(data)
                position += len(data)
            return sha.hexdigest()
        finally:
            os.close(fd)

    def _create_file(self, dir_fd: int, name: bytes) -> int:
        fd = os.open(name, _NEW_FILE_FLAGS, self._file_mode, dir_fd=dir_fd)
        try:
            os.fchmod(fd, self._file_mode)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _create_temporary(self, dir_fd: int) -> tuple[bytes, int]:
        for _ in range(8):
            name = _TEMPORARY_BYTES + secrets.token_hex(8).encode("ascii")
            try:
                return name, self._create_file(dir_fd, name)
            except FileExistsError:
                continue
        raise AlreadyExists("Cannot create a temporary file")

    def _reserve_unique(self, dir_fd: int, name: bytes) -> tuple[bytes, int]:
        candidates = [name] + [name + b".%d" % n for n in range(1, 100)]
        candidates += [name + b"." + secrets.token_hex(4).encode("ascii") for _ in range(8)]
        for candidate in candidates:
            try:
                return candidate, self._create_file(dir_fd, candidate)
            except FileExistsError:
                continue
        raise AlreadyExists("Cannot find a unique file name")

    def _prepare_upload(self, vpath: str, offset: int, append: bool, unique: bool) -> _UploadPlan:
        if offset < 0:
            raise BadOffset("Invalid restart offset")
        dir_fd, name = self._walk(vpath)
        try:
            if name is None:
                raise FilesystemError("Is a folder")
            if listable_name(name) is None:
                raise InvalidName("Invalid file name")
            if unique:
                plan = self._plan_unique(vpath, dir_fd, name, offset)
            else:
                plan = self._plan_upload(vpath, dir_fd, name, offset, append)
        except BaseException:
            os.close(dir_fd)
            raise
        return plan

    def _plan_unique(self, vpath: str, dir_fd: int, name: bytes, offset: int) -> _UploadPlan:
        if offset > 0:
            raise BadOffset("Restart offset beyond end of file")
        chosen, fd = self._reserve_unique(dir_fd, name)
        path = posixpath.join(posixpath.dirname(vpath), chosen.decode("utf-8"))
        if self.upload_mode == "resumable":
            return _UploadPlan(path, fd, dir_fd, chosen, None, None)
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        placeholder = (st.st_dev, st.st_ino)
        try:
            temporary, fd = self._create_temporary(dir_fd)
        except BaseException:
            os.unlink(chosen, dir_fd=dir_fd)
            raise
        return _UploadPlan(path, fd, dir_fd, chosen, temporary, placeholder)

    def _plan_upload(
        self, vpath: str, dir_fd: int, name: bytes, offset: int, append: bool
    ) -> _UploadPlan:
        for _ in range(3):
            st = self._lstat_at(dir_fd, name)
            if st is not None and not stat_module.S_ISREG(st.st_mode):
                if stat_module.S_ISDIR(st.st_mode):
                    raise FilesystemError("Is a folder")
                raise FilesystemError("Not a regular file")
            if st is None and offset > 0 and not append:
                raise BadOffset("Restart offset beyond end of file")
            in_place = self.upload_mode == "resumable" and (st is None or append or offset > 0)
            if not in_place:
                return self._plan_temporary(vpath, dir_fd, name, offset, append, st is not None)
            if st is None:
                try:
                    fd = self._create_file(dir_fd, name)
                except FileExistsError:
                    continue  # created meanwhile: decide again
                return _UploadPlan(vpath, fd, dir_fd, name, None, None)
            fd = os.open(
                name, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
            )
            try:
                size = self._regular_size(fd)
                start = size if append else offset
                if start > size:
                    raise BadOffset("Restart offset beyond end of file")
                os.ftruncate(fd, start)
                os.lseek(fd, start, os.SEEK_SET)
            except BaseException:
                os.close(fd)
                raise
            return _UploadPlan(vpath, fd, dir_fd, name, None, None)
        raise AlreadyExists("File is being created by another upload")

    @staticmethod
    def _regular_size(fd: int) -> int:
        st = os.fstat(fd)
        if not stat_module.S_ISREG(st.st_mode):
            raise FilesystemError("Not a regular file")
        os.set_blocking(fd, True)
        return st.st_size

    def _plan_temporary(
        self, vpath: str, dir_fd: int, name: bytes, offset: int, append: bool, exists: bool
    ) -> _UploadPlan:
        source: int | None = None
        if exists and (append or offset > 0):
            try:
                source = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
            except FileNotFoundError:
                source = None  # deleted meanwhile
            if source is None and offset > 0 and not append:
                raise BadOffset("Restart offset beyond end of file")
        try:
            start = 0
            if source is not None:
                size = self._regular_size(source)
                start = size if append else offset
                if start > size:
                    raise BadOffset("Restart offset beyond end of file")
            temporary, fd = self._create_temporary(dir_fd)
            try:
                if source is not None and start:
                    _copy_prefix(source, fd, start)
            except BaseException:
                os.close(fd)
                os.unlink(temporary, dir_fd=dir_fd)
                raise
        finally:
            _close_quietly(source)
        return _UploadPlan(vpath, fd, dir_fd, name, temporary, None)

    def _mkdir_sync(self, vpath: str) -> None:
        dir_fd, name = self._walk(vpath, follow_last=False)
        try:
            if name is None:
                raise AlreadyExists("File or folder already exists")
            if listable_name(name) is None:
                raise InvalidName("Invalid folder name")
            os.mkdir(name, self._dir_mode, dir_fd=dir_fd)
            fd = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=dir_fd)
            try:
                os.fchmod(fd, self._dir_mode)
            finally:
                os.close(fd)
        finally:
            os.close(dir_fd)

    def _rmdir_sync(self, vpath: str) -> None:
        if not _components(vpath):
            raise PermissionDenied("Cannot remove the home folder")
        dir_fd, name = self._walk(vpath, follow_last=False)
        try:
            assert name is not None
            os.rmdir(name, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)

    def _remove_sync(self, vpath: str) -> None:
        if not _components(vpath):
            raise FilesystemError("Is a folder")
        dir_fd, name = self._walk(vpath, follow_last=False)
        try:
            assert name is not None
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat_module.S_ISDIR(st.st_mode):
                raise FilesystemError("Is a folder")
            if stat_module.S_ISLNK(st.st_mode):
                self._check_visible(vpath)
            os.unlink(name, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)

    def _rename_sync(self, source: str, target: str) -> None:
        if not _components(source):
            raise PermissionDenied("Cannot rename the home folder")
        if not _components(target):
            raise AlreadyExists("File or folder already exists")
        source_fd, source_name = self._walk(source, follow_last=False)
        try:
            target_fd, target_name = self._walk(target, follow_last=False)
            try:
                assert source_name is not None and target_name is not None
                if listable_name(target_name) is None:
                    raise InvalidName("Invalid file name")
                st = os.stat(source_name, dir_fd=source_fd, follow_symlinks=False)
                if stat_module.S_ISLNK(st.st_mode):
                    self._check_visible(source)
                os.rename(source_name, target_name, src_dir_fd=source_fd, dst_dir_fd=target_fd)
            finally:
                os.close(target_fd)
        finally:
            os.close(source_fd)

    def _set_mtime_sync(self, vpath: str, mtime: float) -> None:
        dir_fd, name = self._walk(vpath)
        try:
            st = self._lstat_at(dir_fd, name)
            if st is None:
                raise NotFound(_NOT_FOUND)
            times = (st.st_atime_ns, int(mtime * 1_000_000_000))
            if name is None:
                os.utime(dir_fd, ns=times)
            else:
                os.utime(name, ns=times, dir_fd=dir_fd, follow_symlinks=False)
        finally:
            os.close(dir_fd)


# --- start-up helpers (blocking; call before the reactor runs or from a thread) -------


def sweep_temporaries(home_root: Path, min_age: float = 0.0) -> int:
    """Delete leftover upload temporaries (`.st-upload-*` files) below home_root.

    Symlinks are not followed. Returns how many were removed. Run it at start-up
    only: on a home_root shared by several live servers it would cut their uploads,
    unless `min_age` (seconds since the last write) spares those still being written.
    """
    removed = 0
    now = time.time()
    for folder, dirnames, filenames in os.walk(os.fsencode(home_root)):
        for name in filenames + dirnames:
            if not name.startswith(_TEMPORARY_BYTES):
                continue
            path = os.path.join(folder, name)
            try:
                info = os.lstat(path)
                if stat_module.S_ISDIR(info.st_mode) or now - info.st_mtime < min_age:
                    continue
                os.unlink(path)
                removed += 1
            except FileNotFoundError:
                continue
            except OSError as error:
                _log.warn(
                    "Cannot remove upload temporary {path}: {error}",
                    path=os.fsdecode(path),
                    error=error.strerror,
                )
    return removed


def ensure_home(home_root: Path, home: str, umask: int) -> Path:
    """The real path of the home folder `home` (relative to home_root), created if missing.

    FilesystemError when `home` is absolute, empty, has a `..`, a forbidden character or
    a reserved name, or when it (through symlinks) resolves outside home_root or to
    home_root itself, or is not a folder.
    """
    mode = 0o777 & ~umask
    try:
        _check_text(home)
    except InvalidName:
        raise FilesystemError(f"home folder {home!r} contains a forbidden character") from None
    parts = [p for p in home.split("/") if p and p != "."]
    if home.startswith("/") or not parts:
        raise FilesystemError(f"home folder {home!r} must be a relative path below home_root")
    if any(p == ".." or p.startswith(TEMPORARY_PREFIX) for p in parts):
        raise FilesystemError(f"home folder {home!r} must not contain '..' or a reserved name")
    try:
        _make_folder(Path(home_root), mode)
        root = Path(os.path.realpath(home_root))
        current = root
        for part in parts:
            current = current / part
            _make_folder(current, mode)
            real = Path(os.path.realpath(current))
            if real == root or root not in real.parents:
                raise FilesystemError(f"home folder {home!r} leads outside home_root")
            current = real
        if not current.is_dir():
            raise FilesystemError(f"home folder {home!r} is not a folder")
    except OSError as error:
        raise FilesystemError(
            f"cannot create home folder {home!r}: {error.strerror or error}"
        ) from None
    return current


def _make_folder(path: Path, mode: int) -> None:
    if path.is_dir():
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=mode)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        return
    os.chmod(path, mode, follow_symlinks=False)
