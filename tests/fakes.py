"""In-memory fakes of the filesystem and the user store, for core tests without threads.

Every method returns an already-fired Deferred, so a `SynchronousTestCase` can drive the
FTP engine with `successResultOf` / `failureResultOf`: no thread pool, no SQLite, no
argon2 run at full cost, no disk.

- `MemoryFilesystem` provides `IFilesystem` (handles: `IReadHandle`, `IUpload`) with the
  rules written at the top of `securetransport/vfs.py`: paths go through the same
  `resolve_path`, the walk from the home follows symlinks itself the way
  `LocalFilesystem._walk` does (a target leading above the home, or an absolute target
  outside `real_root`, is `NotFound`), the same exceptions and messages come out, and
  uploads follow `upload_mode` (atomic: a hidden `.st-upload-<hex>` file in the target's
  folder renamed over the target at commit; resumable: in place for new names, REST and
  APPE). `tests/test_fakes.py` runs one contract suite against this and `LocalFilesystem`.
- `MemoryUserStore` provides `IUserStore` (plus `find_by_fingerprint`, as
  `SQLiteUserStore` does) with the same validation (`_checked`): the same contract suite
  runs against both.
- `SyncAsyncUserStore` is `AsyncUserStore` with `_run` calling in place (a subclass, so
  `auth.as_async_store` takes it as it is and the portal never wraps it in a pool).
- `SyncVerificationPool` is `VerificationPool.submit` called in place.
- `cheap_password_hash` makes an argon2id hash at the smallest parameters: the real
  `verify_password` checks it in microseconds (the parameters travel in the PHC string).
  Only an unknown or disabled account still costs one full dummy verification: the dummy
  hash and its hasher are module constants of `securetransport/passwords.py`.
- `memory_portal` is `auth.make_portal` over these fakes.

Test helpers that the interfaces do not have (`write_file`, `read_file`, `symlink`,
`raw_names`, ...) set up and inspect the tree as a test would on disk.
"""

from __future__ import annotations

import builtins
import hashlib
import posixpath
import secrets
import stat as stat_module
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from argon2 import PasswordHasher
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from securetransport.auth import FilesystemFactory, make_portal
from securetransport.passwords import PoolFull
from securetransport.userstore import (
    Account,
    AsyncUserStore,
    IUserStore,
    UserStoreError,
    _checked,
    normalize_fingerprint,
)
from securetransport.vfs import (
    TEMPORARY_PREFIX,
    AlreadyExists,
    BadOffset,
    FileStat,
    FilesystemError,
    IFilesystem,
    InvalidName,
    IReadHandle,
    IUpload,
    NotFound,
    PermissionDenied,
    listable_name,
    resolve_path,
)

_T = TypeVar("_T")

_NOT_FOUND = "No such file or folder"
_MAX_SYMLINKS = 40  # as vfs._MAX_SYMLINKS
DEFAULT_REAL_ROOT = "/memory/home"  # where absolute symlink targets must point to stay inside


def _called(function: Callable[..., _T], *args: Any) -> Deferred[_T]:
    """`function(*args)` as a fired Deferred: its result, or its exception as a failure."""
    try:
        return succeed(function(*args))
    except BaseException:
        return fail(Failure())


# --- the tree -----------------------------------------------------------------------


@dataclass(eq=False)
class _File:
    data: bytearray
    mtime: float
    mode: int

    @property
    def st_mode(self) -> int:
        return stat_module.S_IFREG | self.mode


@dataclass(eq=False)
class _Folder:
    mtime: float
    mode: int
    children: dict[str, _Node] = field(default_factory=dict)

    @property
    def st_mode(self) -> int:
        return stat_module.S_IFDIR | self.mode


@dataclass(eq=False)
class _Symlink:
    target: str  # what readlink would return
    mtime: float

    @property
    def st_mode(self) -> int:
        return stat_module.S_IFLNK | 0o777


_Node = _File | _Folder | _Symlink


def _encoded(name: str) -> bytes:
    """A tree name as the bytes a disk would hold (surrogate escapes stand for bad UTF-8)."""
    return name.encode("utf-8", "surrogateescape")


def _components(vpath: str) -> list[str]:
    """As vfs._components: revalidated, so a caller that skipped resolve() cannot escape."""
    if not vpath.startswith("/"):
        raise InvalidName("Path is not absolute")
    return [c for c in resolve_path("/", vpath).split("/") if c]


def _listable(name: str) -> bool:
    return listable_name(_encoded(name)) is not None


