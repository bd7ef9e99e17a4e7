"""The virtual filesystem: each user sees their home folder as `/`.

The protocol depends only on `IFilesystem`; `LocalFilesystem` serves a folder
on local disk, doing its disk work in a thread pool.
"""

from __future__ import annotations

from dataclasses import dataclass


from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

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

    def fileno() -> int:  # type: ignore[misc]
        """OS file descriptor (for sendfile)."""

    def read(offset: int, length: int) -> Deferred[bytes]:  # type: ignore[misc]
        """Read up to `length` bytes at `offset` off the reactor thread; b'' at EOF."""

    def close() -> None:  # type: ignore[misc]
        """Close the file."""


class IUpload(Interface):
    path = Attribute("str: the virtual path being written")

    def write(data: bytes) -> Deferred[None]:  # type: ignore[misc]
        """Queue data; the Deferred fires when it is safe to send more (back-pressure)."""

    def commit() -> Deferred[int]:  # type: ignore[misc]
        """Flush and publish the file (rename into place); fires with the bytes received."""

    def abort() -> Deferred[None]:  # type: ignore[misc]
        """Interrupted upload: atomic mode deletes the partial; the target stays as it was."""


class IFilesystem(Interface):
    """A user's confined view of their home folder. Paths are virtual and absolute."""

    read_only = Attribute("bool: writes get PermissionDenied")

    def resolve(cwd: str, path: str) -> str:  # type: ignore[misc]
        """Pure: join `path` onto `cwd`, normalize, return a virtual absolute path.

        Raises InvalidName for names that can never be used (NUL, CR, LF,
        the reserved temporary prefix).
        """

    def stat(path: str) -> Deferred[FileStat]:  # type: ignore[misc]
        """Stat a path (symlinks leading out of the home are NotFound)."""

    def listdir(path: str) -> Deferred[list[FileStat]]:  # type: ignore[misc]
        """Entries of a folder, sorted, without unlistable names."""

    def open_read(path: str) -> Deferred[IReadHandle]:  # type: ignore[misc]
        """Open a regular file for reading."""

    def open_upload(  # type: ignore[misc]
        path: str, offset: int = 0, append: bool = False, unique: bool = False
    ) -> Deferred[IUpload]:
        """Start an upload per `upload_mode`; `unique` picks a new name (STOU)."""

    def mkdir(path: str) -> Deferred[None]:  # type: ignore[misc]
        """Create a folder."""

    def rmdir(path: str) -> Deferred[None]:  # type: ignore[misc]
        """Remove an empty folder."""

    def remove(path: str) -> Deferred[None]:  # type: ignore[misc]
        """Delete a file."""

    def rename(source: str, target: str) -> Deferred[None]:  # type: ignore[misc]
        """Rename a file or folder."""

    def set_mtime(path: str, mtime: float) -> Deferred[None]:  # type: ignore[misc]
        """Set a file's modification time (MFMT)."""

    def digest(path: str, start: int, end: int | None) -> Deferred[str]:  # type: ignore[misc]
        """SHA-256 hex digest of bytes [start, end) of a file (HASH)."""