# --- reading ------------------------------------------------------------------------


@implementer(IReadHandle)
class MemoryReadHandle:
    """An open file: sees in-place writes to the same file, not a later replacement."""

    def __init__(self, node: _File) -> None:
        self._node = node
        self.size = len(node.data)
        self.closed = False

    def fileno(self) -> int:
        """No descriptor in memory (-1): the engine uses sendfile only with a real reactor."""
        return -1

    def read(self, offset: int, length: int) -> Deferred[bytes]:
        if self.closed:
            return fail(FilesystemError("File is closed"))
        if offset < 0 or length < 0:
            return fail(BadOffset("Invalid read range"))
        return succeed(bytes(self._node.data[offset : offset + length]))

    def close(self) -> None:
        self.closed = True


# --- uploading ----------------------------------------------------------------------


@implementer(IUpload)
class MemoryUpload:
    """An upload in progress; data lands in the temporary (atomic) or the target (in place)."""

    def __init__(
        self,
        fs: MemoryFilesystem,
        path: str,
        folder: _Folder,
        target: str,
        node: _File,
        temporary: str | None,
        placeholder: _File | None,
    ) -> None:
        self.path = path
        self._fs = fs
        self._folder = folder
        self._target = target
        self._node = node
        self._temporary = temporary
        self._placeholder = placeholder
        self._received = 0
        self._state = "open"
        self.failure: FilesystemError | None = None  # set by tests to fail the next write

    def write(self, data: bytes) -> Deferred[None]:
        if self.failure is not None:
            return fail(self.failure)
        if self._state != "open":
            return fail(FilesystemError("Upload already finished"))
        self._node.data += data
        self._node.mtime = self._fs.clock()
        self._received += len(data)
        return succeed(None)

    def commit(self) -> Deferred[int]:
        if self._state != "open":
            return fail(FilesystemError("Upload already finished"))
        self._state = "done"
        if self.failure is not None:
            self._cleanup()
            return fail(self.failure)
        if self._temporary is not None:
            current = self._folder.children.get(self._target)
            if isinstance(current, _Folder):
                self._cleanup()
                return fail(FilesystemError("Is a folder"))
            self._folder.children.pop(self._temporary, None)
            self._folder.children[self._target] = self._node
            self._folder.mtime = self._fs.clock()
            self._temporary = None
        return succeed(self._received)

    def abort(self) -> Deferred[None]:
        if self._state != "open":
            return succeed(None)
        self._state = "done"
        self._cleanup()
        return succeed(None)

    def _cleanup(self) -> None:
        """Delete the temporary and any name STOU reserved (atomic); in place keeps the data."""
        children = self._folder.children
        if self._temporary is not None and children.get(self._temporary) is self._node:
            del children[self._temporary]
        if self._placeholder is not None and children.get(self._target) is self._placeholder:
            del children[self._target]


# --- the filesystem -----------------------------------------------------------------


@implementer(IFilesystem)
class MemoryFilesystem:
    """IFilesystem on an in-memory tree, synchronous, with LocalFilesystem's semantics.

    `real_root` is the home's "real path" for absolute symlink targets (an absolute
    target inside it stays in the home, any other leads out). `clock` gives mtimes.
    """

    def __init__(
        self,
        *,
        upload_mode: str = "atomic",
        umask: int = 0o027,
        read_only: bool = False,
        real_root: str = DEFAULT_REAL_ROOT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if upload_mode not in ("atomic", "resumable"):
            raise ValueError(f"upload_mode must be 'atomic' or 'resumable': {upload_mode!r}")
        self.upload_mode = upload_mode
        self.read_only = read_only
        self.real_root = real_root.rstrip("/") or "/"
        self.clock = clock
        self._file_mode = 0o666 & ~umask
        self._dir_mode = 0o777 & ~umask
        self.home = _Folder(mtime=clock(), mode=self._dir_mode)

    # IFilesystem

    def resolve(self, cwd: str, path: str) -> str:
        return resolve_path(cwd, path)

    def stat(self, path: str) -> Deferred[FileStat]:
        return _called(self._stat, path)

    def listdir(self, path: str) -> Deferred[list[FileStat]]:
        return _called(self._listdir, path)

    def open_read(self, path: str) -> Deferred[IReadHandle]:
        return _called(lambda: MemoryReadHandle(self._regular(path)))

    def open_upload(
        self, path: str, offset: int = 0, append: bool = False, unique: bool = False
    ) -> Deferred[IUpload]:
        return self._writing(self._open_upload, path, offset, append, unique)

    def mkdir(self, path: str) -> Deferred[None]:
        return self._writing(self._mkdir, path)

    def rmdir(self, path: str) -> Deferred[None]:
        return self._writing(self._rmdir, path)

    def remove(self, path: str) -> Deferred[None]:
        return self._writing(self._remove, path)

    def rename(self, source: str, target: str) -> Deferred[None]:
        return self._writing(self._rename, source, target)

    def set_mtime(self, path: str, mtime: float) -> Deferred[None]:
        return self._writing(self._set_mtime, path, mtime)

    def digest(self, path: str, start: int, end: int | None) -> Deferred[str]:
        return _called(self._digest, path, start, end)

    def _writing(self, function: Callable[..., _T], *args: Any) -> Deferred[_T]:
        if self.read_only:
            return fail(PermissionDenied("Permission denied: read-only account"))
        return _called(function, *args)

    # test helpers (no confinement: they stand for what a test does on disk)

    def _folder_at(self, parts: list[str], create: bool) -> _Folder:
        folder = self.home
        for part in parts:
            child = folder.children.get(part)
            if child is None and create:
                child = folder.children[part] = _Folder(mtime=self.clock(), mode=self._dir_mode)
            if not isinstance(child, _Folder):
                raise KeyError(f"not a folder: {part!r}")
            folder = child
        return folder

    def _split(self, path: str) -> tuple[list[str], str]:
        parts = [p for p in path.split("/") if p]
        if not parts:
            raise KeyError("the home itself")
        return parts[:-1], parts[-1]

    def write_file(self, path: str, data: bytes, mtime: float | None = None) -> None:
        """Create or replace a file (folders on the way are created); names are taken as given."""
        parents, name = self._split(path)
        folder = self._folder_at(parents, create=True)
        folder.children[name] = _File(
            bytearray(data), self.clock() if mtime is None else mtime, self._file_mode
        )

    def make_folders(self, path: str) -> None:
        self._folder_at([p for p in path.split("/") if p], create=True)

    def symlink(self, path: str, target: str) -> None:
        """Make `path` a symlink to `target` (as `ln -s target path`)."""
        parents, name = self._split(path)
        folder = self._folder_at(parents, create=True)
        folder.children[name] = _Symlink(target, self.clock())

    def read_file(self, path: str) -> bytes:
        """The bytes of a file (not through symlinks); KeyError if there is none."""
        parents, name = self._split(path)
        node = self._folder_at(parents, create=False).children[name]
        if not isinstance(node, _File):
            raise KeyError(f"not a file: {path!r}")
        return bytes(node.data)

    def exists(self, path: str) -> bool:
        parents, name = self._split(path)
        try:
            return name in self._folder_at(parents, create=False).children
        except KeyError:
            return False

    def raw_names(self, path: str = "/") -> list[str]:
        """Every name in a folder, upload temporaries included, sorted."""
        return sorted(self._folder_at([p for p in path.split("/") if p], create=False).children)

    # the confined walk

    def _walk(self, vpath: str, follow_last: bool = True) -> tuple[_Folder, str | None]:
        """As LocalFilesystem._walk: (the folder holding the last component, its name).

        The name is None when the path is a folder reached as a whole; with follow_last a
        symlink as the last component is resolved; anything leading out is NotFound.
        """
        pending = _components(vpath)
        stack = [self.home]
        hops = 0
        while pending:
            name = pending.pop(0)
            if name == "..":
                if len(stack) == 1:
                    raise NotFound(_NOT_FOUND)
                stack.pop()
                continue
            if name.startswith(TEMPORARY_PREFIX):
                raise NotFound(_NOT_FOUND)
            last = not pending
            if last and not follow_last:
                return stack[-1], name
            node = stack[-1].children.get(name)
            if node is None:
                if last:
                    return stack[-1], name
                raise NotFound(_NOT_FOUND)
            if isinstance(node, _Folder):
                if last:
                    return stack[-1], name
                stack.append(node)
                continue
            if isinstance(node, _File):
                if last:
                    return stack[-1], name
                raise FilesystemError("Not a folder")
            hops += 1
            if hops > _MAX_SYMLINKS:
                raise NotFound(_NOT_FOUND)
            target = node.target
            tokens = [t for t in target.split("/") if t not in ("", ".")]
            if target.startswith("/"):
                root_parts = [p for p in self.real_root.split("/") if p]
                if tokens[: len(root_parts)] != root_parts:
                    raise NotFound(_NOT_FOUND)
                tokens = tokens[len(root_parts) :]
                del stack[1:]
            pending[:0] = tokens
        return stack[-1], None

    def _lookup(self, vpath: str) -> _Folder | _File | None:
        """What `vpath` names after following symlinks (None: missing)."""
        folder, name = self._walk(vpath)
        if name is None:
            return folder
        node = folder.children.get(name)
        if isinstance(node, _Symlink):
            raise NotFound(_NOT_FOUND)  # LocalFilesystem: a symlink here lost a race
        return node

    def _check_visible(self, vpath: str) -> None:
        self._walk(vpath, follow_last=True)

    def _as_stat(self, name: str, node: _Folder | _File) -> FileStat:
        if isinstance(node, _Folder):
            subfolders = sum(isinstance(c, _Folder) for c in node.children.values())
            return FileStat(
                name=name,
                is_dir=True,
                size=4096,
                mtime=node.mtime,
                mode=node.st_mode,
                nlink=2 + subfolders,
                is_file=False,
            )
        return FileStat(
            name=name,
            is_dir=False,
            size=len(node.data),
            mtime=node.mtime,
            mode=node.st_mode,
            nlink=1,
            is_file=True,
        )

    # operations

    def _stat(self, vpath: str) -> FileStat:
        node = self._lookup(vpath)
        if node is None:
            raise NotFound(_NOT_FOUND)
        return self._as_stat(posixpath.basename(vpath) or "/", node)

    def _listdir(self, vpath: str) -> list[FileStat]:
        folder = self._lookup(vpath)
        if folder is None:
            raise NotFound(_NOT_FOUND)
        if not isinstance(folder, _Folder):
            raise FilesystemError("Not a folder")
        entries: list[FileStat] = []
        base = vpath.rstrip("/")
        for name in sorted(folder.children, key=_encoded):
            if not _listable(name):
                continue
            node = folder.children[name]
            if isinstance(node, _Symlink):
                try:
                    entries.append(self._stat(f"{base}/{name}"))
                except FilesystemError:
                    continue  # leads outside the home, dangles or loops: not listed
            else:
                entries.append(self._as_stat(name, node))
        entries.sort(key=lambda entry: entry.name)
        return entries

    def _regular(self, vpath: str) -> _File:
        folder, name = self._walk(vpath)
        node: _Node | None = folder if name is None else folder.children.get(name)
        if node is None:
            raise NotFound(_NOT_FOUND)
        if isinstance(node, _Symlink):
            raise NotFound(_NOT_FOUND)
        if isinstance(node, _Folder):
            raise FilesystemError("Is a folder")
        return node

    def _digest(self, vpath: str, start: int, end: int | None) -> str:
        data = self._regular(vpath).data
        size = len(data)
        stop = size if end is None else min(end, size)
        if start < 0 or start > size or (end is not None and end < start):
            raise BadOffset("Invalid range for this file")
        return hashlib.sha256(data[start:stop]).hexdigest()

    def _new_file(self, data: bytes = b"") -> _File:
        return _File(bytearray(data), self.clock(), self._file_mode)

    def _temporary_name(self, folder: _Folder) -> str:
        for _ in range(8):
            name = TEMPORARY_PREFIX + secrets.token_hex(8)
            if name not in folder.children:
                return name
        raise AlreadyExists("Cannot create a temporary file")

    def _add(self, folder: _Folder, name: str, node: _Node) -> None:
        folder.children[name] = node
        folder.mtime = self.clock()

    def _open_upload(self, vpath: str, offset: int, append: bool, unique: bool) -> MemoryUpload:
        if offset < 0:
            raise BadOffset("Invalid restart offset")
        folder, name = self._walk(vpath)
        if name is None:
            raise FilesystemError("Is a folder")
        if not _listable(name):
            raise InvalidName("Invalid file name")
        if unique:
            return self._upload_unique(vpath, folder, name, offset)
        existing = folder.children.get(name)
        if isinstance(existing, _Symlink):
            raise NotFound(_NOT_FOUND)  # as _lstat_at: a symlink after the walk lost a race
        if isinstance(existing, _Folder):
            raise FilesystemError("Is a folder")
        if existing is None and offset > 0 and not append:
            raise BadOffset("Restart offset beyond end of file")
        in_place = self.upload_mode == "resumable" and (existing is None or append or offset > 0)
        if in_place:
            if existing is None:
                existing = self._new_file()
                self._add(folder, name, existing)
            else:
                start = len(existing.data) if append else offset
                if start > len(existing.data):
                    raise BadOffset("Restart offset beyond end of file")
                del existing.data[start:]
            return MemoryUpload(self, vpath, folder, name, existing, None, None)
        prefix = b""
        if existing is not None and (append or offset > 0):
            start = len(existing.data) if append else offset
            if start > len(existing.data):
                raise BadOffset("Restart offset beyond end of file")
            prefix = bytes(existing.data[:start])
        temporary = self._temporary_name(folder)
        node = self._new_file(prefix)
        self._add(folder, temporary, node)
        return MemoryUpload(self, vpath, folder, name, node, temporary, None)

    def _upload_unique(self, vpath: str, folder: _Folder, name: str, offset: int) -> MemoryUpload:
        if offset > 0:
            raise BadOffset("Restart offset beyond end of file")
        candidates = [name] + [f"{name}.{n}" for n in range(1, 100)]
        candidates += [f"{name}.{secrets.token_hex(4)}" for _ in range(8)]
        for chosen in candidates:
            if chosen not in folder.children:
                break
        else:
            raise AlreadyExists("Cannot find a unique file name")
        path = posixpath.join(posixpath.dirname(vpath), chosen)
        reserved = self._new_file()
        self._add(folder, chosen, reserved)
        if self.upload_mode == "resumable":
            return MemoryUpload(self, path, folder, chosen, reserved, None, None)
        temporary = self._temporary_name(folder)
        node = self._new_file()
        self._add(folder, temporary, node)
        return MemoryUpload(self, path, folder, chosen, node, temporary, reserved)

    def _mkdir(self, vpath: str) -> None:
        folder, name = self._walk(vpath, follow_last=False)
        if name is None:
            raise AlreadyExists("File or folder already exists")
        if not _listable(name):
            raise InvalidName("Invalid folder name")
        if name in folder.children:
            raise AlreadyExists("File or folder already exists")
        self._add(folder, name, _Folder(mtime=self.clock(), mode=self._dir_mode))

    def _rmdir(self, vpath: str) -> None:
        if not _components(vpath):
            raise PermissionDenied("Cannot remove the home folder")
        folder, name = self._walk(vpath, follow_last=False)
        assert name is not None
        node = folder.children.get(name)
        if node is None:
            raise NotFound(_NOT_FOUND)
        if not isinstance(node, _Folder):
            raise FilesystemError("Not a folder")
        if node.children:
            raise FilesystemError("Folder not empty")
        del folder.children[name]
        folder.mtime = self.clock()

    def _remove(self, vpath: str) -> None:
        if not _components(vpath):
            raise FilesystemError("Is a folder")
        folder, name = self._walk(vpath, follow_last=False)
        assert name is not None
        node = folder.children.get(name)
        if node is None:
            raise NotFound(_NOT_FOUND)
        if isinstance(node, _Folder):
            raise FilesystemError("Is a folder")
        if isinstance(node, _Symlink):
            self._check_visible(vpath)
        del folder.children[name]
        folder.mtime = self.clock()

    def _rename(self, source: str, target: str) -> None:
        if not _components(source):
            raise PermissionDenied("Cannot rename the home folder")
        if not _components(target):
            raise AlreadyExists("File or folder already exists")
        source_folder, source_name = self._walk(source, follow_last=False)
        target_folder, target_name = self._walk(target, follow_last=False)
        assert source_name is not None and target_name is not None
        if not _listable(target_name):
            raise InvalidName("Invalid file name")
        node = source_folder.children.get(source_name)
        if node is None:
            raise NotFound(_NOT_FOUND)
        if isinstance(node, _Symlink):
            self._check_visible(source)
        replaced = target_folder.children.get(target_name)
        if replaced is node:
            return  # the same entry: rename(2) does nothing
        if isinstance(replaced, _Folder) and self._contains(replaced, source_folder):
            raise FilesystemError("Folder not empty")  # rename(2) onto an ancestor: ENOTEMPTY
        if isinstance(node, _Folder):
            if self._contains(node, target_folder):
                raise FilesystemError("Invalid argument (a folder cannot move into itself)")
            if replaced is not None and not isinstance(replaced, _Folder):
                raise FilesystemError("Not a folder")
            if isinstance(replaced, _Folder) and replaced.children:
                raise FilesystemError("Folder not empty")
        elif isinstance(replaced, _Folder):
            raise FilesystemError("Is a folder")
        del source_folder.children[source_name]
        self._add(target_folder, target_name, node)
        source_folder.mtime = self.clock()

    @staticmethod
    def _contains(folder: _Folder, other: _Folder) -> bool:
        """Is `other` the folder itself or below it?"""
        if other is folder:
            return True
        return any(
            isinstance(child, _Folder) and MemoryFilesystem._contains(child, other)
            for child in folder.children.values()
        )

    def _set_mtime(self, vpath: str, mtime: float) -> None:
        node = self._lookup(vpath)
        if node is None:
            raise NotFound(_NOT_FOUND)
        node.mtime = mtime


# --- the user store -----------------------------------------------------------------


@implementer(IUserStore)
class MemoryUserStore:
    """IUserStore in a dict, with SQLiteUserStore's validation and ordering."""

    def __init__(self, accounts: tuple[Account, ...] = ()) -> None:
        self._accounts: dict[str, Account] | None = {}
        for account in accounts:
            self.add(account)

    def _open(self) -> dict[str, Account]:
        if self._accounts is None:
            raise UserStoreError("user store is closed")
        return self._accounts

    def get(self, name: str) -> Account | None:
        return self._open().get(name)

    def list(self) -> builtins.list[Account]:
        accounts = self._open()
        return [accounts[name] for name in sorted(accounts)]

    def add(self, account: Account) -> None:
        account = _checked(account)
        accounts = self._open()
        if account.name in accounts:
            raise UserStoreError(f"account exists: {account.name}")
        accounts[account.name] = account

    def update(self, account: Account) -> None:
        account = _checked(account)
        accounts = self._open()
        if account.name not in accounts:
            raise UserStoreError(f"no such account: {account.name}")
        accounts[account.name] = account

    def remove(self, name: str) -> bool:
        return self._open().pop(name, None) is not None

    def find_by_fingerprint(self, fingerprint: str) -> builtins.list[str]:
        try:
            fingerprint = normalize_fingerprint(fingerprint)
        except ValueError:
            return []
        accounts = self._open()
        return sorted(name for name, a in accounts.items() if fingerprint in a.certificates)

    def close(self) -> None:
        self._accounts = None


class SyncAsyncUserStore(AsyncUserStore):
    """AsyncUserStore whose calls run in place: every Deferred has fired on return."""

    def __init__(self, store: Any) -> None:
        super().__init__(store, threadpool=None, reactor=None)  # type: ignore[arg-type]

    def _run(self, fn: Callable[..., _T], *args: Any) -> Deferred[_T]:
        return maybeDeferred(fn, *args)


class SyncVerificationPool:
    """VerificationPool's `submit`, run in place; `full = True` makes it refuse (PoolFull)."""

    def __init__(self) -> None:
        self.full = False
        self.submitted = 0
        self.threadpool = None
        self.reactor = None

    def submit(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> Deferred[_T]:
        if self.full:
            return fail(PoolFull("verification pool full"))
        self.submitted += 1
        return maybeDeferred(fn, *args, **kwargs)


_CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
_CHEAP_HASHES: dict[str, str] = {}


def cheap_password_hash(password: str) -> str:
    """An argon2id PHC string at the smallest parameters (verified in microseconds)."""
    if password not in _CHEAP_HASHES:
        _CHEAP_HASHES[password] = _CHEAP_HASHER.hash(password)
    return _CHEAP_HASHES[password]


def memory_account(name: str, password: str | None = "secret", **fields: Any) -> Account:
    """An Account with a cheap password hash (None: no password login)."""
    hashed = None if password is None else cheap_password_hash(password)
    return replace(Account(name=name), password_hash=hashed, **fields)


def memory_portal(
    store: MemoryUserStore | SyncAsyncUserStore,
    filesystem_for: FilesystemFactory | None = None,
    pool: SyncVerificationPool | None = None,
) -> Portal:
    """`auth.make_portal` over the fakes: logins resolve before `login()` returns.

    Without `filesystem_for`, each account gets a fresh MemoryFilesystem (read-only as
    the account is), kept in `portal.filesystems` by account name.
    """
    users = store if isinstance(store, SyncAsyncUserStore) else SyncAsyncUserStore(store)
    filesystems: dict[str, MemoryFilesystem] = {}

    def fresh(account: Account) -> MemoryFilesystem:
        fs = filesystems.get(account.name)
        if fs is None:
            fs = filesystems[account.name] = MemoryFilesystem(read_only=account.read_only)
        return fs

    portal = make_portal(users, pool or SyncVerificationPool(), filesystem_for or fresh)  # type: ignore[arg-type]
    portal.filesystems = filesystems  # type: ignore[attr-defined]
    return portal
